"""AVSS (AVSBench-semantic, "V2") 71-class mIoU and F, accumulated and reduced as the official code does.

Official `_batch_miou_fscore` + `avss/test.py` (see `shared/reference/datasets_metrics.md` section 2.4):
for every frame f and class c, `inter = |pred=c and gt=c|`, `A_p = |pred=c|`, `A_g = |gt=c|`,
`U = A_p + A_g - inter`;
- `iou_sum[c] += inter / (U + 2.22e-16)`, `f_sum[c] += F_beta(inter / A_p, inter / A_g)` (NaN -> 0,
  beta^2 = 0.3), and `count[c] += 1` when `U > 0` (the class occurs in the prediction or the GT);
- at the end `m_c = iou_sum[c] / count[c]` (NaN -> 0) and **mIoU = the mean of m_c over all 71
  classes**: a class absent from the whole test set counts as 0. F is reduced the same way.

The official `miou_noBg` averages `m_c[:-1]`, which drops class 70 ("woman"), not the background
(class 0): a leftover of the background-index bug (AVSBench issue #23). Both are reported, named for
what they drop. The official test also scores the zero-padded frames of v1s/v1m clips (padding is
background); pass `valid` to leave them out.

Sums are kept in float64 (the official code accumulates float32); values agree to ~1e-7. The
accumulator only holds three (71,) vectors, so a split streams through it in any batch size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

AVSS_NUM_CLASSES = 71
_UNION_EPS = 2.220446049250313e-16  # the official `iou = inter / (eps + union)`


class SemanticScore(float):
    """A mean over classes that is a float (the official all-class value) and carries its variants.

    Attributes: `no_bg_official` (drops the last class, 70, exactly as the official `*_noBg`),
    `no_background` (drops class 0, the true no-background mean), `present_classes` (mean over the
    classes that occurred at least once: the official running print), `per_class` (the m_c values).
    """

    no_bg_official: float
    no_background: float
    present_classes: float
    per_class: tuple[float, ...]

    @classmethod
    def from_per_class(cls, per_class: Tensor, count: Tensor) -> SemanticScore:
        score = cls(float(per_class.mean()))
        score.no_bg_official = float(per_class[:-1].mean())
        score.no_background = float(per_class[1:].mean())
        present = count > 0
        score.present_classes = float(per_class[present].mean()) if bool(present.any()) else 0.0
        score.per_class = tuple(float(v) for v in per_class)
        return score

    def __repr__(self) -> str:
        return (
            f"SemanticScore({float(self):.6f}, no_bg_official={self.no_bg_official:.6f}, "
            f"no_background={self.no_background:.6f}, present_classes={self.present_classes:.6f})"
        )


class AVSSResult(NamedTuple):
    """`(miou, fscore)`; each a `SemanticScore` (a float with the no-background variants attached)."""

    miou: SemanticScore
    fscore: SemanticScore

    def as_dict(self, prefix: str = "avss_") -> dict[str, float]:
        """Flat, explicitly named values for logging (MLflow, Parquet)."""
        out: dict[str, float] = {}
        for name, score in (("miou", self.miou), ("fscore", self.fscore)):
            out[f"{prefix}{name}"] = float(score)
            out[f"{prefix}{name}_noBg_official_drops_class70"] = score.no_bg_official
            out[f"{prefix}{name}_no_background_drops_class0"] = score.no_background
            out[f"{prefix}{name}_present_classes"] = score.present_classes
        return out


class AVSSAccumulator:
    """Streams frames through the official per-class sums; `result()` applies the official reduction."""

    def __init__(self, num_classes: int = AVSS_NUM_CLASSES, beta2: float = 0.3) -> None:
        if num_classes < 2:
            raise ValueError(f"AVSSAccumulator: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.beta2 = beta2
        self.iou_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.f_sum = torch.zeros(num_classes, dtype=torch.float64)
        self.count = torch.zeros(num_classes, dtype=torch.int64)
        self.n_frames = 0

    def update(self, pred_labels: Tensor, gt_labels: Tensor, valid: Tensor | None = None) -> None:
        """pred_labels: (F, H, W) class ids, or (F, C, H, W) scores (argmax over C, as the official
        softmax + argmax); gt_labels: (F, H, W) class ids in [0, C); valid: (F,) bool, False = a padded
        frame to leave out (None = score every frame, as the official test does)."""
        c = self.num_classes
        if pred_labels.dim() == 4:
            if pred_labels.shape[1] != c:
                raise ValueError(
                    f"avss_semantic: pred scores have {pred_labels.shape[1]} channels, expected num_classes={c}"
                )
            pred_labels = pred_labels.argmax(1)
        if pred_labels.dim() != 3 or pred_labels.shape != gt_labels.shape:
            raise ValueError(
                f"avss_semantic: pred_labels (F, H, W) or (F, C, H, W) and gt_labels (F, H, W) must match, "
                f"got {tuple(pred_labels.shape)} and {tuple(gt_labels.shape)}"
            )
        if pred_labels.is_floating_point() or gt_labels.is_floating_point():
            raise ValueError("avss_semantic: labels must be integer class ids (pass scores as (F, C, H, W))")
        pred, gt = pred_labels.long(), gt_labels.long()
        if valid is not None:
            valid = torch.as_tensor(valid, dtype=torch.bool, device=pred.device).reshape(-1)
            if valid.numel() != pred.shape[0]:
                raise ValueError(
                    f"avss_semantic: valid has {valid.numel()} entries for {pred.shape[0]} frames"
                )
            pred, gt = pred[valid], gt[valid]
        n = pred.shape[0]
        if n == 0:
            return
        for name, labels in (("gt_labels", gt), ("pred_labels", pred)):
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= c:
                raise ValueError(
                    f"avss_semantic: {name} has class ids in [{low}, {high}], outside [0, {c}); map palette colours "
                    "with data_specs.palette.colours_to_labels and drop unmatched (ignore) pixels first"
                )
        offset = (torch.arange(n, device=pred.device) * c)[:, None]
        pred_idx, gt_idx = pred.reshape(n, -1) + offset, gt.reshape(n, -1) + offset
        area_pred = torch.bincount(pred_idx.reshape(-1), minlength=n * c).view(n, c).cpu().double()
        area_gt = torch.bincount(gt_idx.reshape(-1), minlength=n * c).view(n, c).cpu().double()
        hit = (pred_idx == gt_idx).reshape(-1)
        inter = torch.bincount(gt_idx.reshape(-1)[hit], minlength=n * c).view(n, c).cpu().double()
        union = area_pred + area_gt - inter
        self.iou_sum += (inter / (union + _UNION_EPS)).sum(0)
        self.count += (union > 0).sum(0)
        precision, recall = inter / area_pred, inter / area_gt
        fscore = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall)
        self.f_sum += torch.nan_to_num(fscore, nan=0.0).sum(0)
        self.n_frames += n

    def result(self) -> AVSSResult:
        """The official reduction: `sum / count` per class (NaN -> 0), mean over all classes."""
        miou = torch.nan_to_num(self.iou_sum / self.count, nan=0.0)
        fscore = torch.nan_to_num(self.f_sum / self.count, nan=0.0)
        return AVSSResult(
            SemanticScore.from_per_class(miou, self.count), SemanticScore.from_per_class(fscore, self.count)
        )


def avss_semantic(
    pred_labels: Tensor, gt_labels: Tensor, num_classes: int = AVSS_NUM_CLASSES, valid: Tensor | None = None
) -> AVSSResult:
    """Official AVSS `(miou, fscore)` of the given frames (see the module docstring and
    `AVSSAccumulator.update` for shapes). Each value is a float carrying `.no_bg_official` (drops
    class 70, the official `miou_noBg`), `.no_background` (drops class 0) and `.per_class`."""
    accumulator = AVSSAccumulator(num_classes)
    accumulator.update(pred_labels, gt_labels, valid)
    return accumulator.result()
