"""The zoo's modules, one file per paper; each defines its ModuleSpec(s), listed in attnbench.zoo.registry."""
