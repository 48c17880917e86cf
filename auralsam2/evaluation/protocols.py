"""Evaluation protocols: a named recipe of resolution, J threshold, grouping into calls and null
metric (AVSBench official, Ref-AVS official, the released AuralSAM2 trainer), and the resizing that
brings logits and ground truth to a protocol's resolution."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from auralsam2.evaluation.metrics import F_BETA2, N_THRESHOLDS, as_bool

__all__ = [
    "AURALSAM2_RELEASED",
    "AVSBENCH_OFFICIAL",
    "PROTOCOLS",
    "REFAVS_OFFICIAL",
    "Protocol",
    "at_model_resolution",
    "get_protocol",
    "resize_for_protocol",
    "resize_logits_and_gt",
]


@dataclass(frozen=True)
class Protocol:
    """A named evaluation recipe: at which resolution, with which J threshold, how frames are
    grouped into calls, and how calls are reduced. Every protocol reduces J and F the official way:
    per call (J = mean over the call's frames, F = max of the call's mean curve), then the mean over
    calls. Derive variants with `dataclasses.replace`; `at_model_resolution` gives the released
    protocol at a model's own image_size (e.g. 224 for the hiera_t configs)."""

    name: str
    resolution: int | None  # square side (pixels) every metric is computed at; None = as given
    j_threshold: float  # probability threshold of J, strict (`sigmoid(x) > t`)
    j_on_logits: bool  # True: binarise `logits > logit(t)` (AuralSAM2's `logits > 0`); False: sigmoid
    avs_clips_per_call: int | None  # AVSBench clips per call; None = protocol not defined for AVS
    ref_expressions_per_call: int | None  # Ref-AVS expressions per call; None = not defined for Ref-AVS
    null_metric: Literal["refavs_s", "foreground_ratio"] | None  # the headline S of the null split
    n_thresholds: int = N_THRESHOLDS
    beta2: float = F_BETA2
    description: str = ""
    # True: a model is scored at its own `image_size` (`at_model_resolution`); `resolution` is the
    # default when no model is known (the released trainer compares its image_size logits with the
    # labels resized to image_size: 1024, or 224 for its hiera_t configs)
    follows_model: bool = False

    def calls_of(self, task: Literal["avs", "ref"]) -> int:
        """Clips (AVS) or expressions (Ref-AVS) per call under this protocol."""
        per_call = self.avs_clips_per_call if task == "avs" else self.ref_expressions_per_call
        if task not in ("avs", "ref") or per_call is None:
            raise ValueError(
                f"protocol {self.name!r} defines no grouping for task {task!r}; use a protocol made for it "
                f"(AVSBENCH_OFFICIAL for avs, REFAVS_OFFICIAL for ref, AURALSAM2_RELEASED for both)"
            )
        return per_call

    def binarize(self, logits: Tensor) -> Tensor:
        """(F, H, W) float32 logits -> bool masks the way this protocol's J binarises them."""
        if self.j_on_logits:
            return logits > math.log(self.j_threshold / (1 - self.j_threshold))
        return torch.sigmoid(logits) > self.j_threshold


AVSBENCH_OFFICIAL = Protocol(
    name="avsbench_official",
    resolution=224,
    j_threshold=0.5,
    j_on_logits=False,
    avs_clips_per_call=1,
    ref_expressions_per_call=None,
    null_metric=None,
    description="AVSBench test.py: one clip per call, 224x224, sigmoid > 0.5, mean over clips",
)
REFAVS_OFFICIAL = Protocol(
    name="refavs_official",
    resolution=256,
    j_threshold=0.4,
    j_on_logits=False,
    avs_clips_per_call=None,
    ref_expressions_per_call=4,
    null_metric="refavs_s",
    description="Ref-AVS: 4 expressions x 10 frames per call, 256x256, J at sigmoid > 0.4, F per call, "
    "S = mean over calls of sqrt(positives/pixels)",
)
AURALSAM2_RELEASED = Protocol(
    name="auralsam2_released",
    resolution=1024,
    j_threshold=0.5,
    j_on_logits=True,
    avs_clips_per_call=1,
    ref_expressions_per_call=4,
    null_metric="foreground_ratio",
    follows_model=True,
    description="released AuralSAM2 trainer: the model's image_size (1024x1024; 224 for hiera_t), logits > 0, "
    "one clip per call (AVS), 4 expressions per call (Ref-AVS), null S = global foreground ratio without "
    "sqrt; its V2 numbers are class-agnostic (binarise AVSS labels > 0 before scoring)",
)
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (AVSBENCH_OFFICIAL, REFAVS_OFFICIAL, AURALSAM2_RELEASED)}


def get_protocol(name: str | Protocol) -> Protocol:
    """A protocol by name (`avsbench_official`, `refavs_official`, `auralsam2_released`) or as given."""
    if isinstance(name, Protocol):
        return name
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {sorted(PROTOCOLS)}") from None


def at_model_resolution(protocol: Protocol | str, image_size: int) -> Protocol:
    """The protocol as it scores a model of this `image_size`: a protocol that `follows_model` (the
    released trainer's) is scored at image_size x image_size, the others keep their own resolution."""
    protocol = get_protocol(protocol)
    if protocol.follows_model and protocol.resolution != image_size:
        return replace(protocol, resolution=image_size)
    return protocol


def resize_logits_and_gt(logits: Tensor, gt: Tensor | None, size: int | None) -> tuple[Tensor, Tensor | None]:
    """Resize (F, H, W) logits bilinearly (align_corners=False, no antialias, as SAM2 upsamples its
    masks) and the (F, H, W) gt by nearest neighbour with PIL's rule (source `floor((i + 0.5) * H / S)`,
    torch's "nearest-exact"; the released loaders resize PIL label images) to size x size.
    Returns float32 logits and bool gt; `size=None` or an equal size keeps them as they are."""
    logits = logits.float()
    if size is not None and tuple(logits.shape[-2:]) != (size, size):
        logits = F.interpolate(logits[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if gt is not None:
        if size is not None and tuple(gt.shape[-2:]) != (size, size):
            gt = F.interpolate(as_bool(gt).to(torch.uint8)[:, None], size=(size, size), mode="nearest-exact")
            gt = gt[:, 0]
        gt = as_bool(gt)
    return logits, gt


def resize_for_protocol(
    logits: Tensor, gt: Tensor | None, protocol: Protocol | str
) -> tuple[Tensor, Tensor | None]:
    """`resize_logits_and_gt` to the protocol's resolution."""
    return resize_logits_and_gt(logits, gt, get_protocol(protocol).resolution)
