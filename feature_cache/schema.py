"""What a feature cache is: its settings, its fingerprint, its Arrow columns and its file metadata.

Layout of a cache folder CACHE_DIR (one per (ingest folder, model settings)):

    cache.json                 settings, fingerprint, status ("building" -> "complete"), counts
    features/<shard>.arrow     one Arrow IPC file per ingest shard; one record batch per (frame, view)
    audio/<shard>.arrow        log-mel examples, one record batch per clip (rows = examples)
    text/<dataset>.arrow       Ref-AVS: frozen text-encoder embeddings, keyed by expression uid
    index.parquet              (clip, frame, view) -> (file, batch), split, labelled, checksum
    clips.parquet              one row per clip: its Clip record (JSON), views, audio location
    manifest.parquet           the ingest manifest the cache was built from (snapshot)

Every Arrow file carries in its schema metadata the fingerprint (everything that determines the
stored tensors), its creation time, its row count and one CRC-32 per record batch, so any file can
be checked on its own. Arrow has no bfloat16: bf16 tensors are stored as their raw 16-bit words in a
`FixedShapeTensor(uint16)` column and viewed back as `torch.bfloat16` without a copy.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict, Field

FORMAT_VERSION = 2  # 2: checksums over 4 MiB pieces (batch_checksum)

# Schema-metadata keys of every cache Arrow file.
META_FORMAT = b"auralsam2.cache.format"
META_KIND = b"auralsam2.cache.kind"  # "features" | "audio" | "text"
META_FINGERPRINT = b"auralsam2.cache.fingerprint"
META_CREATED = b"auralsam2.cache.created"
META_ROWS = b"auralsam2.cache.rows"  # record batches in the file
META_SOURCE = b"auralsam2.cache.source"  # JSON: what the file was built from (shard name + sha256, ...)
META_CHECKSUMS = b"auralsam2.cache.checksums"  # JSON list, one "crc32:xxxxxxxx" per record batch
# sha256 of the schema (types, extension types, field metadata) and of every other metadata entry: the
# batch checksums cover the bytes, this covers how they are read (a flipped type byte in the footer
# would read the same bytes as another dtype)
META_HEADER = b"auralsam2.cache.header_sha256"

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Arrow storage type of each 16-bit dtype: bf16 has no Arrow/numpy type, so its bits go in uint16.
ARROW_STORAGE: dict[str, pa.DataType] = {"bf16": pa.uint16(), "fp16": pa.float16()}

# The released training augmentation (official_auralsam2.md §7.3), applied per clip.
VIEW_RECIPE: dict[str, Any] = {
    "name": "auralsam2-released-train",
    "hflip_p": 0.5,
    "degrees": 25.0,
    "shear_x": 20.0,
    "grayscale_p": 0.05,
    "image_fill": [123, 116, 103],
    "image_interpolation": "bilinear",
    "mask_interpolation": "nearest",
    "mask_fill": 0,
    "resize": "bicubic image / nearest mask to S x S after the geometric transform",
}
PREPROCESS = "released test transform: RGB, bicubic resize to S x S, ImageNet mean/std; masks nearest"
LOG_MEL = "vggish log-mel (auralsam2.audio.waveform_to_examples), 2 channels, one 0.96 s example per frame"
UNKNOWN_CLASS = 255  # AVSS label maps: foreground pixel whose palette colour is not one of the 71 classes


class CacheError(RuntimeError):
    """A cache folder or file is unusable (missing, unreadable, or not a cache)."""


class StaleCacheError(CacheError):
    """A cache was built with other settings than the ones requested (fingerprint mismatch)."""


class CorruptCacheError(CacheError):
    """A record batch does not match its recorded checksum, or a file does not match its metadata."""


class CacheSettings(BaseModel):
    """How to build (or which cache to expect): the SAM2 model, input size, storage dtype, views.

    Only fields that change the stored values enter the fingerprint; `batch_size`, `threads`,
    `device`, `compression` change speed or file encoding, not values (see `make_fingerprint`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    sam2_config: str = Field(..., description="SAM2 config name, alias, 'tiny' (tests) or YAML path.")
    checkpoint: str | None = Field(None, description="Official SAM2 .pt file; None = random weights "
                                                     "seeded by `seed` (tests and benchmarks only).")
    image_size: int | None = Field(None, description="Model input size S (px); None = the config's.")
    dtype: Literal["bf16", "fp16"] = Field("bf16", description="Storage dtype of the pyramid levels.")
    views: int = Field(1, ge=1, description="Views per clip of an augmented split: view 0 unaugmented "
                                            "+ views-1 seeded clip-consistent augmentations.")
    augment_splits: tuple[str, ...] = Field(("train",), description="Splits that get the augmented "
                                                                   "views; other splits store view 0.")
    seed: int = Field(0, description="Seed of the view augmentations (and of random SAM2 weights).")
    text_encoder: str | None = Field(None, description="Text encoder dir / HF id for Ref-AVS "
                                                       "expressions ('tiny' = test-only); None = none.")
    batch_size: int = Field(8, ge=1, description="Frames per encoder forward (whole clips are grouped "
                                                 "until they reach it).")
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1'.")
    threads: int = Field(1, ge=1, description="torch CPU threads per shard task (fixed so that results "
                                              "do not depend on the runner; see flows/cache.py).")
    compression: Literal["none", "lz4", "zstd"] = Field("none", description="Arrow IPC buffer codec; "
                                                        "'none' keeps reads zero-copy.")

    def views_for(self, split: str) -> int:
        """Number of views stored for a clip of `split`."""
        return self.views if split in self.augment_splits else 1


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """Short stable id of a fingerprint (sha256 of its canonical JSON, 16 hex digits)."""
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()[:16]


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}; lists stay leaves."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping):
            out.update(flatten(item, f"{name}."))
        else:
            out[name] = item
    return out


def fingerprint_differences(cached: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Human-readable differences "field: cached X, requested Y" for every field `requested` names.

    `requested` may be a full fingerprint or a partial one (nested or with dotted keys); fields it
    does not name are not compared.
    """
    have = flatten(cached)
    want = flatten({k: v for k, v in requested.items()})
    diffs = []
    for key in sorted(want):
        expected = want[key]
        if key in have:
            if _normalise(have[key]) != _normalise(expected):
                diffs.append(f"{key}: cached {have[key]!r}, requested {expected!r}")
            continue
        nested = {k[len(key) + 1:]: v for k, v in have.items() if k.startswith(f"{key}.")}
        if not nested or not isinstance(expected, Mapping):
            diffs.append(f"{key}: cached {have.get(key, '<absent>')!r}, requested {expected!r}")
    return diffs


def _normalise(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def stale_message(where: str, diffs: list[str], what_to_do: str) -> str:
    return (f"{where}: the cache fingerprint does not match the requested settings ("
            + "; ".join(diffs) + f"). {what_to_do}")


# ------------------------------------------------------------------ tensors <-> Arrow columns


def tensor_type(dtype: str, shape: tuple[int, ...]) -> pa.DataType:
    """FixedShapeTensor type of one stored tensor of `shape` in storage dtype `dtype` (bf16/fp16)."""
    return pa.fixed_shape_tensor(ARROW_STORAGE[dtype], list(shape))


def tensor_column(x: torch.Tensor, dtype: str) -> pa.ExtensionArray:
    """(n, shape...) tensor -> an n-row FixedShapeTensorArray of its 16-bit words in `dtype`.

    `x` is cast to the storage dtype (callers give it already in that dtype, so nothing is
    rounded twice); bf16 words are reinterpreted as uint16, never converted.
    """
    x = x.detach().to("cpu", DTYPES[dtype]).contiguous()
    array = x.view(torch.int16).numpy().view(np.uint16) if dtype == "bf16" else x.numpy()
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))


def column_tensor(column: pa.Array, dtype: str) -> torch.Tensor:
    """A FixedShapeTensor column (n rows) -> a (n, shape...) torch tensor of `dtype`, zero-copy.

    The result shares memory with the (memory-mapped, read-only) Arrow buffer: never write into it;
    `.to(device)` or `.clone()` it. bf16 is a view of the stored uint16 words.
    """
    array = column.to_numpy_ndarray()  # read-only view of the Arrow buffer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        if dtype == "bf16":
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)


# ------------------------------------------------------------------ Arrow schemas


def feature_schema(dtype: str, level_shapes: list[tuple[int, int, int]]) -> pa.Schema:
    """Columns of a features file: one row (= one record batch) per (clip, frame, view).

    `level0..2`: the compact pyramid levels (C_k, H_k, W_k) in the storage dtype.
    `labelled`: the frame has ground truth (from the Clip record).
    `gt_label`: PNG (S x S, mode L) of the frame's label map in this view, NULL when the frame has no
      ground truth (an all-zero PNG is an empty mask, not a missing one). AVSS: class ids (0 =
      background, 255 = foreground of an unknown colour); other binary datasets: 0/1.
    `gt_object_ids` / `gt_objects`: Ref-AVS, one 0/1 PNG per referred object id (fid) that has a mask
      on this frame, in this view.
    `view_params`: JSON of the view's augmentation parameters.
    """
    fields = [
        pa.field("clip", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),
    ]
    fields += [pa.field(f"level{k}", tensor_type(dtype, shape), nullable=False)
               for k, shape in enumerate(level_shapes)]
    fields += [
        pa.field("labelled", pa.bool_(), nullable=False),
        pa.field("gt_label", pa.binary()),
        pa.field("gt_object_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("gt_objects", pa.list_(pa.binary()), nullable=False),
        pa.field("view_params", pa.string(), nullable=False),
    ]
    return pa.schema(fields)


def audio_schema(channels: int = 2) -> pa.Schema:
    """Columns of an audio file: one record batch per clip, one row per 0.96 s log-mel example."""
    return pa.schema([
        pa.field("clip", pa.string(), nullable=False),
        pa.field("example", pa.int32(), nullable=False),
        pa.field("padded", pa.bool_(), nullable=False),  # repeats the last real example (short audio)
        pa.field("log_mel", pa.fixed_shape_tensor(pa.float32(), [channels, 96, 64]), nullable=False),
    ])


def text_schema(dtype: str, max_length: int, hidden: int) -> pa.Schema:
    """Columns of a text file: one row per expression (batches of up to 256 rows)."""
    return pa.schema([
        pa.field("uid", pa.string(), nullable=False),
        pa.field("clip", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("hidden", tensor_type(dtype, (max_length, hidden)), nullable=False),
        pa.field("attention_mask", pa.fixed_shape_tensor(pa.uint8(), [max_length]), nullable=False),
    ])


def file_metadata(kind: str, fingerprint: Mapping[str, Any], created: str, rows: int,
                  source: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Schema metadata of a cache file (the checksum entry is filled in by the writer)."""
    return {
        META_FORMAT: str(FORMAT_VERSION).encode(),
        META_KIND: kind.encode(),
        META_FINGERPRINT: canonical_json(fingerprint).encode(),
        META_CREATED: created.encode(),
        META_ROWS: str(rows).encode(),
        META_SOURCE: canonical_json(source).encode(),
    }
