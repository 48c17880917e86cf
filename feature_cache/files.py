"""Cache files on disk: atomic Arrow IPC writes with a CRC-32 per record batch, checked reads.

Write protocol (`ArrowFileWriter`): batches go to a temporary name next to the target; after the
last batch the file is memory-mapped back, every record batch is checksummed *as a reader will see
it*, the checksums are written into the file-level schema metadata, and the file is fsynced and
renamed. A crash therefore leaves either no file or a temporary one (removed by the next run), never
a partial file under the final name.

The checksums must sit in the schema metadata, which Arrow writes *before* the batches (and again in
the footer). The writer reserves a fixed-length placeholder value there and overwrites it in place,
in exactly those two flatbuffers, with a same-length JSON list padded with spaces; string lengths and
offsets do not change, so the file stays a valid Arrow IPC file.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.ipc as ipc

from auralsam2.utils.files import fsync_dir, temp_path, with_filename
from feature_cache.schema import (
    FORMAT_VERSION,
    META_CHECKSUMS,
    META_CREATED,
    META_FINGERPRINT,
    META_FORMAT,
    META_HEADER,
    META_KIND,
    META_ROWS,
    META_SOURCE,
    CacheError,
    CorruptCacheError,
    fingerprint_differences,
)

_PLACEHOLDER_TAG = b"#auralsam2-checksums-placeholder#"
_ENTRY = len('"crc32:00000000",')
_ARROW_MAGIC = b"ARROW1"


_CRC_CHUNK = 4 << 20  # CRC-32 per 4 MiB piece, so that big record batches are checked on all cores
_PARALLEL_FROM = 16 << 20
_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():  # a forked child cannot use its parent's threads
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                 thread_name_prefix="cache-crc"))
    return _POOL[1]


def batch_checksum(batch: pa.RecordBatch) -> str:
    """Checksum of one record batch as "crc32:xxxxxxxx", over every buffer of every column.

    Definition: CRC-32 of the sequence, over buffers in column order, of the buffer's length (u64)
    followed by the CRC-32 (u32) of each of its 4 MiB pieces (a missing validity bitmap contributes
    one zero byte). The pieces are independent, so a 24 MB record is checked on all cores (zlib
    releases the GIL); the result does not depend on the number of threads. Computed on the
    memory-mapped buffers, so checking a batch reads it once and copies nothing.
    """
    layout: list[tuple[int, int] | None] = []  # per buffer: (size, number of pieces) or None
    pieces: list[memoryview] = []
    for column in batch.columns:
        storage = column.storage if isinstance(column, pa.ExtensionArray) else column
        for buf in storage.buffers():
            if buf is None:
                layout.append(None)
                continue
            view = memoryview(buf)
            chunks = [view[i:i + _CRC_CHUNK] for i in range(0, buf.size, _CRC_CHUNK)]
            layout.append((buf.size, len(chunks)))
            pieces.extend(chunks)
    total = sum(len(p) for p in pieces)
    crcs = list(_pool().map(zlib.crc32, pieces)) if total >= _PARALLEL_FROM else [zlib.crc32(p) for p in pieces]
    summary = bytearray()
    at = 0
    for entry in layout:
        if entry is None:
            summary += b"\0"
            continue
        size, n = entry
        summary += struct.pack(f"<Q{n}I", size, *crcs[at:at + n])
        at += n
    return f"crc32:{zlib.crc32(summary):08x}"


class ArrowFileWriter:
    """Write one cache Arrow file of exactly `rows` record batches, atomically, with checksums.

    Use as a context manager; an exception inside the block removes the temporary file and leaves
    any existing file at `path` untouched.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, metadata: Mapping[bytes, bytes],
                 rows: int, compression: str = "none") -> None:
        self.path = Path(path)
        self.rows = rows
        self.tmp = temp_path(self.path)
        self._placeholder = _PLACEHOLDER_TAG + b"#" * (2 + _ENTRY * rows + 32 - len(_PLACEHOLDER_TAG))
        meta = dict(metadata)
        meta[META_ROWS] = str(rows).encode()
        meta[META_HEADER] = header_sha256(schema, meta).encode()
        meta[META_CHECKSUMS] = self._placeholder
        self.schema = schema.with_metadata(meta)
        options = ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.tmp), "wb")
        self._writer = ipc.new_file(self._sink, self.schema, options=options)
        self.written = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows != 1 and self.schema.metadata.get(META_KIND) == b"features":
            raise ValueError(f"{self.path}: a features record batch holds exactly one (frame, view) row")
        self._writer.write_batch(batch)
        self.written += 1

    def close(self) -> list[str]:
        """Finish the file: checksum every batch, fill in the metadata, fsync, rename. Returns the checksums."""
        self._writer.close()
        self._sink.close()
        if self.written != self.rows:
            raise CacheError(f"{self.path}: wrote {self.written} record batches, planned {self.rows}")
        with pa.memory_map(str(self.tmp), "r") as source:
            reader = ipc.open_file(source)
            if reader.num_record_batches != self.rows:
                raise CacheError(f"{self.tmp}: reads back {reader.num_record_batches} batches, wrote {self.rows}")
            checksums = [batch_checksum(reader.get_batch(i)) for i in range(self.rows)]
            del reader
        value = json.dumps(checksums, separators=(",", ":")).encode()
        value += b" " * (len(self._placeholder) - len(value))
        with open(self.tmp, "r+b") as f:
            _patch_metadata(f, self._placeholder, value, self.tmp)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return checksums

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 (already failing; the temp file goes anyway)
            pass
        self._sink.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> ArrowFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            named = with_filename(exc, self.path)
            if named is not exc:
                raise named from exc


def header_sha256(schema: pa.Schema, metadata: Mapping[bytes, bytes]) -> str:
    """sha256 of a cache file's schema without its metadata, then of each metadata entry in key
    order except the batch checksums (checked batch by batch) and this value itself."""
    import hashlib

    digest = hashlib.sha256(schema.remove_metadata().serialize().to_pybytes())
    for key in sorted(metadata):
        if key not in (META_CHECKSUMS, META_HEADER):
            digest.update(len(key).to_bytes(4, "little") + key + len(metadata[key]).to_bytes(8, "little")
                          + metadata[key])
    return digest.hexdigest()


def _patch_metadata(f, placeholder: bytes, value: bytes, where: Path) -> None:
    """Overwrite the placeholder in the leading schema message and in the footer (same length)."""
    assert len(value) == len(placeholder)
    f.seek(0)
    head = f.read(16)
    if head[:6] != _ARROW_MAGIC:
        raise CacheError(f"{where}: not an Arrow IPC file")
    schema_len = struct.unpack("<i", head[12:16])[0]
    size = f.seek(0, os.SEEK_END)
    f.seek(size - 10)
    tail = f.read(10)
    footer_len = struct.unpack("<i", tail[:4])[0]
    regions = [(16, 16 + schema_len), (size - 10 - footer_len, size - 10)]
    for start, end in regions:
        f.seek(start)
        region = f.read(end - start)
        at = region.find(placeholder)
        if at < 0 or region.find(placeholder, at + 1) >= 0:
            raise CacheError(f"{where}: checksum placeholder not found exactly once in bytes {start}..{end}")
        f.seek(start + at)
        f.write(value)


@dataclass
class CacheFile:
    """An opened (memory-mapped) cache Arrow file and its decoded metadata.

    `batch(i)` returns record batch i with its buffers pointing into the memory map (no copy); before
    the caller touches them, the batch's byte range is handed to the kernel as one read-ahead request
    (posix_fadvise WILLNEED): a random access then reads exactly that record in large requests,
    instead of page-fault read-around that reads megabytes around each fault.
    """

    path: Path
    reader: ipc.RecordBatchFileReader
    kind: str
    fingerprint: dict[str, Any]
    created: str
    rows: int
    source: dict[str, Any]
    checksums: list[str]
    base_address: int = 0
    fd: int | None = None
    verified: set[int] = field(default_factory=set)
    _release: Any = None  # weakref.finalize closing `fd` exactly once (on close() or garbage collection)

    @property
    def num_batches(self) -> int:
        return self.reader.num_record_batches

    def prefetch(self, batch: pa.RecordBatch) -> None:
        """Ask the kernel to read record `batch`'s bytes now (no-op where posix_fadvise is unavailable)."""
        if self.fd is None or not hasattr(os, "posix_fadvise"):
            return
        spans = [(b.address, b.address + b.size) for column in batch.columns
                 for b in (column.storage if isinstance(column, pa.ExtensionArray) else column).buffers()
                 if b is not None and b.size]
        if spans:
            start = min(s for s, _ in spans) - self.base_address
            end = max(e for _, e in spans) - self.base_address
            os.posix_fadvise(self.fd, start, end - start, os.POSIX_FADV_WILLNEED)

    def batch(self, i: int, verify: bool = True, prefetch: bool = True) -> pa.RecordBatch:
        """Record batch `i`, checked against its checksum when `verify` (once per opened file)."""
        if not 0 <= i < self.num_batches:
            raise CorruptCacheError(f"{self.path}: record batch {i} does not exist ({self.num_batches} batches); "
                                    "the index and the file disagree: run `auralsam2 cache verify`")
        try:
            batch = self.reader.get_batch(i)
        except (pa.ArrowException, OSError) as err:
            raise CorruptCacheError(f"{self.path}: record batch {i} cannot be read ({err}); the file is corrupt: "
                                    "re-run `auralsam2 cache` to rebuild it") from err
        if prefetch:
            self.prefetch(batch)
        if verify:
            self.check(i, batch)
        return batch

    def check(self, i: int, batch: pa.RecordBatch) -> None:
        """Raise `CorruptCacheError` unless record batch `i` matches its checksum (each i checked once)."""
        if i in self.verified:
            return
        got = batch_checksum(batch)
        if got != self.checksums[i]:
            raise CorruptCacheError(
                f"{self.path}: record batch {i} fails its checksum ({got}, recorded {self.checksums[i]}); "
                "the file is corrupt: re-run `auralsam2 cache` (it rebuilds files that do not verify)")
        self.verified.add(i)

    def close(self) -> None:
        """Release the file descriptor (the memory map goes with the last reference to its buffers)."""
        if self._release is not None:
            self._release()
        self.fd = None


def open_cache_file(path: str | os.PathLike, kind: str | None = None) -> CacheFile:
    """Memory-map a cache Arrow file and decode its metadata; raises `CacheError`/`CorruptCacheError`."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: missing; re-run `auralsam2 cache` to build it")
    try:
        source = pa.memory_map(str(path), "r")
        base_address = source.read_buffer(1).address if source.size() else 0
        reader = ipc.open_file(source)
    except (pa.ArrowException, OSError) as err:
        raise CorruptCacheError(f"{path}: not a readable Arrow IPC file ({err}); delete it and re-run "
                                "`auralsam2 cache`") from err
    meta = reader.schema.metadata or {}
    want = meta.get(META_HEADER)
    if want is not None and header_sha256(reader.schema, meta).encode() != want:
        raise CorruptCacheError(f"{path}: its schema or metadata fails the checksum it records (a damaged "
                                "footer); delete it and re-run `auralsam2 cache`")
    try:
        if meta.get(META_FORMAT) != str(FORMAT_VERSION).encode():
            found = meta.get(META_FORMAT, b"<none>").decode(errors="replace")
            raise CacheError(f"{path}: cache format {found}, this code reads {FORMAT_VERSION}; rebuild the cache "
                             "(`auralsam2 cache ... --rebuild`)")
        opened = CacheFile(
            path=path, reader=reader, kind=meta[META_KIND].decode(),
            fingerprint=json.loads(meta[META_FINGERPRINT]), created=meta[META_CREATED].decode(),
            rows=int(meta[META_ROWS]), source=json.loads(meta[META_SOURCE]),
            checksums=json.loads(meta[META_CHECKSUMS]), base_address=base_address,
        )
    except (KeyError, ValueError) as err:
        raise CorruptCacheError(f"{path}: cache metadata missing or unreadable ({err!r}); delete the file and "
                                "re-run `auralsam2 cache`") from err
    if kind is not None and opened.kind != kind:
        raise CacheError(f"{path}: a {opened.kind!r} file where a {kind!r} file was expected")
    opened.fd = os.open(path, os.O_RDONLY)
    opened._release = weakref.finalize(opened, os.close, opened.fd)
    if not (opened.rows == len(opened.checksums) == opened.num_batches):
        raise CorruptCacheError(f"{path}: {opened.num_batches} record batches, metadata says {opened.rows} rows "
                                f"and {len(opened.checksums)} checksums; delete it and re-run `auralsam2 cache`")
    return opened


class Problem(NamedTuple):
    """One problem found in a cache file: `kind` is "missing", "corrupt" or "stale"."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def verify_file(path: str | os.PathLike, *, kind: str | None = None,
                fingerprint: Mapping[str, Any] | None = None,
                source: Mapping[str, Any] | None = None,
                checksums: bool = True) -> tuple[list[Problem], CacheFile | None]:
    """Every problem of one cache file: unreadable, wrong kind/fingerprint/source, failed checksums.

    Returns (problems, opened file or None). With `checksums` (default) every record batch is read
    and checked; without, only the metadata (a quick check that reads a few KB).
    """
    path = Path(path)
    if not path.is_file():
        return [Problem("missing", f"{path}: missing")], None
    try:
        opened = open_cache_file(path, kind)
    except CorruptCacheError as err:
        return [Problem("corrupt", str(err))], None
    except CacheError as err:
        return [Problem("stale", str(err))], None
    problems = []
    if fingerprint is not None and (diffs := fingerprint_differences(opened.fingerprint, fingerprint)):
        problems.append(Problem("stale", f"{path}: built with other settings (" + "; ".join(diffs[:4]) + ")"))
    if source is not None and (diffs := fingerprint_differences(opened.source, source)):
        problems.append(Problem("stale", f"{path}: built from another input (" + "; ".join(diffs[:4]) + ")"))
    for i in range(opened.num_batches if checksums else 0):
        try:
            opened.batch(i, verify=True)
        except CorruptCacheError as err:
            problems.append(Problem("corrupt", str(err)))
    return problems, opened
