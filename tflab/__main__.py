"""`python -m tflab` is the `tflab` command."""

from tflab.cli import main

main()
