"""Where outputs go: one data folder, `./data` by default or `$AURALSAM2_HOME` when set."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

ENV_HOME = "AURALSAM2_HOME"


def data_home() -> Path:
    """The absolute data folder every command writes under unless told otherwise."""
    return Path(os.environ.get(ENV_HOME) or "data").expanduser().resolve()


def mlflow_tracking_uri() -> str:
    """`$MLFLOW_TRACKING_URI`, else an absolute SQLite store under the data folder.

    MLflow's own default is `sqlite:///<cwd>/mlflow.db`, which silently splits runs across
    working directories; an absolute path keeps one store per data folder.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = data_home() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return sqlite_uri(db)


def sqlite_uri(path: str | os.PathLike, scheme: str = "sqlite") -> str:
    """The SQLAlchemy URI of the SQLite file `path` (absolute), quoted: SQLAlchemy decodes `%XX` in a
    URI's path and ends the path at `?`, so `/data/a%41` or `/data/x?` would name another file."""
    return f"{scheme}:///{quote(str(Path(path).absolute()), safe='/')}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///...` URI (as `sqlite_uri` writes it), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))
