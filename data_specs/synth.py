"""The synthetic audio-visual world, written in the real dataset layouts.

`generate_world(out, config)` writes
- `out/AVSBench`: the AVSBench-semantic release layout (reference datasets_metrics.md §1.3):
  `metadata.csv` (vid, uid, s_min, s_sec, a_obj, split, label), `label2idx.json`,
  `<label>/<uid>/frames/<t>.jpg`, `labels_rgb/<t>.png` (palette colour of each sounding object's
  class), `labels_semantic/<t>.png` (single-channel 0-based class ids, background 0) and
  `audio.wav` (stereo, 16 kHz, int16, exactly 5 s or 10 s). v1s train clips have label files for
  frame 0 only; every other clip for all frames.
- `out/REFAVS`: the Ref-AVS layout (§1.4): `metadata.csv` (vid, uid, split, fid, exp),
  `media/<folder>/frames/<t>.jpg` (t = 0..9) + `audio.wav`, and
  `gt_mask/<folder>/fid_<fid>/0000<t>.png`: single-channel masks of the referred object, 0 or 255
  (read them as `> 0`). The folder is the vid, or `uid.rsplit('_', 2)[0]` (`null_c-<vid>`,
  `null_m-<vid>`) for null rows, whose masks are all 0. A few `TODO` rows (own video) must be skipped.
- `out/world.json`: the generator's marker and the per-clip ground truth (objects, positions,
  who sounds when, expressions) for diagnostics. Readers never need it.

`generate_avsbench_v1(out, config)` writes the release-1 trees `out/Single-source` (S4) and
`out/Multi-sources` (MS3), 224x224 PNG frames, 0/255 masks and placeholder `.pkl` files that are
not pickles (readers must never open them), plus `out/world_release1.json`.
CSV headers written: S4 `name,start,category,split` (start = start second in the source video, <= 5),
MS3 `name,split`.

Trees are built under `out/.<name>.partial` and renamed into place, replacing an earlier synthetic
tree (one with the marker file) atomically; a foreign folder of the same name is never touched.
One generator at a time writes into `out`: it holds `out/.lock`, and a second one stops at once.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from auralsam2.utils.files import atomic_write_json, read_json
from data_specs.palette import label2idx, labels_to_colours
from data_specs.synth_audio import mix_clip, wav_bytes
from data_specs.synth_plans import plan_avss, plan_refavs, plan_release1
from data_specs.synth_render import render_clip
from data_specs.synth_world import ClipPlan, SynthConfig

__all__ = ["SynthConfig", "WorldSummary", "generate_world", "generate_avsbench_v1", "PKL_PLACEHOLDER"]

WORLD_MARKER = "world.json"
RELEASE1_MARKER = "world_release1.json"
# Starts with 0xff, which is no pickle opcode: unpickling fails at byte 0 and executes nothing.
PKL_PLACEHOLDER = (b"\xff AURALSAM2 SYNTHETIC PLACEHOLDER: not a pickle. Never unpickle dataset files; "
                   b"recompute the log-mel from the WAV.\n")


@dataclass
class WorldSummary:
    """What a generation wrote: folder counts per dataset/subset and split, Ref-AVS rows, files."""

    root: Path
    trees: dict[str, Path]  # tree name ("AVSBench", "REFAVS", "Single-source", ...) -> path
    clips: dict[str, dict[str, int]] = field(default_factory=dict)  # "avss/v1s" -> {"train": n, ...}
    expressions: dict[str, int] = field(default_factory=dict)  # Ref-AVS metadata rows per split
    files: int = 0
    bytes: int = 0

    @property
    def avsbench(self) -> Path:
        return self.trees["AVSBench"]

    @property
    def refavs(self) -> Path:
        return self.trees["REFAVS"]

    def lines(self) -> list[str]:
        """A readable summary for the terminal."""
        out = [f"{name}: {path}" for name, path in self.trees.items()]
        for key, splits in self.clips.items():
            out.append(f"  {key:<14} " + "  ".join(f"{s}={n}" for s, n in splits.items()))
        if self.expressions:
            out.append("  refavs rows     " + "  ".join(f"{s}={n}" for s, n in self.expressions.items()))
        out.append(f"  {self.files} files, {self.bytes / 1e6:.1f} MB")
        return out

    def to_dict(self) -> dict:
        return {"root": str(self.root), "trees": {k: str(v) for k, v in self.trees.items()}, "clips": self.clips,
                "expressions": self.expressions, "files": self.files, "bytes": self.bytes}


class _Tree:
    """A folder being written: counts files and bytes."""

    def __init__(self, root: Path, summary: WorldSummary) -> None:
        self.root, self.summary = root, summary

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.summary.files += 1
        self.summary.bytes += len(data)

    def put_csv(self, rel: str, header: list[str], rows: list[list]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        self.put(rel, buf.getvalue().encode())


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def semantic_labels(plan: ClipPlan, owners: np.ndarray, t: int) -> np.ndarray:
    """(H, W) uint8 0-based AVSS class ids of the objects sounding during frame t (0 elsewhere)."""
    labels = np.zeros(owners.shape, dtype=np.uint8)
    for i in plan.sounding_on_screen(t):
        labels[owners == i] = plan.objects[i].category.class_id
    return labels


def _binary(mask: np.ndarray) -> bytes:
    return _png(np.where(mask, 255, 0).astype(np.uint8))


@contextlib.contextmanager
def _writing(out: Path, names: tuple[str, ...], marker: str) -> Iterator[dict[str, Path]]:
    """Fresh `.partial` folders for `out/<name>`, one generator at a time (the lock ingest, cache and
    training take on their folders): a second one stops at once, naming the folder, instead of both
    replacing each other's trees. A folder that is not ours is refused before anything is written."""
    from auralsam2.utils.locks import folder_lock

    _check_ours(out, names, marker)
    with folder_lock(out, "synthetic world generator"):
        _check_ours(out, names, marker)  # (what another generator may have published meanwhile)
        yield _start(out, names)


def _check_ours(out: Path, names: tuple[str, ...], marker: str) -> None:
    """`out/<name>` and `out/<marker>` must be ours to replace. The generator writes beside the
    user's other files in `out` and never touches them."""
    from auralsam2.paths import data_home

    home = data_home()
    if out.resolve() == home or out.resolve() in home.parents:
        raise FileExistsError(f"{out} holds the data folder {home}; give the synthetic world a folder of its own "
                              "(nothing was changed)")
    ours = _is_world_marker(out / marker)
    if (out / marker).exists() and not ours:
        raise FileExistsError(f"{out / marker} was not written by the synthetic world generator; choose another "
                              "--out folder (nothing was changed)")
    for name in names:
        if (out / name).exists() and not ours:
            raise FileExistsError(f"{out / name} exists but {out / marker} does not, so it was not written by the "
                                  "synthetic world generator; choose an empty --out folder or remove it yourself")


def _start(out: Path, names: tuple[str, ...]) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    partial = {}
    for name in names:
        tmp = out / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        partial[name] = tmp
    return partial


def _is_world_marker(path: Path) -> bool:
    try:
        record = read_json(path, "the synthetic world's marker", "")
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("generator") == "data_specs.synth"


def _publish(out: Path, partial: dict[str, Path], marker: str, record: dict) -> None:
    """Swap the finished `.partial` trees into place, then write the marker."""
    for name, tmp in partial.items():
        final, old = out / name, out / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    atomic_write_json(out / marker, record)


def _count(summary: WorldSummary, key: str, split: str) -> None:
    summary.clips.setdefault(key, {})
    summary.clips[key][split] = summary.clips[key].get(split, 0) + 1


def generate_world(out: Path, config: SynthConfig | None = None, progress: bool = True) -> WorldSummary:
    """Write `out/AVSBench` (AVSS layout), `out/REFAVS` (Ref-AVS layout) and `out/world.json`."""
    cfg = config or SynthConfig()
    out = Path(out)
    avss_plans = plan_avss(cfg)
    refavs_plans = plan_refavs(cfg)
    uids = [p.uid for plans in avss_plans.values() for p in plans] + [p.uid for p in refavs_plans]
    if len(set(uids)) != len(uids):
        raise RuntimeError(f"synthetic uid collision for seed {cfg.seed}; use another --seed")
    with _writing(out, ("AVSBench", "REFAVS"), WORLD_MARKER) as partial:
        summary = WorldSummary(out, {"AVSBench": out / "AVSBench", "REFAVS": out / "REFAVS"})
        total = sum(len(p) for p in avss_plans.values()) + len(refavs_plans)
        with tqdm(total=total, desc="synthetic world", unit="clip", disable=not progress) as bar:
            _write_avss(_Tree(partial["AVSBench"], summary), avss_plans, cfg, summary, bar)
            _write_refavs(_Tree(partial["REFAVS"], summary), refavs_plans, cfg, summary, bar)
        truth = [p.truth() for plans in avss_plans.values() for p in plans] + [p.truth() for p in refavs_plans]
        _publish(out, partial, WORLD_MARKER, {"generator": "data_specs.synth", "config": cfg.model_dump(mode="json"),
                                              "summary": {"clips": summary.clips, "expressions": summary.expressions},
                                              "clips": truth})
    return summary


def _write_avss(tree: _Tree, plans: dict[str, list[ClipPlan]], cfg: SynthConfig, summary: WorldSummary,
                bar: tqdm) -> None:
    tree.put("label2idx.json", (json.dumps(label2idx(), indent=4) + "\n").encode())
    rows = []
    for subset, clips in plans.items():
        for plan in clips:
            frames, owners = render_clip(plan)
            base = f"{subset}/{plan.uid}"
            for t, frame in enumerate(frames):
                tree.put(f"{base}/frames/{t}.jpg", _jpeg(frame, cfg.jpeg_quality))
            labelled = [0] if subset == "v1s" and plan.split == "train" else range(plan.n_frames)
            for t in labelled:
                labels = semantic_labels(plan, owners[t], t)
                tree.put(f"{base}/labels_rgb/{t}.png", _png(labels_to_colours(labels)))
                tree.put(f"{base}/labels_semantic/{t}.png", _png(labels))
            tree.put(f"{base}/audio.wav", wav_bytes(mix_clip(plan, cfg)))
            rows.append([plan.vid, plan.uid, plan.start_s // 60, plan.start_s % 60, plan.a_obj(), plan.split, subset])
            _count(summary, f"avss/{subset}", plan.split)
            bar.update()
    tree.put_csv("metadata.csv", ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"], rows)


def _write_refavs(tree: _Tree, plans: list[ClipPlan], cfg: SynthConfig, summary: WorldSummary, bar: tqdm) -> None:
    reused = {p.frames_from for p in plans if p.frames_from}
    frame_cache: dict[str, list[bytes]] = {}
    rows = []
    for plan in plans:
        if plan.frames_from:
            jpegs, owners = frame_cache[plan.frames_from], None
        else:
            frames, owners = render_clip(plan)
            jpegs = [_jpeg(f, cfg.jpeg_quality) for f in frames]
            if plan.uid in reused:
                frame_cache[plan.uid] = jpegs
        for t, data in enumerate(jpegs):
            tree.put(f"media/{plan.uid}/frames/{t}.jpg", data)
        tree.put(f"media/{plan.uid}/audio.wav", wav_bytes(mix_clip(plan, cfg)))
        for fid in sorted({e.fid for e in plan.expressions}):
            for t in range(plan.n_frames):
                mask = owners[t] == fid if owners is not None else np.zeros((plan.height, plan.width), bool)
                tree.put(f"gt_mask/{plan.uid}/fid_{fid}/{t:05d}.png", _binary(mask))
        for e in plan.expressions:
            rows.append([plan.vid, e.uid, e.split, e.fid, e.text])
            summary.expressions[e.split] = summary.expressions.get(e.split, 0) + 1
        _count(summary, "refavs-null" if plan.frames_from else "refavs", plan.split)
        bar.update()
    tree.put_csv("metadata.csv", ["vid", "uid", "split", "fid", "exp"], rows)


def generate_avsbench_v1(out: Path, config: SynthConfig | None = None, progress: bool = True) -> WorldSummary:
    """Write the release-1 trees `out/Single-source` (S4) and `out/Multi-sources` (MS3)."""
    out = Path(out)
    with _writing(out, ("Single-source", "Multi-sources"), RELEASE1_MARKER) as partial:
        return _write_release1(out, partial, config or SynthConfig(), progress)


def _write_release1(out: Path, partial: dict[str, Path], cfg: SynthConfig, progress: bool) -> WorldSummary:
    plans = plan_release1(cfg)
    summary = WorldSummary(out, {"Single-source": out / "Single-source", "Multi-sources": out / "Multi-sources"})
    s4, ms3 = _Tree(partial["Single-source"], summary), _Tree(partial["Multi-sources"], summary)
    s4_rows, ms3_rows = [], []
    with tqdm(total=sum(len(p) for p in plans.values()), desc="release 1", unit="clip", disable=not progress) as bar:
        for plan in plans["s4"]:
            frames, owners = render_clip(plan)
            name, split = plan.uid, plan.split
            category = plan.objects[plan.sounding_on_screen(0)[0]].category.s4_class
            where = f"{split}/{category}"
            for k, frame in enumerate(frames, start=1):
                s4.put(f"s4_data/visual_frames/{where}/{name}/{name}_{k}.png", _png(frame))
                if split != "train" or k == 1:
                    s4.put(f"s4_data/gt_masks/{where}/{name}/{name}_{k}.png",
                           _binary(np.isin(owners[k - 1], plan.sounding_on_screen(k - 1))))
            s4.put(f"s4_data/audio_wav/{where}/{name}.wav", wav_bytes(mix_clip(plan, cfg)))
            s4.put(f"s4_data/audio_log_mel/{where}/{name}.pkl", PKL_PLACEHOLDER)
            s4_rows.append([name, plan.start_s, category, split])
            _count(summary, "avsbench-s4", split)
            bar.update()
        for plan in plans["ms3"]:
            frames, owners = render_clip(plan)
            name, split = plan.uid, plan.split
            for k, frame in enumerate(frames, start=1):
                ms3.put(f"ms3_data/visual_frames/{name}/{name}.mp4_{k}.png", _png(frame))
                ms3.put(f"ms3_data/gt_masks/{split}/{name}/{name}_{k}.png",
                        _binary(np.isin(owners[k - 1], plan.sounding_on_screen(k - 1))))
            ms3.put(f"ms3_data/audio_wav/{split}/{name}.wav", wav_bytes(mix_clip(plan, cfg)))
            ms3.put(f"ms3_data/audio_log_mel/{split}/{name}.pkl", PKL_PLACEHOLDER)
            ms3_rows.append([name, split])
            _count(summary, "avsbench-ms3", split)
            bar.update()
    s4.put_csv("s4_meta_data.csv", ["name", "start", "category", "split"], s4_rows)
    ms3.put_csv("ms3_meta_data.csv", ["name", "split"], ms3_rows)
    truth = [p.truth() for clips in plans.values() for p in clips]
    _publish(out, partial, RELEASE1_MARKER, {"generator": "data_specs.synth", "config": cfg.model_dump(mode="json"),
                                             "summary": {"clips": summary.clips}, "clips": truth})
    return summary
