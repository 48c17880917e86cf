"""Training and evaluation items served from a feature cache (`auralsam2.items.ItemSource`).

An item is what one forward of AuralSAM2 sees (`auralsam2.items.ClipItem`): for the AVSBench
datasets one clip, for Ref-AVS one expression of a clip (its text embedding and the referred
object's masks). `CacheItems` lists the items of one split (optionally of some subsets only, e.g.
the v1s + v1m + v2 "merged pool" vs v2 alone) and serves item `i` of epoch `e`:

* the pyramid of the epoch's VIEW of the clip: view 0 for evaluation; in training one of the
  cached views (seeded random per (seed, epoch, item), or cycled, or always 0), with that view's
  masks (augmented views carry their own geometrically transformed masks);
* the log-mel examples (VGGish runs in the training step, so it can learn);
* the frames the loss supervises, by the released rule (`auralsam2.losses.supervised_frames`: v1s
  train clips only frame 0, everything else all frames), restricted to frames with ground truth.

The last clip read is kept, so the several expressions of a Ref-AVS clip read it once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch

from auralsam2.items import ClipItem
from auralsam2.losses import supervised_frames
from feature_cache.reader import CacheReader, ClipFeatures

__all__ = ["CacheItems", "cache_expectation", "choose_view", "eval_items", "open_reader", "training_data"]

ViewPolicy = Literal["random", "cycle", "first"]


def _mix(seed: int, epoch: int, index: int, salt: int = 0) -> torch.Generator:
    mixed = (((seed * 1_000_003 + epoch) * 1_000_033 + index) * 1_000_037 + salt) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def choose_window(frames: int, n: int, seed: int, epoch: int, index: int) -> slice:
    """The training window of `frames` consecutive frames of an `n`-frame item in an epoch."""
    if frames >= n:
        return slice(0, n)
    start = int(torch.randint(n - frames + 1, (1,), generator=_mix(seed, epoch, index, salt=1)))
    return slice(start, start + frames)


def choose_view(policy: ViewPolicy, views: int, seed: int, epoch: int, index: int) -> int:
    """The view a training item uses in an epoch; deterministic in (seed, epoch, index)."""
    if views <= 1 or policy == "first":
        return 0
    if policy == "cycle":
        return epoch % views
    mixed = ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63 - 1)
    return int(torch.randint(views, (1,), generator=torch.Generator().manual_seed(mixed)))


class CacheItems:
    """The items of one split of a cache; implements `auralsam2.items.ItemSource`.

    `task`: "avs" (one item per clip) or "ref" (one per expression whose split is `split`).
    `subsets`: keep clips of these subsets only (empty = all). `training`: pick views per epoch
    and fill `supervised`. `include_null`: Ref-AVS null expressions (train on them as released;
    test_n holds only them). `max_items`: the first N items (demos).
    """

    def __init__(self, reader: CacheReader, split: str, *, task: Literal["avs", "ref"] = "avs",
                 subsets: Sequence[str] = (), training: bool = False, views: ViewPolicy = "first", seed: int = 0,
                 include_null: bool = True, max_items: int | None = None, frames: int | None = None) -> None:
        self.reader = reader
        self.split = split
        self.task = task
        self.training = training
        self.view_policy: ViewPolicy = views
        self.seed = seed
        self.frames = frames
        wanted = {s.lower() for s in subsets}
        self._items: list[tuple[str, str, bool]] = []  # (clip key, expression uid, is_null)
        if task == "avs":
            for key in reader.keys(split):
                if not wanted or reader._clip_row(key)["subset"].lower() in wanted:  # noqa: SLF001
                    self._items.append((key, "", False))
        else:
            for key in reader.keys():
                row = reader._clip_row(key)  # noqa: SLF001
                if wanted and row["subset"].lower() not in wanted:
                    continue
                record = reader.clip_record(key)
                for e in sorted(record.expressions, key=lambda e: e.uid):
                    if e.split == split and (include_null or not e.is_null):
                        self._items.append((key, e.uid, e.is_null))
        if max_items is not None:
            self._items = self._items[:max_items]
        if not self._items:
            have = sorted({reader._clip_row(k)["split"] for k in reader.keys()})  # noqa: SLF001
            raise ValueError(f"feature cache {reader.root}: no {task} items for split {split!r}"
                             f"{f' and subsets {sorted(wanted)}' if wanted else ''}; the cache has splits {have}")
        self._last: tuple[tuple[str, int], ClipFeatures] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def whole_clips(self) -> CacheItems:
        """The same items with every frame (no training window; views and supervision unchanged)."""
        whole = copy.copy(self)
        whole.frames, whole._last = None, None
        return whole

    def item_keys(self) -> list[str]:
        return [uid or key for key, uid, _ in self._items]

    def null_flags(self) -> list[bool]:
        return [is_null for _, _, is_null in self._items]

    def _features(self, key: str, view: int) -> ClipFeatures:
        if self._last is None or self._last[0] != (key, view):
            self._last = ((key, view), self.reader.clip(key, view))
        return self._last[1]

    def item(self, index: int, epoch: int = 0) -> ClipItem:
        """Item `index` in the view of `epoch` (view 0 unless training)."""
        key, uid, _ = self._items[index]
        view = 0
        if self.training:
            view = choose_view(self.view_policy, self.reader.views(key), self.seed, epoch, index)
        feats = self._features(key, view)
        clip = feats.clip
        n = int(feats.pyramid.s16.shape[0])
        size = tuple(feats.pyramid.s4.shape[-2:])
        size = (size[0] * 4, size[1] * 4)
        if self.task == "avs":
            labels = feats.labels
            masks = (labels > 0) if labels is not None else torch.zeros((n, *size), dtype=torch.bool)
            labelled = feats.has_label.clone()
            expression, is_null, text, category = None, False, None, clip.category
        else:
            expression = next(e for e in feats.expressions if e.uid == uid)
            is_null = expression.is_null
            labels = None
            if expression.target_id in feats.object_masks and not is_null:
                masks = feats.object_masks[expression.target_id]
                labelled = feats.object_present[expression.target_id].clone()
            else:
                masks = torch.zeros((n, *size), dtype=torch.bool)
                labelled = torch.zeros(n, dtype=torch.bool)
            text = expression.hidden
            record = next((e for e in clip.expressions if e.uid == uid), None)
            category = (record.category if record is not None else "") or clip.category
        pyramid, log_mel = tuple(feats.pyramid), feats.log_mel
        if self.training and self.frames is not None and self.frames < n:
            w = choose_window(self.frames, n, self.seed, epoch, index)
            pyramid = tuple(x[w] for x in pyramid)
            log_mel = None if log_mel is None else log_mel[w]
            masks, labelled = masks[w], labelled[w]
            labels = None if labels is None else labels[w]
            n = self.frames
        supervised: list[int] = []
        if self.training:
            if is_null:
                supervised = list(range(n))  # empty GT: only the object-score term learns
            else:
                rule = supervised_frames(clip.subset, n, split="train")
                supervised = [t for t in rule if bool(labelled[t])]
                if not supervised:
                    raise ValueError(f"feature cache {self.reader.root}: clip {key!r} ({clip.subset}, split "
                                     f"{self.split!r}) has no ground truth on its supervised frames {rule}; "
                                     "check the ingest report for missing masks")
        return ClipItem(
            key=uid or key, clip_key=key, dataset=clip.dataset, subset=clip.subset, split=self.split,
            category=category, pyramid=pyramid, log_mel=log_mel, text=text, masks=masks,
            labelled=labelled, supervised=supervised, expression_uid=uid, is_null=is_null,
            labels=labels if clip.dataset == "avss" else None, view=view,
        )


# ------------------------------------------------------------------ from an experiment config


def cache_expectation(sam2_config: str, checkpoint: str | None, image_size: int | None) -> dict:
    """The fingerprint fields an experiment's `model.sam2` pins down (checked by `CacheReader`)."""
    from pathlib import Path

    from auralsam2.backbone import resolve_sam2_config
    from auralsam2.utils.hashing import sha256_file

    expect: dict = {"sam2_config": resolve_sam2_config(sam2_config)[0]}
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"model.sam2.checkpoint {str(path)!r}: no such file")
        expect["checkpoint"] = f"sha256:{sha256_file(path)}"
    if image_size is not None:
        expect["image_size"] = image_size
    return expect


def open_reader(cfg, device: str | torch.device = "cpu") -> CacheReader:
    """The experiment's feature cache (`cfg.data.cache`, relative to the data folder), checked
    against `cfg.model.sam2`; pyramids come out on `device`. Its `.model` is the frozen SAM2."""
    from auralsam2.config import resolve_path
    from auralsam2.paths import data_home

    root = resolve_path(cfg.data.cache, data_home())
    sam2 = cfg.model.sam2
    checkpoint = str(resolve_path(sam2.checkpoint)) if sam2.checkpoint else None
    expect = cache_expectation(sam2.config, checkpoint, sam2.image_size)
    if not (root / "cache.json").is_file():
        raise FileNotFoundError(
            f"data.cache: no feature cache at {root}; build it first, e.g. `auralsam2 cache --shards "
            f"{resolve_path(cfg.data.ingest, data_home())} --out {root} --sam2-config {sam2.config}"
            f"{f' --checkpoint {checkpoint}' if checkpoint else ''} --views {cfg.data.cache_views}`")
    reader = CacheReader(root, expect=expect, device=device, checkpoint=checkpoint)
    if cfg.model.text_encoder and cfg.data.dataset == "refavs":
        from feature_cache.build import text_is_current
        from feature_cache.schema import StaleCacheError

        if not text_is_current(reader.info, cfg.model.text_encoder_source):
            built = (reader.text_fingerprint or {}).get("text_encoder")
            raise StaleCacheError(
                f"data.cache {root}: its text embeddings were built {f'with {built!r}' if built else 'without a text encoder'}"
                f", not with model.text_encoder={cfg.model.text_encoder!r} as it is now; rebuild them with "
                f"`auralsam2 cache --shards {resolve_path(cfg.data.ingest, data_home())} --out {root} --sam2-config "
                f"{sam2.config} --text-encoder {cfg.model.text_encoder}` (the SAM2 features are reused) or "
                "`auralsam2 run` with this config")
    return reader


def eval_items(cfg, reader: CacheReader, split: str, max_items: int | None = None) -> CacheItems:
    """Evaluation items of `split` (view 0, every item; Ref-AVS null expressions included)."""
    return CacheItems(reader, split, task=cfg.task, subsets=cfg.data.subsets, training=False,
                      max_items=max_items if max_items is not None else cfg.eval.max_items)


def training_data(cfg, reader: CacheReader):
    """`auralsam2.engine.TrainingData` for `cfg`: train items (views per epoch, supervised frames)
    and the selection split (`val`, or `test` when `train.select_on: test`)."""
    from auralsam2.engine import TrainingData

    train = CacheItems(reader, cfg.data.train_split, task=cfg.task, subsets=cfg.data.subsets, training=True,
                       views=cfg.data.views, seed=cfg.train.seed, include_null=cfg.data.include_null_train,
                       max_items=cfg.data.max_train_items, frames=cfg.data.train_frames)
    split = cfg.data.val_split if cfg.train.select_on == "val" else (cfg.eval.splits[0] if cfg.eval.splits else None)
    select = None
    if split is not None:
        select = CacheItems(reader, split, task=cfg.task, subsets=cfg.data.subsets, training=False,
                            max_items=cfg.data.max_val_items)
    return TrainingData(sam2=reader.model, train=train, select=select, select_split=split)
