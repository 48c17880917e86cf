"""`python -m flows ...` is the `auralsam2` command."""

from flows.cli import main

main()
