"""SAM2's multi-mask segmentation loss, as the released AuralSAM2 trains with it.

Released `loss/training/sam2_training_loss.py` (SAM2's `MultiStepMultiMasksAndIous` with the
AuralSAM2 yaml): per supervised frame, on the 3 multimask logits at model resolution `(3, S, S)`
against the GT `(S, S)`:
  * focal (alpha 0.25, gamma 2), mean over pixels, one value per mask;
  * dice `1 - (2 sum(sigmoid*g) + 1) / (sum sigmoid + sum g + 1)` per mask;
  * IoU loss: L1 between the predicted IoU and the IoU of `(logit > 0)` vs `(gt > 0)`, averaged
    over the 3 masks (`supervise_all_iou`);
  * only the mask with the lowest `20 focal + dice` contributes focal and dice;
  * focal, dice and IoU are multiplied by `any(gt > 0)`: empty-GT frames get no mask loss;
  * object score: plain BCE (focal with gamma 0, no alpha) against `any(gt > 0)`;
  * everything is SUMMED over supervised frames (num_objects = 1); total =
    20 focal + dice + iou + class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

__all__ = ["SegLossWeights", "dice_per_mask", "focal_per_mask", "iou_l1_per_mask", "segmentation_loss",
           "supervised_frames"]


class SegLossWeights(BaseModel):
    """Weights of the released segmentation loss terms (SAM2 training yaml used by AuralSAM2)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan: a typo, never a setting

    focal: float = Field(20.0, description="weight of the focal term (`loss_mask`)")
    dice: float = Field(1.0, description="weight of the dice term")
    iou: float = Field(1.0, description="weight of the L1 IoU-prediction term")
    object_score: float = Field(1.0, description="weight of the object-score BCE (`loss_class`)")
    focal_alpha: float = Field(0.25, description="focal alpha (SAM2 constructor default)")
    focal_gamma: float = Field(2.0, description="focal gamma (SAM2 constructor default)")


def focal_per_mask(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss averaged over pixels: `(F, M, H, W)` logits/targets -> `(F, M)`.

    `alpha < 0` disables the alpha weighting (then gamma 0 gives plain BCE).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(2).mean(-1)


def dice_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss with +1 smoothing: `(F, M, H, W)` -> `(F, M)`."""
    prob = logits.sigmoid().flatten(2)
    targets = targets.flatten(2)
    return 1 - (2 * (prob * targets).sum(-1) + 1) / (prob.sum(-1) + targets.sum(-1) + 1)


def iou_l1_per_mask(logits: Tensor, targets: Tensor, pred_ious: Tensor) -> Tensor:
    """|predicted IoU - IoU((logit > 0), (gt > 0))|: `(F, M, H, W)`, `(F, M)` -> `(F, M)`."""
    pred = logits.flatten(2) > 0
    gt = targets.flatten(2) > 0
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return (pred_ious - inter / union.clamp(min=1.0)).abs()


def segmentation_loss(
    masks: Tensor,
    ious: Tensor,
    object_score_logits: Tensor,
    targets: Tensor,
    weights: SegLossWeights | None = None,
) -> dict[str, Tensor]:
    """The released multimask loss summed over the given (supervised) frames.

    `masks` `(F, 3, S, S)` high-res multimask logits, `ious` `(F, 3)`, `object_score_logits`
    `(F, 1)`, `targets` `(F, S, S)` (or `(F, 1, S, S)`) binary GT at the same resolution.
    Returns `focal`, `dice`, `iou`, `object_score` (unweighted sums over frames) and `total`
    (weighted sum). Per frame the mask minimising `w_focal * focal + w_dice * dice` is the one
    supervised; mask terms are zero for frames whose GT is empty.
    """
    w = weights or SegLossWeights()
    if targets.ndim == 3:
        targets = targets[:, None]
    targets = targets.to(masks.dtype)
    if targets.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"targets {tuple(targets.shape)} and masks {tuple(masks.shape)} differ in size")
    expanded = targets.expand_as(masks)
    focal = focal_per_mask(masks, expanded, w.focal_alpha, w.focal_gamma)
    dice = dice_per_mask(masks, expanded)
    iou = iou_l1_per_mask(masks, expanded, ious)
    has_object = (targets[:, 0] > 0).flatten(1).any(-1).to(masks.dtype)  # (F,)
    best = torch.argmin(w.focal * focal + w.dice * dice, dim=-1)
    rows = torch.arange(masks.shape[0], device=masks.device)
    focal_term = (focal[rows, best] * has_object).sum()
    dice_term = (dice[rows, best] * has_object).sum()
    iou_term = (iou.mean(-1) * has_object).sum()
    obj_term = F.binary_cross_entropy_with_logits(
        object_score_logits.reshape(-1), has_object, reduction="none"
    ).sum()
    total = w.focal * focal_term + w.dice * dice_term + w.iou * iou_term + w.object_score * obj_term
    return {"focal": focal_term, "dice": dice_term, "iou": iou_term, "object_score": obj_term, "total": total}


def supervised_frames(
    subset: str,
    num_frames: int,
    split: str = "train",
    batch_subsets: Sequence[str] | None = None,
) -> list[int]:
    """Which frames of a clip the training loss supervises (released rule).

    AVSBench v1s (release-1 name S4) TRAIN clips have a mask for frame 0 only: supervise `[0]`.
    v1m/MS3, v2, Ref-AVS and the synthetic world: every frame. The v2 "merged pool" (v1s + v1m +
    v2 trained together) supervises all frames unless ANY clip of the batch is v1s, then only
    frame 0 (released: `outputs[0:1]`); pass the batch's subsets as `batch_subsets`. Validation and
    test splits are labelled on every frame.
    """
    single = {"v1s", "s4"}
    if split != "train":
        return list(range(num_frames))
    batch = {s.lower() for s in (batch_subsets or [])} | {subset.lower()}
    if batch & single:
        return [0]
    return list(range(num_frames))
