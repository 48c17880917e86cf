"""Atomic file writes: the one way every writer of the project puts a file on disk.

Write protocol: the content goes to a hidden temporary name next to the target (`temp_path`), is
flushed and fsynced, then renamed over the target, and the folder is fsynced. A crash therefore
leaves the old file or the new one, never a truncated one; the temporary file of a killed writer
is recognisable (`is_temp`) and removed by the next run. Any exception removes the temporary file.

Checksums travel inside the files: a JSON record carries `record_sha256` (over its canonical JSON,
`read_json` verifies it), a torch payload `payload_sha256` (over its nested values,
`auralsam2.checkpoints.read_weights` verifies it), so a damaged byte is an error naming the file,
never a changed value. Parquet tables are checked against the sha256 their owner records.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "PAYLOAD_SHA256",
    "RECORD_SHA256",
    "DamagedFileError",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "fsync_dir",
    "is_temp",
    "read_json",
    "seal_record",
    "temp_path",
    "with_filename",
]

RECORD_SHA256 = "record_sha256"


class DamagedFileError(ValueError):
    """A file the pipeline wrote is damaged (unreadable, or fails its checksum); the message names it
    and says how to get a good one."""


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        named = with_filename(exc, path)
        if named is not exc:
            raise named from exc
        raise
    fsync_dir(path.parent)


FULL_BELOW = 1 << 20  # a volume with less free space than this, after a failed write, is full


def _free_bytes(folder: Path) -> int:
    try:
        st = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def with_filename(exc: BaseException, path: str | os.PathLike) -> BaseException:
    """A write error that names no file (a full disk: `write()` raises a bare `[Errno 28]`) as the
    same `OSError` naming `path`, so the message can say which file and which volume; else `exc`."""
    if isinstance(exc, OSError) and exc.errno is not None and not exc.filename:
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    return exc


def _write_with(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _write_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _write_with(path, lambda tmp: tmp.write_text(text))


def seal_record(record: dict[str, Any], default: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """`record` plus its `record_sha256` (over the canonical JSON of the record as it reads back)."""
    from auralsam2.utils.hashing import canonical_json, sha256_bytes

    plain = json.loads(json.dumps(record, default=default))
    plain.pop(RECORD_SHA256, None)
    return {**plain, RECORD_SHA256: sha256_bytes(canonical_json(plain))}


def atomic_write_json(path: str | os.PathLike, value: Any, *, seal: bool = True, **dumps: Any) -> Path:
    """JSON (`indent=1, sort_keys=True` unless `dumps` says otherwise), with a final newline; a dict is
    sealed with its `record_sha256` unless `seal=False` (files other programs read as they are)."""
    options = {"indent": 1, "sort_keys": True, **dumps}
    if seal and isinstance(value, dict):
        value = seal_record(value, options.get("default"))
    return atomic_write_text(path, json.dumps(value, **options) + "\n")


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """A JSON file `atomic_write_json` wrote, its `record_sha256` checked (and removed); records written
    before checksums existed read as they are. A damaged file is a `DamagedFileError` naming it,
    `what` it is and the `fix`; a missing one stays `FileNotFoundError`."""
    from auralsam2.utils.hashing import canonical_json, sha256_bytes

    path = Path(path)
    data = path.read_bytes()
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedFileError(f"{path}: {what} is damaged (not JSON: {err}); {fix}") from None
    if isinstance(value, dict) and RECORD_SHA256 in value:
        want = value.pop(RECORD_SHA256)
        if sha256_bytes(canonical_json(value)) != want:
            raise DamagedFileError(f"{path}: {what} fails its checksum (it was changed or damaged); {fix}")
    return value


def atomic_write_parquet(path: str | os.PathLike, table: Any) -> Path:
    """A `pyarrow.Table` as one Parquet file."""
    import pyarrow.parquet as pq

    return _write_with(path, lambda tmp: pq.write_table(table, tmp))


PAYLOAD_SHA256 = "payload_sha256"


def atomic_torch_save(payload: Any, path: str | os.PathLike, *, seal: bool = True) -> Path:
    """`torch.save(payload, path)`, atomically (checkpoints, training states). A dict payload gets its
    `payload_sha256` (torch's zip format checks no CRC on load: a flipped byte would load as a changed
    value) unless `seal=False` (a raw state dict other programs load strictly)."""
    import torch

    from auralsam2.utils.hashing import payload_sha256

    if seal and isinstance(payload, dict):
        payload = {**{k: v for k, v in payload.items() if k != PAYLOAD_SHA256}}
        payload[PAYLOAD_SHA256] = payload_sha256(payload)
    def write(tmp: Path) -> None:
        try:
            torch.save(payload, tmp)
        except RuntimeError as err:  # torch reports a full disk as "unexpected pos ..." or "write failed"
            if _free_bytes(tmp.parent) < FULL_BELOW:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise

    return _write_with(path, write)
