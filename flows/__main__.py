"""`python -m flows ...` is the `auralsam2` command."""

from flows.cli import app

app()
