"""Reading a cache: random access to (clip, frame, view) pyramids, memory-mapped and zero-copy.

`CacheReader(root, expect=...)` opens a complete cache folder, refuses it when its fingerprint does
not match what the caller expects (naming every differing field), and serves:

* `.frame(clip, frame, view) -> Pyramid` (N = 1) on the reader's device;
* `.clip(key, view) -> ClipFeatures`: the pyramid of all N frames of the clip in that view, the
  view's ground truth (label maps / per-object masks, with flags separating "no ground truth" from
  "empty mask"), the log-mel examples and the expression embeddings; this is what the training
  dataset reads;
* `.compact(...)`: the stored compact levels themselves, as zero-copy CPU tensors.

Files are opened lazily with `pyarrow.memory_map`; a record batch is located through the index, so
nothing but that batch's pages is read. The stored 16-bit words become torch tensors without a copy
(bf16 as a view of the uint16 words); the compact form is expanded to the raw FPN pyramid with the
frozen 1x1 lateral convs of the SAM2 model (passed in, or rebuilt from the recorded settings and
checked against the fingerprint). Every record batch is checked against its CRC-32 the first time
this reader reads it (`verify="once"`, the default; "always" or "never" also possible).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from auralsam2.backbone import (
    CompactPyramid,
    Pyramid,
    compact_layout,
    expand_compact,
    resolve_sam2_config,
)
from data_specs.clip import Clip
from feature_cache.build import CACHE_JSON, CLIPS, INDEX, read_cache_json, table_problem
from feature_cache.encoder import encoder_sha256, expected_fields, load_model
from feature_cache.files import CacheFile, open_cache_file
from feature_cache.groundtruth import decode_png
from feature_cache.schema import (
    CacheError,
    CacheSettings,
    CorruptCacheError,
    StaleCacheError,
    column_tensor,
    fingerprint_differences,
    stale_message,
)
from feature_cache.views import ViewParams

Verify = Literal["once", "always", "never"]


@dataclass
class ExpressionFeatures:
    """A Ref-AVS expression of the clip and its cached text embedding (None without a text file).

    `hidden`: (L, H) float32 `last_hidden_state` (L = 25 as released), `attention_mask`: (L,) int64.
    """

    uid: str
    text: str
    target_id: int
    is_null: bool
    split: str
    hidden: Tensor | None = None
    attention_mask: Tensor | None = None


@dataclass
class ClipFeatures:
    """One view of one clip, ready for a training or evaluation step.

    `pyramid`: raw FPN levels (N, C, S/4, S/4), (N, C, S/8, S/8), (N, C, S/16, S/16) on the reader's
    device and dtype. `labelled` (N,) bool: frames with ground truth in the release (the supervised
    frames). `labels` (N, S, S) uint8: the view's label maps (AVSS class ids, 255 = foreground of an
    unknown colour; other datasets 0/1), zero where `has_label` is False; None for Ref-AVS.
    `object_masks[fid]` (N, S, S) bool and `object_present[fid]` (N,) bool: Ref-AVS per-object masks
    of this view and whether frame t has one. `log_mel` (N, 2, 96, 64) float32 or None.
    """

    key: str
    view: int
    view_params: ViewParams
    clip: Clip
    pyramid: Pyramid
    labelled: Tensor
    has_label: Tensor
    labels: Tensor | None
    object_masks: dict[int, Tensor] = field(default_factory=dict)
    object_present: dict[int, Tensor] = field(default_factory=dict)
    log_mel: Tensor | None = None
    expressions: list[ExpressionFeatures] = field(default_factory=list)

    @property
    def masks(self) -> Tensor | None:
        """(N, S, S) bool binary ground truth (released binarisation: label > 0), or None."""
        return None if self.labels is None else self.labels > 0


class CacheReader:
    """Random access to a complete feature cache (see the module docstring).

    `expect`: what the caller needs the cache to be: `CacheSettings`, or a (partial) fingerprint
    mapping (nested or dotted keys, e.g. {"sam2_config": ..., "image_size": 1024, "dtype": "bf16"});
    a mismatch raises `StaleCacheError` naming each differing field. `model`: the frozen SAM2 whose
    lateral convs expand the compact form (checked against the fingerprint's encoder hash); without
    it the reader builds one from the recorded config and checkpoint (`checkpoint=` overrides the
    recorded path). `device`/`dtype`: where and in which dtype pyramids come out.
    """

    def __init__(self, root: str | os.PathLike, *, expect: CacheSettings | Mapping[str, Any] | None = None,
                 model: nn.Module | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, verify: Verify = "once",
                 checkpoint: str | os.PathLike | None = None, max_open_files: int = 64) -> None:
        self.root = Path(root).expanduser().resolve()
        info = read_cache_json(self.root)
        if info is None:
            raise CacheError(f"{self.root}: no {CACHE_JSON}; this is not a feature cache (build one with "
                             "`auralsam2 cache --shards INGEST_DIR --out CACHE_DIR ...`)")
        if info.get("status") != "complete":
            raise CacheError(f"{self.root}: the cache build has not finished (status {info.get('status')!r}); "
                             "re-run `auralsam2 cache` with the same arguments to complete it")
        self.info = info
        self.fingerprint: dict[str, Any] = info["fingerprint"]
        self.settings = CacheSettings(**info["settings"])
        if expect is not None:
            self.check_expected(expect)
        self.dtype = dtype
        self.verify = verify
        self.storage_dtype: str = self.fingerprint["dtype"]
        self._checkpoint = checkpoint
        self._model = None
        if model is not None:
            self._adopt_model(model)
        self.device = torch.device(device) if device is not None else (
            self._model.device if self._model is not None else torch.device("cpu"))
        self._load_tables()
        self._files: OrderedDict[str, CacheFile] = OrderedDict()
        self._max_open = max_open_files
        self._pid = os.getpid()
        self._text: dict[str, tuple[CacheFile, int, int]] | None = None

    # ------------------------------------------------------------------ setup

    def check_expected(self, expect: CacheSettings | Mapping[str, Any]) -> None:
        """Raise `StaleCacheError` when the cache's fingerprint differs from `expect` in any named field."""
        if isinstance(expect, CacheSettings):
            wanted = expected_fields(expect)
        else:
            wanted = dict(expect)
            if isinstance(wanted.get("sam2_config"), str):  # accept aliases ("sam2_hiera_b+", "hiera_l")
                wanted["sam2_config"] = resolve_sam2_config(wanted["sam2_config"])[0]
        diffs = fingerprint_differences(self.fingerprint, wanted)
        if diffs:
            raise StaleCacheError(stale_message(
                f"feature cache {self.root}", diffs,
                "Rebuild it for these settings (`auralsam2 cache ... --rebuild`, or "
                "build_cache(..., rebuild=True)), or open a cache built with them."))

    def _adopt_model(self, model: nn.Module) -> None:
        if encoder_sha256(model) != self.fingerprint["image_encoder_sha256"]:
            raise StaleCacheError(
                f"feature cache {self.root}: the given SAM2 model's image encoder weights differ from the ones "
                f"the cache was built with (checkpoint {self.fingerprint['checkpoint']}); pass the SAM2 built "
                "from that checkpoint, or rebuild the cache for this model")
        layout = [[lv.form, lv.channels, lv.stride] for lv in compact_layout(model)]
        if layout != self.fingerprint["storage"]["layout"]:
            raise StaleCacheError(f"feature cache {self.root}: compact layout {self.fingerprint['storage']['layout']} "
                                  f"does not match the given model's {layout}")
        self._model = model

    @property
    def model(self) -> nn.Module:
        """The frozen SAM2 used for expansion (built from the recorded settings on first use)."""
        if self._model is None:
            settings = self.settings
            if self._checkpoint is not None:
                settings = settings.model_copy(update={"checkpoint": str(self._checkpoint)})
            if settings.checkpoint is not None and not Path(settings.checkpoint).is_file():
                raise CacheError(
                    f"feature cache {self.root}: the SAM2 checkpoint it was built with ({settings.checkpoint}) is "
                    "not there; pass CacheReader(..., checkpoint=PATH) or model=<the frozen SAM2>")
            diffs = fingerprint_differences(self.fingerprint, {"checkpoint": expected_fields(settings)["checkpoint"]})
            if diffs:
                raise StaleCacheError(stale_message(f"feature cache {self.root}", diffs,
                                                    "Give the checkpoint the cache was built with."))
            self._adopt_model(load_model(settings, self.device))
        return self._model

    def _load_tables(self) -> None:
        for name in (INDEX, CLIPS):
            if problem := table_problem(self.root, name, self.info):
                raise CorruptCacheError(problem)
        try:
            index = pq.read_table(self.root / INDEX).to_pydict()
            clips = pq.read_table(self.root / CLIPS).to_pylist()
        except (OSError, pa.ArrowException) as err:
            raise CacheError(f"{self.root}: index or clip table unreadable ({err}); run `auralsam2 cache verify` "
                             "and re-run `auralsam2 cache`") from err
        self._entries: dict[tuple[str, int, int], tuple[str, int]] = {
            (c, f, v): (file, b) for c, f, v, file, b in
            zip(index["clip"], index["frame"], index["view"], index["file"], index["batch"], strict=True)
        }
        self._clips: dict[str, dict[str, Any]] = {row["clip"]: row for row in clips}

    # ------------------------------------------------------------------ files

    def _file(self, rel: str) -> CacheFile:
        if os.getpid() != self._pid:  # forked (DataLoader worker): memory maps are not shared safely
            self._files.clear()
            self._text = None
            self._pid = os.getpid()
        opened = self._files.get(rel)
        if opened is None:
            opened = open_cache_file(self.root / rel)
            if opened.kind in ("features", "audio") and opened.fingerprint != self.fingerprint:
                diffs = fingerprint_differences(opened.fingerprint, self.fingerprint)
                raise StaleCacheError(stale_message(f"{opened.path}", diffs or ["fingerprint: differs"],
                                                    "The folder mixes caches: re-run `auralsam2 cache` on it."))
            self._files[rel] = opened
            while len(self._files) > self._max_open:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(rel)
        return opened

    def _batch(self, rel: str, i: int, verify: bool = True) -> pa.RecordBatch:
        opened = self._file(rel)
        if self.verify == "always":
            opened.verified.discard(i)
        return opened.batch(i, verify=verify and self.verify != "never")

    def _locate(self, clip: str, frame: int, view: int) -> tuple[str, int]:
        try:
            return self._entries[(clip, frame, view)]
        except KeyError:
            if clip not in self._clips:
                raise KeyError(f"feature cache {self.root}: no clip {clip!r}") from None
            row = self._clips[clip]
            raise KeyError(f"feature cache {self.root}: clip {clip!r} has frames 0..{row['n_frames'] - 1} and "
                           f"views 0..{row['views'] - 1}; (frame {frame}, view {view}) is not cached") from None

    # ------------------------------------------------------------------ catalogue

    def keys(self, split: str | None = None) -> list[str]:
        """Clip keys (of one split, if given), sorted."""
        return sorted(k for k, row in self._clips.items() if split is None or row["split"] == split)

    def records(self, split: str | None = None) -> list[tuple[str, int, int]]:
        """Every cached (clip, frame, view), in file order (of one split, if given)."""
        return [k for k in self._entries if split is None or self._clips[k[0]]["split"] == split]

    def views(self, key: str) -> int:
        """Number of views cached for clip `key`."""
        return int(self._clip_row(key)["views"])

    def clip_record(self, key: str) -> Clip:
        """The clip's full `Clip` record (paths, labelled frames, expressions) as ingested."""
        return Clip.from_json(json.loads(self._clip_row(key)["record"]))

    def clip_row(self, key: str) -> dict[str, Any]:
        """The clip's row of clips.parquet: dataset, subset, split, category, n_frames, labelled_frames,
        n_expressions, views, shard, features/audio file (a copy; cheap, no Clip parsing)."""
        return dict(self._clip_row(key))

    def _clip_row(self, key: str) -> dict[str, Any]:
        if key not in self._clips:
            raise KeyError(f"feature cache {self.root}: no clip {key!r}")
        return self._clips[key]

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ features

    def _compact_levels(self, batch: pa.RecordBatch) -> list[Tensor]:
        return [column_tensor(batch.column(f"level{k}"), self.storage_dtype)
                for k in range(len(self.fingerprint["storage"]["layout"]))]

    def _forms(self) -> tuple[str, ...]:
        return tuple(lv[0] for lv in self.fingerprint["storage"]["layout"])

    def compact(self, clip: str, frame: int, view: int = 0) -> CompactPyramid:
        """The stored compact levels (1, C_k, H_k, W_k) of one (frame, view): zero-copy, read-only, CPU."""
        rel, i = self._locate(clip, frame, view)
        batch = self._batch(rel, i)
        return CompactPyramid(levels=tuple(self._compact_levels(batch)), forms=self._forms())

    def _expand(self, levels: list[Tensor]) -> Pyramid:
        model = self.model
        moved = tuple(x.to(self.device, non_blocking=True) for x in levels)
        return expand_compact(model, CompactPyramid(levels=moved, forms=self._forms()), dtype=self.dtype)

    def frame(self, clip: str, frame: int, view: int = 0) -> Pyramid:
        """The raw FPN pyramid (N = 1) of one (frame, view), on the reader's device and dtype."""
        return self._expand(list(self.compact(clip, frame, view).levels))

    def clip(self, key: str, view: int = 0) -> ClipFeatures:
        """Everything cached for one view of one clip (see `ClipFeatures`)."""
        row = self._clip_row(key)
        n = int(row["n_frames"])
        located = [self._locate(key, t, view) for t in range(n)]
        batches = [self._batch(rel, i, verify=False) for rel, i in located]  # all read-aheads issued first
        if self.verify != "never":
            for (rel, i), batch in zip(located, batches, strict=True):
                self._file(rel).check(i, batch)
        pin = self.device.type == "cuda"
        levels = []
        for k in range(len(self.fingerprint["storage"]["layout"])):
            first = column_tensor(batches[0].column(f"level{k}"), self.storage_dtype)
            stacked = torch.empty((n, *first.shape[1:]), dtype=first.dtype, pin_memory=pin)
            for t, batch in enumerate(batches):
                stacked[t] = column_tensor(batch.column(f"level{k}"), self.storage_dtype)[0]
            levels.append(stacked)
        pyramid = self._expand(levels)
        labelled = torch.tensor([b.column("labelled")[0].as_py() for b in batches], dtype=torch.bool)
        labels, has_label = self._labels(batches)
        objects, present = self._objects(batches)
        record = self.clip_record(key)
        params = ViewParams.from_json(batches[0].column("view_params")[0].as_py())
        return ClipFeatures(key=key, view=view, view_params=params, clip=record, pyramid=pyramid,
                            labelled=labelled, has_label=has_label, labels=labels, object_masks=objects,
                            object_present=present, log_mel=self.log_mel(key),
                            expressions=self.expressions(record))

    def _labels(self, batches: list[pa.RecordBatch]) -> tuple[Tensor | None, Tensor]:
        pngs = [b.column("gt_label")[0].as_py() for b in batches]
        has = torch.tensor([p is not None for p in pngs], dtype=torch.bool)
        if not has.any():
            return None, has
        maps = [decode_png(p) if p is not None else None for p in pngs]
        shape = next(m.shape for m in maps if m is not None)
        out = np.zeros((len(maps), *shape), dtype=np.uint8)
        for t, m in enumerate(maps):
            if m is not None:
                out[t] = m
        return torch.from_numpy(out), has

    def _objects(self, batches: list[pa.RecordBatch]) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        per_frame = [dict(zip(b.column("gt_object_ids")[0].as_py(), b.column("gt_objects")[0].as_py(), strict=True))
                     for b in batches]
        fids = sorted({fid for frame in per_frame for fid in frame})
        masks, present = {}, {}
        for fid in fids:
            decoded = [decode_png(frame[fid]) if fid in frame else None for frame in per_frame]
            shape = next(m.shape for m in decoded if m is not None)
            out = np.zeros((len(decoded), *shape), dtype=bool)
            for t, m in enumerate(decoded):
                if m is not None:
                    out[t] = m > 0
            masks[fid] = torch.from_numpy(out)
            present[fid] = torch.tensor([m is not None for m in decoded], dtype=torch.bool)
        return masks, present

    # ------------------------------------------------------------------ audio and text

    def log_mel(self, key: str) -> Tensor | None:
        """(N, 2, 96, 64) float32 log-mel examples of clip `key` (example t pairs with frame t), or None."""
        row = self._clip_row(key)
        if row["audio_batch"] < 0:
            return None
        batch = self._batch(row["audio_file"], int(row["audio_batch"]))
        array = batch.column("log_mel").to_numpy_ndarray()
        return torch.from_numpy(np.array(array, copy=True))

    def _text_rows(self) -> dict[str, tuple[CacheFile, int, int]]:
        if self._text is None:
            self._text = {}
            entry = self.info.get("text")
            if entry:
                opened = self._file(entry["file"])
                if opened.fingerprint != entry["fingerprint"]:
                    raise StaleCacheError(f"{opened.path}: text fingerprint differs from {CACHE_JSON}'s; "
                                          "re-run `auralsam2 cache`")
                for i in range(opened.num_batches):
                    for r, uid in enumerate(opened.reader.get_batch(i).column("uid").to_pylist()):
                        self._text[uid] = (opened, i, r)
        return self._text

    @property
    def text_fingerprint(self) -> dict[str, Any] | None:
        entry = self.info.get("text")
        return entry["fingerprint"] if entry else None

    def text(self, uid: str) -> tuple[Tensor, Tensor] | None:
        """(hidden (L, H) float32, attention_mask (L,) int64) of expression `uid`, or None if not cached."""
        rows = self._text_rows()
        if uid not in rows:
            return None
        opened, i, r = rows[uid]
        if self.verify == "always":
            opened.verified.discard(i)
        batch = opened.batch(i, verify=self.verify != "never")
        dtype = self.text_fingerprint["dtype"]
        hidden = column_tensor(batch.column("hidden"), dtype)[r].float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            mask = torch.from_numpy(batch.column("attention_mask").to_numpy_ndarray()[r].astype(np.int64))
        return hidden, mask

    def expressions(self, record: Clip) -> list[ExpressionFeatures]:
        out = []
        for e in record.expressions:
            embedded = self.text(e.uid)
            hidden, mask = embedded if embedded is not None else (None, None)
            out.append(ExpressionFeatures(e.uid, e.text, e.target_id, e.is_null, e.split, hidden, mask))
        return out


__all__ = ["CacheReader", "ClipFeatures", "ExpressionFeatures"]
