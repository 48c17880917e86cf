"""Prompted mask decoder and clip tracking on the real stock SAM2 modules (tiny config, random weights).

The reference points are the stock `sam2` code paths themselves (`TwoWayTransformer.forward`,
`MaskDecoder.forward`, `SAM2Base._forward_sam_heads`) and a literal in-place emulation of the released
AuralSAM2 transformer, written here from its documented semantics.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from auralsam2.backbone import (
    DecoderPrompts,
    build_sam2_model,
    encode_frames,
    prepare_decoder_features,
    prompted_decode,
    prompted_two_way,
    track_clip,
    track_clips,
)

C = 32  # tiny hidden dim
HW = 64  # (128 / 16) ** 2 image tokens


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine the OpenMP
    spin-waits of a second thread make these tests ~50x slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sam2_model("tiny")


@pytest.fixture(scope="module")
def pyramid(tiny):
    torch.manual_seed(1)
    return encode_frames(tiny, torch.randn(5, 3, 128, 128))


@pytest.fixture(scope="module")
def heads_inputs(tiny, pyramid):
    """Image embedding (s16 + no_mem_embed, as on a conditioning frame) and high-res skips, B=2."""
    with torch.no_grad():
        feats = prepare_decoder_features(tiny, type(pyramid)(*(x[:2] for x in pyramid)))
        pix = tiny._prepare_memory_conditioned_features(
            frame_idx=0,
            is_init_cond_frame=True,
            current_vision_feats=feats.vision_feats[-1:],
            current_vision_pos_embeds=feats.vision_pos_embeds[-1:],
            feat_sizes=feats.feat_sizes[-1:],
            output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
            num_frames=2,
        )
        high_res = [
            x.permute(1, 2, 0).view(2, x.size(2), *s)
            for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1], strict=True)
        ]
    return pix, high_res


def _clicks(batch: int) -> dict:
    return {
        "point_coords": torch.tensor([[[40.0, 70.0], [90.0, 20.0]]]).expand(batch, -1, -1).clone(),
        "point_labels": torch.tensor([[1, 0]], dtype=torch.int32).expand(batch, -1).clone(),
    }


def _autocast(kind: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if kind == "bf16" else contextlib.nullcontext()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return (a.float() - b.float()).abs().max().item()


def _random_prompts(batch: int, seed: int, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)
    dense = [torch.randn(batch, HW, C, generator=gen).mul_(0.5).requires_grad_(requires_grad) for _ in range(3)]
    sparse = [torch.randn(batch, C, generator=gen).requires_grad_(requires_grad) for _ in range(3)]
    return dense, sparse


# ---------------------------------------------------------------- exactness against stock SAM2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_way_without_prompts_is_stock_transformer(tiny, heads_inputs, precision):
    tr = tiny.sam_mask_decoder.transformer
    pix, _ = heads_inputs
    pe = tiny.sam_prompt_encoder.get_dense_pe().expand(2, -1, -1, -1)
    tokens = torch.randn(2, 7, C)
    with torch.no_grad(), _autocast(precision):
        ref_q, ref_k = tr(pix, pe, tokens)
        q, k = prompted_two_way(tr, pix, pe, tokens, None, None)
        # explicit zeros in the dtype the fuser would produce under this precision
        zdt = torch.bfloat16 if precision == "bf16" else torch.float32
        zeros_dense, zeros_sparse = [torch.zeros(2, HW, C, dtype=zdt)] * 3, [torch.zeros(C, dtype=zdt)] * 3
        zq, zk = prompted_two_way(tr, pix, pe, tokens, zeros_dense, zeros_sparse)
    assert _max_diff(q, ref_q) == 0 and _max_diff(k, ref_k) == 0
    assert _max_diff(zq, ref_q) == 0 and _max_diff(zk, ref_k) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decode_without_prompts_is_stock_decoder(tiny, heads_inputs, precision):
    """No points: the released layout (six output tokens, no padding token) vs the stock decoder."""
    pix, high_res = heads_inputs
    dec, pe = tiny.sam_mask_decoder, tiny.sam_prompt_encoder
    with torch.no_grad(), _autocast(precision):
        sparse, dense = pe(points=None, boxes=None, masks=None)
        ref_masks, ref_ious, ref_tokens, ref_obj = dec(
            image_embeddings=pix,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse.expand(2, -1, -1),
            dense_prompt_embeddings=dense.expand(2, -1, -1, -1),
            multimask_output=True,
            repeat_image=False,
            high_res_features=high_res,
        )
        out = prompted_decode(tiny, pix, high_res)
    assert sparse.shape == (1, 0, C)
    assert out.low_res_masks.shape == (2, 3, 32, 32) and out.high_res_masks.shape == (2, 3, 128, 128)
    assert _max_diff(out.low_res_masks, ref_masks.float()) == 0
    assert _max_diff(out.ious, ref_ious) == 0
    assert _max_diff(out.mask_tokens, ref_tokens) == 0
    assert _max_diff(out.object_score_logits, ref_obj) == 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("prompt", ["padding", "clicks", "box+click+mask"])
@pytest.mark.parametrize("multimask", [True, False])
def test_decode_with_sam_prompts_is_stock_forward_sam_heads(tiny, heads_inputs, precision, prompt, multimask):
    """Same clicks/box/mask and no audio prompts -> exactly stock `SAM2Base._forward_sam_heads`."""
    pix, high_res = heads_inputs
    mask_inputs = None
    if prompt == "padding":  # what stock SAM2 feeds when there are no clicks
        points = {"point_coords": torch.zeros(2, 1, 2), "point_labels": -torch.ones(2, 1, dtype=torch.int32)}
    elif prompt == "clicks":
        points = _clicks(2)
    else:
        points = {
            "point_coords": torch.tensor([[[10.0, 12.0], [100.0, 90.0], [60.0, 50.0]]]).expand(2, -1, -1),
            "point_labels": torch.tensor([[2, 3, 1]], dtype=torch.int32).expand(2, -1),
        }
        mask_inputs = (torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(5)) > 0.5).float()
    with torch.no_grad(), _autocast(precision):
        ref = tiny._forward_sam_heads(
            backbone_features=pix,
            point_inputs=points,
            mask_inputs=mask_inputs,
            high_res_features=high_res,
            multimask_output=multimask,
        )
        out = prompted_decode(
            tiny, pix, high_res, point_inputs=points, mask_inputs=mask_inputs,
            multimask_output=multimask, no_object_masking=True,
        )
    ref_low, ref_high, ref_ious, _, _, ref_ptr, ref_obj = ref
    assert _max_diff(out.low_res_masks, ref_low) == 0
    assert _max_diff(out.high_res_masks, ref_high) == 0
    assert _max_diff(out.ious, ref_ious) == 0
    assert _max_diff(out.obj_ptr, ref_ptr) == 0
    assert _max_diff(out.object_score_logits, ref_obj) == 0


def test_absent_object_keeps_logits_and_uses_no_obj_ptr(tiny, heads_inputs):
    """Object score < 0: the released model keeps the logits (stock SAM2 writes -1024) and the object
    pointer becomes `no_obj_ptr` (fixed_no_obj_ptr: obj_ptr * 0 + no_obj_ptr)."""
    absent = copy.deepcopy(tiny)
    absent.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.data.fill_(-1e4)
    pix, high_res = heads_inputs
    with torch.no_grad():
        out = prompted_decode(absent, pix, high_res)
        masked = prompted_decode(absent, pix, high_res, no_object_masking=True)
    assert (out.object_score_logits < 0).all()
    assert (masked.low_res_masks == -1024.0).all() and not (out.low_res_masks == -1024.0).any()
    assert torch.equal(out.obj_ptr, absent.no_obj_ptr.expand(2, -1))


# ---------------------------------------------------------------- released semantics


def _released_two_way(tr, image_embedding, image_pe, point_embedding, visual_res, audio_res):
    """Literal emulation of the released transformer: IN-PLACE slice adds on the shared queries tensor."""
    image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, keys = point_embedding, image_embedding
    for i, layer in enumerate(tr.layers):
        keys = keys + visual_res[i]
        queries[:, 2:6] = queries[:, 2:6] + audio_res[i][:, None]  # at i=0 this also edits point_embedding
        queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
    queries[:, 2:6] += audio_res[-1][:, None]
    keys = keys + visual_res[-1]
    q = queries + point_embedding
    k = keys + image_pe
    attn_out = tr.final_attn_token_to_image(q=q, k=k, v=keys)
    queries = tr.norm_final_attn(queries + attn_out)
    return queries, keys


@pytest.mark.parametrize("n_extra_tokens", [0, 3])
def test_two_way_reproduces_released_in_place_semantics(tiny, heads_inputs, n_extra_tokens):
    tr = tiny.sam_mask_decoder.transformer
    pix, _ = heads_inputs
    pe = tiny.sam_prompt_encoder.get_dense_pe().expand(2, -1, -1, -1)
    torch.manual_seed(7)
    tokens = torch.randn(2, 6 + n_extra_tokens, C)
    dense, sparse = _random_prompts(2, seed=8)
    before = [t.clone() for t in (tokens, *dense, *sparse, pix)]
    with torch.no_grad():
        ref_q, ref_k = _released_two_way(tr, pix, pe, tokens.clone(), dense, sparse)
        q, k = prompted_two_way(tr, pix, pe, tokens, dense, sparse, official_query_pe=True)
        q_paper, k_paper = prompted_two_way(tr, pix, pe, tokens, dense, sparse, official_query_pe=False)
    assert _max_diff(q, ref_q) == 0 and _max_diff(k, ref_k) == 0
    assert _max_diff(q_paper, ref_q) > 1e-4 and _max_diff(k_paper, ref_k) > 1e-4
    for b, a in zip(before, (tokens, *dense, *sparse, pix), strict=True):
        assert torch.equal(a, b)  # no input was modified


def test_sparse_prompts_broadcast_and_hit_only_mask_tokens(tiny, heads_inputs):
    tr = tiny.sam_mask_decoder.transformer
    pix, _ = heads_inputs
    pe = tiny.sam_prompt_encoder.get_dense_pe().expand(2, -1, -1, -1)
    tokens = torch.randn(2, 6, C)
    shared = torch.randn(C)
    with torch.no_grad():
        q1, k1 = prompted_two_way(tr, pix, pe, tokens, None, [shared, None, None])
        q2, k2 = prompted_two_way(tr, pix, pe, tokens, None, [shared.expand(2, C), None, None])
        # Only the stage-2 prompt on mask tokens: obj-score and IoU queries are untouched before the
        # final attention, which mixes tokens only through the image keys (unchanged), so rows 0:2 match.
        q_last, _ = prompted_two_way(tr, pix, pe, tokens, None, [None, None, shared])
        q_none, _ = prompted_two_way(tr, pix, pe, tokens, None, None)
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    assert torch.equal(q_last[:, :2], q_none[:, :2]) and not torch.equal(q_last[:, 2:6], q_none[:, 2:6])
    with pytest.raises(ValueError, match="must hold 3 tensors"):
        prompted_two_way(tr, pix, pe, tokens, [None, None], None)


def test_gradients_reach_prompts_and_never_sam2(tiny, heads_inputs):
    pix, high_res = heads_inputs
    dense, sparse = _random_prompts(2, seed=9, requires_grad=True)
    out = prompted_decode(tiny, pix, high_res, dense, sparse, point_inputs=_clicks(2))
    (out.high_res_masks.sigmoid().mean() + out.ious.sum() + out.object_score_logits.sum()).backward()
    for p in dense + sparse:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


# ---------------------------------------------------------------- clip tracking with memory


def _memory_encoder_recorder(model):
    calls = []

    def hook(module, args, kwargs):
        pix_feat, masks = args[:2]
        calls.append((pix_feat.detach().clone(), masks.detach().clone()))

    return calls, model.memory_encoder.register_forward_pre_hook(hook, with_kwargs=True)


def test_track_clip_forward_backward_released_regime(tiny, pyramid):
    composed = nn.ModuleDict({"sam2": tiny, "fuser": nn.Linear(1, 1)})
    composed.train()  # the engine's call: SAM2 must stay in eval
    dense, sparse = _random_prompts(5, seed=10, requires_grad=True)
    calls, handle = _memory_encoder_recorder(tiny)
    try:
        outs = track_clip(tiny, pyramid, DecoderPrompts(dense, sparse), cond_frame=2)
    finally:
        handle.remove()
    assert [o.frame_idx for o in outs] == [0, 1, 2, 3, 4]
    for o in outs:
        assert o.high_res_masks.shape == (1, 3, 128, 128) and o.low_res_masks.shape == (1, 3, 32, 32)
        assert o.ious.shape == (1, 3) and o.object_score_logits.shape == (1, 1) and o.obj_ptr.shape == (1, C)
        assert o.best_index == int(o.ious.argmax())
    # Memory encoded once per frame, in the order [cond] + others ascending, from the raw s16 feature
    # and the best mask binarised to {-10, +10}.
    order = [int(torch.stack([(pix - s).abs().max() for s in pyramid.s16]).argmin()) for pix, _ in calls]
    assert order == [2, 0, 1, 3, 4]
    for (_, mask), t in zip(calls, order, strict=True):
        o = outs[t]
        expected = (o.high_res_masks[:, o.best_index : o.best_index + 1] > 0).float() * 20 - 10
        assert torch.equal(mask, expected)
    loss = sum(o.high_res_masks.sigmoid().mean() + o.object_score_logits.sum() for o in outs)
    loss.backward()
    for p in dense + sparse:
        assert p.grad is not None and (p.grad.abs().sum(dim=tuple(range(1, p.ndim))) > 0).all()
    assert all(p.grad is None for p in tiny.parameters())


def test_track_clip_cond_frame_uses_no_mem_embed_and_others_use_memory(tiny, pyramid):
    dense, sparse = _random_prompts(5, seed=11)
    with torch.no_grad():
        outs = track_clip(tiny, pyramid, {"dense": dense, "sparse": sparse}, cond_frame=0)
        feats = prepare_decoder_features(tiny, pyramid)
        for t in (0, 3):  # decode frame t on its own, as a conditioning frame: s16 + no_mem_embed
            pix = pyramid.s16[t : t + 1] + tiny.no_mem_embed.view(1, C, 1, 1)
            high_res = [
                x[:, t : t + 1].permute(1, 2, 0).view(1, x.size(2), *s)
                for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1], strict=True)
            ]
            alone = prompted_decode(tiny, pix, high_res, [d[t : t + 1] for d in dense], [s[t : t + 1] for s in sparse])
            same = torch.allclose(alone.low_res_masks, outs[t].low_res_masks, rtol=1e-5, atol=1e-5)
            assert same == (t == 0)  # frame 3 went through memory attention, so it differs


def _frame4_grad_rows(model, pyramid, binarize: bool) -> list[bool]:
    """Loss on frame 4 only; which frames' sparse prompts (stage 0) receive gradient."""
    dense, sparse = _random_prompts(5, seed=12, requires_grad=True)
    outs = track_clip(model, pyramid, DecoderPrompts(dense, sparse), cond_frame=2, binarize_memory_masks=binarize)
    outs[4].high_res_masks.sigmoid().mean().backward()
    return [bool(sparse[0].grad[t].abs().sum() > 0) for t in range(5)]


def test_track_clip_gradient_crosses_frames_only_through_object_pointers(tiny, pyramid):
    # Processing order [2, 0, 1, 3, 4]: frame 4 attends to the memories and pointers of all others.
    assert _frame4_grad_rows(tiny, pyramid, binarize=True) == [True] * 5
    no_pointers = copy.deepcopy(tiny)
    no_pointers.use_obj_ptrs_in_encoder = False
    # Binarised spatial memory carries no gradient: without pointers only frame 4's own prompts learn.
    assert _frame4_grad_rows(no_pointers, pyramid, binarize=True) == [False] * 4 + [True]
    assert _frame4_grad_rows(no_pointers, pyramid, binarize=False) == [True] * 5


def test_track_clip_with_clicks_on_cond_frame_and_no_audio_is_stock_sam2(tiny, pyramid):
    clicks = {k: v[:1] for k, v in _clicks(1).items()}
    with torch.no_grad():
        outs = track_clip(tiny, pyramid, None, cond_frame=1, point_inputs=clicks)
        feats = prepare_decoder_features(tiny, pyramid)
        pix = pyramid.s16[1:2] + tiny.no_mem_embed.view(1, C, 1, 1)
        high_res = [
            x[:, 1:2].permute(1, 2, 0).view(1, x.size(2), *s)
            for x, s in zip(feats.vision_feats[:-1], feats.feat_sizes[:-1], strict=True)
        ]
        ref = tiny._forward_sam_heads(pix, point_inputs=clicks, high_res_features=high_res, multimask_output=True)
    # stock SAM2 writes -1024 into the logits when the object score is negative; the released model doesn't
    present = outs[1].object_score_logits.view(1, 1, 1, 1) > 0
    assert _max_diff(torch.where(present, outs[1].low_res_masks, -1024.0), ref[0]) == 0
    assert _max_diff(outs[1].ious, ref[2]) == 0 and _max_diff(outs[1].obj_ptr, ref[5]) == 0


def test_track_clip_sigmoid_memory_option_and_errors(tiny, pyramid):
    calls, handle = _memory_encoder_recorder(tiny)
    try:
        with torch.no_grad():
            track_clip(tiny, pyramid, None, cond_frame=0, binarize_memory_masks=False)
    finally:
        handle.remove()
    soft = torch.cat([m.flatten() for _, m in calls])
    assert ((soft > -10) & (soft < 10)).any()  # sigmoid(logits) * 20 - 10, not binarised
    with pytest.raises(ValueError, match="outside the clip"):
        track_clip(tiny, pyramid, None, cond_frame=5)
    with pytest.raises(ValueError, match=r"prompts.sparse\[0\] has 2 frames"):
        track_clip(tiny, pyramid, DecoderPrompts(None, [torch.zeros(2, C)] * 3), cond_frame=0)
    nn.Module.train(tiny, True)  # bypass the pin, as a careless caller could
    try:
        with pytest.raises(ValueError, match="eval mode"):
            track_clip(tiny, pyramid, None, cond_frame=0)
    finally:
        nn.Module.train(tiny, False)


def test_track_clip_bf16_autocast_and_bf16_pyramid(tiny, pyramid):
    dense, sparse = _random_prompts(5, seed=13, requires_grad=True)
    bf16_pyramid = type(pyramid)(*(x.to(torch.bfloat16) for x in pyramid))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = track_clip(tiny, bf16_pyramid, DecoderPrompts(dense, sparse), cond_frame=2)
        loss = sum(o.high_res_masks.float().sigmoid().mean() for o in outs)
    loss.backward()
    assert all(o.high_res_masks.dtype == torch.float32 for o in outs)
    assert all(torch.isfinite(o.high_res_masks).all() for o in outs)
    assert sparse[1].grad is not None and sparse[1].grad.abs().sum() > 0


def test_tiny_at_256_tracks(pyramid):
    torch.manual_seed(0)
    model = build_sam2_model("tiny", image_size=256)
    pyr = encode_frames(model, torch.randn(2, 3, 256, 256))
    outs = track_clip(model, pyr, None, cond_frame=1)
    assert outs[0].high_res_masks.shape == (1, 3, 256, 256) and outs[0].low_res_masks.shape == (1, 3, 64, 64)


def test_track_clip_frame_mask_inputs_prompt_every_frame(tiny, pyramid):
    n = pyramid.s16.shape[0]
    size = tiny.sam_prompt_encoder.mask_input_size
    gen = torch.Generator().manual_seed(3)
    masks = (torch.rand(n, 1, *size, generator=gen) > 0.5).float()
    with torch.no_grad():
        # on the conditioning frame a per-frame mask is exactly SAM2's own mask prompt
        one = track_clip(tiny, pyramid, None, cond_frame=0, mask_inputs=masks[:1])
        every = track_clip(tiny, pyramid, None, cond_frame=0, frame_mask_inputs=masks)
        assert _max_diff(every[0].low_res_masks, one[0].low_res_masks) == 0
        # and it reaches the other frames: only the last processed frame changes with its own mask
        other = masks.clone()
        other[-1] = 1 - other[-1]
        changed = track_clip(tiny, pyramid, None, cond_frame=0, frame_mask_inputs=other)
    for t in range(n - 1):
        assert _max_diff(changed[t].low_res_masks, every[t].low_res_masks) == 0
    assert _max_diff(changed[-1].low_res_masks, every[-1].low_res_masks) > 0
    # a mask on the conditioning frame is its output (stock SAM2); the other frames keep theirs
    full = torch.rand(1, 1, tiny.image_size, tiny.image_size, generator=gen) > 0.5
    with torch.no_grad():
        both = track_clip(tiny, pyramid, None, cond_frame=0, cond_mask=full, frame_mask_inputs=masks)
    assert torch.equal(both[0].high_res_masks[0, 0] > 0, full[0, 0]) and both[0].ious.eq(1).all()
    assert not torch.equal(both[1].high_res_masks, every[1].high_res_masks)  # other memory from frame 0
    with pytest.raises(ValueError, match=rf"frame_mask_inputs must be \({n}, 1, H, W\)"):
        track_clip(tiny, pyramid, None, cond_frame=0, frame_mask_inputs=masks[:2])


def test_track_clips_batches_frames_and_equals_one_clip_at_a_time(tiny):
    """Frame t of 3 clips as one decoder batch, each with its own memory, pointers and prompts."""
    torch.manual_seed(3)
    pyramids = [encode_frames(tiny, torch.randn(4, 3, 128, 128)) for _ in range(3)]
    prompts = [DecoderPrompts(*_random_prompts(4, seed=20 + c, requires_grad=True)) for c in range(3)]
    masks = [torch.rand(4, 1, 32, 32) for _ in range(3)]
    alone = [track_clip(tiny, p, q, cond_frame=2, frame_mask_inputs=m)
             for p, q, m in zip(pyramids, prompts, masks, strict=True)]
    together = track_clips(tiny, pyramids, prompts, cond_frame=2, frame_mask_inputs=masks)
    assert len(together) == 3
    for one, batched in zip(alone, together, strict=True):
        assert [o.frame_idx for o in batched] == [0, 1, 2, 3]
        for a, b in zip(one, batched, strict=True):
            assert a.best_index == b.best_index
            for name in ("high_res_masks", "low_res_masks", "ious", "object_score_logits", "obj_ptr"):
                assert getattr(b, name).shape == getattr(a, name).shape
                assert _max_diff(getattr(a, name), getattr(b, name)) < 1e-4, name
    # the gradients reach each clip's own prompts only, and equal the one-at-a-time ones
    sum(o.high_res_masks.sigmoid().mean() for o in together[1]).backward()
    assert not prompts[0].dense[0].grad.any() and prompts[1].dense[0].grad.any()
    batched_grad = prompts[1].dense[0].grad.clone()
    prompts[1].dense[0].grad = None
    sum(o.high_res_masks.sigmoid().mean() for o in alone[1]).backward()
    assert _max_diff(prompts[1].dense[0].grad, batched_grad) < 1e-6
    with pytest.raises(ValueError, match="one length"):
        track_clips(tiny, [pyramids[0], type(pyramids[0])(*(x[:3] for x in pyramids[1]))], prompts[:2], cond_frame=0)
