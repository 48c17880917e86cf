"""The losses of our mask prompt (`auralsam2.fuser.mask_prompt`): the BCE of its logits, which
calibrates the mask threshold, and (Ref-AVS) the text contrast, which teaches the text map which of
a frame's objects the expression describes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from auralsam2.losses.contrastive import grid_foreground

__all__ = ["mask_prompt_loss", "mask_prompt_terms", "text_contrast_loss"]


def mask_prompt_loss(logits: Tensor, masks: Tensor, pos_weight: float = 1.0) -> Tensor:
    """BCE of mask-prompt logits `(F, 1, G, G)` against the GT `(F, S, S)` on the grid
    (`grid_foreground`), its positive cells weighted `pos_weight`; mean over cells and frames."""
    target = grid_foreground(masks, tuple(logits.shape[-2:]))[:, None]
    weight = None if pos_weight == 1.0 else torch.tensor(float(pos_weight), device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight)


def text_contrast_loss(text_cosine: Tensor, masks: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE over each frame's cells: the referred object's cells (weighted by the fraction of the
    cell it covers) against every cell of the frame, on the text map's cosines / `temperature`.
    Every cell is a negative, the silent object of the referred kind too: the text cannot know it
    is silent, but that object is the audio map's to switch off (measured: restricting the negatives
    to the cells the audio marks let the text map collapse).

    `text_cosine (F, 1, G, G)`, GT `(F, S, S)`. Frames where the object is absent add nothing (null
    expressions); mean over the other frames, 0 (graph kept, for DDP) when none."""
    grid = tuple(text_cosine.shape[-2:])
    target = F.adaptive_avg_pool2d((masks[:, None] > 0).float(), grid).flatten(1)  # (F, G*G) fraction covered
    logits = text_cosine.float().flatten(1) / temperature
    present = target.sum(1) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    positive = torch.logsumexp(logits + torch.log(target.clamp_min(1e-12)), dim=1)
    return (torch.logsumexp(logits, dim=1) - positive)[present].mean()


def mask_prompt_terms(logits: Tensor | None, text_cosine: Tensor | None, masks: Tensor,
                      text_contrast: tuple[float, float], pos_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """The mask prompt's two loss terms on the same frames, unweighted: (`mask_prompt_loss` with
    `pos_weight`, 0 without logits; `text_contrast_loss`, 0 without a text map or at weight 0), for
    `logits` `(F, 1, G, G)`, `text_cosine` `(F, 1, G, G)`, GT `(F, S, S)`,
    `text_contrast = (weight, temperature)`."""
    zero = masks.new_zeros((), dtype=torch.float32)
    mask = zero if logits is None else mask_prompt_loss(logits, masks, pos_weight)
    weight, temperature = text_contrast
    text = zero if text_cosine is None or weight == 0 else text_contrast_loss(text_cosine, masks, temperature)
    return mask, text
