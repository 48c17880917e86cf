"""Our mask prompt (off in the released model; the synthetic demos use it): prompt SAM2, on every
frame, with a mask of where the referred sounding object is.

Audio: the AudioCon heads read the used levels' patch embeddings, summed (`mask_prompt_levels`; all
on the G x G grid, before any position encoding), and the per-frame audio token (before the 1-D
blocks mix frames); their per-cell cosine is high where the frame's sound comes from. A cell is on
where its cosine clears a learnt threshold AND `mask_prompt_peak_ratio` of the frame's best cosine:
within a frame the sounding object ranks first, but the level varies from frame to frame
(mixtures, quiet sources), so a global threshold alone both misses and over-marks. AudioCon then
supervises these projections only.

Text (Ref-AVS): two heads of their own map the same patch embeddings and each projected expression
token to unit vectors; the expression's vector is the max over its tokens (one word, e.g. a colour,
must survive 24 others and the padding), and the per-cell cosine, against its own learnt threshold
(starting at 0, about half the cells on; no peak rule: several objects may fit the words), marks
what the expression describes. With both, a cell is on only where
both maps are on (the minimum of the two margins): the text alone may describe several objects, the
audio alone may hear several, and the referred object is where they agree. The text heads learn
from the mask loss on the combined map only (there is no contrastive loss for text): where the audio
map is on and the object is not the referred one, the text must switch the cell off.

The logits `(N, 1, G, G)` go, as sigmoid, to SAM2's own (frozen) mask-prompt encoder. The released
dense and sparse prompts are multiplied by zero-initialised gates (dense/sparse x level), so
training starts from "frozen SAM2 + the mask prompt" (as ControlNet's zero convolutions): in a
short CPU budget the released prompts do not learn to hear and, added at full strength, they
override SAM2's response to a mask prompt (BENCHMARKS.md, "How the synthetic demo learnt to hear").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auralsam2.fuser.config import FuserConfig
from auralsam2.fuser.heads import PaperHead

__all__ = ["LEGACY_KEYS", "MaskPrompt"]

# Parameter names before the mask prompt became its own module (fuser checkpoints and training
# states written then still load: `auralsam2.checkpoints.fuser.upgrade_fuser_state`).
LEGACY_KEYS = {"mask_prompt_threshold": "mask_prompt.threshold", "prompt_gates": "mask_prompt.gates"}


class MaskPrompt(nn.Module):
    """The learnt thresholds, the prompt gates, the text heads, and the map from projections to mask logits."""

    def __init__(self, config: FuserConfig) -> None:
        super().__init__()
        self.levels = config.mask_prompt_levels
        self.peak_ratio = config.mask_prompt_peak_ratio
        self.temperature = config.mask_prompt_temperature
        self.threshold = nn.Parameter(torch.tensor(0.5))
        self.gates = nn.Parameter(torch.zeros(2, 3))  # (dense, sparse) x pyramid level
        if config.uses_text:
            # starts at 0 (about half the cells on): training starts from the audio map alone, and the
            # text learns to switch off what the expression does not describe
            self.text_threshold = nn.Parameter(torch.tensor(0.0))
            self.text_visual = PaperHead(config.dim, config.proj_dim)
            self.text_expression = PaperHead(config.dim, config.proj_dim)

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

    def _margin(self, cosine: Tensor, threshold: Tensor, peak_rule: bool = True) -> Tensor:
        """`cosine - threshold`, and (peak rule) at most `cosine - peak_ratio * frame's best cosine`."""
        margin = cosine - threshold
        if peak_rule and self.peak_ratio > 0:  # near the frame's best match too (a soft AND of both margins)
            peak = cosine.flatten(1).amax(1)[:, None, None]
            margin = torch.minimum(margin, cosine - self.peak_ratio * peak)
        return margin

    def forward(self, proj_visual: Tensor, proj_audio: Tensor | None, embedded: Tensor, text: Tensor | None,
                grid: tuple[int, int]) -> tuple[Tensor, Tensor | None, Tensor]:
        """AudioCon projections `(N, P, G, G)` and `(N, P)` (or None without audio), the position-free
        visual input `(N, G*G, C)` and the projected expression tokens `(L, C)` (or None without text)
        -> (unit-norm visual, unit-norm audio or None, mask logits `(N, 1, G, G)`).

        The audio map comes from the projections DETACHED: only AudioCon shapes it (letting the
        segmentation loss reach it through SAM2's frozen mask encoder measurably ruined it); the
        segmentation and mask losses learn its threshold.
        """
        # per cell and per frame unit vectors (the Ref-AVS official visual head normalises over
        # pixels, a released quirk: re-normalising is a no-op for the other heads)
        v = F.normalize(proj_visual, dim=1)
        a = None if proj_audio is None else F.normalize(proj_audio, dim=-1)
        margins = []
        if a is not None:
            margins.append(self._margin(torch.einsum("nphw,np->nhw", v.detach(), a.detach()), self.threshold))
        if text is not None:
            n, h, w = embedded.shape[0], *grid
            cells = F.normalize(self.text_visual(embedded), dim=-1).transpose(1, 2).reshape(n, -1, h, w)
            expression = F.normalize(self.text_expression(text).amax(0), dim=-1)  # (P,): max over the tokens
            # no peak rule: every object the expression describes is on, not only the best match
            margins.append(self._margin(torch.einsum("nphw,p->nhw", cells, expression), self.text_threshold, False))
        margin = margins[0] if len(margins) == 1 else torch.minimum(margins[0], margins[1])
        return v, a, (margin / self.temperature)[:, None]

    def gate(self, dense: list[Tensor] | None, sparse: list[Tensor] | None
             ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """The released prompts (pyramid order) times their gates."""
        gate_dense, gate_sparse = self.gates
        return (None if dense is None else [d * gate_dense[k] for k, d in enumerate(dense)],
                None if sparse is None else [q * gate_sparse[k] for k, q in enumerate(sparse)])
