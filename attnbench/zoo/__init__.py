"""The module zoo: specs (types), the registry table, user specs, checks and builds, catalog, modules."""
