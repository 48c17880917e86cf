"""AVSBench-semantic release (AVSS; the v1s / v1m / v2 subsets AuralSAM2 trains on).

Layout (reference: datasets_metrics.md §1.3):

    <root>/metadata.csv                 vid, uid, s_min, s_sec, a_obj, split, label
    <root>/label2idx.json               71 class names (background first)
    <root>/<label>/<uid>/frames/<t>.jpg           t = 0..4 (v1s, v1m) or 0..9 (v2)
    <root>/<label>/<uid>/labels_rgb/<t>.png       RGB palette masks
    <root>/<label>/<uid>/labels_semantic/<t>.png  class-id masks
    <root>/<label>/<uid>/audio.wav

AuralSAM2 moves `metadata.csv` to `<root>/avss_index/metadata.csv`; both places are accepted.
Ground truth exists on frame 0 only for v1s train clips and on every frame otherwise. Frame files
are ordered by their number, not lexicographically.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_specs.clip import Clip, make_key
from data_specs.common import (
    FindingSink,
    ReadResult,
    check_frame_numbers,
    frame_number,
    numbered_files,
    path_problem,
    read_csv_rows,
    report_extra_files,
    require_columns,
)
from data_specs.palette import AVSS_CLASSES

DATASET = "avss"
FRAMES_PER_CLIP = {"v1s": 5, "v1m": 5, "v2": 10}
SPLITS = ("train", "val", "test")
COLUMNS = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_metadata(root: Path) -> Path:
    for candidate in (root / "metadata.csv", root / "avss_index" / "metadata.csv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{root}: no metadata.csv (looked in {root}/metadata.csv and {root}/avss_index/metadata.csv). "
        "Point --root at the AVSBench-semantic release folder that holds v1s/, v1m/, v2/ and metadata.csv."
    )


def subsets_for(subset: str) -> tuple[str, ...]:
    """`all` is the merged pool the released v2 code trains and tests on (v1s + v1m + v2)."""
    if subset == "all":
        return tuple(FRAMES_PER_CLIP)
    if subset not in FRAMES_PER_CLIP:
        raise ValueError(f"unknown AVSS subset {subset!r}; choose one of {[*FRAMES_PER_CLIP, 'all']}")
    return (subset,)


def check_label2idx(root: Path, sink: FindingSink) -> None:
    path = root / "label2idx.json"
    if not path.is_file():
        sink.warning("", path, "missing_file", "label2idx.json not found; using the built-in 71-class list")
        return
    try:
        names = list(json.loads(path.read_text()))
    except (ValueError, OSError) as exc:
        sink.warning("", path, "unreadable_file", f"cannot parse label2idx.json ({exc}); using the built-in list")
        return
    if names != list(AVSS_CLASSES):
        sink.warning(
            "", path, "unknown_label",
            f"label2idx.json lists {len(names)} classes that differ from the built-in 71-class palette order; "
            "semantic class ids follow the palette position (json value - 1)",
        )


def read_avss(root: str | Path, subset: str = "all", strict: bool = False,
              follow_symlinks: bool = False) -> ReadResult:
    """Read the release's metadata and folders into Clip records (cheap checks only).

    Per-file decoding checks (corrupt images, mask sizes, palette colours, audio length) happen
    when the shard writer reads the bytes (`data_specs.validate`).
    """
    root = Path(root).resolve()
    wanted = subsets_for(subset)
    meta_path = find_metadata(root)
    header, rows = read_csv_rows(meta_path)
    require_columns(meta_path, header, COLUMNS)
    sink = FindingSink(DATASET, strict)
    check_label2idx(root, sink)
    result = ReadResult(DATASET, str(root))
    seen: dict[tuple[str, str], int] = {}

    for line, row in enumerate(rows, start=2):
        label, uid, split = row["label"], row["uid"], row["split"]
        if label in FRAMES_PER_CLIP and label not in wanted:
            continue  # another subset, not part of this ingest
        result.rows_read += 1
        key = make_key(label or "unlabelled", uid or f"row{line}")
        n_dup = seen.get((label, uid), 0)
        seen[(label, uid)] = n_dup + 1
        if n_dup:
            key = f"{key}~dup{n_dup}"
        clip = Clip(
            key=key, dataset=DATASET, subset=label, split=split, uid=uid, root=str(root),
            frame_paths=[], mask_paths=[], audio_path=None, category=row["a_obj"],
            extra={"vid": row["vid"], "s_min": row["s_min"], "s_sec": row["s_sec"], "metadata_line": line},
        )
        result.clips.append(clip)
        where = f"{meta_path.name}:{line}"
        if not uid:
            sink.error(key, where, "malformed_row", "empty uid")
            continue
        if n_dup:
            sink.error(key, where, "duplicate_uid", f"uid {uid!r} of subset {label!r} already appeared earlier")
            continue
        if label not in FRAMES_PER_CLIP:
            sink.error(key, where, "unknown_label", f"label {label!r} is not one of {list(FRAMES_PER_CLIP)}")
            continue
        if split not in SPLITS:
            sink.error(key, where, "unknown_split", f"split {split!r} is not one of {list(SPLITS)}")
            continue
        if problem := path_problem(root, root / label / uid, uid, follow_symlinks):
            sink.error(key, where, "unsafe_path", problem)
            continue
        _fill_files(clip, root / label / uid, sink)

    result.findings = sink.findings
    return result


def _fill_files(clip: Clip, folder: Path, sink: FindingSink) -> None:
    root = Path(clip.root)
    rel = folder.relative_to(root)
    if not folder.is_dir():
        sink.error(clip.key, rel, "missing_folder", "clip folder listed in metadata.csv does not exist")
        return
    expected = FRAMES_PER_CLIP[clip.subset]
    frames = numbered_files(folder / "frames", IMAGE_SUFFIXES)
    clip.frame_paths = [str(p.relative_to(root)) for p in frames]
    if not check_frame_numbers(frames, 0, expected, clip.key, rel / "frames", sink):
        return
    numbers = [frame_number(p.name) for p in frames]

    # v1s train clips are annotated on frame 0 only (the release ships no other mask files).
    labelled = [0] if (clip.subset == "v1s" and clip.split == "train") else list(range(expected))
    rgb = {frame_number(p.name): p for p in numbered_files(folder / "labels_rgb", (".png",))}
    semantic = {frame_number(p.name): p for p in numbered_files(folder / "labels_semantic", (".png",))}
    clip.mask_paths, clip.semantic_paths = [], []
    for t, number in enumerate(numbers):
        mask = rgb.get(number) if t in labelled else None
        if t in labelled and mask is None:
            sink.error(clip.key, rel / "labels_rgb" / f"{number}.png", "missing_file",
                       f"ground-truth mask of frame {t} is missing")
        clip.mask_paths.append(str(mask.relative_to(root)) if mask else None)
        sem = semantic.get(number) if t in labelled else None
        clip.semantic_paths.append(str(sem.relative_to(root)) if sem else None)

    audio = folder / "audio.wav"
    if audio.is_file():
        clip.audio_path = str(audio.relative_to(root))
    else:
        sink.error(clip.key, rel / "audio.wav", "missing_file", "audio.wav is missing")
    _report_extra_files(clip, folder, sink)


def _report_extra_files(clip: Clip, folder: Path, sink: FindingSink) -> None:
    used = {*clip.frame_paths, *(p for p in clip.mask_paths if p), *(p for p in clip.semantic_paths if p)}
    if clip.audio_path:
        used.add(clip.audio_path)
    report_extra_files(clip.key, Path(clip.root), folder, used, sink, ("frames", "labels_rgb", "labels_semantic"),
                       expected=lambda path: _unlabelled_mask(clip, path))


def _unlabelled_mask(clip: Clip, path: Path) -> bool:
    """A numbered mask PNG the clip does not read (a frame the split leaves unannotated): expected."""
    return (path.parent.name in ("labels_rgb", "labels_semantic") and path.suffix.lower() == ".png"
            and any(ch.isdigit() for ch in path.stem))
