"""Output folders a command owns: the one way an `--out` folder is claimed, checked and replaced.

A command writes its output into a folder it owns: one it created (or found empty), marked by the
file `OWNER_FILE` naming the command. A non-empty folder without that mark is the user's: it is
refused with one line, before any work, and nothing in it is touched. Replacing a command's own
earlier output is atomic: the new output is written to a hidden staging folder beside `out`, then
swapped in by two renames; the old one is removed without following any symlink inside it. A
symlink given as `out` is refused (replacing it would change what it points to, or delete there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from auralsam2.utils.locks import LOCK_NAME

__all__ = ["OWNER_FILE", "OutputFolderError", "check_output_folder", "claim_output_folder", "output_path",
           "owned_output_folder"]

OWNER_FILE = ".auralsam2-output.json"


class OutputFolderError(ValueError):
    """An output folder is not the command's to write (the user's files, a symlink, the data folder)."""


def _owner(folder: Path) -> str | None:
    try:
        value = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value.get("command") if isinstance(value, dict) else None


def output_path(out: str | os.PathLike) -> Path:
    """`out` as the absolute path the output is written to (`~` expanded, symlinks not resolved)."""
    return Path(os.path.abspath(os.path.expanduser(out)))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output_folder(out: str | os.PathLike, command: str, *, protect: tuple[Path, ...] = (),
                        written_before: Callable[[Path], bool] | None = None, follow_symlink: bool = False) -> Path:
    """The absolute path of `out` when `command` may write there; else `OutputFolderError`.

    Allowed: a folder that does not exist, an empty one, or one marked as `command`'s (or, for output
    of a version before the mark, one `written_before` recognises). `out` is never the data folder nor
    above it, nor above any folder in `protect`, whatever they hold. A symlink is refused unless
    `follow_symlink` (a folder completed in place, never replaced: its target is checked instead)."""
    from auralsam2.paths import data_home

    path = output_path(out)
    what = f"`auralsam2 {command}`"
    if follow_symlink and path.is_symlink():
        path = path.resolve()
    if path.is_symlink():
        raise OutputFolderError(f"{path} is a symbolic link; give {what} a real folder (nothing was changed)")
    real = path.resolve()
    for folder in (data_home(), *protect):
        if _is_within(Path(folder).resolve(), real):
            raise OutputFolderError(f"{path} holds the data folder {folder}; give {what} a folder of its own "
                                    "(nothing was changed)")
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputFolderError(f"{path} is a file, not a folder; give {what} a new or empty folder "
                                "(nothing was changed)")
    owner = _owner(path)
    if owner == command or (owner is None and written_before is not None and written_before(path)):
        return path
    if not [p for p in path.iterdir() if p.name != LOCK_NAME]:  # empty, or our lock just taken
        return path
    whose = f"was written by `auralsam2 {owner}`" if owner else f"was not written by {what}"
    raise OutputFolderError(f"{path} is not empty and {whose}; give {what} a new or empty folder "
                            "(nothing was changed)")


def _mark(folder: Path, command: str) -> None:
    (folder / OWNER_FILE).write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")


def claim_output_folder(out: str | os.PathLike, command: str, *, protect: tuple[Path, ...] = (),
                        written_before: Callable[[Path], bool] | None = None) -> Path:
    """For a command that completes its output in place (ingest, cache): check `out`
    (`check_output_folder`; a symlink to a folder is followed), create it and mark it as `command`'s;
    returns its absolute path."""
    path = check_output_folder(out, command, protect=protect, written_before=written_before, follow_symlink=True)
    path.mkdir(parents=True, exist_ok=True)
    if _owner(path) != command:
        _mark(path, command)
    return path


def _remove_leftovers(path: Path, command: str) -> None:
    """Staging and old folders of this output left by a killed run (only those marked as ours, of a
    process that is gone: another one may be writing the same output right now)."""
    for prefix in (f".{path.name}.partial-", f".{path.name}.old-"):
        for leftover in path.parent.glob(f"{_glob_escape(prefix)}*"):
            pid = leftover.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _alive(int(pid)):
                continue
            if leftover.is_dir() and not leftover.is_symlink() and _owner(leftover) == command:
                shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _glob_escape(text: str) -> str:
    """`text` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def owned_output_folder(out: str | os.PathLike, command: str, *, protect: tuple[Path, ...] = (),
                        written_before: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """`with owned_output_folder(out, "report") as stage: write(stage)`: checks `out` first
    (`check_output_folder`), yields a fresh staging folder beside it, and on success swaps it in
    as `out`; on an exception the staging folder is removed and `out` is left as it was."""
    path = check_output_folder(out, command, protect=protect, written_before=written_before)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path, command)
    stage = path.with_name(f".{path.name}.partial-{os.getpid()}")
    stage.mkdir()
    _mark(stage, command)
    try:
        yield stage
        check_output_folder(path, command, protect=protect, written_before=written_before)  # not taken meanwhile
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            _mark(path, command)  # a leftover `old` of a killed swap is then recognisably ours
            path.rename(old)
        stage.rename(path)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
