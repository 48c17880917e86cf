"""How every command reports a user error: one red `error:` line on stderr and exit status 1."""

from __future__ import annotations

import typer


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)
