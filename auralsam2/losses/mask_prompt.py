"""The loss of our mask prompt (`auralsam2.fuser.mask_prompt`): it calibrates the mask threshold."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from auralsam2.losses.contrastive import grid_foreground

__all__ = ["mask_prompt_loss"]


def mask_prompt_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """BCE of mask-prompt logits `(F, 1, G, G)` against the GT `(F, S, S)` on the grid
    (`grid_foreground`); mean over cells and frames."""
    target = grid_foreground(masks, tuple(logits.shape[-2:]))[:, None]
    return F.binary_cross_entropy_with_logits(logits.float(), target)
