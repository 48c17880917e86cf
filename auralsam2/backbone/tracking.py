"""Video propagation over one clip with SAM2's memory, in the released AuralSAM2 regime.

Per clip of N frames (one clip per forward, batch 1 per frame, as released):

* processing order `[cond_frame] + [other frames ascending]`;
* the conditioning frame's image embedding is `s16 + no_mem_embed`; every other frame goes through
  the stock memory attention over the conditioning frame's memory, up to `num_maskmem - 1` (6)
  previous frames and the object pointers (`SAM2Base._prepare_memory_conditioned_features`);
* each frame is decoded by `prompted_decode` with its dense/sparse prompts, always with multimask
  output; the best-IoU mask and its token give the object pointer;
* the memory of each frame is encoded (`SAM2Base._encode_new_memory`) from the raw s16 feature and
  the best high-res mask, binarised and mapped to {-10, +10} (`is_mask_from_pts=True` with the
  released `binarize_mask_from_pts_for_mem_enc=True`; SAM2 stays in eval, see `freeze_sam2`), so in
  this regime gradients cross frames only through the object pointers.

Conditioning-frame choice is the caller's (released: middle `N // 2` in training, 0 for AVSBench
evaluation, middle for Ref-AVS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from auralsam2.backbone.decoder import DecoderOutput, PointInputs, prompted_decode
from auralsam2.backbone.encoding import Pyramid, prepare_decoder_features


class DecoderPrompts(NamedTuple):
    """Per-frame AuralSAM2 prompts for a clip, in DECODER STAGE ORDER.

    `dense[k]`: (N, HW, C) with HW = (S/16)², added to the image tokens at stage k; `sparse[k]`:
    (N, C), added to the four mask tokens. Stage 0 = before block 0 (the deepest, s16 fuser
    output), 1 = before block 1 (s8), 2 = before the final attention (s4). The fuser returns pyramid
    order; the composed model reverses it. Either may be None (no prompt of that kind).
    """

    dense: Sequence[Tensor] | None = None
    sparse: Sequence[Tensor] | None = None


@dataclass(frozen=True)
class FrameOutput:
    """Decoder outputs for one frame of a tracked clip (leading batch dim 1).

    `high_res_masks` (1, 3, S, S) multimask logits; `low_res_masks` (1, 3, S/4, S/4); `ious` (1, 3);
    `object_score_logits` (1, 1); `best_index` argmax of `ious` (the mask used for memory and the
    object pointer); `obj_ptr` (1, C).
    """

    frame_idx: int
    high_res_masks: Tensor
    low_res_masks: Tensor
    ious: Tensor
    object_score_logits: Tensor
    best_index: int
    obj_ptr: Tensor


def _unpack_prompts(prompts: Any) -> tuple[Sequence[Tensor] | None, Sequence[Tensor] | None]:
    if prompts is None:
        return None, None
    if isinstance(prompts, Mapping):
        return prompts.get("dense"), prompts.get("sparse")
    return prompts.dense, prompts.sparse


def _frame_rows(x: Tensor, t: int, rows: Tensor, clips: int) -> Tensor:
    """Frame t of every clip from a clip-major `(clips * N, ...)` tensor."""
    return x[t : t + 1] if clips == 1 else x[rows]


def _frame_prompts(prompts: Sequence[Tensor | None] | None, t: int, rows: Tensor, clips: int) -> list[Tensor] | None:
    if prompts is None:
        return None
    return [None if p is None else _frame_rows(p, t, rows, clips) for p in prompts]


def _mask_as_output(model: nn.Module, pix_feat: Tensor, high_res: list[Tensor], mask: Tensor) -> DecoderOutput:
    """Stock SAM2's mask-as-output for a frame prompted with a mask, as multimask-shaped outputs
    (the three copies are the same mask; IoUs 1)."""
    size = (model.image_size, model.image_size)
    if mask.ndim != 4 or mask.shape[:2] != (1, 1) or tuple(mask.shape[-2:]) != size:
        raise ValueError(f"cond_mask must be (1, 1, {size[0]}, {size[1]}) (the output of the frame), "
                         f"got {tuple(mask.shape)}")
    low, high, ious, _, _, obj_ptr, score = model._use_mask_as_output(pix_feat, high_res, mask)
    return DecoderOutput(low_res_masks=low.expand(-1, 3, -1, -1), high_res_masks=high.expand(-1, 3, -1, -1),
                         ious=ious.expand(-1, 3), object_score_logits=score, mask_tokens=obj_ptr[:, None],
                         obj_ptr=obj_ptr)


def track_clip(
    model: nn.Module,
    pyramid: Pyramid,
    prompts: DecoderPrompts | Mapping[str, Any] | None,
    cond_frame: int,
    point_inputs: PointInputs | None = None,
    *,
    mask_inputs: Tensor | None = None,
    frame_mask_inputs: Tensor | None = None,
    cond_mask: Tensor | None = None,
    official_query_pe: bool = True,
    binarize_memory_masks: bool = True,
) -> list[FrameOutput]:
    """Segment one clip with SAM2 memory and AuralSAM2 prompts; returns N `FrameOutput`s by frame index.

    `model`: a frozen SAM2Base (`build_sam2_model`/`freeze_sam2`), in eval. `pyramid`: the clip's
    raw FPN levels (N frames; any float dtype, e.g. a bf16 cache). `prompts`: `DecoderPrompts` or a
    mapping with "dense"/"sparse" (decoder stage order, see `DecoderPrompts`), or None for plain SAM2.
    `cond_frame`: index of the conditioning frame. `point_inputs` (batch 1, model-input pixels,
    `point_inputs_from_clicks`) and `mask_inputs` (1, 1, H, W) are SAM2 prompts for the
    conditioning frame only (paper Table 6); they are decoded together with the audio prompts.
    `frame_mask_inputs` (N, 1, H, W): a mask prompt for every frame (values in [0, 1], or logits),
    e.g. the fuser's audio-visual localisation map; on the conditioning frame `mask_inputs`, when
    given, replaces it. `cond_mask` (1, 1, S, S) binary: the conditioning frame's OUTPUT, as stock
    SAM2's `add_new_mask` does with `use_mask_input_as_output_without_sam` (every SAM 2.1 config;
    `SAM2Base._use_mask_as_output`); the memory and the object pointer are made from it.
    `official_query_pe`: see `prompted_two_way`. `binarize_memory_masks=False` feeds
    `sigmoid(logits)` to the memory encoder instead (not the released regime; lets gradients
    through spatial memory).

    Runs under whatever autocast the caller set (the released model trains under bf16 autocast).
    """
    num_frames = pyramid.s16.shape[0]
    if not 0 <= cond_frame < num_frames:
        raise ValueError(f"cond_frame={cond_frame} is outside the clip's {num_frames} frames")
    if model.training:
        raise ValueError("SAM2 must be in eval mode for the released tracking regime: call freeze_sam2(model)")
    if binarize_memory_masks and not model.binarize_mask_from_pts_for_mem_enc:
        raise ValueError(
            "this SAM2 does not binarise memory masks (binarize_mask_from_pts_for_mem_enc=False): "
            "build it with build_sam2_model or call freeze_sam2(model)"
        )
    if frame_mask_inputs is not None:
        if frame_mask_inputs.ndim != 4 or tuple(frame_mask_inputs.shape[:2]) != (num_frames, 1):
            raise ValueError(f"frame_mask_inputs must be ({num_frames}, 1, H, W), got {tuple(frame_mask_inputs.shape)}")
    dense, sparse = _unpack_prompts(prompts)
    for name, stage_prompts in (("dense", dense), ("sparse", sparse)):
        for k, p in enumerate(stage_prompts or []):
            if p is not None and p.shape[0] != num_frames:
                raise ValueError(f"prompts.{name}[{k}] has {p.shape[0]} frames, the pyramid has {num_frames}")

    return _track(model, prepare_decoder_features(model, pyramid), num_frames, 1, dense, sparse, cond_frame,
                  point_inputs, mask_inputs, frame_mask_inputs, cond_mask, official_query_pe,
                  binarize_memory_masks)[0]


def track_clips(
    model: nn.Module,
    pyramids: Sequence[Pyramid],
    prompts: Sequence[DecoderPrompts | Mapping[str, Any] | None],
    cond_frame: int,
    *,
    frame_mask_inputs: Sequence[Tensor | None] | None = None,
    official_query_pe: bool = True,
    binarize_memory_masks: bool = True,
) -> list[list[FrameOutput]]:
    """`track_clip` for several clips of the same length at once: frame t of every clip is one
    decoder batch, each clip with its own memory bank, object pointers and prompts (SAM2's memory
    attention is per batch entry), so the result equals tracking them one at a time (up to float
    summation order). No SAM2 point / mask prompts (those are per-clip interactive inputs)."""
    if not pyramids:
        return []
    lengths = {p.s16.shape[0] for p in pyramids}
    if len(lengths) != 1:
        raise ValueError(f"track_clips needs clips of one length, got lengths {sorted(lengths)}: group them first")
    if len(prompts) != len(pyramids):
        raise ValueError(f"{len(pyramids)} clips but {len(prompts)} prompt sets")
    num_frames = lengths.pop()
    if not 0 <= cond_frame < num_frames:
        raise ValueError(f"cond_frame={cond_frame} is outside the clips' {num_frames} frames")
    if model.training:
        raise ValueError("SAM2 must be in eval mode for the released tracking regime: call freeze_sam2(model)")
    unpacked = [_unpack_prompts(p) for p in prompts]

    def stacked(which: int) -> list[Tensor | None] | None:
        per_clip = [u[which] for u in unpacked]
        if all(x is None for x in per_clip):
            return None
        if any(x is None for x in per_clip):
            raise ValueError("every clip of a batch needs the same kinds of prompts")
        return [None if per_clip[0][k] is None else torch.cat([x[k] for x in per_clip]) for k in range(len(per_clip[0]))]

    masks = None
    if frame_mask_inputs is not None and any(m is not None for m in frame_mask_inputs):
        masks = torch.cat(list(frame_mask_inputs))
    pyramid = Pyramid(*(torch.cat([getattr(p, level) for p in pyramids]) for level in Pyramid._fields))
    return _track(model, prepare_decoder_features(model, pyramid), num_frames, len(pyramids), stacked(0), stacked(1),
                  cond_frame, None, None, masks, None, official_query_pe, binarize_memory_masks)


def _track(model: nn.Module, feats: Any, num_frames: int, clips: int, dense: Sequence[Tensor | None] | None,
           sparse: Sequence[Tensor | None] | None, cond_frame: int, point_inputs: PointInputs | None,
           mask_inputs: Tensor | None, frame_mask_inputs: Tensor | None, cond_mask: Tensor | None,
           official_query_pe: bool, binarize_memory_masks: bool) -> list[list[FrameOutput]]:
    """Frame t of clip c sits at index c * num_frames + t of every per-frame tensor; frame t of all
    clips is decoded as one batch (`clips` entries)."""
    output_dict: dict[str, dict[int, dict[str, Any]]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    results: list[dict[int, FrameOutput]] = [{} for _ in range(clips)]
    order = [cond_frame] + [t for t in range(num_frames) if t != cond_frame]
    device = feats.vision_feats[0].device
    for t in order:
        is_cond = t == cond_frame
        rows = torch.arange(clips, device=device) * num_frames + t
        cur_feats = [x[:, t : t + 1] if clips == 1 else x[:, rows] for x in feats.vision_feats]
        cur_pos = [x[:, t : t + 1] if clips == 1 else x[:, rows] for x in feats.vision_pos_embeds]
        pix_feat = model._prepare_memory_conditioned_features(
            frame_idx=t,
            is_init_cond_frame=is_cond,
            current_vision_feats=cur_feats[-1:],
            current_vision_pos_embeds=cur_pos[-1:],
            feat_sizes=feats.feat_sizes[-1:],
            output_dict=output_dict,
            num_frames=num_frames,
        )
        high_res = [
            x.permute(1, 2, 0).view(clips, x.size(2), *size)
            for x, size in zip(cur_feats[:-1], feats.feat_sizes[:-1], strict=True)
        ]
        if is_cond and cond_mask is not None:
            out = _mask_as_output(model, pix_feat, high_res, cond_mask)
        else:
            out = prompted_decode(
                model,
                pix_feat,
                high_res,
                _frame_prompts(dense, t, rows, clips),
                _frame_prompts(sparse, t, rows, clips),
                point_inputs=point_inputs if is_cond else None,
                mask_inputs=mask_inputs if is_cond and mask_inputs is not None
                else None if frame_mask_inputs is None else _frame_rows(frame_mask_inputs, t, rows, clips),
                multimask_output=True,
                official_query_pe=official_query_pe,
            )
        best = torch.argmax(out.ious, dim=1)  # per clip: the mask used for memory and the object pointer
        best_masks = (out.high_res_masks[:, int(best[0]) : int(best[0]) + 1] if clips == 1
                      else out.high_res_masks[torch.arange(clips, device=best.device), best][:, None])
        maskmem_features, maskmem_pos_enc = model._encode_new_memory(
            current_vision_feats=cur_feats,
            feat_sizes=feats.feat_sizes,
            pred_masks_high_res=best_masks,
            object_score_logits=out.object_score_logits,
            is_mask_from_pts=binarize_memory_masks,
        )
        key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
        output_dict[key][t] = {
            "maskmem_features": maskmem_features,
            "maskmem_pos_enc": maskmem_pos_enc,
            "obj_ptr": out.obj_ptr,
        }
        for c in range(clips):
            results[c][t] = FrameOutput(
                frame_idx=t,
                high_res_masks=out.high_res_masks[c : c + 1],
                low_res_masks=out.low_res_masks[c : c + 1],
                ious=out.ious[c : c + 1],
                object_score_logits=out.object_score_logits[c : c + 1],
                best_index=int(best[c]),
                obj_ptr=out.obj_ptr[c : c + 1],
            )
    return [[clip[t] for t in range(num_frames)] for clip in results]
