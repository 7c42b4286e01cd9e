"""The attnbench command line (Typer + rich): `main` is the console script."""

from attnbench.cli.app import app, main

__all__ = ["app", "main"]
