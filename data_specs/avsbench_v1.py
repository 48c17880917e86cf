"""AVSBench-object, the original release: Single-source (S4) and Multi-sources (MS3).

Layouts (reference: datasets_metrics.md §1.1-1.2); frames and masks are 224x224 PNGs, k = 1..5:

    S4:  Single-source/s4_meta_data.csv                 name, start, category, split (by position)
         s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png
         s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png   (train: k = 1 only)
         s4_data/audio_wav/<split>/<category>/<name>.wav
    MS3: Multi-sources/ms3_meta_data.csv                name, split (by position / `split` column)
         ms3_data/visual_frames/<name>/<name>.mp4_<k>.png            (not split into folders)
         ms3_data/gt_masks/<split>/<name>/<name>_<k>.png
         ms3_data/audio_wav/<split>/<name>.wav

The release also ships `audio_log_mel/*.pkl`; they are pickles and are never opened here (the
log-mel is recomputed from the WAV instead).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from data_specs.clip import Clip, make_key
from data_specs.common import (
    FindingSink,
    ReadResult,
    check_frame_numbers,
    csv_text,
    frame_number,
    numbered_files,
    path_problem,
)

FRAMES_PER_CLIP = 5
SPLITS = ("train", "val", "test")


def _locate(root: Path, csv_name: str, release_folder: str) -> Path:
    for candidate in (root / csv_name, root / release_folder / csv_name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{root}: {csv_name} not found (looked in {root} and {root / release_folder}); "
        f"point --root at the AVSBench-object '{release_folder}' folder"
    )


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """CSV rows by position, with the header row (if any) dropped; (line number, cells)."""
    reader = csv.reader(io.StringIO(csv_text(path), newline=""))
    rows = [(i, [c.strip() for c in cells]) for i, cells in enumerate(reader, start=1) if any(cells)]
    if rows and "split" in [c.lower() for c in rows[0][1]]:
        rows = rows[1:]
    return rows


def read_s4(root: str | Path, subset: str = "all", strict: bool = False,
              follow_symlinks: bool = False) -> ReadResult:
    root = Path(root).resolve()
    meta = _locate(root, "s4_meta_data.csv", "Single-source")
    data = meta.parent / "s4_data"
    base = meta.parent
    sink = FindingSink("avsbench-s4", strict)
    result = ReadResult("avsbench-s4", str(base))
    seen: set[str] = set()
    for line, cells in _rows(meta):
        result.rows_read += 1
        name = cells[0] if cells else ""
        category = cells[2] if len(cells) > 2 else ""
        split = cells[3] if len(cells) > 3 else ""
        key = make_key("s4", name or f"row{line}")
        if name in seen:
            key = f"{key}~dup{line}"
        clip = Clip(key=key, dataset="avsbench-s4", subset="s4", split=split, uid=name, root=str(base),
                    frame_paths=[], mask_paths=[], audio_path=None, category=category,
                    extra={"start": cells[1] if len(cells) > 1 else "", "metadata_line": line})
        result.clips.append(clip)
        where = f"{meta.name}:{line}"
        if len(cells) < 4 or not name:
            sink.error(key, where, "malformed_row", f"expected name, start, category, split; got {cells}")
            continue
        if name in seen:
            sink.error(key, where, "duplicate_uid", f"clip {name!r} already appeared")
            continue
        seen.add(name)
        if split not in SPLITS:
            sink.error(key, where, "unknown_split", f"split {split!r} is not one of {list(SPLITS)}")
            continue
        if problem := path_problem(Path(clip.root), data / "visual_frames" / split / category / name, name, follow_symlinks):
            sink.error(key, where, "unsafe_path", problem)
            continue
        frames_dir = data / "visual_frames" / split / category / name
        masks_dir = data / "gt_masks" / split / category / name
        audio = data / "audio_wav" / split / category / f"{name}.wav"
        _fill(clip, frames_dir, masks_dir, audio, labelled=[0] if split == "train" else list(range(5)), sink=sink)
    result.findings = sink.findings
    return result


def read_ms3(root: str | Path, subset: str = "all", strict: bool = False,
              follow_symlinks: bool = False) -> ReadResult:
    root = Path(root).resolve()
    meta = _locate(root, "ms3_meta_data.csv", "Multi-sources")
    data = meta.parent / "ms3_data"
    base = meta.parent
    sink = FindingSink("avsbench-ms3", strict)
    result = ReadResult("avsbench-ms3", str(base))
    first = next(csv.reader(io.StringIO(csv_text(meta), newline="")), [])
    split_col = [c.strip().lower() for c in first].index("split") if "split" in [c.strip().lower() for c in first] else 1
    seen: set[str] = set()
    for line, cells in _rows(meta):
        result.rows_read += 1
        name = cells[0] if cells else ""
        split = cells[split_col] if len(cells) > split_col else ""
        key = make_key("ms3", name or f"row{line}")
        if name in seen:
            key = f"{key}~dup{line}"
        clip = Clip(key=key, dataset="avsbench-ms3", subset="ms3", split=split, uid=name, root=str(base),
                    frame_paths=[], mask_paths=[], audio_path=None, extra={"metadata_line": line})
        result.clips.append(clip)
        where = f"{meta.name}:{line}"
        if not name or len(cells) <= split_col:
            sink.error(key, where, "malformed_row", f"expected name, split; got {cells}")
            continue
        if name in seen:
            sink.error(key, where, "duplicate_uid", f"clip {name!r} already appeared")
            continue
        seen.add(name)
        if split not in SPLITS:
            sink.error(key, where, "unknown_split", f"split {split!r} is not one of {list(SPLITS)}")
            continue
        if problem := path_problem(Path(clip.root), data / "visual_frames" / name, name, follow_symlinks):
            sink.error(key, where, "unsafe_path", problem)
            continue
        frames_dir = data / "visual_frames" / name
        masks_dir = data / "gt_masks" / split / name
        audio = data / "audio_wav" / split / f"{name}.wav"
        _fill(clip, frames_dir, masks_dir, audio, labelled=list(range(5)), sink=sink)
    result.findings = sink.findings
    return result


def _fill(clip: Clip, frames_dir: Path, masks_dir: Path, audio: Path, labelled: list[int], sink: FindingSink) -> None:
    root = Path(clip.root)
    if not frames_dir.is_dir():
        sink.error(clip.key, frames_dir.relative_to(root), "missing_folder", "frame folder does not exist")
        return
    frames = numbered_files(frames_dir, (".png", ".jpg", ".jpeg"))
    clip.frame_paths = [str(p.relative_to(root)) for p in frames]
    if not check_frame_numbers(frames, 1, FRAMES_PER_CLIP, clip.key, frames_dir.relative_to(root), sink):
        return
    masks = {frame_number(p.name): p for p in numbered_files(masks_dir, (".png",))}
    clip.mask_paths = []
    for t, frame in enumerate(frames):
        number = frame_number(frame.name)  # 1-based k in this release
        mask = masks.get(number) if t in labelled else None
        if t in labelled and mask is None:
            sink.error(clip.key, (masks_dir / f"{clip.uid}_{number}.png").relative_to(root), "missing_file",
                       f"ground-truth mask of frame {t} is missing")
        clip.mask_paths.append(str(mask.relative_to(root)) if mask else None)
    if audio.is_file():
        clip.audio_path = str(audio.relative_to(root))
    else:
        sink.error(clip.key, audio.relative_to(root), "missing_file", "audio wav is missing")
