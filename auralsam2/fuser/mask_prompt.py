"""Our mask prompt (off in the released model; the synthetic demo uses it): prompt SAM2, on every
frame, with a mask of where the frame's sound is.

The AudioCon heads read the used levels' patch embeddings, summed (`mask_prompt_levels`; all on the
G x G grid, before any position encoding), and the per-frame audio token (before the 1-D blocks mix
frames); their per-cell cosine gives mask-prompt logits `(N, 1, G, G)` that `AuralSAM2` feeds, as
sigmoid, to SAM2's own (frozen) mask-prompt encoder. A cell is on where its cosine clears a learnt
threshold AND `mask_prompt_peak_ratio` of the frame's best cosine: within a frame the sounding
object ranks first, but the level varies from frame to frame (mixtures, quiet sources), so a
global threshold alone both misses and over-marks. AudioCon then supervises these projections only.

The released dense and sparse prompts are multiplied by zero-initialised gates (dense/sparse x
level), so training starts from "frozen SAM2 + the mask prompt" (as ControlNet's zero
convolutions): in a short CPU budget the released prompts do not learn to hear and, added at full
strength, they override SAM2's response to a mask prompt (BENCHMARKS.md, "How the synthetic demo
learnt to hear").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auralsam2.fuser.config import FuserConfig

__all__ = ["LEGACY_KEYS", "MaskPrompt"]

# Parameter names before the mask prompt became its own module (fuser checkpoints and training
# states written then still load: `auralsam2.checkpoints.fuser.upgrade_fuser_state`).
LEGACY_KEYS = {"mask_prompt_threshold": "mask_prompt.threshold", "prompt_gates": "mask_prompt.gates"}


class MaskPrompt(nn.Module):
    """The learnt threshold, the prompt gates, and the map from AudioCon projections to mask logits."""

    def __init__(self, config: FuserConfig) -> None:
        super().__init__()
        self.levels = config.mask_prompt_levels
        self.peak_ratio = config.mask_prompt_peak_ratio
        self.temperature = config.mask_prompt_temperature
        self.threshold = nn.Parameter(torch.tensor(0.5))
        self.gates = nn.Parameter(torch.zeros(2, 3))  # (dense, sparse) x pyramid level

    def visual_input(self, patches: Sequence[Tensor]) -> Tensor:
        """Patch embeddings `(N, C, G, G)` of the used levels (fine to coarse) -> `(N, G*G, C)`: the
        finest alone, or the sum of all (`mask_prompt_levels`)."""
        flat = [x.flatten(2).transpose(1, 2) for x in patches]
        if self.levels == "finest":
            return flat[0]
        summed = flat[0]
        for x in flat[1:]:
            summed = summed + x
        return summed

    def forward(self, proj_visual: Tensor, proj_audio: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """AudioCon projections `(N, P, G, G)`, `(N, P)` -> (unit-norm visual, unit-norm audio,
        mask logits `(N, 1, G, G)`).

        The logits come from the projections DETACHED: only AudioCon shapes the map (letting the
        segmentation loss reach it through SAM2's frozen mask encoder measurably ruined it); the
        segmentation loss and the mask loss learn the threshold.
        """
        # per cell and per frame unit vectors (the Ref-AVS official visual head normalises over
        # pixels, a released quirk: re-normalising is a no-op for the other heads)
        v, a = F.normalize(proj_visual, dim=1), F.normalize(proj_audio, dim=-1)
        cosine = torch.einsum("nphw,np->nhw", v.detach(), a.detach())  # (N, G, G)
        margin = cosine - self.threshold
        if self.peak_ratio > 0:  # and near the frame's best match (a soft AND of both margins)
            peak = cosine.flatten(1).amax(1)[:, None, None]
            margin = torch.minimum(margin, cosine - self.peak_ratio * peak)
        return v, a, (margin / self.temperature)[:, None]

    def gate(self, dense: list[Tensor] | None, sparse: list[Tensor] | None
             ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """The released prompts (pyramid order) times their gates."""
        gate_dense, gate_sparse = self.gates
        return (None if dense is None else [d * gate_dense[k] for k, d in enumerate(dense)],
                None if sparse is None else [q * gate_sparse[k] for k, q in enumerate(sparse)])
