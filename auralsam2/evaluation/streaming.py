"""Streaming evaluation: one clip (or Ref-AVS expression) at a time, every protocol at once.

`StreamingEvaluator.add_clip(key, logits (F, H, W), gt (F, H, W), ...)` scores the clip under each
protocol (at the protocol's resolution, with its J rule), adds it to the protocol's current *call*
(1 clip per call for AVSBench, 4 expressions per call for Ref-AVS) and closes the call when it is
full. A call is kept as a handful of sums (J sum, summed F-curve, positive-pixel counts), never as
tensors, so memory does not grow with the split; only the rows (plain dicts, ready for
`pyarrow.Table.from_pylist`) accumulate, and `pop_rows()` hands them over for writing in pieces.

Ref-AVS null expressions (`null=True`) form their own calls and feed only S, as the official code
evaluates `test_n` separately. Both S definitions are reported under explicit names.

Aggregates per protocol (`result()`), official first, then diagnostics named as such:
- `J`, `F`: mean over calls of the per-call values; `J&F` = (J + F) / 2.
- `diag_J_frame_mean`: mean over frames (equals J when all calls hold equally many frames).
- `diag_J_sum_inter_over_sum_union`: dataset-level sum(inter) / sum(union) (CAVP, `BinaryMIoU`); not comparable.
- `diag_F_one_threshold`: max over thresholds of the mean curve over every non-empty-GT frame of
  the split (the batch-independent "fixed" F of ACL-SSL); `diag_F_best_threshold` is where it peaks.
- `S` (the protocol's null metric), `S_refavs_sqrt_per_call`, `S_auralsam2_foreground_ratio`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from auralsam2.evaluation.metrics import (
    fmeasure_curve,
    fmeasure_thresholds,
    is_binary,
    jaccard_from_counts,
    mask_counts,
)
from auralsam2.evaluation.protocols import AURALSAM2_RELEASED, Protocol, get_protocol, resize_logits_and_gt

Row = dict[str, Any]
_FRAME_COLUMNS = (
    "protocol",
    "key",
    "frame",
    "null",
    "call",
    "J",
    "F_best",
    "pred_area",
    "gt_area",
    "pixels",
    "object_score",
)
_CLIP_COLUMNS = (
    "protocol", "key", "null", "call", "n_frames", "n_frames_gt_nonempty", "J", "F",
    "pred_area", "gt_area", "pixels", "object_score_mean",
)  # fmt: skip


class Rows(NamedTuple):
    """Rows handed over by `pop_rows()`: per frame, per clip (expression) and per call."""

    frames: list[Row]
    clips: list[Row]
    calls: list[Row]


@dataclass
class _Call:
    """The open call of one protocol and one stream (segmentation or null): sums only."""

    index: int
    n_items: int = 0
    n_frames: int = 0
    j_sum: float = 0.0
    curve_sum: Tensor | None = None  # (n_thresholds,) float64 over the call's non-empty-GT frames
    n_nonempty: int = 0
    positives: int = 0  # pixels with sigmoid > 0.5 (the S numerator)
    pixels: int = 0
    first_key: str = ""
    last_key: str = ""

    def j(self) -> float:
        return self.j_sum / self.n_frames

    def f(self) -> float:
        return 0.0 if self.curve_sum is None else float((self.curve_sum / self.n_nonempty).max())

    def s(self) -> float:
        return math.sqrt(self.positives / self.pixels)


@dataclass
class _ProtocolState:
    protocol: Protocol
    per_call: int
    seg: _Call = field(default_factory=lambda: _Call(0))
    null: _Call = field(default_factory=lambda: _Call(0))
    # closed calls
    seg_calls: int = 0
    j_call_sum: float = 0.0
    f_call_sum: float = 0.0
    null_calls: int = 0
    s_call_sum: float = 0.0
    # dataset-level sums
    n_items: int = 0
    n_frames: int = 0
    j_frame_sum: float = 0.0
    inter_total: int = 0
    union_total: int = 0
    curve_total: Tensor | None = None
    n_nonempty_total: int = 0
    n_null_items: int = 0
    n_null_frames: int = 0
    null_positive_total: int = 0
    null_pixel_total: int = 0


class StreamingEvaluator:
    """Scores clips one at a time under several protocols; never holds more than the current clip.

    task: "avs" (AVSBench clips) or "ref" (Ref-AVS expressions: pass one expression's frames per
    `add_clip`, keyed by its uid). Use one evaluator per split.
    """

    def __init__(
        self, protocols: Sequence[Protocol | str] = (AURALSAM2_RELEASED,), task: Literal["avs", "ref"] = "avs"
    ) -> None:
        if task not in ("avs", "ref"):
            raise ValueError(f"StreamingEvaluator: task must be 'avs' or 'ref', got {task!r}")
        resolved = [get_protocol(p) for p in protocols]
        if not resolved or len({p.name for p in resolved}) != len(resolved):
            raise ValueError(
                f"StreamingEvaluator: need at least one protocol and unique names, got {[p.name for p in resolved]}"
            )
        self.task = task
        self._states = [_ProtocolState(p, p.calls_of(task)) for p in resolved]
        self._seen: set[str] = set()
        self._rows = Rows([], [], [])

    @property
    def protocols(self) -> list[Protocol]:
        return [s.protocol for s in self._states]

    def add_clip(
        self,
        key: str,
        logits: Tensor,
        gt: Tensor | None,
        object_scores: Tensor | Sequence[float] | None = None,
        *,
        null: bool = False,
        meta: Mapping[str, Any] | None = None,
        frame_indices: Sequence[int] | None = None,
    ) -> None:
        """Score one clip (AVS) or expression (Ref-AVS).

        logits: (F, H, W) mask logits (any float dtype; e.g. SAM2's 1024 high-res masks).
        gt: (F, H', W') binary masks (bool or {0, 1}; any size, resized nearest to each protocol's
            resolution), or None for a null expression without ground truth.
        object_scores: (F,) object-score logits, copied to the rows (None: not given).
        null: a Ref-AVS null expression (scored by S only).
        meta: extra columns for every row of this clip (e.g. expression_uid, category, subset).
        frame_indices: the frames' indices in the video (default 0..F-1), for the rows.
        """
        logits, gt, scores, frames = self._check(key, logits, gt, object_scores, null, meta, frame_indices)
        self._seen.add(key)
        meta = dict(meta or {})
        cache: dict[tuple, Any] = {}
        for state in self._states:
            self._score(state, key, logits, gt, scores, frames, null, meta, cache)

    # ------------------------------------------------------------------------------------------

    def _check(self, key, logits, gt, object_scores, null, meta, frame_indices):
        where = f"StreamingEvaluator.add_clip(key={key!r})"
        if key in self._seen:
            raise ValueError(f"{where}: key already evaluated; keys must be unique (a DDP-padded duplicate?)")
        if (
            not isinstance(logits, Tensor)
            or logits.dim() != 3
            or not logits.is_floating_point()
            or logits.shape[0] == 0
        ):
            raise ValueError(
                f"{where}: logits must be a float tensor (F, H, W) with F >= 1, got {getattr(logits, 'shape', logits)}"
            )
        if bool(torch.isnan(logits.max())):
            raise ValueError(f"{where}: logits contain NaN")
        if null and self.task != "ref":
            raise ValueError(
                f"{where}: null expressions exist only in Ref-AVS; create the evaluator with task='ref'"
            )
        if gt is None and not null:
            raise ValueError(
                f"{where}: gt is required (only a null expression may come without ground truth)"
            )
        if gt is not None:
            if not isinstance(gt, Tensor) or gt.dim() != 3 or gt.shape[0] != logits.shape[0]:
                raise ValueError(
                    f"{where}: gt must be (F, H, W) with F = {logits.shape[0]}, got {getattr(gt, 'shape', gt)}"
                )
            if not is_binary(gt):
                raise ValueError(
                    f"{where}: gt must be binary (bool or 0/1); binarise label maps first (labels > 0)"
                )
            if gt.shape[1:] != logits.shape[1:] and any(s.protocol.resolution is None for s in self._states):
                raise ValueError(
                    f"{where}: gt {tuple(gt.shape)} and logits {tuple(logits.shape)} differ in size "
                    "and a protocol keeps the given resolution; resize them first"
                )
            gt = gt.to(logits.device)
        scores = None
        if object_scores is not None:
            scores = [float(v) for v in torch.as_tensor(object_scores, dtype=torch.float64).reshape(-1)]
            if len(scores) != logits.shape[0]:
                raise ValueError(
                    f"{where}: object_scores has {len(scores)} values for {logits.shape[0]} frames"
                )
        frames = list(range(logits.shape[0])) if frame_indices is None else [int(i) for i in frame_indices]
        if len(frames) != logits.shape[0]:
            raise ValueError(f"{where}: frame_indices has {len(frames)} entries for {logits.shape[0]} frames")
        clash = set(meta or {}) & (set(_FRAME_COLUMNS) | set(_CLIP_COLUMNS))
        if clash:
            raise ValueError(f"{where}: meta keys {sorted(clash)} clash with metric columns; rename them")
        return logits, gt, scores, frames

    def _score(self, state: _ProtocolState, key, logits, gt, scores, frames, null, meta, cache) -> None:
        p = state.protocol
        if p.resolution not in cache:
            cache[p.resolution] = resize_logits_and_gt(logits, gt, p.resolution)
        logits_r, gt_r = cache[p.resolution]
        n_frames, pixels = logits_r.shape[0], logits_r.shape[1] * logits_r.shape[2]
        pred = p.binarize(logits_r)
        if gt_r is not None:
            inter, union, pred_area, gt_area = mask_counts(pred, gt_r)
            j = jaccard_from_counts(inter, union, gt_area, pixels)
            curve_key = (p.resolution, p.n_thresholds, p.beta2)
            if curve_key not in cache:
                cache[curve_key] = fmeasure_curve(logits_r, gt_r, p.n_thresholds, p.beta2).double().cpu()
            curves = cache[curve_key]
            nonempty = (gt_area > 0).cpu()
            gt_area_l = gt_area.tolist()
        else:
            pred_area, j, curves, nonempty, gt_area_l = pred.sum((1, 2)), None, None, None, [None] * n_frames
        pred_area_l = pred_area.tolist()
        j_l = j.tolist() if j is not None else [None] * n_frames

        call = state.null if null else state.seg
        if call.n_items == 0:
            call.first_key = key
        call.last_key = key
        call.n_items += 1
        call.n_frames += n_frames
        if null:
            positives = int((torch.sigmoid(logits_r) > 0.5).view(torch.uint8).sum(dtype=torch.int64))
            call.positives += positives
            call.pixels += n_frames * pixels
            state.n_null_items += 1
            state.n_null_frames += n_frames
            state.null_positive_total += positives
            state.null_pixel_total += n_frames * pixels
        else:
            kept = curves[nonempty]
            call.j_sum += float(j.double().sum())
            call.n_nonempty += kept.shape[0]
            state.n_items += 1
            state.n_frames += n_frames
            state.j_frame_sum += float(j.double().sum())
            state.inter_total += int(inter.sum())
            state.union_total += int(union.sum())
            state.n_nonempty_total += kept.shape[0]
            if kept.shape[0]:
                call.curve_sum = kept.sum(0) if call.curve_sum is None else call.curve_sum + kept.sum(0)
                state.curve_total = (
                    kept.sum(0) if state.curve_total is None else state.curve_total + kept.sum(0)
                )

        base = {"protocol": p.name, "key": key, "null": null, "call": call.index}
        for i in range(n_frames):
            f_best = float(curves[i].max()) if curves is not None and bool(nonempty[i]) else None
            self._rows.frames.append({
                **base, "frame": frames[i], "J": j_l[i], "F_best": f_best, "pred_area": pred_area_l[i],
                "gt_area": gt_area_l[i], "pixels": pixels, "object_score": scores[i] if scores else None, **meta,
            })  # fmt: skip
        if curves is not None:
            n_kept = int(nonempty.sum())
            clip_f = float(curves[nonempty].mean(0).max()) if n_kept else 0.0
            clip_j = float(j.double().mean())
        else:
            n_kept, clip_f, clip_j = None, None, None
        self._rows.clips.append({
            **base, "n_frames": n_frames, "n_frames_gt_nonempty": n_kept, "J": clip_j, "F": clip_f,
            "pred_area": sum(pred_area_l), "gt_area": None if gt_r is None else sum(gt_area_l),
            "pixels": n_frames * pixels, "object_score_mean": sum(scores) / len(scores) if scores else None, **meta,
        })  # fmt: skip
        if call.n_items == state.per_call:
            self._close(state, null)

    def _close(self, state: _ProtocolState, null: bool) -> None:
        call = state.null if null else state.seg
        row: Row = {
            "protocol": state.protocol.name, "call": call.index, "null": null, "n_items": call.n_items,
            "n_frames": call.n_frames, "first_key": call.first_key, "last_key": call.last_key,
        }  # fmt: skip
        if null:
            row.update(J=None, F=None, S_refavs=call.s())
            state.null_calls += 1
            state.s_call_sum += call.s()
            state.null = _Call(call.index + 1)
        else:
            row.update(J=call.j(), F=call.f(), S_refavs=None)
            state.seg_calls += 1
            state.j_call_sum += call.j()
            state.f_call_sum += call.f()
            state.seg = _Call(call.index + 1)
        self._rows.calls.append(row)

    # ------------------------------------------------------------------------------------------

    def merge(self, other: StreamingEvaluator) -> None:
        """Add another finished evaluator's sums into this one (same protocols, same order).

        For data-parallel evaluation: each process scores a disjoint set of whole calls, finishes,
        and the sums of closed calls add up to the single-process result. Rows are not merged
        (each process writes its own).
        """
        for mine, theirs in zip(self._states, other._states, strict=True):
            if mine.protocol.name != theirs.protocol.name:
                raise ValueError("evaluators to merge must have the same protocols in the same order")
            if mine.seg.n_items or mine.null.n_items or theirs.seg.n_items or theirs.null.n_items:
                raise ValueError("merge finished evaluators only (call finish() first)")
            for f in dataclasses.fields(mine):
                if f.name in ("protocol", "per_call", "seg", "null"):
                    continue
                a, b = getattr(mine, f.name), getattr(theirs, f.name)
                setattr(mine, f.name, b if a is None else a if b is None else a + b)

    def finish(self) -> dict[str, dict[str, float]]:
        """Close the partial last calls (the official DataLoader yields them as short batches) and
        return `result()`. Adding clips afterwards starts new calls."""
        for state in self._states:
            if state.seg.n_items:
                self._close(state, null=False)
            if state.null.n_items:
                self._close(state, null=True)
        return self.result()

    def result(self) -> dict[str, dict[str, float]]:
        """Aggregates per protocol name (see the module docstring), counting an open partial call as
        a call; does not change the evaluator's state."""
        out: dict[str, dict[str, float]] = {}
        for st in self._states:
            res: dict[str, float] = {}
            seg_calls, j_sum, f_sum = st.seg_calls, st.j_call_sum, st.f_call_sum
            if st.seg.n_items:
                seg_calls, j_sum, f_sum = seg_calls + 1, j_sum + st.seg.j(), f_sum + st.seg.f()
            if st.n_items:
                res["J"], res["F"] = j_sum / seg_calls, f_sum / seg_calls
                res["J&F"] = (res["J"] + res["F"]) / 2
                res.update(n_items=st.n_items, n_frames=st.n_frames, n_calls=seg_calls)
                res["diag_J_frame_mean"] = st.j_frame_sum / st.n_frames
                res["diag_J_sum_inter_over_sum_union"] = (
                    st.inter_total / st.union_total if st.union_total else 0.0
                )
                if st.curve_total is not None:
                    mean_curve = st.curve_total / st.n_nonempty_total
                    best = int(mean_curve.argmax())
                    res["diag_F_one_threshold"] = float(mean_curve[best])
                    res["diag_F_best_threshold"] = float(fmeasure_thresholds(st.protocol.n_thresholds)[best])
                else:
                    res["diag_F_one_threshold"] = 0.0
            null_calls, s_sum = st.null_calls, st.s_call_sum
            if st.null.n_items:
                null_calls, s_sum = null_calls + 1, s_sum + st.null.s()
            if st.n_null_items:
                res["S_refavs_sqrt_per_call"] = s_sum / null_calls
                res["S_auralsam2_foreground_ratio"] = st.null_positive_total / st.null_pixel_total
                if st.protocol.null_metric == "refavs_s":
                    res["S"] = res["S_refavs_sqrt_per_call"]
                elif st.protocol.null_metric == "foreground_ratio":
                    res["S"] = res["S_auralsam2_foreground_ratio"]
                res.update(
                    n_null_items=st.n_null_items, n_null_frames=st.n_null_frames, n_null_calls=null_calls
                )
            out[st.protocol.name] = res
        return out

    def flat_result(self, sep: str = "/") -> dict[str, float]:
        """`result()` flattened to `"<protocol>/<metric>"` keys (for MLflow)."""
        return {
            f"{name}{sep}{metric}": value
            for name, values in self.result().items()
            for metric, value in values.items()
        }

    def pop_rows(self) -> Rows:
        """Hand over (and forget) the rows gathered so far, e.g. to append them to Parquet files."""
        rows, self._rows = self._rows, Rows([], [], [])
        return rows
