"""The three released ways to turn SAM2's multimask output into one mask per frame.

`first`: mask 0. `iou_select`: the mask with the highest predicted IoU (released model selection
and Ref-AVS). `iou_occ_select`: `iou_select`, with the whole map set to 0 where the object score
is negative (an empty mask; sigmoid 0.5 everywhere for F-score thresholds, as released).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor

if TYPE_CHECKING:
    from auralsam2.backbone import FrameOutput

__all__ = ["DECODINGS", "DecodeMode", "decode_masks"]

DecodeMode = Literal["first", "iou_select", "iou_occ_select"]
DECODINGS: tuple[str, ...] = get_args(DecodeMode)


def decode_masks(frames: Sequence[FrameOutput], mode: DecodeMode = "iou_select") -> Tensor:
    """Pick one (S, S) logit map per frame from the 3 multimask outputs -> (N, S, S) (module doc)."""
    masks = torch.cat([f.high_res_masks for f in frames])  # (N, 3, S, S)
    if mode == "first":
        return masks[:, 0]
    if mode not in DECODINGS:
        raise ValueError(f"decoding mode must be one of {', '.join(DECODINGS)}, got {mode!r}")
    ious = torch.cat([f.ious for f in frames])
    picked = masks[torch.arange(masks.shape[0], device=masks.device), ious.argmax(dim=1)]
    if mode == "iou_occ_select":
        present = torch.cat([f.object_score_logits for f in frames]).reshape(-1, 1, 1) >= 0
        picked = torch.where(present, picked, torch.zeros_like(picked))
    return picked
