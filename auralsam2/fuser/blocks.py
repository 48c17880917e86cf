"""Building blocks of the AuralFuser: visual PVT-v2 blocks, 1-D token blocks, fusion modules.

Parameter names and shapes follow the released `aural_fuser.py` (see
`reference/released_checkpoint_keys/`) so released state dicts load by name. Parameters that the
released code builds but never calls (`OneDAttention.sr/.norm`, `OneDMlp.dwconv`, the fusion
module's `g` and `align_channel_back`) are not built here; `auralsam2.checkpoints` knows and skips
their names.

Shapes: N = frames of one clip, HW = tokens of the common s16 grid (64x64 at 1024^2 input),
C = `dim` (256), Na = audio (+ text) tokens.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Block",
    "FusionModule",
    "OneDBlock",
]


def _init_like_pvt(module: nn.Module) -> None:
    """Released Block/OneDBlock init: trunc-normal(.02) Linear, unit LayerNorm, He-fan-out convs."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, C) -> (B, heads, L, C/heads); head h holds channels [h*C/heads, (h+1)*C/heads)."""
    b, length, c = x.shape
    return x.reshape(b, length, heads, c // heads).transpose(1, 2)


class _Attention(nn.Module):
    """Multi-head attention in the released layout: `q`, `kv` (split as [k | v], each head-major),
    `proj`; dropout on the attention probabilities and the output."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def _attend(self, x: Tensor, context: Tensor) -> Tensor:
        """Queries from `x (B, L, C)`, keys and values from `context (B, M, C)` -> `(B, L, C)`."""
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(
            _heads(self.q(x), self.heads), _heads(k, self.heads), _heads(v, self.heads),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(x.shape)))


class SRAttention(_Attention):
    """Spatial-reduction multi-head attention (PVT v2): keys/values from a k=s=`sr_ratio` conv map.

    `(B, HW, C) -> (B, HW, C)`; with sr_ratio 4 the 64x64 grid attends to 16x16 = 256 key tokens.
    The `kv` output is split as [k | v], each head-major, as in the released code.
    """

    def __init__(self, dim: int, heads: int, sr_ratio: int, dropout: float) -> None:
        super().__init__(dim, heads, dropout)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        context = x
        if self.sr_ratio > 1:
            b, _, c = x.shape
            context = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2))
        return self._attend(x, context)


class DWConv(nn.Module):
    """Depthwise 3x3 conv over the token grid: `(B, HW, C) -> (B, HW, C)` (ConvFFN of PVT v2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)


class ConvMlp(nn.Module):
    """fc1 -> depthwise 3x3 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), height, width)))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    """Visual PVT-v2 block, per frame: `x + SRAttn(LN x)`, then `x + ConvMlp(LN x)`; `(N, HW, C)`."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, sr_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRAttention(dim, heads, sr_ratio, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvMlp(dim, mlp_hidden, dropout)
        _init_like_pvt(self)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class TokenAttention(_Attention):
    """Plain multi-head self-attention over ONE sequence of all Na tokens: `(Na, C) -> (Na, C)`.

    As released, the audio (+ text) tokens of every frame form a single sequence, so frame t's
    token attends to all frames (and to the 25 text tokens in Ref-AVS).
    """

    def forward(self, d: Tensor) -> Tensor:
        return self._attend(d[None], d[None])[0]


class TokenMlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the released OneDMlp minus its unused DWConv)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class OneDBlock(nn.Module):
    """1-D block over the audio (+ text) tokens: `d + Attn(LN d)`, `d + Mlp(LN d)`; `(Na, C)`."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = TokenMlp(dim, mlp_hidden, dropout)
        _init_like_pvt(self)

    def forward(self, d: Tensor) -> Tensor:
        d = d + self.attn(self.norm1(d))
        return d + self.mlp(self.norm2(d))


class FusionModule(nn.Module):
    """TPAVI-derived bidirectional audio-visual fusion: `(N, HW, C), (Na, C) -> same shapes`.

    Returns `(frame_out (N, HW, C), tokens_out (Na, C), frame_attn (N, C, 1, H, W),
    token_attn (Na, C, 1))`; the two `*_attn` are the W_z branches before the residual (the Ref-AVS
    visual projection head reads `frame_attn`). `W_z`/`W_z2` end in BatchNorms whose weight and
    bias start at 0, so the module starts as identity + LayerNorm.

    `mode="official"` reproduces the released tensor semantics exactly (reference §2.5):
      * 1x1x1 conv projections of the channel-first map `(N, C, 1, H, W)` to `inter` channels are
        reinterpreted with `.reshape(1, -1, inter)` without a permute, so a "token" holds `inter`
        consecutive memory values of one channel (pixels, not channels);
      * `frame <- tokens`: `(q_f k_a^T / (N*HW)) v_a`, no softmax, then `.view(N, inter, 1, H, W)`
        of the channel-major result (another raw reinterpretation);
      * `tokens <- frame`: `(q_a k_f^T / (N*HW)) v_f`, permuted to `(inter, Na)` and viewed as
        `(Na, inter)` (mixes token and channel axes unless Na == 1);
      * every frame token meets every audio/text token of the clip (no per-frame pairing).
    `mode="paper"` is our reading of the paper's fusion equation (a TPAVI-style cross attention
    over the whole clip): per-pixel and per-token feature vectors in their proper channel layout,
    scaled dot products `q k^T / sqrt(inter)` with a softmax over the attended axis (all Na tokens
    for a pixel; all N*HW pixels for a token), the same projections, W_z branches and LayerNorm
    residuals. Both modes have identical parameters, so either loads the same weights.
    """

    def __init__(self, dim: int, inter: int, mode: str = "official") -> None:
        super().__init__()
        if mode not in ("official", "paper"):
            raise ValueError(f"fusion mode must be 'official' or 'paper', got {mode!r}")
        self.mode = mode
        self.inter = inter
        self.align_channel = nn.Conv1d(dim, dim, kernel_size=1)
        self.norm_layer = nn.LayerNorm(dim)
        self.norm_layer2 = nn.LayerNorm(dim)
        self.q_frame = nn.Conv3d(dim, inter, kernel_size=1)
        self.k_frame = nn.Conv3d(dim, inter, kernel_size=1)
        self.v_frame = nn.Conv3d(dim, inter, kernel_size=1)
        self.q_audio = nn.Conv1d(dim, inter, kernel_size=1)
        self.k_audio = nn.Conv1d(dim, inter, kernel_size=1)
        self.v_audio = nn.Conv1d(dim, inter, kernel_size=1)
        self.W_z = nn.Sequential(nn.Conv3d(inter, dim, kernel_size=1), nn.BatchNorm3d(dim))
        self.W_z2 = nn.Sequential(nn.Conv1d(inter, dim, kernel_size=1), nn.BatchNorm1d(dim))
        for bn in (self.W_z[1], self.W_z2[1]):
            nn.init.zeros_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, frame: Tensor, tokens: Tensor, height: int, width: int) -> tuple[Tensor, ...]:
        n, hw, c = frame.shape
        na = tokens.shape[0]
        if self.training and na < 2:
            raise ValueError(
                "the fusion module's token BatchNorm (W_z2, released design) needs at least 2 tokens in "
                "training: use clips of 2 or more frames"
            )
        frame_map = frame.transpose(1, 2).reshape(n, c, 1, height, width)
        aligned = self.align_channel(tokens[..., None])  # (Na, C, 1)
        if self.mode == "official":
            scale = 1.0 / (n * hw)
            q_f = self.q_frame(frame_map).reshape(1, -1, self.inter)  # (1, N*HW, inter), raw memory
            k_f = self.k_frame(frame_map).reshape(1, -1, self.inter)
            v_f = self.v_frame(frame_map).reshape(1, -1, self.inter)
            q_a = self.q_audio(aligned).reshape(1, -1, self.inter)  # (1, Na, inter)
            k_a = self.k_audio(aligned).reshape(1, -1, self.inter)
            v_a = self.v_audio(aligned).reshape(1, -1, self.inter)
            att_f = ((q_f @ k_a.mT) * scale) @ v_a  # (1, N*HW, inter)
            att_f = att_f.permute(0, 2, 1).contiguous().view(n, self.inter, 1, height, width)
            att_a = ((q_a @ k_f.mT) * scale) @ v_f  # (1, Na, inter)
            att_a = att_a.permute(0, 2, 1).contiguous().view(na, self.inter)[..., None]
        else:
            q_f = _pointwise(self.q_frame, frame)  # (N, HW, inter), channels last
            k_f = _pointwise(self.k_frame, frame).reshape(1, n * hw, self.inter)
            v_f = _pointwise(self.v_frame, frame).reshape(1, n * hw, self.inter)
            a = aligned[..., 0]
            q_a = _pointwise(self.q_audio, a)[None]  # (1, Na, inter)
            k_a = _pointwise(self.k_audio, a)
            v_a = _pointwise(self.v_audio, a)
            att_f = F.scaled_dot_product_attention(q_f, k_a[None].expand(n, -1, -1), v_a[None].expand(n, -1, -1))
            att_f = att_f.transpose(1, 2).reshape(n, self.inter, 1, height, width)
            att_a = F.scaled_dot_product_attention(q_a, k_f, v_f)[0][..., None]  # (Na, inter, 1)
        frame_attn = self.W_z(att_f)  # (N, C, 1, H, W)
        frame_out = self.norm_layer((frame_attn + frame_map).permute(0, 2, 3, 4, 1)).reshape(n, hw, c)
        token_attn = self.W_z2(att_a)  # (Na, C, 1)
        tokens_out = self.norm_layer2((token_attn + aligned)[..., 0])
        return frame_out, tokens_out, frame_attn, token_attn


def _pointwise(conv: nn.Module, x: Tensor) -> Tensor:
    """Apply a kernel-1 Conv1d/Conv3d as a Linear on the last (channel) axis of `x (..., C)`."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)
