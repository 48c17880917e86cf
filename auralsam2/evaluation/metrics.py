"""Segmentation metrics exactly as the official AVSBench, Ref-AVS and AuralSAM2 code computes them.

Shapes: logits and ground truth are `(F, H, W)` for F frames of one *call* (one batch of the
official evaluation loop); ground truth is `{0, 1}` or bool. Everything is pure torch, runs on the
logits' device, and casts logits to float32 first (the official code evaluates float32 maps).

Official definitions (see `shared/reference/datasets_metrics.md` section 2):
- J (`mask_iou`): `sigmoid(x) > t` (strict; t = 0.5 AVSBench, 0.4 Ref-AVS); on an empty GT the frame
  scores the true-negative fraction. AuralSAM2 binarises `logits > 0` instead (`Protocol.j_on_logits`).
- F (`Eval_Fmeasure`): 255 float32 thresholds `linspace(0, 1 - 1e-10, 255)`, `p >= t` (non-strict),
  beta^2 = 0.3; frames with an empty GT are skipped; the call scores the max of the mean curve, and
  a call whose GTs are all empty scores 0.0. F depends on how frames are grouped into calls.
- S (Ref-AVS null split): mean over 40-frame calls of `sqrt(positives / pixels)`; AuralSAM2 reports
  the global positive-pixel ratio without the square root instead (`foreground_ratio`).

The F curve is computed in one pass (a per-frame histogram of which thresholds each pixel passes,
then reverse cumulative sums) instead of 255 passes; integer comparisons on the float32 bit
patterns make it reproduce the threshold loop pixel for pixel. The loop lives only in the tests and
in `bench/bench_metrics.py`, as an independent oracle.

Protocols (resolution, threshold, grouping into calls) are in `auralsam2.evaluation.protocols`,
the AVSS semantic metric in `auralsam2.evaluation.semantic`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = [
    "F_BETA2",
    "N_THRESHOLDS",
    "fmeasure",
    "fmeasure_curve",
    "fmeasure_from_curves",
    "fmeasure_histograms",
    "fmeasure_thresholds",
    "as_bool",
    "foreground_ratio",
    "is_binary",
    "jaccard",
    "jaccard_from_counts",
    "jaccard_from_masks",
    "mask_counts",
    "refavs_null_s",
]

J_EPS = 1e-7  # `mask_iou` eps, added to the union
PR_EPS = 1e-20  # `_eval_pr` eps, added to the predicted and GT areas
F_BETA2 = 0.3
N_THRESHOLDS = 255


# ----------------------------------------------------------------------------------------------
# input checks


def _check_logits(logits: Tensor, fn: str) -> Tensor:
    if not isinstance(logits, Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"{fn}: logits must be a float tensor (F, H, W), got {got}; add a frame axis for one frame"
        )
    logits = logits.float()
    if logits.numel() and bool(
        torch.isnan(logits.max())
    ):  # max propagates NaN; 5x cheaper than isnan().any()
        raise ValueError(f"{fn}: logits contain NaN; the model output is broken, fix it before evaluating")
    return logits


def is_binary(mask: Tensor) -> bool:
    """True when every value of the mask is 0 or 1 (always for bool)."""
    if mask.dtype == torch.bool or mask.numel() == 0:
        return True
    if not mask.is_floating_point():
        low, high = torch.aminmax(mask)
        return bool(low >= 0) and bool(high <= 1)
    return not bool(((mask != 0) & (mask != 1)).any())


def _check_gt(gt: Tensor, shape: torch.Size, fn: str) -> Tensor:
    """Returns gt as bool; rejects anything that is not {0, 1} (e.g. 255 palette masks)."""
    if not isinstance(gt, Tensor) or gt.shape != shape:
        got = tuple(gt.shape) if isinstance(gt, Tensor) else type(gt).__name__
        raise ValueError(f"{fn}: gt must be a tensor with the logits' shape {tuple(shape)}, got {got}")
    if gt.dtype == torch.bool:
        return gt
    if not is_binary(gt):
        raise ValueError(
            f"{fn}: gt must hold only 0 and 1 (or bool); got values {torch.unique(gt)[:8].tolist()}; "
            "binarise label maps first (e.g. `labels > 0`)"
        )
    return gt != 0


# ----------------------------------------------------------------------------------------------
# J


def mask_counts(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-frame int64 counts (F,) of binary masks pred, gt (F, H, W): `|P and G|`, `|P or G|`, `|P|`, `|G|`."""
    if pred.dim() != 3 or pred.shape != gt.shape:
        raise ValueError(
            f"mask_counts: pred and gt must both be (F, H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    pred, gt = as_bool(pred), as_bool(gt)
    inter, pred_area, gt_area = _count(pred & gt), _count(pred), _count(gt)
    return inter, pred_area + gt_area - inter, pred_area, gt_area


def as_bool(mask: Tensor) -> Tensor:
    """A {0, 1} / class-id / bool mask as bool (non-zero = foreground)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _count(mask: Tensor) -> Tensor:
    """(F, H, W) bool -> (F,) int64 count of True; summing the bytes is ~2x faster than a bool sum."""
    return mask.view(torch.uint8).sum((1, 2), dtype=torch.int32).long()


def jaccard_from_counts(
    inter: Tensor, union: Tensor, gt_area: Tensor, pixels: int, eps: float = J_EPS
) -> Tensor:
    """The `mask_iou` rule on per-frame counts (F,): `inter / (union + eps)`; on an empty GT,
    `true negatives / (HW + eps)` with true negatives = `HW - union`. float32 from exact integer
    counts: the same arithmetic as the official code, so the values match it bit for bit."""
    empty = gt_area == 0
    inter = torch.where(empty, pixels - union, inter)
    union = torch.where(empty, torch.full_like(union, pixels), union)
    return inter.float() / (union.float() + eps)


def jaccard_from_masks(pred: Tensor, gt: Tensor, eps: float = J_EPS) -> Tensor:
    """Per-frame Jaccard (F,) float32 of binary masks pred, gt (F, H, W), AVSBench `mask_iou` rule:
    `|P and G| / (|P or G| + eps)`; on an empty GT the fraction of pixels correctly predicted empty."""
    inter, union, _, gt_area = mask_counts(pred, gt)
    return jaccard_from_counts(inter, union, gt_area, pred.shape[1] * pred.shape[2], eps)


def jaccard(logits: Tensor, gt: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-frame Jaccard (F,) float32 of `sigmoid(logits) > threshold` (strict) against gt (F, H, W).

    AVSBench uses threshold 0.5, Ref-AVS 0.4. Empty GT: the true-negative fraction (see
    `jaccard_from_masks`). The call-level official value is the mean of this vector.
    """
    logits = _check_logits(logits, "jaccard")
    gt = _check_gt(gt, logits.shape, "jaccard")
    return jaccard_from_masks(torch.sigmoid(logits) > threshold, gt)


# ----------------------------------------------------------------------------------------------
# F: the one-pass curve

# Pixels are binned by the float32 bit pattern of p: for non-negative floats, bits(p) >= bits(t)
# exactly when p >= t, so integer comparisons reproduce the official `p >= t` decisions exactly.
# A bucket is the top bits of the pattern (bits >> _LUT_SHIFT); table `lo[b]` counts the thresholds
# below bucket b and `thr[b]` holds the bit pattern of the one threshold inside it (or int32 max), so
# #{k : p >= t_k} = lo[b] + (bits >= thr[b]): two table lookups instead of a binary search.
_LUT_SHIFT = 14
_ONE_BITS = 0x3F800000  # bits of 1.0f: the largest probability
_CHUNK_PIXELS = 1 << 19  # frames per histogram chunk ~ this many pixels (keeps the work in cache)


def fmeasure_thresholds(n_thresholds: int = N_THRESHOLDS) -> Tensor:
    """The official threshold list: float32 `linspace(0, 1 - 1e-10, n)` on CPU (the last one rounds to 1.0)."""
    return torch.linspace(0, 1 - 1e-10, n_thresholds, dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _threshold_tables(n_thresholds: int, device: str) -> tuple[Tensor, Tensor | None, Tensor | None]:
    thresholds = fmeasure_thresholds(n_thresholds)
    bits = thresholds.view(torch.int32)
    buckets = bits >> _LUT_SHIFT
    lo = thr = None
    if n_thresholds > 0 and bool((buckets[1:] > buckets[:-1]).all()) and float(thresholds[0]) >= 0:
        # At most one threshold per bucket (true for n up to ~1000): build the lookup tables.
        n_buckets = (_ONE_BITS >> _LUT_SHIFT) + 1
        lo = torch.searchsorted(buckets, torch.arange(n_buckets, dtype=torch.int32)).to(torch.int32)
        thr = torch.full((n_buckets,), torch.iinfo(torch.int32).max, dtype=torch.int32)
        thr[buckets.long()] = bits
        lo, thr = lo.to(device), thr.to(device)
    return thresholds.to(device), lo, thr


def _passed_thresholds(probs: Tensor, tables: tuple[Tensor, Tensor | None, Tensor | None]) -> Tensor:
    """int32 tensor like probs: how many thresholds each probability reaches (#{k : p >= t_k})."""
    thresholds, lo, thr = tables
    if lo is None:  # thresholds too dense for the tables: exact, slower binary search
        return torch.searchsorted(thresholds, probs.contiguous(), right=True, out_int32=True)
    bits = probs.contiguous().view(torch.int32)
    bucket = (bits >> _LUT_SHIFT).reshape(-1)
    count = lo.index_select(0, bucket).view_as(bits)
    count += bits >= thr.index_select(0, bucket).view_as(bits)
    return count


def fmeasure_histograms(logits: Tensor, gt: Tensor, n_thresholds: int = N_THRESHOLDS) -> Tensor:
    """Per-frame histograms (F, 2, n+1) int64: `[f, g, k]` counts pixels of frame f with gt == g that
    reach exactly k thresholds. Pixels passing threshold k (`p >= t_k`) are those in bins k+1..n.

    Exposed because a histogram is all the F-measure needs: sums of histograms over frames give the
    curves of any grouping, at any resolution, without keeping probabilities around.
    """
    logits = _check_logits(logits, "fmeasure_histograms")
    gt = _check_gt(gt, logits.shape, "fmeasure_histograms")
    tables = _threshold_tables(n_thresholds, str(logits.device))
    n_frames = logits.shape[0]
    pixels = logits.shape[1] * logits.shape[2]
    bins = n_thresholds + 1
    out = torch.empty(n_frames, 2, bins, dtype=torch.int64, device=logits.device)
    # One sigmoid over the whole tensor, as the official code does: torch's vectorised sigmoid and
    # its scalar tail can differ by one ulp, so the probabilities depend on the call's layout.
    probs = torch.sigmoid(logits).reshape(n_frames, pixels)
    chunk = max(1, _CHUNK_PIXELS // max(pixels, 1))
    offsets = (torch.arange(chunk, dtype=torch.int32, device=logits.device) * (2 * bins))[:, None]
    for start in range(0, n_frames, chunk):
        stop = min(start + chunk, n_frames)
        index = _passed_thresholds(probs[start:stop], tables)
        index += gt[start:stop].reshape(stop - start, pixels).to(torch.int32) * bins
        index += offsets[: stop - start]
        counts = torch.bincount(index.reshape(-1), minlength=(stop - start) * 2 * bins)
        out[start:stop] = counts.view(stop - start, 2, bins)
    return out


def _curves_from_histograms(hist: Tensor, beta2: float) -> Tensor:
    """(F, 2, n+1) histograms -> (F, n) float32 F-curves with the official arithmetic."""
    # reached[f, g, k] = pixels reaching at least k thresholds; passing threshold k = reached[..., k+1]
    reached = hist.flip(-1).cumsum(-1).flip(-1)
    tp = reached[:, 1, 1:].float()
    predicted = (reached[:, 0, 1:] + reached[:, 1, 1:]).float()
    gt_area = hist[:, 1].sum(-1, keepdim=True).float()
    prec = tp / (predicted + PR_EPS)
    rec = tp / (gt_area + PR_EPS)
    curve = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    return torch.nan_to_num(curve, nan=0.0)  # 0/0 where nothing is predicted or nothing is hit


def fmeasure_curve(
    logits: Tensor, gt: Tensor, n_thresholds: int = N_THRESHOLDS, beta2: float = F_BETA2
) -> Tensor:
    """Per-frame F-curves (F, n_thresholds) float32 over the official thresholds (`p >= t`, p = sigmoid).

    `prec = TP / (|Y| + 1e-20)`, `rec = TP / (|G| + 1e-20)`, `F = (1 + b2) P R / (b2 P + R)`, NaN -> 0:
    the same float32 arithmetic as `_eval_pr`/`Eval_Fmeasure` on exact counts. A frame with an empty
    GT gets an all-zero curve (the official call skips such frames; see `fmeasure`).
    """
    return _curves_from_histograms(fmeasure_histograms(logits, gt, n_thresholds), beta2)


def fmeasure_from_curves(curves: Tensor, gt_nonempty: Tensor) -> float:
    """The `Eval_Fmeasure` reduction of one call: mean curve over the frames whose GT is non-empty,
    then its maximum over thresholds; 0.0 when every GT of the call is empty.
    curves: (F, n); gt_nonempty: (F,) bool."""
    kept = curves[gt_nonempty.to(curves.device)]
    if kept.shape[0] == 0:
        return 0.0
    return float(kept.double().mean(0).max())


def fmeasure(logits: Tensor, gt: Tensor) -> float:
    """AVSBench `Eval_Fmeasure` for one call of F frames (F, H, W): a single best threshold per call.

    Batch-dependent by construction: the value changes with how frames are grouped into calls.
    """
    logits = _check_logits(logits, "fmeasure")
    gt = _check_gt(gt, logits.shape, "fmeasure")
    return fmeasure_from_curves(fmeasure_curve(logits, gt), gt.flatten(1).any(1))


# ----------------------------------------------------------------------------------------------
# S: the Ref-AVS null split


def refavs_null_s(logits: Tensor, batch_frames: int = 40) -> float:
    """Official Ref-AVS S (lower is better): consecutive calls of `batch_frames` frames (4 null
    expressions x 10 frames; a shorter last call counts as a call, as the DataLoader yields it),
    each scoring `sqrt(#(sigmoid > 0.5) / #pixels)`, averaged over calls. logits (F, H, W); no GT."""
    logits = _check_logits(logits, "refavs_null_s")
    if logits.shape[0] == 0 or batch_frames < 1:
        raise ValueError(
            f"refavs_null_s: need at least one frame and batch_frames >= 1, got {logits.shape[0]}, {batch_frames}"
        )
    scores = []
    for start in range(0, logits.shape[0], batch_frames):
        call = logits[start : start + batch_frames]
        scores.append(math.sqrt(int((torch.sigmoid(call) > 0.5).sum()) / call.numel()))
    return sum(scores) / len(scores)


def foreground_ratio(logits: Tensor) -> float:
    """AuralSAM2's released null metric (`ForegroundS` + `valid_null`): the global ratio
    `#(sigmoid > 0.5) / #pixels` over every frame given, without the square root (roughly S^2 of the
    Ref-AVS definition; not comparable with Ref-AVS paper numbers). logits (F, H, W)."""
    logits = _check_logits(logits, "foreground_ratio")
    if logits.numel() == 0:
        raise ValueError("foreground_ratio: no pixels given")
    return int((torch.sigmoid(logits) > 0.5).sum()) / logits.numel()
