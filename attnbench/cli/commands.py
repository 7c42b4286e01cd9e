"""Every command of the app: importing this module registers them (one file per command group)."""

# In the order --help lists them.
from attnbench.cli import zoo, env, run, report, cache  # noqa: I001

__all__ = ["cache", "env", "report", "run", "zoo"]
