"""SAM2's mask decoder with AuralSAM2's feature-level prompts, on the stock `sam2` submodules.

AuralSAM2 adds the fuser's outputs inside the decoder's TwoWayTransformer at three stages (before
block 0, before block 1, before the final token-to-image attention): a dense prompt (HW, C) per frame
on the image tokens (keys) and a sparse prompt (C,) per frame on the four mask tokens. Forward hooks
cannot express this (stage 3 changes the returned keys, and the released code aliases the query PE),
so `prompted_two_way` / `prompted_decode` re-implement the control flow of the stock
`TwoWayTransformer.forward`, `MaskDecoder.predict_masks`/`forward` and `SAM2Base._forward_sam_heads`
while calling the stock submodules; they add no parameter and replace no module, so state-dict keys
are unchanged. With no prompts the outputs equal the stock decoder's bit for bit.

Token layout (every packaged config has `pred_obj_scores=True`):
`[obj_score, iou, mask0..mask3, <point/box tokens...>]`; the mask-token slice is derived from the
decoder (`mask_token_slice`), and point/box tokens from the stock prompt encoder come after the six
output tokens, so audio prompts always hit the mask tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Stock SAM2 writes this into low-res logits of frames whose object score is negative.
NO_OBJ_SCORE = -1024.0


class PointInputs(TypedDict):
    """SAM2's point prompt format (as `SAM2Base._forward_sam_heads` takes it).

    `point_coords`: (B, P, 2) float (x, y) in model-input pixels (0..S); `point_labels`: (B, P) int32,
    1 positive click, 0 negative click, 2/3 box top-left/bottom-right corners, -1 padding.
    """

    point_coords: Tensor
    point_labels: Tensor


class DecoderOutput(NamedTuple):
    """Outputs of `prompted_decode` for B frames (M = 3 with multimask output, else 1).

    `low_res_masks` (B, M, S/4, S/4) fp32 logits, exactly the stock decoder's masks;
    `high_res_masks` (B, M, S, S) their bilinear upsampling (align_corners=False) to the input size;
    `ious` (B, M) predicted IoUs; `object_score_logits` (B, 1); `mask_tokens` (B, M or 1, C) the
    decoder's output tokens the stock code uses for object pointers; `obj_ptr` (B, C) the object
    pointer of the best-IoU mask (gated by the object score, as stock).
    """

    low_res_masks: Tensor
    high_res_masks: Tensor
    ious: Tensor
    object_score_logits: Tensor
    mask_tokens: Tensor
    obj_ptr: Tensor


def mask_token_slice(decoder: nn.Module) -> slice:
    """Where the mask tokens sit in the decoder's token sequence: after obj-score (if any) and IoU."""
    start = int(decoder.pred_obj_scores) + 1
    return slice(start, start + decoder.num_mask_tokens)


def _add_to_tokens(tokens: Tensor, prompt: Tensor | None, where: slice) -> Tensor:
    """`tokens` (B, T, C) with `prompt` ((B, C) or (C,)) added to rows `where`; out of place."""
    if prompt is None:
        return tokens
    prompt = prompt.reshape(-1, 1, tokens.shape[-1])
    return torch.cat([tokens[:, : where.start], tokens[:, where] + prompt, tokens[:, where.stop :]], dim=1)


def _check_stages(name: str, prompts: Sequence[Tensor | None] | None, stages: int) -> list:
    if prompts is None:
        return [None] * stages
    if len(prompts) != stages:
        raise ValueError(
            f"{name} must hold {stages} tensors (before block 0, before block 1, before the final "
            f"attention), got {len(prompts)}"
        )
    return list(prompts)


def prompted_two_way(
    transformer: nn.Module,
    image_embedding: Tensor,
    image_pe: Tensor,
    point_embedding: Tensor,
    dense_prompts: Sequence[Tensor | None] | None,
    sparse_prompts: Sequence[Tensor | None] | None,
    official_query_pe: bool = True,
    *,
    mask_token_slice: slice = slice(2, 6),
) -> tuple[Tensor, Tensor]:
    """The stock `TwoWayTransformer.forward` with AuralSAM2's prompts added at its three stages.

    `image_embedding`, `image_pe`: (B, C, h, w). `point_embedding`: (B, T, C) output tokens (+ point
    tokens). `dense_prompts[k]`: (B, hw, C) or (hw, C), added to the image tokens (keys);
    `sparse_prompts[k]`: (B, C) or (C,), added to the mask tokens `mask_token_slice`; stage k = 0
    before block 0, 1 before block 1, 2 before the final token-to-image attention (so the returned
    keys include the stage-2 dense prompt, as released). Either list, or any entry, may be None.
    Returns `(queries (B, T, C), keys (B, hw, C))`.

    `official_query_pe=True` reproduces the released code, whose stage-0 in-place update of the
    queries also changed the query PE (they were the same tensor): every later attention then uses
    `query_pe = tokens + sparse_prompts[0]` on the mask rows. `False` keeps the stock query PE.
    No input tensor is modified.
    """
    stages = len(transformer.layers) + 1
    dense = _check_stages("dense_prompts", dense_prompts, stages)
    sparse = _check_stages("sparse_prompts", sparse_prompts, stages)

    keys = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = point_embedding, point_embedding
    for k, layer in enumerate(transformer.layers):
        if dense[k] is not None:
            keys = keys + dense[k]
        queries = _add_to_tokens(queries, sparse[k], mask_token_slice)
        if k == 0 and official_query_pe:
            query_pe = queries
        queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)

    queries = _add_to_tokens(queries, sparse[-1], mask_token_slice)
    if dense[-1] is not None:
        keys = keys + dense[-1]
    q = queries + query_pe
    k_in = keys + key_pe
    attn_out = transformer.final_attn_token_to_image(q=q, k=k_in, v=keys)
    queries = queries + attn_out
    queries = transformer.norm_final_attn(queries)
    return queries, keys


def _prompted_predict_masks(
    decoder: nn.Module,
    image_embeddings: Tensor,
    image_pe: Tensor,
    sparse_prompt_embeddings: Tensor,
    dense_prompt_embeddings: Tensor,
    high_res_features: Sequence[Tensor] | None,
    dense_prompts,
    sparse_prompts,
    official_query_pe: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stock `MaskDecoder.predict_masks` (with `repeat_image=False`) around `prompted_two_way`."""
    s = 0
    if decoder.pred_obj_scores:
        output_tokens = torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
        )
        s = 1
    else:
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    if image_embeddings.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"image_embedding has {image_embeddings.shape[0]} frames but the prompts have {tokens.shape[0]}"
        )
    src = image_embeddings + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape

    hs, src = prompted_two_way(
        decoder.transformer,
        src,
        pos_src,
        tokens,
        dense_prompts,
        sparse_prompts,
        official_query_pe,
        mask_token_slice=mask_token_slice(decoder),
    )
    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1 : (s + 1 + decoder.num_mask_tokens), :]

    src = src.transpose(1, 2).view(b, c, h, w)
    if not decoder.use_high_res_features:
        upscaled_embedding = decoder.output_upscaling(src)
    else:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled_embedding = act1(ln1(dc1(src) + feat_s1))
        upscaled_embedding = act2(dc2(upscaled_embedding) + feat_s0)

    hyper_in = torch.stack(
        [decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(decoder.num_mask_tokens)],
        dim=1,
    )
    b, c, h, w = upscaled_embedding.shape
    masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)

    iou_pred = decoder.iou_prediction_head(iou_token_out)
    if decoder.pred_obj_scores:
        object_score_logits = decoder.pred_obj_score_head(hs[:, 0, :])
    else:
        object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
    return masks, iou_pred, mask_tokens_out, object_score_logits


def prompted_decode(
    model: nn.Module,
    image_embedding: Tensor,
    high_res_features: Sequence[Tensor] | None,
    dense_prompts: Sequence[Tensor | None] | None = None,
    sparse_prompts: Sequence[Tensor | None] | None = None,
    point_inputs: PointInputs | None = None,
    mask_inputs: Tensor | None = None,
    multimask_output: bool = True,
    official_query_pe: bool = True,
    *,
    no_object_masking: bool = False,
) -> DecoderOutput:
    """SAM2's heads (prompt encoder + mask decoder + object pointer) with AuralSAM2 prompts.

    `model`: a SAM2Base. `image_embedding`: (B, C, S/16, S/16), the memory-conditioned feature (or
    `s16 + no_mem_embed` on a conditioning frame). `high_res_features`: `[conv_s0(s4), conv_s1(s8)]`,
    (B, C/8, S/4, S/4) and (B, C/4, S/8, S/8). `dense_prompts`/`sparse_prompts`: see
    `prompted_two_way` (decoder stage order: deepest fuser level first).

    `point_inputs` (clicks and boxes, `PointInputs`) go through the stock prompt encoder (which adds
    one padding point, as in stock SAM2) and their tokens follow the six output tokens. Without
    points there are no sparse tokens at all, as in the released AuralSAM2 (stock
    `_forward_sam_heads` would add a padding token). `mask_inputs` (B, 1, H, W) logits or binary
    mask (resized to 4x the embedding size as stock SAM2 does) replace `no_mask_embed` by the prompt
    encoder's mask embedding.

    `no_object_masking=True` reproduces stock `_forward_sam_heads`, which sets low-res logits to
    -1024 where the object score is negative; the released AuralSAM2 does not (default False).
    With no dense/sparse prompts the result equals stock SAM2 exactly (decoder and
    `_forward_sam_heads` for the same clicks).
    """
    B = image_embedding.size(0)
    device = image_embedding.device
    pe = model.sam_prompt_encoder
    decoder = model.sam_mask_decoder

    points = None
    if point_inputs is not None:
        points = (point_inputs["point_coords"], point_inputs["point_labels"])
        if points[0].size(0) != B or points[1].size(0) != B:
            raise ValueError(f"point_inputs must have batch size {B} (one entry per frame decoded)")
    mask_prompt = None
    if mask_inputs is not None:
        if mask_inputs.ndim != 4 or tuple(mask_inputs.shape[:2]) != (B, 1):
            raise ValueError(f"mask_inputs must be ({B}, 1, H, W), got {tuple(mask_inputs.shape)}")
        mask_prompt = mask_inputs
        if tuple(mask_inputs.shape[-2:]) != tuple(pe.mask_input_size):
            mask_prompt = F.interpolate(
                mask_inputs.float(), size=pe.mask_input_size, align_corners=False, mode="bilinear", antialias=True
            )
    sparse_embeddings, dense_embeddings = pe(points=points, boxes=None, masks=mask_prompt)
    if sparse_embeddings.size(0) != B:  # no points: the stock encoder answers for batch 1
        sparse_embeddings = sparse_embeddings.expand(B, -1, -1)
        dense_embeddings = dense_embeddings.expand(B, -1, -1, -1)
    sparse_embeddings = sparse_embeddings.to(device)

    masks, iou_pred, mask_tokens_out, object_score_logits = _prompted_predict_masks(
        decoder,
        image_embedding,
        pe.get_dense_pe(),
        sparse_embeddings,
        dense_embeddings,
        high_res_features,
        dense_prompts,
        sparse_prompts,
        official_query_pe,
    )
    # Mask selection exactly as the stock MaskDecoder.forward.
    if multimask_output:
        masks, iou_pred = masks[:, 1:, :, :], iou_pred[:, 1:]
    elif decoder.dynamic_multimask_via_stability and not decoder.training:
        masks, iou_pred = decoder._dynamic_multimask_via_stability(masks, iou_pred)
    else:
        masks, iou_pred = masks[:, 0:1, :, :], iou_pred[:, 0:1]
    if multimask_output and decoder.use_multimask_token_for_obj_ptr:
        sam_tokens_out = mask_tokens_out[:, 1:]
    else:
        sam_tokens_out = mask_tokens_out[:, 0:1]

    # The rest of SAM2Base._forward_sam_heads.
    is_obj_appearing = object_score_logits > 0
    if no_object_masking and model.pred_obj_scores:
        masks = torch.where(is_obj_appearing[:, None, None], masks, NO_OBJ_SCORE)
    low_res_masks = masks.float()
    high_res_masks = F.interpolate(
        low_res_masks, size=(model.image_size, model.image_size), mode="bilinear", align_corners=False
    )
    sam_output_token = sam_tokens_out[:, 0]
    if multimask_output:
        best_iou_inds = torch.argmax(iou_pred, dim=-1)
        if sam_tokens_out.size(1) > 1:
            sam_output_token = sam_tokens_out[torch.arange(B, device=device), best_iou_inds]
    obj_ptr = model.obj_ptr_proj(sam_output_token)
    # `no_obj_ptr` exists only when use_obj_ptrs_in_encoder=True (stock would fail without it).
    if model.pred_obj_scores and hasattr(model, "no_obj_ptr"):
        if model.soft_no_obj_ptr:
            lambda_is_obj_appearing = object_score_logits.sigmoid()
        else:
            lambda_is_obj_appearing = is_obj_appearing.float()
        if model.fixed_no_obj_ptr:
            obj_ptr = lambda_is_obj_appearing * obj_ptr
        obj_ptr = obj_ptr + (1 - lambda_is_obj_appearing) * model.no_obj_ptr

    return DecoderOutput(
        low_res_masks=low_res_masks,
        high_res_masks=high_res_masks,
        ious=iou_pred,
        object_score_logits=object_score_logits,
        mask_tokens=sam_tokens_out,
        obj_ptr=obj_ptr,
    )


def point_inputs_from_clicks(
    image_size: int,
    orig_hw: tuple[int, int],
    points: Tensor | None = None,
    labels: Tensor | None = None,
    box: Tensor | None = None,
) -> PointInputs:
    """Build SAM2 `PointInputs` for one frame from clicks/box in original frame pixels.

    `points` (P, 2) (x, y) and `labels` (P,) (1 positive, 0 negative); `box` (4,) as
    (x0, y0, x1, y1). Coordinates are scaled from `orig_hw` = (H, W) to the square model input of
    side `image_size`, and the box becomes two corner points labelled 2 and 3 placed before the
    clicks, exactly as `SAM2ImagePredictor` does. Returns batch-1 tensors: coords (1, P', 2) fp32,
    labels (1, P') int32.
    """
    h, w = orig_hw
    scale = torch.tensor([image_size / w, image_size / h], dtype=torch.float32)
    coords, labs = [], []
    if box is not None:
        coords.append(torch.as_tensor(box, dtype=torch.float32).reshape(2, 2) * scale)
        labs.append(torch.tensor([2, 3], dtype=torch.int32))
    if points is not None:
        if labels is None or len(labels) != len(points):
            raise ValueError("point_inputs_from_clicks: give one label (1 positive, 0 negative) per point")
        coords.append(torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2) * scale)
        labs.append(torch.as_tensor(labels, dtype=torch.int32).reshape(-1))
    if not coords:
        raise ValueError("point_inputs_from_clicks: give points (with labels) and/or a box")
    return PointInputs(point_coords=torch.cat(coords)[None], point_labels=torch.cat(labs)[None])
