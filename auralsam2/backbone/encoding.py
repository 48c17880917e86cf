"""SAM2 image encoding: frames -> the raw FPN pyramid the AuralFuser reads, and its compact cache form.

Shapes: N frames, S = `model.image_size` (1024 for real configs), C = SAM2 hidden dim (256 real,
32 `tiny`). The image encoder (Hiera trunk + FPN neck, `scalp=1`) gives three levels at strides
4/8/16. We call `model.image_encoder` and never `model.forward_image`, because the latter overwrites
levels 0/1 in place with the decoder's `conv_s0`/`conv_s1` projections (32/64 channels), while the
fuser needs the raw C-channel levels. Positional encodings depend only on shapes and are recomputed,
never stored.
"""

from __future__ import annotations

import contextlib
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn


class Pyramid(NamedTuple):
    """The raw FPN levels of N frames, BEFORE `conv_s0`/`conv_s1`, highest resolution first.

    `s4` (N, C, S/4, S/4), `s8` (N, C, S/8, S/8), `s16` (N, C, S/16, S/16). `pyramid[0..2]` is the
    pyramid order the fuser uses; `s16` is also SAM2's `vision_features` (image embedding input).
    """

    s4: Tensor
    s8: Tensor
    s16: Tensor


class CompactLevel(NamedTuple):
    """Storage layout of one pyramid level in the compact cache form.

    `form`: "trunk" = the Hiera stage output (the FPN level is its 1x1 lateral conv, re-applied by
    `expand_compact`), or "fpn" = the FPN level itself. `channels`: stored channels per pixel.
    `stride`: the level's stride in input pixels (4, 8, 16).
    """

    form: Literal["trunk", "fpn"]
    channels: int
    stride: int


class CompactPyramid(NamedTuple):
    """The narrowest exact storage form of a `Pyramid`: `levels[k]` is (N, layout[k].channels, S/stride, S/stride).

    `forms[k]` says which form level k is stored in ("trunk" or "fpn", see `CompactLevel`).
    """

    levels: tuple[Tensor, Tensor, Tensor]
    forms: tuple[str, str, str]

    @property
    def nbytes(self) -> int:
        """Bytes of all stored levels."""
        return sum(x.numel() * x.element_size() for x in self.levels)


class DecoderFeatures(NamedTuple):
    """A pyramid prepared for SAM2's memory path and mask decoder, in SAM2's flattened layout.

    `vision_feats`: [(S²/16, N, C/8), (S²/64, N, C/4), (S²/256, N, C)], i.e. `conv_s0(s4)`,
    `conv_s1(s8)` and the raw `s16`, flattened to (HW, N, C) as `SAM2Base._prepare_backbone_features`
    returns them. `vision_pos_embeds`: the sine PEs of the three levels, same layout (C channels;
    batch-expanded views, not copies). `feat_sizes`: [(S/4, S/4), (S/8, S/8), (S/16, S/16)].
    """

    vision_feats: list[Tensor]
    vision_pos_embeds: list[Tensor]
    feat_sizes: list[tuple[int, int]]


def _autocast(device: torch.device, enabled: bool | None):
    """bf16 autocast on CUDA by default (as the released model runs the encoder); off on CPU."""
    if enabled is None:
        enabled = device.type == "cuda"
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _check_images(model: nn.Module, images: Tensor) -> None:
    size = model.image_size
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size):
        raise ValueError(
            f"images must be (N, 3, {size}, {size}) for this SAM2 (image_size={size}), got "
            f"{tuple(images.shape)}; resize with auralsam2.transforms.preprocess_frames(frames, {size})"
        )


def _num_levels(model: nn.Module) -> int:
    enc = model.image_encoder
    return len(enc.neck.convs) - enc.scalp


def _level_stride(trunk: nn.Module, level: int) -> int:
    patch_stride = trunk.patch_embed.proj.stride[0]
    pooled = min(level, len(trunk.q_pool_blocks))
    return patch_stride * trunk.q_stride[0] ** pooled


def compact_layout(model: nn.Module) -> tuple[CompactLevel, ...]:
    """Per pyramid level, the narrowest form that reproduces it exactly (no images needed).

    FPN level i is `neck.convs[n - i](trunk_i)` (+ an upsampled coarser level when i is in
    `fpn_top_down_levels`). A level without a top-down term is a pure function of Hiera stage i,
    so storing the stage output is exact whenever it has fewer channels than the FPN's C. With the
    packaged configs (`fpn_top_down_levels: [2, 3]`) that gives, at C=256:
    t/s (96/192 ch) and b+ (112/224 ch) -> trunk, trunk, fpn; l (144/288 ch) -> trunk, fpn, fpn.
    """
    enc = model.image_encoder
    neck, trunk = enc.neck, enc.trunk
    n = len(neck.convs) - 1
    layout = []
    for i in range(_num_levels(model)):
        trunk_channels = neck.convs[n - i].conv.in_channels
        lateral_only = i not in neck.fpn_top_down_levels or i == n
        if lateral_only and trunk_channels < neck.d_model:
            layout.append(CompactLevel("trunk", trunk_channels, _level_stride(trunk, i)))
        else:
            layout.append(CompactLevel("fpn", neck.d_model, _level_stride(trunk, i)))
    return tuple(layout)


def compact_bytes_per_frame(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one frame takes in the compact form at `model.image_size` (no images needed)."""
    size = model.image_size
    item = torch.empty((), dtype=dtype).element_size()
    return sum(lv.channels * (size // lv.stride) ** 2 * item for lv in compact_layout(model))


@torch.no_grad()
def encode_frames(
    model: nn.Module,
    images: Tensor,
    *,
    chunk_size: int = 8,
    autocast: bool | None = None,
) -> Pyramid:
    """Run SAM2's image encoder on preprocessed frames and return the raw FPN `Pyramid`.

    `images`: (N, 3, S, S) float, ImageNet-normalised (`preprocess_frames`), any device; it is moved
    to the model's device `chunk_size` frames at a time. `autocast`: bf16 autocast (default: on for
    CUDA, off on CPU). Under autocast the stock neck returns s4/s8 in bf16 and s16 in fp32 (it
    upcasts for the top-down interpolation); on CPU everything is fp32. Runs under `no_grad` (not
    `inference_mode`, so the outputs can still enter an autograd graph downstream).
    """
    _check_images(model, images)
    device = model.device
    levels: list[list[Tensor]] = [[] for _ in range(_num_levels(model))]
    with _autocast(device, autocast):
        for chunk in images.split(chunk_size):
            fpn = model.image_encoder(chunk.to(device))["backbone_fpn"]
            for k, x in enumerate(fpn):
                levels[k].append(x)
    return Pyramid(*(torch.cat(lv) for lv in levels))


@torch.no_grad()
def encode_frames_compact(
    model: nn.Module,
    images: Tensor,
    *,
    dtype: torch.dtype = torch.bfloat16,
    chunk_size: int = 8,
    autocast: bool | None = None,
) -> CompactPyramid:
    """Encode frames into the compact cache form (`compact_layout`), stored in `dtype`.

    `dtype`: bf16 (default; the precision the released model runs in), fp16 (finer mantissa,
    overflows above 65504: checked), or fp32 (bit-exact). Same `images`/`chunk_size`/`autocast` as
    `encode_frames`; the trunk and the neck run once, exactly as inside `model.image_encoder`.
    """
    _check_images(model, images)
    device = model.device
    enc = model.image_encoder
    layout = compact_layout(model)
    levels: list[list[Tensor]] = [[] for _ in layout]
    with _autocast(device, autocast):
        for chunk in images.split(chunk_size):
            trunk_out = enc.trunk(chunk.to(device))
            fpn, _ = enc.neck(trunk_out)
            for k, lv in enumerate(layout):
                x = (trunk_out if lv.form == "trunk" else fpn)[k]
                stored = x.to(dtype)
                if not torch.isfinite(stored).all():
                    raise ValueError(
                        f"compact pyramid level {k} ({lv.form}) overflows {dtype} (max |x| = "
                        f"{x.abs().max().item():.4g}); store in torch.bfloat16 or torch.float32 instead"
                    )
                levels[k].append(stored)
    return CompactPyramid(
        levels=tuple(torch.cat(lv) for lv in levels), forms=tuple(lv.form for lv in layout)
    )


@torch.no_grad()
def expand_compact(model: nn.Module, compact: CompactPyramid, *, dtype: torch.dtype = torch.float32) -> Pyramid:
    """Turn a `CompactPyramid` back into the raw FPN `Pyramid` on the model's device.

    Trunk-form levels go through the neck's frozen 1x1 lateral conv (computed in `dtype`, fp32 by
    default, or in bf16 under an enclosing autocast as in the encoder); FPN-form levels are only cast
    to `dtype`. The result equals `encode_frames` up to the storage dtype's rounding (bit-exact for
    fp32 storage).
    """
    layout = compact_layout(model)
    if tuple(compact.forms) != tuple(lv.form for lv in layout):
        raise ValueError(
            f"compact pyramid forms {tuple(compact.forms)} do not match this SAM2's layout "
            f"{tuple(lv.form for lv in layout)}: it was cached with a different SAM2 config; re-encode it"
        )
    neck = model.image_encoder.neck
    n = len(neck.convs) - 1
    device = model.device
    out = []
    for k, (x, lv) in enumerate(zip(compact.levels, layout, strict=True)):
        if x.shape[1] != lv.channels:
            raise ValueError(
                f"compact pyramid level {k} has {x.shape[1]} channels, this SAM2 expects {lv.channels}"
            )
        x = x.to(device=device, dtype=dtype)
        out.append(neck.convs[n - k](x) if lv.form == "trunk" else x)
    return Pyramid(*out)


def prepare_decoder_features(model: nn.Module, pyramid: Pyramid) -> DecoderFeatures:
    """Apply the decoder's `conv_s0`/`conv_s1` to s4/s8 and flatten everything as SAM2 expects.

    This replaces the stock `forward_image` + `_prepare_backbone_features` pair for a pyramid that
    came from `encode_frames`/`expand_compact` (or a cache): the 1x1 projections are frozen and
    cheap, so they are recomputed rather than stored. Uses the stock `_prepare_backbone_features`.
    Pyramid levels are cast to the model's parameter dtype first (a bf16 cache is upcast exactly);
    any enclosing autocast applies to the convolutions as in the released model.
    """
    dec = model.sam_mask_decoder
    param_dtype = dec.conv_s0.weight.dtype
    s4, s8, s16 = (x.to(device=model.device, dtype=param_dtype) for x in pyramid)
    levels = [dec.conv_s0(s4), dec.conv_s1(s8), s16]
    pe_layer = model.image_encoder.neck.position_encoding
    # The sine PE depends only on (H, W): compute it once and expand over frames (no copy).
    pos = [pe_layer(x[:1]).to(x.dtype).expand(x.shape[0], -1, -1, -1) for x in (s4, s8, s16)]
    _, feats, pos_embeds, sizes = model._prepare_backbone_features(
        {"backbone_fpn": levels, "vision_pos_enc": pos, "vision_features": s16}
    )
    return DecoderFeatures(feats, pos_embeds, [tuple(s) for s in sizes])
