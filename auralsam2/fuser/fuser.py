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
`mask_prompt` (ours, off in the released model): see `auralsam2.fuser.mask_prompt`.

`levels` = L keeps the L deepest levels (1: s16 only, 2: s16 + s8, 3: all); the first kept level
has no previous fused level (no smooth conv). Unused levels give zero prompts, i.e. no prompt at
that decoder stage (the paper's Table 3 "pyramid levels 1, 2, 3" = decoder stages fed).

`FuserConfig()` is the released AVSBench architecture (58,279,424 released trainable parameters,
of which 9,733,632 are built-but-unused and therefore absent here: 48,545,792);
`FuserConfig(variant="refavs")` the released Ref-AVS one. Every field is an ablation or size knob.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from auralsam2.fuser.blocks import Block, FusionModule, OneDBlock
from auralsam2.fuser.config import FuserConfig
from auralsam2.fuser.heads import OfficialAudioHead, OfficialVisualHead, PaperHead
from auralsam2.fuser.mask_prompt import PATCH_STRIDES, MaskPrompt, MaskPromptMaps

__all__ = ["AuralFuser", "FuserOutput", "PATCH_STRIDES", "pe1d"]



class FuserOutput(NamedTuple):
    """Fuser results, every list of length 3 in PYRAMID order (k = 0: s4, 1: s8, 2: s16).

    `dense[k]` `(N, G*G, C)` (the list is None when dense prompts are off; zeros for a level
    outside `levels`), `sparse[k]` `(N, C)` (likewise), `proj_visual[k]` `(N, P, G, G)` and
    `proj_audio[k]` `(N, P)`, the AudioCon projections (None for a level outside `levels`;
    `proj_audio` is None without audio). `mask_prompt` `(N, 1, G, G)`: the mask-prompt LOGITS
    (`FuserConfig.mask_prompt`), else None. `text_cosine` `(N, 1, G, G)`: with the mask prompt and
    text, the text map's per-cell cosine (what the text contrast loss reads), else None.
    """

    dense: list[Tensor] | None
    sparse: list[Tensor] | None
    proj_visual: list[Tensor | None]
    proj_audio: list[Tensor | None] | None
    mask_prompt: Tensor | None = None
    text_cosine: Tensor | None = None


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
        # training memory, not the model: recompute each visual block in backward instead of keeping
        # its activations (`train.checkpoint_fuser_blocks`); the same values and gradients
        self.checkpoint_blocks = False

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
        self.mask_prompt = MaskPrompt(cfg) if cfg.mask_prompt else None  # ours
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
        tokens = self._tokens(n, audio_embeddings, text_embeddings)  # (Na, C)
        entering = tokens  # the tokens before the 1-D blocks mix them (what the mask prompt reads)

        fused: dict[int, Tensor] = {}  # k -> (N, G*G, C)
        fused_tokens: dict[int, Tensor] = {}  # k -> (Na, C)
        frame_attn: dict[int, Tensor] = {}
        patches: list[Tensor] = []  # (N, C, G, G) per used level, before any position encoding
        previous: Tensor | None = None
        for k in cfg.used_levels:
            x = self.patch_embeds[k](pyramid[k])  # (N, C, G, G)
            patches.append(x)
            h, w = x.shape[-2:]
            pos = self.pos2d(x).to(x.dtype).flatten(2).transpose(1, 2)  # (N, HW, C)
            x = x.flatten(2).transpose(1, 2)
            if previous is not None:
                x = self.smooth_convs[k - 1]((x + previous).transpose(1, 2).reshape(n, cfg.dim, h, w))
                x = x.flatten(2).transpose(1, 2)
            x = x + pos
            for block in self.f_blocks[k]:
                if self.checkpoint_blocks and torch.is_grad_enabled():
                    x = checkpoint(block, x, h, w, use_reentrant=False)  # dropout's RNG is replayed
                else:
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

        h, w = int(grid[0]), int(grid[1])
        dense, sparse = self._prompts(n, fused, fused_tokens)
        if self.mask_prompt is not None:  # ours: the heads read the mask prompt's inputs instead
            maps = self._mask_prompt_maps(pyramid, patches, entering, n, (h, w), text_embeddings)
            return self._with_mask_prompt(dense, sparse, maps)
        used = cfg.used_levels
        proj_v = [self._project_visual(fused[k], frame_attn.get(k), h, w) if k in used else None for k in range(3)]
        proj_a = None
        if cfg.uses_audio:  # the first N tokens are the audio of frames 0..N-1
            proj_a = [self._project_audio(fused_tokens[k][:n]) if k in used else None for k in range(3)]
        return FuserOutput(dense, sparse, proj_v, proj_a)

    def _prompts(self, n: int, fused: dict[int, Tensor], tokens: dict[int, Tensor]
                 ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """Dense `(N, G*G, C)` and sparse `(N, C)` prompts per pyramid level (zeros where unused)."""
        cfg = self.config
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
        return dense, sparse

    def mask_prompt_parameters(self) -> list[nn.Parameter]:
        """The parameters the mask prompt's maps are computed from (`mask_prompt_maps`), for
        `optim.mask_prompt_lr_scale`: the map's own (not its prompt gates: the segmentation loss
        trains those), the AudioCon heads it projects with, the token projections it reads, and the
        fuser's patch embeddings when the map has none of its own. Empty without a mask prompt."""
        mp, cfg = self.mask_prompt, self.config
        if mp is None:
            return []
        params = [p for name, p in mp.named_parameters() if name != "gates"]
        official = cfg.audiocon == "official"
        text_from_tokens = cfg.uses_text and not hasattr(mp, "text_tokens")  # no text branch of its own
        if cfg.uses_audio:  # the visual AudioCon projection feeds the audio term only
            params += list((self.train_proj_v1 if official else self.audiocon_proj_v).parameters())
            params += list((self.train_proj_a1 if official else self.audiocon_proj_a).parameters())
            if hasattr(self, "audio_proj"):
                params += list(self.audio_proj.parameters())
        if text_from_tokens:
            params += list(self.text_proj.parameters())
        if not mp.reads_own_patches and (cfg.uses_audio or text_from_tokens):
            params += [p for k in cfg.used_levels for p in self.patch_embeds[k].parameters()]
        return params

    def _project_visual(self, x: Tensor, frame_attn: Tensor | None, h: int, w: int) -> Tensor:
        """AudioCon visual projection of a map `(N, H*W, C)` -> `(N, P, H, W)`."""
        if self.config.audiocon == "official":
            return self.train_proj_v1(x, frame_attn, h, w)
        return self.audiocon_proj_v(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def _project_audio(self, audio: Tensor) -> Tensor:
        """AudioCon audio projection of per-frame tokens `(N, C)` -> `(N, P)`."""
        head = self.train_proj_a1 if self.config.audiocon == "official" else self.audiocon_proj_a
        return head(audio)

    def mask_prompt_maps(self, pyramid: Sequence[Tensor], audio_embeddings: Tensor | None,
                         text_embeddings: Tensor | None = None) -> MaskPromptMaps:
        """The mask prompt's maps alone (`MaskPromptMaps`), from the same inputs as `forward`, without
        the visual blocks and the fusion: what the mask-prompt warm-up trains (`auralsam2.engine.warmup`)."""
        if self.mask_prompt is None:
            raise ValueError("mask_prompt_maps needs a fuser with mask_prompt: true")
        n, grid = pyramid[0].shape[0], tuple(int(g) for g in pyramid[2].shape[-2:])
        # the trunk's patch embeddings only where the maps read them (a joint audio map has its own)
        patches = None if self.mask_prompt.reads_own_patches else \
            [self.patch_embeds[k](pyramid[k]) for k in self.config.used_levels]
        tokens = self._tokens(n, audio_embeddings, text_embeddings)
        return self._mask_prompt_maps(pyramid, patches, tokens, n, grid, text_embeddings)

    def _mask_prompt_maps(self, pyramid: Sequence[Tensor], patches: list[Tensor] | None, tokens: Tensor | None, n: int,
                          grid: tuple[int, int], text_embeddings: Tensor | None) -> MaskPromptMaps:
        """The AudioCon heads on the mask prompt's position-free inputs, and the maps from the audio
        and/or the text (`auralsam2.fuser.mask_prompt`). A text map with a branch of its own reads the
        raw pyramid and expression hidden states `(L, text_dim)`."""
        cfg = self.config
        h, w = grid
        embedded = self.mask_prompt.audio_visual_input(pyramid, patches)  # (N, G*G, C)
        audio = self._project_audio(tokens[:n]) if cfg.uses_audio else None  # token t = frame t's audio
        text_visual, text = embedded, None
        if hasattr(self.mask_prompt, "text_tokens"):
            pos = self.pos2d(pyramid[2]).to(embedded.dtype).flatten(2).transpose(1, 2)  # (N, G*G, C): the s16 grid
            raw_text = text_embeddings[0] if text_embeddings.ndim == 3 else text_embeddings
            text_visual, text = self.mask_prompt.text_inputs(pyramid, raw_text, pos)
        elif cfg.uses_text:  # the projected expression tokens (all L, padding included, as released)
            text = tokens[n:] if cfg.uses_audio else tokens
        return self.mask_prompt(self._project_visual(embedded, None, h, w), audio, text_visual, text, grid)

    def _with_mask_prompt(self, dense: list[Tensor] | None, sparse: list[Tensor] | None, maps: MaskPromptMaps
                          ) -> FuserOutput:
        """Our mask prompt's outputs (the AudioCon projections returned in the finest used level's
        slot, the only projections AudioCon then sees), and the released prompts gated."""
        cfg = self.config
        dense, sparse = self.mask_prompt.gate(dense, sparse)
        k = cfg.used_levels[0]
        return FuserOutput(dense, sparse, [maps.visual if j == k else None for j in range(3)],
                           None if maps.audio is None else [maps.audio if j == k else None for j in range(3)],
                           maps.logits, maps.text_cosine)
