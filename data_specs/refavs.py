"""Ref-AVS (Ref-AVS Bench): referring expressions over 10-second clips.

Layout (reference: datasets_metrics.md §1.4):

    <root>/metadata.csv                               vid, uid, split, fid, exp
    <root>/media/<folder>/frames/<t>.jpg              t = 0..9
    <root>/media/<folder>/audio.wav
    <root>/gt_mask/<folder>/fid_<fid>/0000<t>.png     the referred object's mask per frame

One Clip per media folder, carrying its Expressions. A null expression (uid `null_c-...` or
`null_m-...`) names an absent object; its media and mask folder is `uid.rsplit('_', 2)[0]`, not
the vid. Rows whose split is `TODO` (25 in the release) are skipped and counted.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from data_specs.clip import Clip, Expression, make_key
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

DATASET = "refavs"
SUBSET = "refavs"
FRAMES_PER_CLIP = 10
SPLITS = ("train", "val", "test_s", "test_u", "test_n")
SKIPPED_SPLITS = ("TODO",)
COLUMNS = ("vid", "uid", "split", "fid", "exp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def media_folder(vid: str, uid: str) -> str:
    """The media/gt folder of a row: the vid, or for null expressions the uid minus `_null_<n>`."""
    return uid.rsplit("_", 2)[0] if uid.startswith("null_") else vid


def expression_category(vid: str, uid: str) -> str:
    """`<vid>_<category>_<n>` -> category (empty for null expressions)."""
    if uid.startswith("null_") or not uid.startswith(vid + "_"):
        return ""
    return uid[len(vid) + 1:].rsplit("_", 1)[0]


def read_refavs(root: str | Path, subset: str = "all", strict: bool = False,
              follow_symlinks: bool = False) -> ReadResult:
    """Read metadata.csv and the media/gt folders into one Clip per media folder."""
    if subset not in ("all", SUBSET):
        raise ValueError(f"Ref-AVS has no subsets; use --subset all (got {subset!r})")
    root = Path(root).resolve()
    meta_path = root / "metadata.csv"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found; point --root at the REFAVS folder (metadata.csv, media/, gt_mask/)")
    header, rows = read_csv_rows(meta_path)
    require_columns(meta_path, header, COLUMNS)
    sink = FindingSink(DATASET, strict)
    result = ReadResult(DATASET, str(root))

    by_folder: dict[str, list[tuple[int, dict[str, str]]]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        folder = media_folder(row["vid"], row["uid"])
        if row["split"] in SKIPPED_SPLITS:
            result.rows_skipped += 1
            sink.warning(make_key(DATASET, folder), f"{meta_path.name}:{line}", "skipped_row",
                         f"split {row['split']!r} is not part of the benchmark", expression_uid=row["uid"])
            continue
        result.rows_read += 1
        by_folder[folder].append((line, row))

    seen_uids: set[str] = set()
    for folder in sorted(by_folder):
        key = make_key(DATASET, folder)
        clip = Clip(key=key, dataset=DATASET, subset=SUBSET, split="", uid=folder, root=str(root),
                    frame_paths=[], mask_paths=[None] * FRAMES_PER_CLIP, audio_path=None)
        result.clips.append(clip)
        for line, row in by_folder[folder]:
            expression = _read_expression(clip, line, row, meta_path.name, seen_uids, sink)
            if expression is not None:
                clip.expressions.append(expression)
        if problem := path_problem(root, root / "media" / folder, folder, follow_symlinks):
            sink.error(key, f"{meta_path.name}:{by_folder[folder][0][0]}", "unsafe_path", problem)
        else:
            _fill_media(clip, sink)
        bad = {f.expression_uid for f in sink.findings if f.clip_key == key and f.severity == "error"}
        splits = sorted({e.split for e in clip.expressions if e.uid not in bad} or {e.split for e in clip.expressions})
        clip.split = "+".join(splits)
        if len(splits) > 1:
            sink.warning(key, f"media/{folder}", "mixed_split",
                         f"expressions of this folder belong to splits {splits}; evaluate per expression split")
        clip.category = ",".join(sorted({e.category for e in clip.expressions if e.category}))
        clip.extra = {"vid": by_folder[folder][0][1]["vid"], "null_folder": folder.startswith("null_")}

    result.findings = sink.findings
    return result


def _read_expression(clip: Clip, line: int, row: dict[str, str], csv_name: str, seen: set[str],
                     sink: FindingSink) -> Expression | None:
    uid, where = row["uid"], f"{csv_name}:{line}"
    if not uid:
        sink.error(clip.key, where, "malformed_row", "empty uid", expression_uid=f"line{line}")
        return Expression(uid=f"line{line}", text=row["exp"], target_id=-1, is_null=False, split=row["split"])
    expression = Expression(uid=uid, text=row["exp"], target_id=-1, is_null=uid.startswith("null_"),
                            split=row["split"], category=expression_category(row["vid"], uid))
    if uid in seen:
        sink.error(clip.key, where, "duplicate_uid", f"expression uid {uid!r} already appeared", expression_uid=uid)
        expression.uid = f"{uid}~dup{line}"
        return expression
    seen.add(uid)
    if row["split"] not in SPLITS:
        sink.error(clip.key, where, "unknown_split", f"split {row['split']!r} is not one of {list(SPLITS)}",
                   expression_uid=uid)
        return expression
    try:
        expression.target_id = int(row["fid"])
    except ValueError:
        sink.error(clip.key, where, "malformed_row", f"fid {row['fid']!r} is not an integer", expression_uid=uid)
        return expression

    root = Path(clip.root)
    mask_dir = root / "gt_mask" / clip.uid / f"fid_{expression.target_id}"
    rel = mask_dir.relative_to(root)
    masks = {frame_number(p.name): p for p in numbered_files(mask_dir, (".png",))}
    expression.mask_paths = [str(masks[t].relative_to(root)) if t in masks else None for t in range(FRAMES_PER_CLIP)]
    missing = [t for t in range(FRAMES_PER_CLIP) if t not in masks]
    if missing:
        # Null expressions never read their ground truth (it is empty by definition); missing files
        # there are a known release gap (Ref-AVS issue #4), so they are noted, not fatal.
        severity = "warning" if expression.is_null else "error"
        what = "mask folder is missing" if not mask_dir.is_dir() else f"masks of frames {missing} are missing"
        kind = "missing_folder" if not mask_dir.is_dir() else "missing_file"
        note = "; null expression, ground truth taken as empty" if expression.is_null else ""
        sink.add(clip.key, rel, kind, severity, what + note, expression_uid=uid)
    return expression


def _fill_media(clip: Clip, sink: FindingSink) -> None:
    root = Path(clip.root)
    folder = root / "media" / clip.uid
    rel = folder.relative_to(root)
    if not folder.is_dir():
        sink.error(clip.key, rel, "missing_folder", "media folder named by metadata.csv does not exist")
        return
    frames = numbered_files(folder / "frames", IMAGE_SUFFIXES)
    clip.frame_paths = [str(p.relative_to(root)) for p in frames]
    check_frame_numbers(frames, 0, FRAMES_PER_CLIP, clip.key, rel / "frames", sink)
    audio = folder / "audio.wav"
    if audio.is_file():
        clip.audio_path = str(audio.relative_to(root))
    else:
        sink.error(clip.key, rel / "audio.wav", "missing_file", "audio.wav is missing")
    report_extra_files(clip.key, root, folder, {*clip.frame_paths, *([clip.audio_path] if clip.audio_path else [])},
                       sink, ("frames",))
