"""Decode a split and score it under the official protocols, one item at a time.

An *item* is what one forward sees: an AVSBench clip, or one Ref-AVS expression of a clip
(`auralsam2.items.ClipItem`); a split is an `ItemSource`. For every item this module runs ONE
forward (eval mode, no grad, bf16 autocast on GPU), decodes the three released mask modes from it (`first`, `iou_select`,
`iou_occ_select`; `auralsam2.decoding`), and feeds one `StreamingEvaluator` per decoding.
Nothing but the current item is held: rows are handed to `rows_sink` every `flush_every` items.

Conditioning frame (released): 0 for AVSBench evaluation, N // 2 for Ref-AVS (train and test),
N // 2 in AVSBench training. Frames without ground truth are not scored; Ref-AVS null expressions
feed only the null metric S.

Under DDP each rank scores whole metric *calls* (1 AVS clip; 4 Ref-AVS expressions for the
Ref-AVS protocols), assigned round-robin, with no padding: every item is scored exactly once (the
released `DistributedSampler` pads with duplicates, which are counted). The per-rank evaluators'
sums are then added, which gives the single-process aggregates exactly up to float summation order.

Rows follow `dashboards/schema.py` (`frame_metrics`, `clip_metrics`) column for column
(`schema_rows`); this module does not import `dashboards` (the library never imports the tools).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from auralsam2.decoding import DECODINGS, decode_masks
from auralsam2.evaluation.prompts import METHODS, PROMPT_MODES, GTPrompts, gt_prompts
from auralsam2.evaluation.protocols import at_model_resolution, get_protocol
from auralsam2.evaluation.semantic import AVSSAccumulator
from auralsam2.evaluation.streaming import Rows, StreamingEvaluator
from auralsam2.items import ClipItem, ItemSource
from auralsam2.model import AuralSAM2
from auralsam2.utils import stop
from auralsam2.utils.devices import autocast

__all__ = [
    "EvalResult",
    "avss_oracle_semantic",
    "cond_frame_for",
    "evaluate_source",
    "predict_item",
    "schema_rows",
    "shard_indices",
]

SEMANTIC_SIZE = 224  # the AVSS protocol's resolution


@dataclass
class EvalResult:
    """Aggregates of one split: `metrics[decoding][protocol][metric]` (StreamingEvaluator names:
    J, F, J&F, S, diag_*, counts), `semantic` (AVSS oracle-class metric, may be empty), `n_items`."""

    split: str
    metrics: dict[str, dict[str, dict[str, float]]]
    semantic: dict[str, float] = field(default_factory=dict)
    n_items: int = 0
    frames_per_s: float = math.nan  # frames through the model per second of forward time (this rank)
    prompts: str = "none"
    method: str = "auralsam2"
    n_unprompted: int = 0  # items a prompt mode could not prompt (empty GT on the conditioning frame)

    def value(self, protocol: str, decoding: str = "iou_select", metric: str = "J") -> float:
        """One number, NaN when absent (e.g. J of a null-only split)."""
        return float(self.metrics.get(decoding, {}).get(protocol, {}).get(metric, math.nan))

    def flat(self, prefix: str = "") -> dict[str, float]:
        """`{"<prefix><split>/<protocol>/<decoding>/<metric>": value}` for MLflow (finite values only)."""
        out = {}
        for decoding, per_protocol in self.metrics.items():
            for protocol, values in per_protocol.items():
                for metric, value in values.items():
                    name = f"{prefix}{self.split}/{protocol}/{decoding}/{metric.replace('&', '_and_')}"
                    if isinstance(value, int | float) and math.isfinite(value):
                        out[name] = float(value)
        out.update({f"{prefix}{self.split}/{k}": v for k, v in self.semantic.items() if math.isfinite(v)})
        return out  # frames_per_s is a timing, not a metric: callers log it where wanted


def cond_frame_for(task: Literal["avs", "ref"], n_frames: int, rule: str = "auto") -> int:
    """Conditioning frame at evaluation: `auto` = 0 for AVSBench, N // 2 for Ref-AVS (released)."""
    if rule == "first":
        return 0
    if rule == "middle" or (rule == "auto" and task == "ref"):
        return n_frames // 2
    if rule == "auto":
        return 0
    raise ValueError(f"cond_frame rule must be auto, first or middle, got {rule!r}")


@torch.no_grad()
def predict_item(
    model: AuralSAM2,
    item: ClipItem,
    cond_frame: int,
    decodings: Sequence[str] = DECODINGS,
    precision: str = "auto",
    prompts: GTPrompts | None = None,
    use_fuser: bool = True,
) -> tuple[dict[str, Tensor], Tensor]:
    """One eval forward -> ({decoding: logits (N, S, S) float32}, object-score logits (N,) float32).
    `prompts`: SAM2 prompts for the conditioning frame; `use_fuser=False`: SAM2 alone."""
    device = model.sam2.device
    point_inputs = cond_mask = None
    if prompts is not None:
        cond_mask = None if prompts.cond_mask is None else prompts.cond_mask.to(device)
        if prompts.point_inputs is not None:
            point_inputs = {k: v.to(device) for k, v in prompts.point_inputs.items()}
    was_training = model.training
    model.train(False)
    try:
        with autocast(device, precision):
            out = model.forward_clip(
                [x.to(device) for x in item.pyramid],
                None if item.log_mel is None else item.log_mel.to(device),
                None if item.text is None else item.text.to(device),
                cond_frame=cond_frame,
                point_inputs=point_inputs,
                cond_mask=cond_mask,
                use_fuser=use_fuser,
            )
    finally:
        model.train(was_training)
    logits = {mode: decode_masks(out.frames, mode).float() for mode in decodings}
    return logits, out.object_score_logits.float().reshape(-1)


@torch.no_grad()
def predict_items(
    model: AuralSAM2,
    items: Sequence[ClipItem],
    cond_frames: Sequence[int],
    decodings: Sequence[str] = DECODINGS,
    precision: str = "auto",
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """`predict_item` for several items in one forward (`AuralSAM2.forward_clips`: frame t of every
    clip of one length is one decoder batch); the same results, in the items' order."""
    device = model.sam2.device
    was_training = model.training
    model.train(False)
    try:
        with autocast(device, precision):
            outs = model.forward_clips(
                [([x.to(device) for x in item.pyramid], None if item.log_mel is None else item.log_mel.to(device),
                  None if item.text is None else item.text.to(device)) for item in items], cond_frames)
    finally:
        model.train(was_training)
    return [({mode: decode_masks(out.frames, mode).float() for mode in decodings},
             out.object_score_logits.float().reshape(-1)) for out in outs]


def avss_oracle_semantic(
    accumulator: AVSSAccumulator, logits: Tensor, labels: Tensor, frames: Sequence[int]
) -> None:
    """The AVSS 71-class metric for a class-agnostic model, with the oracle class: the predicted
    foreground (logit > 0) of frame t gets the most frequent non-background GT class of frame t.

    A diagnostic only (named `avss_semantic_oracle_*`): AuralSAM2 predicts no classes, so its
    masks can only be scored semantically with the class given. Both maps at 224 x 224 (AVSS
    protocol; logits bilinear, labels nearest); label 255 (unknown palette colour) counts as
    background.
    """
    idx = torch.as_tensor(list(frames), dtype=torch.long)
    lg = F.interpolate(logits[idx].float()[:, None], size=(SEMANTIC_SIZE, SEMANTIC_SIZE), mode="bilinear",
                       align_corners=False)[:, 0]
    gt = F.interpolate(labels[idx].to(torch.uint8)[:, None].float(), size=(SEMANTIC_SIZE, SEMANTIC_SIZE),
                       mode="nearest-exact")[:, 0].long().cpu()
    gt[gt >= accumulator.num_classes] = 0
    pred = torch.zeros_like(gt)
    for row in range(gt.shape[0]):
        present = gt[row][gt[row] > 0]
        if present.numel():
            cls = int(torch.bincount(present).argmax())
            pred[row][lg[row].cpu() > 0] = cls
    accumulator.update(pred, gt)


# --------------------------------------------------------------------------------------------
# DDP sharding and merging
# --------------------------------------------------------------------------------------------


def _calls_size(task: str, protocols: Sequence[str]) -> int:
    size = 1
    for name in protocols:
        size = math.lcm(size, get_protocol(name).calls_of(task))
    return size


def shard_indices(null_flags: Sequence[bool], task: str, protocols: Sequence[str], rank: int, world: int) -> list[int]:
    """The item indices rank `rank` of `world` scores: whole metric calls, round-robin, no padding.

    The segmentation and null streams are cut separately into chunks of lcm(items per call) so
    that every call of the single-process evaluation lands, complete and in order, on one rank.
    """
    if world <= 1:
        return list(range(len(null_flags)))
    size = _calls_size(task, protocols)
    mine: list[int] = []
    for want_null in (False, True):
        stream = [i for i, flag in enumerate(null_flags) if bool(flag) == want_null]
        for c, start in enumerate(range(0, len(stream), size)):
            if c % world == rank:
                mine.extend(stream[start : start + size])
    return sorted(mine)


def _merge_across_ranks(evaluators: dict[str, StreamingEvaluator]) -> dict[str, StreamingEvaluator]:
    import torch.distributed as dist

    for ev in evaluators.values():
        ev.finish()
        ev.pop_rows()
        ev._seen = set()  # noqa: SLF001 (keys are not needed to merge; keeps the gather small)
    gathered: list[dict[str, StreamingEvaluator] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, evaluators)
    merged = gathered[0]
    for part in gathered[1:]:
        for mode, ev in merged.items():
            ev.merge(part[mode])
    return merged


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------


def schema_rows(
    rows: Rows, decoding: str, run_id: str, labelled: dict[str, set[int]] | None = None,
    prompts: str = "none", method: str = "auralsam2",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluator rows -> (frame_metrics rows, clip_metrics rows), exactly the columns of
    `dashboards.schema.FRAME_METRICS` / `CLIP_METRICS`. Missing J/F (null expressions, empty-GT
    frames' F) become NaN. Per-frame F is the frame's best-threshold F (a diagnostic); clip F is the
    official call value when a call is one clip, else the clip's own max-of-mean F."""
    nan = math.nan

    def ids(r: dict[str, Any]) -> dict[str, Any]:
        return {"run_id": run_id, "dataset": r["dataset"], "subset": r["subset"], "split": r["split"],
                "clip_key": r["clip_key"], "expression_uid": r["expression_uid"]}

    def tail(r: dict[str, Any], f_key: str, score_key: str) -> dict[str, Any]:
        return {"protocol": r["protocol"], "decoding": decoding, "prompts": prompts, "method": method,
                "J": nan if r["J"] is None else float(r["J"]),
                "F": nan if r[f_key] is None else float(r[f_key]),
                "pred_area": int(r["pred_area"]), "gt_area": int(r["gt_area"] or 0), "pixels": int(r["pixels"]),
                "object_score": nan if r[score_key] is None else float(r[score_key]),
                "category": r["category"], "is_null": bool(r["null"])}

    frames = []
    for r in rows.frames:
        done = labelled.get(r["key"]) if labelled is not None else None
        frames.append({**ids(r), "frame": int(r["frame"]), **tail(r, "F_best", "object_score"),
                       "labelled": True if done is None else int(r["frame"]) in done})
    clips = [{**ids(r), "n_frames": int(r["n_frames"]), **tail(r, "F", "object_score_mean")} for r in rows.clips]
    return frames, clips


RowsSink = Callable[[str, list[dict[str, Any]], list[dict[str, Any]]], None]


def _predict_one_by_one(model: AuralSAM2, items: Sequence[ClipItem], conds: Sequence[int], decodings: Sequence[str],
                        precision: str, prompt_mode: str, prompt_seed: int, use_fuser: bool
                        ) -> tuple[list[tuple[dict[str, Tensor], Tensor]], int]:
    """`predict_item` per item, with SAM2 prompts from the conditioning frame's GT when asked; also
    returns how many items had no GT there to prompt from."""
    predictions, unprompted = [], 0
    for item, cond in zip(items, conds, strict=True):
        prompts = None
        if prompt_mode != "none":
            if not item.is_null and bool(item.labelled[cond]):
                prompts = gt_prompts(item.masks[cond], prompt_mode, model.image_size, item.key, prompt_seed)
            unprompted += prompts is None
        predictions.append(predict_item(model, item, cond, decodings, precision, prompts, use_fuser))
    return predictions, unprompted


def _score_item(evaluators: dict[str, StreamingEvaluator], semantic: AVSSAccumulator | None,
                labelled: dict[str, set[int]], decodings: Sequence[str], item: ClipItem, frames: list[int],
                logits: dict[str, Tensor], scores: Tensor) -> None:
    """Hand one item's predictions of its scored `frames` to every decoding's evaluator."""
    rows_idx = torch.as_tensor(frames, dtype=torch.long)
    gt = None if item.is_null else item.masks[rows_idx]
    meta = {"dataset": item.dataset, "subset": item.subset, "split": item.split, "clip_key": item.clip_key,
            "expression_uid": item.expression_uid, "category": item.category}
    labelled[item.key] = {t for t in range(item.n_frames) if bool(item.labelled[t])}
    for mode, ev in evaluators.items():
        ev.add_clip(item.key, logits[mode][rows_idx.to(logits[mode].device)], gt, scores[rows_idx.to(scores.device)],
                    null=item.is_null, meta=meta, frame_indices=frames)
    if semantic is not None and item.labels is not None and not item.is_null:
        avss_oracle_semantic(semantic, logits["iou_select" if "iou_select" in logits else decodings[0]].cpu(),
                             item.labels, frames)


def evaluate_source(
    model: AuralSAM2,
    source: ItemSource,
    split: str,
    *,
    task: Literal["avs", "ref"],
    protocols: Sequence[str],
    decodings: Sequence[str] = DECODINGS,
    cond_frame: str = "auto",
    precision: str = "auto",
    rows_sink: RowsSink | None = None,
    run_id: str = "",
    avss_semantic: bool = False,
    max_items: int | None = None,
    flush_every: int = 32,
    progress: bool = False,
    indices: Iterable[int] | None = None,
    prompt_mode: str = "none",
    method: str = "auralsam2",
    prompt_seed: int = 0,
    clips_per_batch: int = 1,
) -> EvalResult:
    """Score `source` (one split) under `protocols` x `decodings`; returns the aggregates. The
    released protocol scores at the model's own image_size (`at_model_resolution`), as its trainer.

    `rows_sink(decoding, frame_rows, clip_rows)` receives schema rows every `flush_every` items and
    at the end (on every rank under DDP; write them with a rank-specific part name). With
    torch.distributed initialised, ranks score disjoint whole calls and the aggregates are merged
    (every rank gets the same result). `indices`: score only these items (overrides sharding).
    `prompt_mode` (`auralsam2.evaluation.prompts`): SAM2 prompts from the conditioning frame's GT;
    `method="sam2"`: SAM2 alone, without the fuser (paper Tables 6 and 7). `clips_per_batch` > 1:
    that many items per forward (`predict_items`; the same numbers as one at a time).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if prompt_mode != "none" and prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be 'none' or one of {PROMPT_MODES}, got {prompt_mode!r}")
    rank, world = _distributed()
    n_total = len(source) if max_items is None else min(len(source), max_items)
    if indices is None:
        flags = source.null_flags()[:n_total]
        indices = shard_indices(flags, task, protocols, rank, world)
    indices = list(indices)
    scored_as = [at_model_resolution(p, model.image_size) for p in protocols]
    evaluators = {mode: StreamingEvaluator(scored_as, task=task) for mode in decodings}
    semantic = AVSSAccumulator() if avss_semantic else None
    labelled: dict[str, set[int]] = {}
    forward_seconds, forward_frames, unprompted = 0.0, 0, 0

    def flush() -> None:
        for mode, ev in evaluators.items():
            rows = ev.pop_rows()
            if rows_sink is not None and (rows.frames or rows.clips):
                frame_rows, clip_rows = schema_rows(rows, mode, run_id, labelled, prompt_mode, method)
                rows_sink(mode, frame_rows, clip_rows)
        labelled.clear()

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), unit="item", desc=f"evaluate {split}", leave=False)
    batched = clips_per_batch > 1 and prompt_mode == "none" and method == "auralsam2"

    # items go through the model `clips_per_batch` at a time (one at a time with SAM2 prompts or
    # SAM2 alone); they are scored, and the rows flushed, in the same order either way
    pending: list[tuple[int, ClipItem, list[int] | None]] = []

    def run_pending() -> None:
        nonlocal forward_seconds, forward_frames, unprompted
        todo = [item for _, item, frames in pending if frames is not None]
        started = time.perf_counter()
        conds = [cond_frame_for(task, item.n_frames, cond_frame) for item in todo]
        if batched and len(todo) > 1:
            predictions = predict_items(model, todo, conds, decodings, precision)
        else:
            predictions, missed = _predict_one_by_one(model, todo, conds, decodings, precision, prompt_mode,
                                                      prompt_seed, method == "auralsam2")
            unprompted += missed
        if predictions and predictions[0][0][decodings[0]].is_cuda:
            torch.cuda.synchronize(predictions[0][0][decodings[0]].device)
        forward_seconds += time.perf_counter() - started
        forward_frames += sum(item.n_frames for item in todo)
        scored = iter(predictions)
        for count, item, frames in pending:
            if frames is not None:
                _score_item(evaluators, semantic, labelled, decodings, item, frames, *next(scored))
            if count % flush_every == 0:
                flush()
            if bar is not None:
                bar.update(1)
        pending.clear()

    for count, index in enumerate(indices, 1):
        stop.check()
        item = source.item(index)
        if item.is_null:
            frames: list[int] | None = list(range(item.n_frames))
        else:
            frames = [t for t in range(item.n_frames) if bool(item.labelled[t])] or None  # None: nothing to score
        pending.append((count, item, frames))
        if len(pending) >= clips_per_batch:
            run_pending()
    run_pending()
    flush()
    if bar is not None:
        bar.close()
    if world > 1:
        evaluators = _merge_across_ranks(evaluators)
        semantic = _merge_semantic(semantic)
    metrics = {mode: ev.finish() for mode, ev in evaluators.items()}
    first = next(iter(evaluators.values()))._states[0]  # noqa: SLF001
    n_items = first.n_items + first.n_null_items
    sem = {}
    if semantic is not None and semantic.n_frames:
        sem = semantic.result().as_dict(prefix="avss_semantic_oracle_")
    fps = forward_frames / forward_seconds if forward_seconds > 0 else math.nan
    return EvalResult(split=split, metrics=metrics, semantic=sem, n_items=n_items, frames_per_s=fps,
                      prompts=prompt_mode, method=method, n_unprompted=unprompted)


def _merge_semantic(semantic: AVSSAccumulator | None) -> AVSSAccumulator | None:
    if semantic is None:
        return None
    import torch.distributed as dist

    parts: list[AVSSAccumulator | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, semantic)
    merged = AVSSAccumulator(semantic.num_classes, semantic.beta2)
    for p in parts:
        merged.iou_sum += p.iou_sum
        merged.f_sum += p.f_sum
        merged.count += p.count
        merged.n_frames += p.n_frames
    return merged
