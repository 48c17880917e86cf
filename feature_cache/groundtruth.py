"""Ground truth of a clip as the cache stores it: label maps and per-object masks, PNG-encoded.

Binarisation follows the releases: AVSS palette masks are foreground where any RGB channel is > 0;
release-1 and Ref-AVS masks are foreground where the value is > 0. AVSS label maps keep the class
ids (from `labels_semantic` when the shard has it, else decoded from the palette), so both binary
and semantic ground truth come out of one map: `label > 0` is exactly the released binary mask
(foreground pixels of a colour outside the palette get `UNKNOWN_CLASS`, background stays 0).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from data_specs.palette import colours_to_labels
from data_specs.shards import ClipSample
from data_specs.validate import open_image
from feature_cache.schema import UNKNOWN_CLASS

PALETTE_DATASETS = frozenset({"avss"})  # = data_specs.ingest.PALETTE_MASKS (RGB palette masks)


@dataclass
class ClipGroundTruth:
    """`labels[t]`: (H, W) uint8 label map of frame t (AVSS class ids, else 0/1), labelled frames only.
    `objects[fid][t]`: (H, W) uint8 0/1 mask of Ref-AVS object `fid` on frame t, where the release has one.
    """

    labels: dict[int, np.ndarray] = field(default_factory=dict)
    objects: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)


def _image(data: bytes) -> Image.Image:
    image = open_image(data)  # its size checked before it is decoded
    image.load()
    return image


def _binary(data: bytes) -> np.ndarray:
    array = np.asarray(_image(data))
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1)
    return (array > 0).astype(np.uint8)


def _palette_labels(rgb_png: bytes, semantic_png: bytes | None) -> np.ndarray:
    rgb = np.asarray(_image(rgb_png).convert("RGB"))
    foreground = rgb.max(axis=-1) > 0
    if semantic_png is not None:
        labels = np.asarray(_image(semantic_png))
        if labels.ndim == 3:
            labels = labels[..., 0]
        labels = np.clip(labels, 0, UNKNOWN_CLASS).astype(np.uint8)
    else:
        labels, _ = colours_to_labels(rgb)
    labels = np.where(labels == 0, UNKNOWN_CLASS, labels).astype(np.uint8)
    return np.where(foreground, labels, 0).astype(np.uint8)


def decode_ground_truth(sample: ClipSample, dataset: str) -> ClipGroundTruth:
    """Decode a shard sample's masks into label maps / object masks at the frames' original size."""
    truth = ClipGroundTruth()
    for t, data in sorted(sample.masks.items()):
        if dataset in PALETTE_DATASETS:
            truth.labels[t] = _palette_labels(data, sample.semantic.get(t))
        else:
            truth.labels[t] = _binary(data)
    for fid, frames in sorted(sample.object_masks.items()):
        truth.objects[fid] = {t: _binary(data) for t, data in sorted(frames.items())}
    return truth


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (mode L, lossless, deterministic)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes written by `encode_png` -> (H, W) uint8."""
    return np.asarray(_image(data), dtype=np.uint8)
