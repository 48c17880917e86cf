"""AuralFuser (paper §3.2, released `model/aural_fuser.py`): feature-level prompts for SAM2.

Data flow for one clip of N frames (pyramid order k = 0, 1, 2 = strides 4, 8, 16):

    pyramid[k] (N, C, H_k, W_k) --patch_embeds[k] (k=s=4/2/1)--> (N, C, G, G), G = S/16
      + previous fused level, smooth_convs[k-1] (1x1)     (k > first used level)
      + 2-D sine PE --> f_blocks[k] (PVT-v2, per frame) --> + 2-D sine PE --\
    tokens (Na, C) + pe1d --> a_blocks[k] (one sequence) --> + pe1d --------> fusion_modules[k]
      --> fused map (N, G*G, C) = dense prompt k;  tokens (Na, C) -> first N = sparse prompt k

The token sequence is the per-frame audio embedding (N, audio_dim) (projected to C when
audio_dim != C, our addition) followed, for Ref-AVS, by the 25 projected text tokens
(`text_proj`: text_dim -> 1024 -> GELU -> C). `pe1d` is the released constant vector
[0, 1, 0, 1, ...] (a length-1 sine encoding) added to every token. The tokens leaving level k
enter level k+1. The decoder consumes the prompts deepest first (stage 1 <- k=2, stage 2 <- k=1,
stage 3 <- k=0); `AuralSAM2` does that reversal, as released.

What flows for each `modalities` setting (ablation, paper Table 5):
  * `audio` (AVSBench default): tokens = the N per-frame audio embeddings; the sparse prompt of
    frame t at level k is token t after level k's fusion module.
  * `audio+text` (Ref-AVS default): tokens = N audio + L (25) projected text tokens, one sequence;
    sparse prompts from the first N tokens; text reaches the decoder only through the fusion.
  * `text`: tokens = the L text tokens only; the sparse prompt is their mean after fusion, the same
    for every frame; no audio projection head, so AudioCon paper/official cannot run (supcon/off).
  * `visual`: no tokens, no 1-D blocks, no fusion modules, no sparse prompts; dense prompts come from
    the visual path alone (patch embed -> smooth -> PE -> blocks -> PE).
`mask_prompt` (ours, off in the released model; the synthetic demo uses it): the AudioCon heads
read the used levels' patch embeddings, summed (`mask_prompt_levels`; all on the G x G grid, before
any position encoding), and the per-frame audio token (before the 1-D blocks mix frames); their
per-pixel cosine gives a mask-prompt logit map `(N, 1, G, G)` that `AuralSAM2` feeds, as sigmoid, to
SAM2's own (frozen) mask-prompt encoder on every frame. A cell is on where its cosine clears a learnt
threshold and `mask_prompt_peak_ratio` of the frame's highest cosine: within a frame the sounding
object ranks first, but the level varies from frame to frame (mixtures, quiet sources), so a global
threshold alone both misses and over-marks. AudioCon then supervises those projections only.
The released dense and sparse prompts are multiplied by zero-initialised gates (`prompt_gates`,
dense/sparse x level), so training starts from "SAM2 + the mask prompt". Why (measured, see
`bench/results/hearing.md`): in a short CPU budget the released prompts do not learn to hear and,
added at full strength, they override SAM2's response to a mask prompt.

`levels` = L keeps the L deepest levels (1: s16 only, 2: s16 + s8, 3: all); the first kept level
has no previous fused level (no smooth conv). Unused levels give zero prompts, i.e. no prompt at
that decoder stage (the paper's Table 3 "pyramid levels 1, 2, 3" = decoder stages fed).

`FuserConfig()` is the released AVSBench architecture (58,279,424 released trainable parameters,
of which 9,733,632 are built-but-unused and therefore absent here: 48,545,792);
`FuserConfig(variant="refavs")` the released Ref-AVS one. Every field is an ablation or size knob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from auralsam2.fuser_blocks import (
    Block,
    FusionModule,
    OfficialAudioHead,
    OfficialVisualHead,
    OneDBlock,
    PaperHead,
)

__all__ = ["AuralFuser", "FuserConfig", "FuserOutput", "PATCH_STRIDES", "pe1d"]

PATCH_STRIDES = (4, 2, 1)  # kernel = stride per pyramid level: every level lands on the s16 grid
Modalities = Literal["audio", "text", "audio+text", "visual"]


class FuserConfig(BaseModel):
    """AuralFuser architecture. Defaults = the released AVSBench fuser (loads released weights).

    Sizes: `dim` must equal the SAM2 hidden size (256 for real configs, 32 for the `tiny` test
    config). Ablations (paper Tables 3-5): `levels`, `sparse_prompts`, `dense_prompts`,
    `modalities`, `fusion`, `audiocon`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Literal["avs", "refavs"] = Field(
        "avs", description="released layout: 'avs' (AVSBench v1s/v1m/v2) or 'refavs' (Ref-AVS heads + text)"
    )
    dim: int = Field(256, description="token/channel width; must equal the SAM2 hidden dim (256; tiny 32)")
    audio_dim: int = Field(
        256, description="audio encoder output size (channels x VGGish embedding); != dim adds `audio_proj`"
    )
    text_dim: int = Field(768, description="text encoder hidden size (768 distilroberta/roberta-base)")
    text_hidden: int = Field(1024, description="hidden width of `text_proj` (text_dim -> hidden -> dim)")
    f_depths: tuple[int, int, int] = Field((3, 6, 12), description="visual PVT-v2 blocks per level (s4, s8, s16)")
    a_depth: int = Field(3, description="1-D token blocks per level")
    heads: int = Field(4, description="attention heads in visual and token blocks")
    mlp_hidden: int = Field(1024, description="hidden width of every block MLP (mlp_ratio 4 at dim 256)")
    sr_ratio: int = Field(4, description="spatial-reduction kernel=stride of the visual attention keys")
    dropout: float = Field(0.1, description="dropout on attention probabilities and block outputs")
    fusion_dim: int | None = Field(None, description="fusion module inner width; None = dim // 2 (128)")
    fusion: Literal["official", "paper"] = Field(
        "official", description="fusion semantics: released raw-reshape/no-softmax, or per-channel softmax"
    )
    audiocon: Literal["official", "paper"] = Field(
        "official",
        description="projection heads for AudioCon: released 128-d heads, or the paper's 3-layer MLPs to 64-d",
    )
    proj_dim: int | None = Field(None, description="projection output size; None = 128 (official) / 64 (paper)")
    levels: Literal[1, 2, 3] = Field(
        3,
        description="how many pyramid levels make prompts, deepest first: 1 = s16 only (decoder stage 1), "
        "2 = s16+s8 (stages 1-2), 3 = all (the paper's Table 3 levels 1, 2, 3)",
    )
    sparse_prompts: bool = Field(True, description="emit per-frame sparse prompts (added to the mask tokens)")
    dense_prompts: bool = Field(True, description="emit dense prompts (added to the image tokens)")
    mask_prompt: bool = Field(
        False,
        description="ours, off in the released model: also prompt SAM2, on every frame, with a mask: where "
        "the frame's sound is, from AudioCon's pixel-audio similarity (see the module doc)",
    )
    mask_prompt_temperature: float = Field(
        0.05, gt=0, description="mask prompt = sigmoid((cosine - threshold) / temperature)"
    )
    mask_prompt_levels: Literal["finest", "all"] = Field(
        "all", description="the map's visual input: the finest used level's patch embedding, or the sum of "
        "every used level's (all on the same G x G grid, before position encoding)"
    )
    mask_prompt_peak_ratio: float = Field(
        0.85, ge=0, le=1, description="a cell is on only where its cosine also reaches this share of the "
        "frame's highest cosine (a per-frame threshold; 0 = the learnt global threshold alone)"
    )
    modalities: Modalities | None = Field(
        None,
        description="tokens entering the fuser: 'audio', 'text', 'audio+text', or 'visual' (no tokens, no "
        "fusion, no sparse prompts); None = 'audio' (avs) / 'audio+text' (refavs)",
    )

    @model_validator(mode="after")
    def _resolve(self) -> FuserConfig:
        if self.modalities is None:
            object.__setattr__(self, "modalities", "audio+text" if self.variant == "refavs" else "audio")
        if self.fusion_dim is None:
            object.__setattr__(self, "fusion_dim", self.dim // 2)
        if self.proj_dim is None:
            object.__setattr__(self, "proj_dim", 128 if self.audiocon == "official" else 64)
        if self.dim % self.heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by heads {self.heads}")
        if self.modalities == "visual" and self.sparse_prompts:
            object.__setattr__(self, "sparse_prompts", False)  # nothing to make them from
        if self.mask_prompt and not self.uses_audio:
            object.__setattr__(self, "mask_prompt", False)  # the mask is where the audio is: no audio, no mask
        if not (self.sparse_prompts or self.dense_prompts or self.mask_prompt):
            raise ValueError("at least one of sparse_prompts / dense_prompts / mask_prompt must be on")
        return self

    @property
    def uses_audio(self) -> bool:
        return self.modalities in ("audio", "audio+text")

    @property
    def uses_text(self) -> bool:
        return self.modalities in ("text", "audio+text")

    @property
    def used_levels(self) -> tuple[int, ...]:
        """Pyramid indices computed, in processing order (fine to coarse): the `levels` deepest."""
        return tuple(range(3 - self.levels, 3))

    @classmethod
    def tiny(cls, **overrides) -> FuserConfig:
        """A CPU-test-sized fuser for the tiny SAM2 config (hidden 32)."""
        base = dict(dim=32, audio_dim=32, text_dim=32, text_hidden=64, f_depths=(1, 1, 1), a_depth=1,
                    heads=2, mlp_hidden=64, fusion_dim=16)
        base.update(overrides)
        return cls(**base)


class FuserOutput(NamedTuple):
    """Fuser results, every list of length 3 in PYRAMID order (k = 0: s4, 1: s8, 2: s16).

    `dense[k]` `(N, G*G, C)` (the list is None when dense prompts are off; zeros for a level
    outside `levels`), `sparse[k]` `(N, C)` (likewise), `proj_visual[k]` `(N, P, G, G)` and
    `proj_audio[k]` `(N, P)`, the AudioCon projections (None for a level outside `levels`;
    `proj_audio` is None without audio). `mask_prompt` `(N, 1, G, G)`: the mask-prompt LOGITS
    (`FuserConfig.mask_prompt`), else None.
    """

    dense: list[Tensor] | None
    sparse: list[Tensor] | None
    proj_visual: list[Tensor | None]
    proj_audio: list[Tensor | None] | None
    mask_prompt: Tensor | None = None


def pe1d(dim: int) -> Tensor:
    """The released 1-D token PE: a sine encoding of length 1, i.e. `[sin 0, cos 0, ...] = [0,1,0,1,...]`."""
    pe = torch.zeros(dim)
    pe[1::2] = 1.0
    return pe


class AuralFuser(nn.Module):
    """`forward(pyramid, audio_embeddings, text_embeddings=None) -> FuserOutput` (see module doc)."""

    def __init__(self, config: FuserConfig | None = None) -> None:
        super().__init__()
        from sam2.modeling.position_encoding import PositionEmbeddingSine

        cfg = self.config = config or FuserConfig()
        c = cfg.dim
        used = set(cfg.used_levels)

        def per_level(make) -> nn.ModuleList:
            # unused levels keep their index (parameter-free placeholder) so key names stay stable
            return nn.ModuleList(make(k) if k in used else nn.Identity() for k in range(3))

        self.patch_embeds = per_level(lambda k: nn.Conv2d(c, c, PATCH_STRIDES[k], PATCH_STRIDES[k]))
        self.smooth_convs = nn.ModuleList(
            nn.Conv2d(c, c, 1) if (k + 1 in used and k in used) else nn.Identity() for k in range(2)
        )
        self.f_blocks = per_level(
            lambda k: nn.ModuleList(
                Block(c, cfg.heads, cfg.mlp_hidden, cfg.sr_ratio, cfg.dropout) for _ in range(cfg.f_depths[k])
            )
        )
        self.pos2d = PositionEmbeddingSine(c, temperature=10000, normalize=True, warmup_cache=False)
        has_tokens = cfg.modalities != "visual"
        if has_tokens:
            self.a_blocks = per_level(
                lambda k: nn.ModuleList(
                    OneDBlock(c, cfg.heads, cfg.mlp_hidden, cfg.dropout) for _ in range(cfg.a_depth)
                )
            )
            self.fusion_modules = per_level(lambda k: FusionModule(c, cfg.fusion_dim, cfg.fusion))
            self.register_buffer("pe1d", pe1d(c), persistent=False)
        if cfg.uses_audio and cfg.audio_dim != c:
            # Not in the released model: an adapter for an audio encoder whose width is not C. The
            # LayerNorm puts a foreign encoder's embeddings (any scale: a small VGGish trained as a
            # classifier emits norms in the hundreds) on the scale the fuser's blocks expect.
            self.audio_proj = nn.Sequential(nn.LayerNorm(cfg.audio_dim), nn.Linear(cfg.audio_dim, c))
        if cfg.uses_text:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, cfg.text_hidden), nn.GELU(), nn.Linear(cfg.text_hidden, c))
        if cfg.mask_prompt:
            self.mask_prompt_threshold = nn.Parameter(torch.tensor(0.5))
            # zero-initialised gates on the released prompts (as ControlNet's zero convolutions): training
            # starts from "frozen SAM2 + the mask prompt", which the added prompts would otherwise override
            self.prompt_gates = nn.Parameter(torch.zeros(2, 3))
        if cfg.audiocon == "official":
            self.train_proj_v1 = OfficialVisualHead(c, cfg.proj_dim, cfg.variant)
            if cfg.uses_audio:
                self.train_proj_a1 = OfficialAudioHead(c, cfg.proj_dim, cfg.variant)
        else:
            self.audiocon_proj_v = PaperHead(c, cfg.proj_dim)
            if cfg.uses_audio:
                self.audiocon_proj_a = PaperHead(c, cfg.proj_dim)

    # ----------------------------------------------------------------------------------------

    def _tokens(self, n: int, audio: Tensor | None, text: Tensor | None) -> Tensor | None:
        """Assemble the `(Na, C)` token sequence: N audio tokens, then the text tokens."""
        cfg = self.config
        parts = []
        if cfg.uses_audio:
            if audio is None or audio.shape != (n, cfg.audio_dim):
                got = None if audio is None else tuple(audio.shape)
                raise ValueError(f"audio_embeddings must be ({n}, {cfg.audio_dim}) for {n} frames, got {got}")
            parts.append(self.audio_proj(audio) if hasattr(self, "audio_proj") else audio)
        if cfg.uses_text:
            if text is None:
                raise ValueError(f"modalities={cfg.modalities!r} needs text_embeddings (L, {cfg.text_dim})")
            if text.ndim == 3:
                if text.shape[0] != 1:
                    raise ValueError(f"one expression per clip: text_embeddings {tuple(text.shape)}")
                text = text[0]
            parts.append(self.text_proj(text))
        return torch.cat(parts) if parts else None

    def forward(
        self,
        pyramid: Sequence[Tensor],
        audio_embeddings: Tensor | None,
        text_embeddings: Tensor | None = None,
    ) -> FuserOutput:
        """`pyramid`: 3 raw FPN levels `(N, C, S/4, S/4)`, `(N, C, S/8, S/8)`, `(N, C, S/16, S/16)`;
        `audio_embeddings` `(N, audio_dim)`; `text_embeddings` `(L, text_dim)` or `(1, L, text_dim)`
        (one expression; padding tokens included, as released)."""
        cfg = self.config
        if len(pyramid) != 3:
            raise ValueError(f"pyramid must hold 3 levels (s4, s8, s16), got {len(pyramid)}")
        n = pyramid[0].shape[0]
        grid = pyramid[2].shape[-2:]
        for k, level in enumerate(pyramid):
            want = (n, cfg.dim, grid[0] * PATCH_STRIDES[k], grid[1] * PATCH_STRIDES[k])
            if tuple(level.shape) != want:
                raise ValueError(f"pyramid level {k} has shape {tuple(level.shape)}, expected {want}")
        tokens = self._tokens(n, audio_embeddings, text_embeddings)
        audio_in = tokens[:n] if cfg.mask_prompt else None  # per-frame audio, before the 1-D blocks
        embedded: Tensor | None = None

        fused: dict[int, Tensor] = {}
        fused_tokens: dict[int, Tensor] = {}
        frame_attn: dict[int, Tensor] = {}
        previous: Tensor | None = None
        for k in cfg.used_levels:
            x = self.patch_embeds[k](pyramid[k])  # (N, C, G, G)
            h, w = x.shape[-2:]
            if cfg.mask_prompt and (embedded is None or cfg.mask_prompt_levels == "all"):  # before any PE
                flat = x.flatten(2).transpose(1, 2)
                embedded = flat if embedded is None else embedded + flat
            pos = self.pos2d(x).to(x.dtype).flatten(2).transpose(1, 2)  # (N, HW, C)
            x = x.flatten(2).transpose(1, 2)
            if previous is not None:
                x = self.smooth_convs[k - 1]((x + previous).transpose(1, 2).reshape(n, cfg.dim, h, w))
                x = x.flatten(2).transpose(1, 2)
            x = x + pos
            for block in self.f_blocks[k]:
                x = block(x, h, w)
            x = x + pos
            if tokens is not None:
                tokens = tokens + self.pe1d
                for block in self.a_blocks[k]:
                    tokens = block(tokens)
                tokens = tokens + self.pe1d
                x, tokens, frame_attn[k], _ = self.fusion_modules[k](x, tokens, h, w)
                fused_tokens[k] = tokens
            fused[k] = previous = x
        grid_hw = (int(grid[0]), int(grid[1]))
        out = self._outputs(n, grid_hw, fused, fused_tokens, frame_attn)
        return self._with_mask_prompt(out, embedded, audio_in, grid_hw) if cfg.mask_prompt else out

    def _with_mask_prompt(self, out: FuserOutput, embedded: Tensor, audio: Tensor, grid: tuple[int, int]
                          ) -> FuserOutput:
        """Add the mask prompt: the AudioCon heads on position-free inputs (`mask_prompt_levels`).

        AudioCon then supervises these projections only (returned in the finest used level's slot;
        the other levels' are dropped), and the mask is computed from them DETACHED: only AudioCon
        shapes the map (letting the segmentation loss reach it through SAM2's frozen mask encoder
        measurably ruined it); the segmentation loss and the mask loss (`clip_loss`) learn the
        threshold.
        """
        cfg = self.config
        n = embedded.shape[0]
        h, w = grid
        k = cfg.used_levels[0]
        if cfg.audiocon == "official":
            v = self.train_proj_v1(embedded, None, h, w)
            a = self.train_proj_a1(audio)
        else:
            v = self.audiocon_proj_v(embedded).transpose(1, 2).reshape(n, -1, h, w)
            a = self.audiocon_proj_a(audio)
        # per pixel and per frame unit vectors (the Ref-AVS official visual head normalises over
        # pixels, a released quirk: re-normalising is a no-op for the other heads)
        v, a = F.normalize(v, dim=1), F.normalize(a, dim=-1)
        cosine = torch.einsum("nphw,np->nhw", v.detach(), a.detach())  # (N, G, G)
        margin = cosine - self.mask_prompt_threshold
        if cfg.mask_prompt_peak_ratio > 0:  # and near the frame's best match (a soft AND of both margins)
            peak = cosine.flatten(1).amax(1)[:, None, None]
            margin = torch.minimum(margin, cosine - cfg.mask_prompt_peak_ratio * peak)
        logits = (margin / cfg.mask_prompt_temperature)[:, None]
        gate_d, gate_s = self.prompt_gates
        return FuserOutput(
            dense=None if out.dense is None else [d * gate_d[j] for j, d in enumerate(out.dense)],
            sparse=None if out.sparse is None else [q * gate_s[j] for j, q in enumerate(out.sparse)],
            proj_visual=[v if j == k else None for j in range(3)],
            proj_audio=[a if j == k else None for j in range(3)],
            mask_prompt=logits,
        )

    def _outputs(
        self,
        n: int,
        grid: tuple[int, int],
        fused: dict[int, Tensor],
        tokens: dict[int, Tensor],
        frame_attn: dict[int, Tensor],
    ) -> FuserOutput:
        cfg = self.config
        h, w = grid
        any_map = next(iter(fused.values()))
        dense = sparse = None
        if cfg.dense_prompts:
            dense = [fused.get(k, torch.zeros_like(any_map)) for k in range(3)]
        if cfg.sparse_prompts:
            sparse = []
            for k in range(3):
                if k not in tokens:
                    sparse.append(any_map.new_zeros(n, cfg.dim))
                elif cfg.uses_audio:
                    sparse.append(tokens[k][:n])  # token t = frame t's audio
                else:  # text only: one clip-level prompt, the mean text token, for every frame
                    sparse.append(tokens[k].mean(0, keepdim=True).expand(n, -1))
        used = cfg.used_levels
        if cfg.mask_prompt:  # `_with_mask_prompt` makes the projections (the heads' BatchNorms must see only those)
            return FuserOutput(dense, sparse, [None] * 3, [None] * 3)
        if cfg.audiocon == "official":
            proj_v = [self.train_proj_v1(fused[k], frame_attn.get(k), h, w) if k in used else None for k in range(3)]
        else:
            proj_v = [
                self.audiocon_proj_v(fused[k]).transpose(1, 2).reshape(n, -1, h, w) if k in used else None
                for k in range(3)
            ]
        proj_a = None
        if cfg.uses_audio:  # the first N tokens are the audio of frames 0..N-1
            head = self.train_proj_a1 if cfg.audiocon == "official" else self.audiocon_proj_a
            proj_a = [head(tokens[k][:n]) if k in used else None for k in range(3)]
        return FuserOutput(dense, sparse, proj_v, proj_a)
