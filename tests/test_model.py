"""The composed AuralSAM2 on the tiny SAM2 config: one forward path, frozen SAM2, training, inference."""

from __future__ import annotations

import pytest
import torch

from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
from auralsam2.backbone import build_sam2_model, encode_frames, is_frozen
from auralsam2.fuser import AuralFuser, FuserConfig
from auralsam2.losses import AudioConConfig, supervised_frames
from auralsam2.model import AuralSAM2, clip_loss, decode_masks
from auralsam2.text import tiny_text_encoder

N, S = 3, 128


def make_model(seed: int = 0, **fuser_overrides) -> AuralSAM2:
    torch.manual_seed(seed)
    sam2 = build_sam2_model("tiny")
    fuser = AuralFuser(FuserConfig.tiny(dropout=0.0, **fuser_overrides))
    audio = AudioEncoder(VGGish(VGGishConfig.tiny(embedding_dim=16)), channels=2)
    return AuralSAM2(sam2, fuser, audio)


def clip(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(N, 3, S, S, generator=g)
    audio = torch.randn(N, 2, 96, 64, generator=g)
    masks = torch.zeros(N, S, S)
    masks[:, 32:96, 40:100] = 1.0
    masks[2] = 0  # a silent frame
    return images, audio, masks


@pytest.fixture(scope="module")
def model() -> AuralSAM2:
    return make_model()


def test_frames_and_cached_pyramid_give_the_same_outputs(model):
    images, audio, _ = clip()
    model.eval()
    out_frames = model.forward_clip(images, audio)
    pyramid = encode_frames(model.sam2, images)
    out_cache = model.forward_clip(pyramid, audio)
    assert out_frames.cond_frame == 0 and len(out_frames.frames) == N
    assert [f.frame_idx for f in out_frames.frames] == list(range(N))
    assert torch.equal(out_frames.high_res_masks, out_cache.high_res_masks)
    assert out_frames.high_res_masks.shape == (N, 3, S, S)
    assert out_frames.best_low_res_masks.shape == (N, 1, S // 4, S // 4)
    # precomputed audio embeddings (frozen VGGish cache) take the same path
    emb = model.audio_encoder(audio)
    assert torch.equal(model.forward_clip(pyramid, emb).high_res_masks, out_cache.high_res_masks)


def test_prompts_reach_the_decoder_deepest_first(model):
    images, audio, _ = clip()
    model.eval()
    pyramid = encode_frames(model.sam2, images)
    base = model.forward_clip(pyramid, audio)
    with torch.no_grad():  # change only the s16 level's fusion output scale
        model.fuser.fusion_modules[2].norm_layer.bias.add_(0.5)
    try:
        moved = model.forward_clip(pyramid, audio)
    finally:
        with torch.no_grad():
            model.fuser.fusion_modules[2].norm_layer.bias.sub_(0.5)
    assert not torch.allclose(base.high_res_masks, moved.high_res_masks)


def test_sam2_stays_frozen_and_in_eval(model):
    model.train()
    assert model.fuser.training and model.audio_encoder.training
    assert not model.sam2.training and not any(m.training for m in model.sam2.modules())
    assert is_frozen(model.sam2)
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all(n.startswith(("fuser.", "audio_encoder.")) for n in names)
    _, audio, _ = clip()
    assert model.forward_clip(clip()[0], audio).cond_frame == N // 2  # released training rule
    model.eval()


def test_mismatched_sizes_are_refused():
    sam2 = build_sam2_model("tiny")
    with pytest.raises(ValueError, match="hidden dim 32"):
        AuralSAM2(sam2, AuralFuser(FuserConfig.tiny(dim=64, heads=2)), None)
    with pytest.raises(ValueError, match="audio_dim=32"):
        AuralSAM2(sam2, AuralFuser(FuserConfig.tiny()), AudioEncoder(VGGish(VGGishConfig.tiny(embedding_dim=8))))


def test_tiny_model_trains_and_only_fuser_and_vggish_change():
    model = make_model(seed=1)
    images, audio, masks = clip(1)
    pyramid = encode_frames(model.sam2, images)
    frozen_before = {k: v.clone() for k, v in model.sam2.state_dict().items()}
    trainable_before = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=2e-3, weight_decay=0.0)
    sup = supervised_frames("v1m", N)
    cfg = AudioConConfig(mode="paper", samples_per_level=32)
    gen = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in range(8):
        out = model.forward_clip(pyramid, audio, cond_frame=1)
        terms = clip_loss(out, masks, sup, audiocon=cfg, generator=gen)
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        losses.append(terms["total"].item())
    assert set(terms) == {"focal", "dice", "iou", "object_score", "seg", "audiocon", "mask", "text", "total"}
    assert terms["mask"].item() == 0 and terms["text"].item() == 0  # no mask prompt in the released model
    assert losses[-1] < losses[0] and min(losses[-3:]) < min(losses[:3])
    for k, v in model.sam2.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k
    assert all(p.grad is None for p in model.sam2.parameters())
    changed = {n for n, p in model.trainable_parameters() if not torch.equal(p.detach(), trainable_before[n])}
    assert any(n.startswith("fuser.") for n in changed) and any(n.startswith("audio_encoder.") for n in changed)


def test_loss_reads_only_supervised_frames(model):
    images, audio, masks = clip()
    model.eval()
    out = model.forward_clip(images, audio)
    a = clip_loss(out, masks, [0], AudioConConfig(mode="off"))
    other = masks.clone()
    other[1:] = 1 - other[1:]
    b = clip_loss(out, other, [0], AudioConConfig(mode="off"))
    assert torch.equal(a["total"], b["total"]) and a["audiocon"] == 0
    c = clip_loss(out, other, [0, 1, 2], AudioConConfig(mode="off"))
    assert not torch.equal(a["total"], c["total"])
    with pytest.raises(ValueError, match="masks must be"):
        clip_loss(out, masks[:, :64, :64], [0])


def test_predict_clip_modes_and_clicks(model):
    images, audio, _ = clip()
    model.train()
    pred = model.predict_clip(images, audio, mode="first")
    assert model.training  # mode restored
    model.eval()
    out = model.forward_clip(images, audio)
    assert torch.equal(pred.logits, out.high_res_masks[:, 0])
    sel = model.predict_clip(images, audio, mode="iou_select")
    best = out.ious.argmax(1)
    assert torch.equal(sel.logits, out.high_res_masks[torch.arange(N), best])
    occ = decode_masks(out.frames, "iou_occ_select")
    for t in range(N):
        if out.object_score_logits[t] < 0:
            assert torch.all(occ[t] == 0)
        else:
            assert torch.equal(occ[t], sel.logits[t])
    clicked = model.predict_clip(images, audio, clicks=(torch.tensor([[64.0, 64.0]]), torch.tensor([1])))
    assert not torch.equal(clicked.logits[0], sel.logits[0])  # the conditioning frame got the click
    boxed = model.predict_clip(images, audio, box=torch.tensor([10.0, 10.0, 90.0, 90.0]), orig_hw=(256, 256))
    assert boxed.logits.shape == (N, S, S)
    with pytest.raises(ValueError, match="decoding mode"):
        decode_masks(out.frames, "best")  # type: ignore[arg-type]


def test_ref_avs_text_path():
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(hidden_size=32)
    sam2 = build_sam2_model("tiny")
    fuser = AuralFuser(FuserConfig.tiny(variant="refavs", text_dim=32))
    model = AuralSAM2(sam2, fuser, AudioEncoder(VGGish(VGGishConfig.tiny())), text_encoder).eval()
    images, audio, _ = clip()
    a = model.predict_clip(images, audio, "the dog barking on the left", cond_frame=N // 2)
    hidden = text_encoder(["the dog barking on the left"]).hidden
    b = model.predict_clip(images, audio, hidden, cond_frame=N // 2)
    assert torch.equal(a.logits, b.logits)
    c = model.predict_clip(images, audio, "the piano being played", cond_frame=N // 2)
    assert not torch.equal(a.logits, c.logits)
    with pytest.raises(ValueError, match="one expression"):
        model.forward_clip(images, audio, ["a", "b"])


def test_a_binary_mask_prompt_reaches_sam2_as_the_sign_of_its_logits_only():
    """`mask_prompt_binary`: SAM2 reads 1 where the map's logit is positive and 0 elsewhere, so a softer
    map with the same signs (a higher temperature) gives the same masks; read as probabilities it does not."""
    images, audio, _ = clip()
    for binary in (False, True):
        model = make_model(mask_prompt=True, mask_prompt_binary=binary).eval()
        pyramid = encode_frames(model.sam2, images)
        with torch.no_grad():
            model.fuser.mask_prompt.threshold.fill_(0.0)  # about half of the cells on
            sharp = model.forward_clip(pyramid, audio)
            model.fuser.mask_prompt.temperature *= 4
            soft = model.forward_clip(pyramid, audio)
        logits = sharp.fuser.mask_prompt
        assert bool((logits > 0).any()) and bool((logits < 0).any())
        assert torch.equal(logits > 0, soft.fuser.mask_prompt > 0)
        same = all(torch.equal(x, y) for x, y in zip(sharp.high_res_masks, soft.high_res_masks, strict=True))
        assert same == binary


def test_mask_prompt_reaches_sam2_and_its_loss_calibrates_the_threshold():
    model = make_model(mask_prompt=True)
    images, audio, masks = clip()
    pyramid = encode_frames(model.sam2, images)
    model.train()
    out = model.forward_clip(pyramid, audio)
    assert out.fuser.mask_prompt.shape == (N, 1, S // 16, S // 16)
    terms = clip_loss(out, masks, [0, 1, 2], AudioConConfig(mode="paper"), mask_weight=5.0)
    from auralsam2.losses import mask_prompt_loss

    assert terms["mask"].item() == pytest.approx(mask_prompt_loss(out.fuser.mask_prompt, masks).item())
    assert terms["total"].item() == pytest.approx(
        (terms["seg"] + terms["audiocon"] + 5.0 * terms["mask"]).item(), rel=1e-6)
    terms["total"].backward()
    assert model.fuser.mask_prompt.threshold.grad is not None
    # SAM2 answers the mask: pushing the threshold down (a fuller mask) changes every frame's output
    model.eval()
    with torch.no_grad():
        before = model.forward_clip(pyramid, audio).high_res_masks
        model.fuser.mask_prompt.threshold.fill_(-1.0)
        after = model.forward_clip(pyramid, audio).high_res_masks
    assert all((before[t] - after[t]).abs().max() > 0 for t in range(N))
    # without a mask prompt the term is an exact zero
    plain = make_model()
    plain.train()
    assert clip_loss(plain.forward_clip(pyramid, audio), masks, [0], AudioConConfig(mode="off"))["mask"].item() == 0
