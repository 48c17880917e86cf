"""Our mask prompt (off in the released model; the synthetic demos use it): prompt SAM2, on every
frame, with a mask of where the referred sounding object is.

Audio: the AudioCon heads read the used levels' patch embeddings, summed (`mask_prompt_levels`; all
on the G x G grid, before any position encoding), and the per-frame audio token (before the 1-D
blocks mix frames); their per-cell cosine is high where the frame's sound comes from. A cell is on
where its cosine clears a learnt threshold AND `mask_prompt_peak_ratio` of the frame's best cosine:
within a frame the sounding object ranks first, but the level varies from frame to frame
(mixtures, quiet sources), so a global threshold alone both misses and over-marks. AudioCon then
supervises these projections only. `train.mask_prompt_warmup_epochs` trains them first on AudioCon
alone, cheaply (`auralsam2.engine.warmup`, the map's own logits telling hard cells from easy ones).

Text (Ref-AVS): two heads map patch embeddings and each projected expression token to unit vectors;
the expression's vector is the max over its tokens (one word, e.g. a colour, must survive 24 others
and the padding), and their per-cell cosine marks what the expression describes, against its own
learnt threshold (starting at 0; no peak rule: several objects may fit the words). How the text
map joins the audio map is `mask_prompt_text`:

- `min` (the first design): the text heads read the fuser's own patch embeddings and expression
  tokens, and a cell is on only where both maps are on (the minimum of the two margins). Measured on
  the synthetic Ref-AVS world it does not learn to read: wherever the text is the more confident map
  no gradient reaches it, its threshold never moves, and it stays on over every object.
- `relative`: the text map has a branch of its own (patch convolutions on the raw pyramid, a
  projection of the raw expression hidden states), trained by the text contrast loss alone
  (`losses.mask_prompt.text_contrast_loss`: which of the frame's cells the words describe), and
  it SHIFTS the audio margin: `audio margin + gate * (text cosine - frame's best text cosine)`, the
  text term detached, the gate learnt (starting at `mask_prompt_text_gate`). The referred object
  keeps the audio's margin; a sounder the words do not describe is pushed off in proportion to how
  much worse it fits them. Without audio (`modalities: text`) the text margin is the mask.

- `joint`: a per-cell logistic model: `(bias + a x audio cosine + b x text cosine) / T`, with the
  scales and the bias learnt, trained by the mask loss together with the heads (not detached); the
  audio heads read patch embeddings of their own and the text branch reads the cells' appearance,
  their position (`mask_prompt_text_visual`: "on the left") or both. No threshold, no peak rule: the
  bias is the threshold, and a silent frame can be empty. `mask_prompt_audio_clip` adds a third
  term, each cell's best audio cosine over all of the clip's frames: Ref-AVS masks the referred
  object on every frame, also the seconds it is silent, which the frame's own sound cannot tell
  from a silent object of the named half. Its maps need no SAM2 pass, so
  `train.mask_prompt_warmup_epochs` (or `_steps`) trains them first, cheaply
  (`auralsam2.engine.warmup`), `optim.mask_prompt_lr_scale: 0` keeps them so in the main loop, and
  SAM2 reads the mask detached (the segmentation loss through SAM2's frozen mask encoder undid them).

The logits `(N, 1, G, G)` go, as sigmoid (or decided, 1 where positive: `mask_prompt_binary`), to
SAM2's own (frozen) mask-prompt encoder. The released dense and sparse prompts are multiplied by
zero-initialised gates (dense/sparse x level), so training starts from "frozen SAM2 + the mask
prompt" (as ControlNet's zero convolutions): in a short CPU budget the released prompts do not learn
to hear and, added at full strength, they override SAM2's response to a mask prompt (BENCHMARKS.md,
"How the synthetic demo learnt to hear").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auralsam2.fuser.config import FuserConfig
from auralsam2.fuser.heads import PaperHead

__all__ = ["LEGACY_KEYS", "MaskPrompt", "MaskPromptMaps"]

# Parameter names before the mask prompt became its own module (fuser checkpoints and training
# states written then still load: `auralsam2.checkpoints.fuser.upgrade_fuser_state`).
LEGACY_KEYS = {"mask_prompt_threshold": "mask_prompt.threshold", "prompt_gates": "mask_prompt.gates"}

# kernel = stride per pyramid level (s4, s8, s16): every level lands on the s16 grid
PATCH_STRIDES = (4, 2, 1)


class MaskPromptMaps(NamedTuple):
    """`MaskPrompt.forward`: unit-norm AudioCon projections `visual (N, P, G, G)` and `audio (N, P)`
    (None without audio), the mask `logits (N, 1, G, G)`, and the text map's per-cell cosine
    `text_cosine (N, 1, G, G)` (None without text): what the text contrast loss reads."""

    visual: Tensor
    audio: Tensor | None
    logits: Tensor
    text_cosine: Tensor | None


class MaskPrompt(nn.Module):
    """The learnt thresholds, the prompt gates, the text heads, and the map from projections to mask logits."""

    def __init__(self, config: FuserConfig) -> None:
        super().__init__()
        self.levels = config.mask_prompt_levels
        self.peak_ratio = config.mask_prompt_peak_ratio
        self.temperature = config.mask_prompt_temperature
        self.joint = config.mask_prompt_text == "joint"
        if not self.joint:  # `joint` learns a bias instead
            self.threshold = nn.Parameter(torch.tensor(0.5))
        self.gates = nn.Parameter(torch.zeros(2, 3))  # (dense, sparse) x pyramid level
        if config.uses_text:
            if not self.joint:
                # starts at 0 (about half the cells on): training starts from the audio map alone, and
                # the text learns to switch off what the expression does not describe
                self.text_threshold = nn.Parameter(torch.tensor(0.0))
            self.text_visual = PaperHead(config.dim, config.proj_dim)
            self.text_expression = PaperHead(config.dim, config.proj_dim)
        self.relative_text = config.uses_text and config.mask_prompt_text == "relative"
        self.text_reads = config.mask_prompt_text_visual
        if config.uses_text and config.mask_prompt_text in ("relative", "joint"):
            # the text map's own branch, on the fuser's raw inputs
            c = config.dim
            if self.text_reads != "position":
                self.text_patch_embeds = nn.ModuleList(
                    nn.Conv2d(c, c, PATCH_STRIDES[k], PATCH_STRIDES[k]) if k in config.used_levels
                    else nn.Identity() for k in range(3))
            self.text_tokens = nn.Sequential(nn.Linear(config.text_dim, config.text_hidden), nn.GELU(),
                                             nn.Linear(config.text_hidden, c))
            self.used_levels = config.used_levels
        if self.relative_text:
            self.text_gate = nn.Parameter(torch.tensor(float(config.mask_prompt_text_gate)))
        if self.joint and config.uses_audio:
            # the audio map's own patch embeddings: the released prompts' training never moves its inputs
            c = config.dim
            self.audio_patch_embeds = nn.ModuleList(
                nn.Conv2d(c, c, PATCH_STRIDES[k], PATCH_STRIDES[k]) if k in config.used_levels else nn.Identity()
                for k in range(3))
            self.used_levels = config.used_levels
        if self.joint:
            # (audio, text) scales and the bias, all divided by the temperature: logits start at
            # -5 + 10 x (audio cosine + text cosine)
            t = config.mask_prompt_temperature
            self.joint_scales = nn.Parameter(torch.full((2,), 10.0 * t))
            self.joint_bias = nn.Parameter(torch.tensor(-5.0 * t))
            if config.mask_prompt_audio_clip and config.uses_audio:  # starts as strong as the frame's own term
                self.joint_clip_scale = nn.Parameter(torch.tensor(10.0 * t))

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

    @property
    def reads_own_patches(self) -> bool:
        """The AudioCon heads read the map's own patch embeddings (`joint` with audio), not the fuser's."""
        return hasattr(self, "audio_patch_embeds")

    def audio_visual_input(self, pyramid: Sequence[Tensor], patches: Sequence[Tensor] | None) -> Tensor:
        """The AudioCon heads' visual input `(N, G*G, C)`: with `joint`, the map's own patch embeddings
        of the raw pyramid levels; otherwise the fuser's `patches` (used levels, fine to coarse)."""
        if self.reads_own_patches:
            patches = [self.audio_patch_embeds[k](pyramid[k]) for k in self.used_levels]
        return self.visual_input(patches)

    def text_inputs(self, pyramid: Sequence[Tensor], text_embeddings: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """`relative`/`joint`: the text branch's own inputs from the raw pyramid levels, the 2-D position
        encoding `pos` `(N, G*G, C)` of the grid (words may name where: "on the left") and the raw
        expression hidden states `(L, text_dim)` -> (visual input `(N, G*G, C)`, expression tokens `(L, C)`)."""
        if self.text_reads == "position":
            visual = pos
        else:
            visual = self.visual_input([self.text_patch_embeds[k](pyramid[k]) for k in self.used_levels])
            if self.text_reads == "both":
                visual = visual + pos
        return visual, self.text_tokens(text_embeddings)

    def forward(self, proj_visual: Tensor, proj_audio: Tensor | None, embedded: Tensor, text: Tensor | None,
                grid: tuple[int, int]) -> MaskPromptMaps:
        """AudioCon projections `(N, P, G, G)` and `(N, P)` (or None without audio), the text map's
        visual input `(N, G*G, C)` and expression tokens `(L, C)` (or None without text; with
        `relative`, from `text_inputs`) -> `MaskPromptMaps`.

        The audio map comes from the projections DETACHED: only AudioCon shapes it (letting the
        segmentation loss reach it through SAM2's frozen mask encoder measurably ruined it); the
        segmentation and mask losses learn its threshold.
        """
        # per cell and per frame unit vectors (the Ref-AVS official visual head normalises over
        # pixels, a released quirk: re-normalising is a no-op for the other heads)
        v = F.normalize(proj_visual, dim=1)
        a = None if proj_audio is None else F.normalize(proj_audio, dim=-1)
        audio_margin = text_cosine = None
        if a is not None and not self.joint:
            audio_margin = self._margin(torch.einsum("nphw,np->nhw", v.detach(), a.detach()), self.threshold)
        if text is not None:
            n, h, w = embedded.shape[0], *grid
            cells = F.normalize(self.text_visual(embedded), dim=-1).transpose(1, 2).reshape(n, -1, h, w)
            expression = F.normalize(self.text_expression(text).amax(0), dim=-1)  # (P,): max over the tokens
            text_cosine = torch.einsum("nphw,p->nhw", cells, expression)
        if self.joint:  # evidence adds up; the mask loss trains the heads, scales and bias together
            margin = self.joint_bias.expand(v.shape[0], *grid)
            if a is not None:
                margin = margin + self.joint_scales[0] * torch.einsum("nphw,np->nhw", v, a)
                if hasattr(self, "joint_clip_scale"):  # the cell's best match to any frame's sound
                    best = torch.einsum("nphw,mp->nhwm", v, a).amax(-1)
                    margin = margin + self.joint_clip_scale * best
            if text_cosine is not None:
                margin = margin + self.joint_scales[1] * text_cosine
        elif text_cosine is None:
            margin = audio_margin
        elif audio_margin is None:  # no peak rule: every object the expression describes is on
            margin = self._margin(text_cosine, self.text_threshold, False)
        elif self.relative_text:  # 0 at the frame's best fit to the words, negative elsewhere
            relative = (text_cosine - text_cosine.flatten(1).amax(1)[:, None, None]).detach()
            margin = audio_margin + self.text_gate * relative
        else:
            margin = torch.minimum(audio_margin, self._margin(text_cosine, self.text_threshold, False))
        return MaskPromptMaps(v, a, (margin / self.temperature)[:, None],
                              None if text_cosine is None else text_cosine[:, None])

    def gate(self, dense: list[Tensor] | None, sparse: list[Tensor] | None
             ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """The released prompts (pyramid order) times their gates."""
        gate_dense, gate_sparse = self.gates
        return (None if dense is None else [d * gate_dense[k] for k, d in enumerate(dense)],
                None if sparse is None else [q * gate_sparse[k] for k, q in enumerate(sparse)])
