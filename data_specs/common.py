"""Helpers shared by the dataset readers: CSV rows, numeric frame ordering, read results."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from data_specs.clip import Clip, Finding

_DIGITS = re.compile(r"(\d+)(?!.*\d)")
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems


def frame_number(name: str) -> int:
    """The last integer in a file name: `7.jpg` -> 7, `clip_12.png` -> 12, `x.mp4_3.png` -> 3.

    Frames are ordered by this number, never lexicographically (`10.jpg` sorts after `9.jpg`).
    """
    m = _DIGITS.search(Path(name).stem)
    if not m:
        raise ValueError(f"no frame number in file name {name!r}")
    return int(m.group(1))


def numbered_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files of `folder` with one of `suffixes`, in numeric frame order (empty if no folder)."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix.lower() in suffixes and _DIGITS.search(p.stem)]
    return sorted(files, key=lambda p: (frame_number(p.name), p.name))


def path_problem(root: Path, folder: Path, name: str, follow_symlinks: bool = False) -> str | None:
    """Why the metadata's `name` (a uid) may not name the clip folder `folder` under the raw `root`:
    a path separator, '.' or '..' in it, or a folder that resolves outside the tree (a symlink
    leaving it, unless `follow_symlinks`). Ingest never reads outside --root otherwise; None when
    the name is safe."""
    parts = name.replace("\\", "/").split("/")
    if len(parts) > 1 or name in (".", "..") or Path(name).is_absolute():
        return f"{name!r} is not a plain folder name (a path in it would read outside {folder.parent.name}/)"
    if "\0" in name or len(os.fsencode(name)) > NAME_MAX:
        return (f"{name[:60]!r}... ({len(os.fsencode(name))} bytes) cannot be a file name (at most {NAME_MAX} bytes, "
                "no NUL)")
    if not follow_symlinks:
        return outside_root(root, folder)
    return None


def outside_root(root: Path, path: Path) -> str | None:
    """Why `path` (a clip folder or file) is not read: it resolves outside the raw tree (a symlink
    leaving it); None when it stays inside (or does not exist)."""
    try:
        exists = path.exists()
    except OSError as err:  # a name too long for the file system, a loop of symlinks
        return f"{path.relative_to(root)} cannot be looked up ({err.strerror})"
    if exists and not path.resolve().is_relative_to(root.resolve()):
        return (f"{path.relative_to(root)} resolves to {path.resolve()}, outside the raw tree {root} (a symlink; "
                "ingest --follow-symlinks reads it)")
    return None


def csv_text(path: Path) -> str:
    """A metadata file's text (UTF-8, a BOM allowed); other bytes are an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); save the "
                         "file as UTF-8") from None


def read_csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV with a header row, as (header, rows); cells stripped of surrounding whitespace. Bytes
    that are not UTF-8 and a file with a header but no row are errors naming the file (and line)."""
    reader = csv.reader(io.StringIO(csv_text(path), newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"{path}: empty CSV, expected a header row") from None
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        rows.append({h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)})
    if not rows:
        raise ValueError(f"{path}: a header and no rows: the metadata lists no clip")
    return header, rows


def require_columns(path: Path, header: list[str], required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {header}. "
            f"Expected the release's header {list(required)}."
        )


@dataclass
class ReadResult:
    """What a reader found: every clip it could assemble, every finding, and row accounting.

    Clips with an `error` finding are still returned here; `partition()` separates kept from
    quarantined so the counts always add up (read = kept + quarantined).
    """

    dataset: str
    root: str
    clips: list[Clip] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    rows_read: int = 0
    rows_skipped: int = 0

    def partition(self) -> tuple[list[Clip], list[Clip]]:
        return partition_clips(self.clips, self.findings)


def partition_clips(clips: list[Clip], findings: list[Finding]) -> tuple[list[Clip], list[Clip]]:
    """Split clips into (kept, quarantined) by their error findings.

    A clip-level error quarantines the clip. An expression-level error drops that expression from a
    kept clip; a clip whose expressions were all dropped is quarantined as well.
    """
    bad_clips = {f.clip_key for f in findings if f.severity == "error" and not f.expression_uid}
    bad_expressions = {(f.clip_key, f.expression_uid) for f in findings if f.severity == "error" and f.expression_uid}
    kept, quarantined = [], []
    for clip in clips:
        if clip.key in bad_clips:
            quarantined.append(clip)
            continue
        if clip.expressions:
            good = [e for e in clip.expressions if (clip.key, e.uid) not in bad_expressions]
            if not good:
                quarantined.append(clip)
                continue
            clip.expressions = good
        kept.append(clip)
    return kept, quarantined


class StrictModeError(RuntimeError):
    """Raised in strict mode on the first error finding; its message is that finding."""


class FindingSink:
    """Collects findings; in strict mode the first error raises immediately."""

    def __init__(self, dataset: str, strict: bool = False) -> None:
        self.dataset = dataset
        self.strict = strict
        self.findings: list[Finding] = []

    def add(
        self, clip_key: str, file: str | Path, kind: str, severity: str, message: str, expression_uid: str = ""
    ) -> Finding:
        finding = Finding(self.dataset, clip_key, str(file), kind, severity, message, expression_uid)  # type: ignore[arg-type]
        if self.strict and severity == "error":
            raise StrictModeError(str(finding))
        self.findings.append(finding)
        return finding

    def error(self, clip_key: str, file: str | Path, kind: str, message: str, expression_uid: str = "") -> Finding:
        return self.add(clip_key, file, kind, "error", message, expression_uid)

    def warning(self, clip_key: str, file: str | Path, kind: str, message: str, expression_uid: str = "") -> Finding:
        return self.add(clip_key, file, kind, "warning", message, expression_uid)


def check_frame_numbers(frames: list[Path], first: int, expected: int, clip_key: str, folder: str | Path,
                        sink: FindingSink) -> bool:
    """Frames must be numbered first..first+expected-1; report gaps as missing files, extras as a count error."""
    numbers = {frame_number(p.name) for p in frames}
    missing = [n for n in range(first, first + expected) if n not in numbers]
    if missing:
        unexpected = [p.name for p in frames if not first <= frame_number(p.name) < first + expected]
        sink.error(clip_key, folder, "missing_file", f"frame file(s) numbered {missing} missing ({len(frames)} present"
                   + (f"; numbered outside {first}..{first + expected - 1}: {', '.join(unexpected[:5])})" if unexpected else ")"))
        return False
    if len(frames) != expected:
        sink.error(clip_key, folder, "wrong_frame_count", f"{len(frames)} frames, expected {expected}")
        return False
    return True


def report_extra_files(clip_key: str, root: Path, folder: Path, used: set[str], sink: FindingSink,
                       expected_dirs: tuple[str, ...] = (), expected=lambda path: False) -> None:
    """Files in a clip's folder (and in its `expected_dirs`) that the clip does not use and that
    `expected(path)` does not excuse: one warning naming them (nothing is silently left out; the clip
    is ingested as usual)."""
    extra = []
    for entry in sorted(folder.iterdir()):
        inside = sorted(entry.iterdir()) if entry.is_dir() and entry.name in expected_dirs else [entry]
        extra += [rel for p in inside if (rel := str(p.relative_to(root))) not in used and not expected(p)]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        sink.warning(clip_key, folder.relative_to(root), "extra_file",
                     f"{len(extra)} file(s) in the clip folder are not part of the clip and not ingested: {shown}")
