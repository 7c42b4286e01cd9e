"""`python -m attnbench.cli`: the console script's entry point (scripts and CI start the CLI so)."""

import sys

from attnbench.cli.main import main

sys.exit(main())
