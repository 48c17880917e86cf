"""Where relative config paths point: the project root, the current directory or a given base."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def resolve_path(value: str | os.PathLike, base: Path | None = None) -> Path:
    """A config path: absolute as is; relative -> under `base` when given (the data folder for data
    paths), else the current directory if it exists there, else the project root."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if base is not None:
        return (base / path).resolve()
    if path.exists():
        return path.resolve()
    return (PROJECT_ROOT / path).resolve()
