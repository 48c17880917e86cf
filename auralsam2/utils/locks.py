"""One writer per output folder: an exclusive `flock` on `<folder>/.lock` for as long as a command
writes there (ingest, cache build, training of a run folder).

A second command aimed at the same folder fails at once with `FolderBusyError`, naming the folder,
instead of interleaving its files with the first one's. The kernel drops the lock when its process
dies (kill -9 included), so a crash never leaves a stale lock. The lock file stays, empty (outputs
are compared byte for byte across runs, so it holds no pid or time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "FolderBusyError", "folder_lock"]

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another process is writing to the folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the folder's lock for the block (created with its parents); `what` names the writer in
    the message another process gets ("ingest", "feature-cache build", "training run")."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"{folder} is being written by another {what} right now (it holds "
                                  f"{path}); wait for it to finish, or write to another folder") from None
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

