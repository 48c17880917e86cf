"""Atomic file writes: the one way every writer of the project puts a file on disk.

Write protocol: the content goes to a hidden temporary name next to the target (`temp_path`), is
flushed and fsynced, then renamed over the target, and the folder is fsynced. A crash therefore
leaves the old file or the new one, never a truncated one; the temporary file of a killed writer
is recognisable (`is_temp`) and removed by the next run. Any exception removes the temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "fsync_dir",
    "is_temp",
    "temp_path",
]


def temp_path(path: Path) -> Path:
    """Temporary name of `path` while it is being written (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temp(path: Path) -> bool:
    """True for a name `temp_path` makes (a leftover of an interrupted writer)."""
    return path.name.startswith(".") and ".tmp-" in path.name


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename in it survives a power loss (best effort: not every OS allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_path(out) as tmp: write(tmp)`: the block writes `tmp`; on success it is fsynced
    and renamed to `out`, on an exception it is removed and `out` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _write_with(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> Path:
    """JSON (`indent=1, sort_keys=True` unless `dumps` says otherwise), with a final newline."""
    options = {"indent": 1, "sort_keys": True, **dumps}
    return atomic_write_text(path, json.dumps(value, **options) + "\n")


def atomic_write_parquet(path: str | os.PathLike, table: Any) -> Path:
    """A `pyarrow.Table` as one Parquet file."""
    import pyarrow.parquet as pq

    return _write_with(path, lambda tmp: pq.write_table(table, tmp))


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> Path:
    """`torch.save(payload, path)`, atomically (checkpoints, training states)."""
    import torch

    return _write_with(path, lambda tmp: torch.save(payload, tmp))
