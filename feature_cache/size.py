"""`auralsam2 cache size`: bytes per frame and per split of a cache, and predictions before building.

A prediction needs only the SAM2 config (to know the compact layout: which levels are stored as the
narrower Hiera stage output and which as the FPN level), the input size S, the dtype, the frame
counts and the number of views. Frame counts of the real datasets come from
`shared/reference/datasets_metrics.md` §1 (v1s and v1m per split; v2 and Ref-AVS only as totals,
so their augmented views are predicted as if every frame were a training frame: an upper bound).
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from feature_cache.build import CLIPS, INDEX, read_cache_json
from feature_cache.schema import CacheError

STORAGE_BYTES = 2  # bf16 and fp16 alike
LOG_MEL_BYTES_PER_FRAME = 2 * 96 * 64 * 4  # one stereo float32 example per frame
# Per-record overhead besides the tensors (IPC message, padding, key columns, ground-truth PNG at S x S):
# an estimate for predictions only; `cache_size` reports the measured value of a built cache.
RECORD_OVERHEAD_ESTIMATE = 4096

# Frames per split (AVSS release / AVSBench; Ref-AVS media folders x 10). "all": no split breakdown known.
KNOWN_DATASETS: dict[str, dict[str, int]] = {
    "v1s": {"train": 3452 * 5, "val": 740 * 5, "test": 740 * 5},
    "v1m": {"train": 296 * 5, "val": 64 * 5, "test": 64 * 5},
    "v2": {"all": 60000},
    "avss": {"all": 24660 + 2120 + 60000},
    "refavs": {"all": (3574 + 427) * 10},
}
KNOWN_DATASETS["s4"] = KNOWN_DATASETS["v1s"]
KNOWN_DATASETS["ms3"] = KNOWN_DATASETS["v1m"]


def layout_of(sam2_config: str) -> tuple[list[list[Any]], int, int]:
    """(compact layout [[form, channels, stride], ...], FPN channels C, default input size) of a config.

    Builds only the image encoder, with random weights (a few seconds for Hiera-L on CPU).
    """
    from hydra.utils import instantiate

    from auralsam2.backbone import compact_layout
    from auralsam2.backbone.build import load_model_config

    _, config = load_model_config(sam2_config)
    encoder = instantiate(config.image_encoder, _recursive_=True)
    stub = types.SimpleNamespace(image_encoder=encoder, image_size=int(config.image_size))
    layout = [[lv.form, lv.channels, lv.stride] for lv in compact_layout(stub)]
    return layout, int(encoder.neck.d_model), int(config.image_size)


def compact_bytes(layout: list[list[Any]], image_size: int) -> int:
    """Bytes of one frame's compact pyramid at input size S in a 16-bit dtype."""
    return sum(channels * (image_size // stride) ** 2 * STORAGE_BYTES for _, channels, stride in layout)


def naive_bytes(layout: list[list[Any]], channels: int, image_size: int) -> int:
    """Bytes of the same frame's raw FPN pyramid (all levels at C channels) in fp16."""
    return sum(channels * (image_size // stride) ** 2 * STORAGE_BYTES for _, _, stride in layout)


@dataclass
class SizePrediction:
    sam2_config: str
    image_size: int
    dtype: str
    views: int
    layout: list[list[Any]]
    compact_bytes_per_frame: int
    naive_bytes_per_frame: int
    frames: dict[str, int]
    records: dict[str, int] = field(default_factory=dict)
    bytes_per_split: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_per_split.values())

    def lines(self) -> list[str]:
        ratio = self.compact_bytes_per_frame / self.naive_bytes_per_frame
        out = [
            f"predicted cache size: {self.sam2_config} at {self.image_size}px, {self.dtype}, {self.views} view(s)",
            f"  compact layout: {', '.join(f'{f}({c} ch, /{s})' for f, c, s in self.layout)}",
            f"  per frame: {_fmt(self.compact_bytes_per_frame)} compact vs {_fmt(self.naive_bytes_per_frame)} raw "
            f"fp16 pyramid ({ratio:.3f}x), + ~{_fmt(RECORD_OVERHEAD_ESTIMATE)} record overhead (estimate) "
            f"and {_fmt(LOG_MEL_BYTES_PER_FRAME)} log-mel",
        ]
        for split in sorted(self.frames):
            out.append(f"  {split}: {self.frames[split]} frames x views = {self.records[split]} records -> "
                       f"{_fmt(self.bytes_per_split[split])}")
        out.append(f"  total: {_fmt(self.total_bytes)}")
        if self.note:
            out.append(f"  note: {self.note}")
        return out


def predict_size(sam2_config: str, *, image_size: int | None = None, dtype: str = "bf16",
                 frames: int | dict[str, int] | None = None, dataset: str | None = None, views: int = 1,
                 augment_splits: tuple[str, ...] = ("train",)) -> SizePrediction:
    """Predict a cache's size before building it, from frame counts (`frames`) or a known `dataset`."""
    layout, channels, default_size = layout_of(sam2_config)
    size = image_size or default_size
    note = ""
    if dataset is not None:
        if dataset not in KNOWN_DATASETS:
            raise ValueError(f"unknown dataset {dataset!r} for a size prediction; known: {sorted(KNOWN_DATASETS)} "
                             "(or give --frames N)")
        counts = dict(KNOWN_DATASETS[dataset])
    elif isinstance(frames, int):
        counts = {"all": frames}
    elif frames:
        counts = dict(frames)
    else:
        raise ValueError("give the number of frames (--frames N) or a known dataset (--dataset v1s|v1m|v2|avss|refavs)")
    if "all" in counts and views > 1:
        note = "no split breakdown known: every frame counted with all views (upper bound)"
    records, per_split = {}, {}
    for split, n in counts.items():
        k = views if (split == "all" or split in augment_splits) else 1
        records[split] = n * k
        per_split[split] = n * k * (compact_bytes(layout, size) + RECORD_OVERHEAD_ESTIMATE) + n * LOG_MEL_BYTES_PER_FRAME
    return SizePrediction(sam2_config, size, dtype, views, layout, compact_bytes(layout, size),
                          naive_bytes(layout, channels, size), counts, records, per_split, note)


@dataclass
class CacheSize:
    root: str
    sam2_config: str
    image_size: int
    dtype: str
    layout: list[list[Any]]
    compact_bytes_per_frame: int
    records: int
    features_bytes: int
    audio_bytes: int
    text_bytes: int
    per_split: dict[str, dict[str, int]]

    @property
    def bytes_per_record(self) -> float:
        return self.features_bytes / self.records if self.records else 0.0

    @property
    def total_bytes(self) -> int:
        return self.features_bytes + self.audio_bytes + self.text_bytes

    def lines(self) -> list[str]:
        out = [
            f"cache size {self.root}: {self.sam2_config} at {self.image_size}px, {self.dtype}",
            f"  per (frame, view) record: {_fmt(self.bytes_per_record)} on disk "
            f"({_fmt(self.compact_bytes_per_frame)} of it the compact pyramid)",
        ]
        for split, row in sorted(self.per_split.items()):
            out.append(f"  {split}: {row['records']} records, features {_fmt(row['features'])}, "
                       f"audio {_fmt(row['audio'])}")
        out.append(f"  total: {_fmt(self.total_bytes)} (features {_fmt(self.features_bytes)}, audio "
                   f"{_fmt(self.audio_bytes)}, text {_fmt(self.text_bytes)})")
        return out


def cache_size(root: str | os.PathLike) -> CacheSize:
    """Measured sizes of a built cache: bytes per record and totals per split."""
    root = Path(root).expanduser().resolve()
    info = read_cache_json(root)
    if info is None:
        raise CacheError(f"{root}: no cache.json; not a feature cache")
    fp = info["fingerprint"]
    index = pq.read_table(root / INDEX, columns=["file", "split"]).to_pylist()
    clips = pq.read_table(root / CLIPS, columns=["split", "audio_file"]).to_pylist()
    per_split: dict[str, dict[str, int]] = {}
    file_split: dict[str, str] = {}
    for row in index:
        entry = per_split.setdefault(row["split"], {"records": 0, "features": 0, "audio": 0})
        entry["records"] += 1
        file_split.setdefault(row["file"], row["split"])
    for rel, split in file_split.items():
        per_split[split]["features"] += _size(root / rel)
    for rel, split in {r["audio_file"]: r["split"] for r in clips}.items():
        per_split.setdefault(split, {"records": 0, "features": 0, "audio": 0})["audio"] += _size(root / rel)
    text = info.get("text")
    return CacheSize(
        str(root), fp["sam2_config"], fp["image_size"], fp["dtype"], fp["storage"]["layout"],
        compact_bytes(fp["storage"]["layout"], fp["image_size"]), len(index),
        sum(v["features"] for v in per_split.values()), sum(v["audio"] for v in per_split.values()),
        _size(root / text["file"]) if text else 0, per_split,
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _fmt(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
