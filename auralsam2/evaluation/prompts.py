"""The paper's prompt-engineering protocol (Tables 6 and 7): SAM2 prompts made from the ground truth
of the conditioning frame, for SAM2 alone and for AuralSAM2 with audio in one pass.

Modes: `points` = four points drawn uniformly from the GT mask's pixels, `box` = its bounding box,
`points+box` both, `mask` = the GT mask itself (the conditioning frame's output, as stock SAM2's
`add_new_mask`; SAM 2.1 configs set `use_mask_input_as_output_without_sam`). `none` = no SAM2 prompt
(AuralSAM2's audio-only rows). The points are drawn with a generator seeded by the item's key, so
every run, rank and method sees the same points. A conditioning frame whose GT is empty (or a
Ref-AVS null expression) gets no prompt: there is nothing to click on.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import torch
from torch import Tensor

from auralsam2.backbone.decoder import PointInputs, point_inputs_from_clicks
from auralsam2.backbone.transforms import preprocess_masks

PROMPT_MODES = ("points", "box", "points+box", "mask")
METHODS = ("sam2", "auralsam2")  # SAM2 alone (no fuser) / AuralSAM2 with its audio (and text) prompts
N_POINTS = 4

__all__ = ["METHODS", "N_POINTS", "PROMPT_MODES", "GTPrompts", "gt_prompts", "parse_prompt_modes"]


class GTPrompts(NamedTuple):
    """SAM2 prompts for one item's conditioning frame: `point_inputs` (clicks and/or box, model-input
    pixels) and/or `cond_mask` (1, 1, S, S) bool (the frame's output)."""

    point_inputs: PointInputs | None = None
    cond_mask: Tensor | None = None


def parse_prompt_modes(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`"points,box,points+box,mask"` (or a list) -> the modes, checked, in the given order."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in items if m not in PROMPT_MODES]
    if unknown or len(set(items)) != len(items):
        raise ValueError(f"prompt modes must be distinct values of {', '.join(PROMPT_MODES)}; got {items}")
    return tuple(items)


def gt_prompts(mask: Tensor, mode: str, image_size: int, key: str, seed: int = 0) -> GTPrompts | None:
    """Prompts of `mode` from the conditioning frame's GT `mask` (H, W) bool; None when it is empty."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; use one of {PROMPT_MODES}")
    mask = mask.bool().cpu()
    if not mask.any():
        return None
    hw = (int(mask.shape[0]), int(mask.shape[1]))
    if mode == "mask":
        full = preprocess_masks([mask.numpy()], image_size)[0] if hw != (image_size, image_size) else mask
        return GTPrompts(cond_mask=full.bool()[None, None])
    ys, xs = torch.nonzero(mask, as_tuple=True)
    points = labels = box = None
    if "points" in mode:
        generator = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
        picks = torch.randperm(len(xs), generator=generator)[:N_POINTS]
        picks = picks.repeat(N_POINTS)[:N_POINTS]  # a GT of fewer than four pixels repeats them
        points = torch.stack([xs[picks], ys[picks]], dim=1).float() + 0.5  # pixel centres
        labels = torch.ones(N_POINTS, dtype=torch.int32)
    if "box" in mode:
        box = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return GTPrompts(point_inputs=point_inputs_from_clicks(image_size, hw, points, labels, box))
