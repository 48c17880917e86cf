"""The AudioCon projection heads of the AuralFuser: the released 128-d heads (`audiocon: official`)
and the paper's 3-layer MLPs (`audiocon: paper`). Training-only: they feed the contrastive loss
(and our mask prompt), never the decoder. Parameter names follow the released `aural_fuser.py`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OfficialAudioHead", "OfficialVisualHead", "PaperHead"]


def _released_projection(dim: int, proj_dim: int, variant: str, conv: type[nn.Module], norm: type[nn.Module]
                         ) -> nn.Sequential:
    """The released head layers: 1x1 conv -> BatchNorm -> 1x1 conv (`avs`), or Linear -> GELU ->
    LayerNorm -> Linear (`refavs`)."""
    if variant == "avs":
        return nn.Sequential(conv(dim, proj_dim, 1), norm(proj_dim), conv(proj_dim, proj_dim, 1))
    return nn.Sequential(nn.Linear(dim, proj_dim), nn.GELU(), nn.LayerNorm(proj_dim), nn.Linear(proj_dim, proj_dim))


class OfficialVisualHead(nn.Module):
    """Released visual projection head; returns L2-normalised `(N, P, H, W)`.

    `variant="avs"`: Conv2d(C,P,1) -> BatchNorm2d -> Conv2d(P,P,1) on the FUSED map, normalised
    over channels. `variant="refavs"`: Linear -> GELU -> LayerNorm -> Linear on the fusion
    module's attention branch tokens, normalised over dim 1 = the HW token axis (released bug,
    kept), then laid out as `(N, P, H, W)`.
    """

    def __init__(self, dim: int, proj_dim: int, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.proj = _released_projection(dim, proj_dim, variant, nn.Conv2d, nn.BatchNorm2d)

    def forward(self, fused: Tensor, frame_attn: Tensor | None, height: int, width: int) -> Tensor:
        n, hw, c = fused.shape
        if self.variant == "avs":
            return F.normalize(self.proj(fused.transpose(1, 2).reshape(n, c, height, width)), dim=1)
        # without tokens (visual-only ablation) there is no attention branch: use the fused map
        tokens = fused if frame_attn is None else frame_attn.flatten(2).transpose(1, 2)  # (N, HW, C)
        out = F.normalize(self.proj(tokens), dim=1)  # over HW: the released quirk
        return out.reshape(n, height, width, -1).permute(0, 3, 1, 2)


class OfficialAudioHead(nn.Module):
    """Released audio projection head: `(N, C) -> (N, P)`, L2-normalised over features.

    `avs`: Conv1d -> BatchNorm1d -> Conv1d on `(N, C, 1)`; `refavs`: Linear -> GELU -> LN -> Linear.
    """

    def __init__(self, dim: int, proj_dim: int, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.proj = _released_projection(dim, proj_dim, variant, nn.Conv1d, nn.BatchNorm1d)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.variant == "avs":
            return F.normalize(self.proj(tokens[..., None]), dim=1)[..., 0]
        return F.normalize(self.proj(tokens), dim=1)


class PaperHead(nn.Module):
    """The paper's AudioCon projector: 3-layer MLP (Linear-ReLU-Linear-ReLU-Linear) to `proj_dim`.

    Applied per token (`(..., C) -> (..., P)`), L2-normalised over the feature axis.
    """

    def __init__(self, dim: int, proj_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, proj_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), dim=-1)
