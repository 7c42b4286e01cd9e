"""The zoo: importing this package registers every module (one file per paper), in the order listed here."""

import importlib

#: One file per paper; registration (and so `list_modules()`) follows this order.
MODULE_FILES = ("acmix", "external", "mhsa", "sk", "danet", "epsa", "smt_sam", "cloformer", "van_lka")

for _name in MODULE_FILES:
    importlib.import_module(f"attnbench.modules.{_name}")
