"""The attnbench command line (Typer + rich): `main` is the console script; the Typer app is attnbench.cli.app.app."""

from attnbench.cli.main import main

__all__ = ["main"]
