"""AuralFuser: released layout, fusion semantics, shapes at tiny and 1024^2 geometry, ablation switches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from auralsam2.checkpoints import is_released_unused
from auralsam2.fuser import AuralFuser, FuserConfig, pe1d
from auralsam2.fuser.blocks import FusionModule

KEYS = Path(__file__).parent / "data" / "released_checkpoint_keys"
N = 5


def tiny_pyramid(n: int = N, c: int = 32, size: int = 128, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, size // s, size // s, generator=g) for s in (4, 8, 16)]


def run(cfg: FuserConfig, size: int = 128, seed: int = 0, train: bool = False):
    torch.manual_seed(seed)
    fuser = AuralFuser(cfg).train(train)
    audio = torch.randn(N, cfg.audio_dim)
    text = torch.randn(25, cfg.text_dim)
    return fuser, fuser(tiny_pyramid(size=size, c=cfg.dim), audio, text)


def shapes(xs):
    return None if xs is None else [tuple(x.shape) for x in xs]


@pytest.mark.parametrize("size", [128, 256])
def test_tiny_shapes_follow_the_input_size(size):
    g = size // 16
    _, out = run(FuserConfig.tiny(), size=size)
    assert shapes(out.dense) == [(N, g * g, 32)] * 3
    assert shapes(out.sparse) == [(N, 32)] * 3
    assert shapes(out.proj_visual) == [(N, 128, g, g)] * 3
    assert shapes(out.proj_audio) == [(N, 128)] * 3
    for v in out.proj_visual:  # AVS heads normalise over channels
        assert torch.allclose(v.norm(dim=1), torch.ones(N, g, g), atol=1e-5)


@pytest.mark.parametrize("variant", ["avs", "refavs"])
def test_default_config_is_the_released_layout(variant):
    entries = json.loads((KEYS / f"auralfuser_{variant}.json").read_text())["keys"]
    released = {e["key"]: e["shape"] for e in entries if not e["key"].startswith("vgg.")}
    fuser = AuralFuser(FuserConfig(variant=variant))
    ours = {k: list(v.shape) for k, v in fuser.state_dict().items()}
    unused = {k for k in released if is_released_unused(k)}
    assert len(unused) == 66
    assert ours == {k: v for k, v in released.items() if k not in unused}
    unused_values = sum(math.prod(released[k]) for k in unused)
    assert unused_values == 9_733_632
    n_params = sum(p.numel() for p in fuser.parameters())
    expected = 58_279_424 if variant == "avs" else 59_329_280
    assert n_params + unused_values == expected


def test_every_built_parameter_is_used():
    fuser, out = run(FuserConfig.tiny(), train=True)
    total = sum(x.sum() for x in out.dense) + sum(x.sum() for x in out.sparse)
    total = total + sum(x.sum() for x in out.proj_visual) + sum(x.sum() for x in out.proj_audio)
    total.backward()
    assert [n for n, p in fuser.named_parameters() if p.grad is None] == []


def test_pe1d_is_the_released_constant():
    assert pe1d(6).tolist() == [0, 1, 0, 1, 0, 1]


# ---------------------------------------------------------------------------------------------
# Fusion module semantics
# ---------------------------------------------------------------------------------------------


def literal_official(fm: FusionModule, frame: torch.Tensor, tokens: torch.Tensor, h: int, w: int):
    """Reference §2.5 restated with explicit numpy memory walks instead of reshapes."""
    n, hw, c = frame.shape
    inter = fm.inter
    fmap = frame.transpose(1, 2).reshape(n, c, 1, h, w)
    aligned = fm.align_channel(tokens[..., None])

    def raw_rows(t: torch.Tensor) -> np.ndarray:  # row r = memory values [r*inter, (r+1)*inter)
        flat = t.detach().numpy().ravel(order="C")
        return np.stack([flat[r * inter : (r + 1) * inter] for r in range(flat.size // inter)])

    qf, kf, vf = (raw_rows(conv(fmap)) for conv in (fm.q_frame, fm.k_frame, fm.v_frame))
    qa, ka, va = (conv(aligned)[..., 0].detach().numpy() for conv in (fm.q_audio, fm.k_audio, fm.v_audio))
    att_f = (qf @ ka.T / (n * hw)) @ va  # (N*HW, inter), no softmax
    # permute to (inter, N*HW), then read the memory as (N, inter, 1, H, W)
    att_f = np.ascontiguousarray(att_f.T).ravel().reshape(n, inter, 1, h, w)
    att_a = (qa @ kf.T / (n * hw)) @ vf  # (Na, inter)
    att_a = np.ascontiguousarray(att_a.T).ravel().reshape(tokens.shape[0], inter, 1)
    frame_attn = fm.W_z(torch.from_numpy(att_f).float())
    out_f = fm.norm_layer((frame_attn + fmap).permute(0, 2, 3, 4, 1)).reshape(n, hw, c)
    out_a = fm.norm_layer2((fm.W_z2(torch.from_numpy(att_a).float()) + aligned)[..., 0])
    return out_f, out_a


def randomise_bn(fm: FusionModule, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for bn in (fm.W_z[1], fm.W_z2[1]):
        bn.weight.data = torch.randn(bn.weight.shape, generator=g)
        bn.bias.data = torch.randn(bn.bias.shape, generator=g)
        bn.running_mean.data = torch.randn(bn.running_mean.shape, generator=g)
        bn.running_var.data = torch.rand(bn.running_var.shape, generator=g) + 0.5


@pytest.mark.parametrize("na", [N, N + 25])
def test_official_fusion_matches_the_literal_memory_semantics(na):
    torch.manual_seed(0)
    fm = FusionModule(32, 16, "official").eval()
    randomise_bn(fm, 1)
    frame, tokens = torch.randn(N, 64, 32), torch.randn(na, 32)
    got_f, got_a, _, _ = fm(frame, tokens, 8, 8)
    want_f, want_a = literal_official(fm, frame, tokens, 8, 8)
    assert torch.allclose(got_f, want_f, atol=1e-5)
    assert torch.allclose(got_a, want_a, atol=1e-5)


def test_fusion_starts_as_identity_plus_layernorm():
    torch.manual_seed(0)
    for mode in ("official", "paper"):
        fm = FusionModule(32, 16, mode).train()
        frame, tokens = torch.randn(N, 64, 32), torch.randn(N, 32)
        out_f, out_a, _, _ = fm(frame, tokens, 8, 8)
        assert torch.allclose(out_f, fm.norm_layer(frame), atol=1e-6)
        assert torch.allclose(out_a, fm.norm_layer2(fm.align_channel(tokens[..., None])[..., 0]), atol=1e-6)


def test_paper_fusion_is_per_pixel_and_official_is_not():
    # Paper fusion treats each pixel as a C-vector: permuting pixels permutes the output.
    # The official raw reshapes mix pixels and channels, so it is not permutation-equivariant.
    torch.manual_seed(0)
    frame, tokens = torch.randn(N, 64, 32), torch.randn(N, 32)
    perm = torch.randperm(64)
    for mode, equivariant in (("paper", True), ("official", False)):
        fm = FusionModule(32, 16, mode).eval()
        randomise_bn(fm, 2)
        a, _, _, _ = fm(frame, tokens, 8, 8)
        b, _, _, _ = fm(frame[:, perm], tokens, 8, 8)
        assert torch.allclose(a[:, perm], b, atol=1e-5) is equivariant, mode


def test_paper_fusion_uses_a_softmax_over_tokens():
    # With a single token, softmax weights are 1: every pixel receives exactly v_a.
    torch.manual_seed(0)
    fm = FusionModule(32, 16, "paper").eval()
    randomise_bn(fm, 3)
    frame, token = torch.randn(1, 64, 32), torch.randn(1, 32)
    _, _, frame_attn, _ = fm(frame, token, 8, 8)
    v_a = fm.v_audio(fm.align_channel(token[..., None]))  # (1, inter, 1)
    want = fm.W_z(v_a[..., None, None].expand(1, 16, 1, 8, 8))
    assert torch.allclose(frame_attn, want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Ablation switches
# ---------------------------------------------------------------------------------------------


def test_levels_use_the_deepest_pyramid_levels_only():
    cfg = FuserConfig.tiny(levels=1)
    torch.manual_seed(0)
    fuser = AuralFuser(cfg).eval()
    audio = torch.randn(N, 32)
    pyr = tiny_pyramid()
    out = fuser(pyr, audio)
    assert out.proj_visual[:2] == [None, None] and out.proj_audio[:2] == [None, None]
    assert out.proj_visual[2].shape == (N, 128, 8, 8)
    assert torch.all(out.dense[0] == 0) and torch.all(out.dense[1] == 0) and torch.all(out.sparse[0] == 0)
    changed = fuser([pyr[0] + 1, pyr[1] + 1, pyr[2]], audio)  # s4/s8 are not read at all
    assert torch.equal(changed.dense[2], out.dense[2])
    assert not any(k.startswith(("f_blocks.0", "f_blocks.1", "smooth_convs")) for k in fuser.state_dict())

    full = AuralFuser(FuserConfig.tiny()).eval()
    base = full(pyr, audio)
    moved = full([pyr[0] + 1, pyr[1], pyr[2]], audio)  # s4 flows into deeper levels via the chain
    assert not torch.allclose(base.dense[2], moved.dense[2])
    two = AuralFuser(FuserConfig.tiny(levels=2))
    assert two.config.used_levels == (1, 2)
    assert [k for k in two.state_dict() if k.startswith("smooth_convs")] == [
        "smooth_convs.1.weight",
        "smooth_convs.1.bias",
    ]


def test_prompt_switches():
    fuser, out = run(FuserConfig.tiny(sparse_prompts=False))
    assert len(fuser(tiny_pyramid(), torch.randn(N, 32))) == 6  # dense, sparse, proj_visual, proj_audio, mask_prompt, text_cosine
    assert out.sparse is None and out.dense is not None
    _, out = run(FuserConfig.tiny(dense_prompts=False))
    assert out.dense is None and out.sparse is not None
    with pytest.raises(ValueError, match="at least one"):
        FuserConfig.tiny(sparse_prompts=False, dense_prompts=False)
    assert out.mask_prompt is None


def test_visual_only_takes_no_tokens():
    cfg = FuserConfig.tiny(modalities="visual")
    assert cfg.sparse_prompts is False
    torch.manual_seed(0)
    fuser = AuralFuser(cfg).eval()
    assert not any(k.startswith(("a_blocks", "fusion_modules", "train_proj_a1")) for k in fuser.state_dict())
    out = fuser(tiny_pyramid(), None)
    assert out.sparse is None and out.proj_audio is None and shapes(out.dense) == [(N, 64, 32)] * 3


def test_text_only_gives_one_clip_level_sparse_prompt():
    cfg = FuserConfig.tiny(modalities="text")
    torch.manual_seed(0)
    fuser = AuralFuser(cfg).eval()
    out = fuser(tiny_pyramid(), None, torch.randn(1, 25, 32))
    for s in out.sparse:
        assert torch.equal(s, s[:1].expand(N, -1))
    assert out.proj_audio is None
    with pytest.raises(ValueError, match="text_embeddings"):
        fuser(tiny_pyramid(), None, None)


def test_refavs_tokens_mix_audio_and_text_and_frames():
    cfg = FuserConfig.tiny(variant="refavs")
    torch.manual_seed(0)
    fuser = AuralFuser(cfg).eval()
    pyr, audio, text = tiny_pyramid(), torch.randn(N, 32), torch.randn(25, 32)
    base = fuser(pyr, audio, text)
    other_text = fuser(pyr, audio, text + 1)
    assert not torch.allclose(base.sparse[2], other_text.sparse[2])  # text reaches the audio tokens
    audio2 = audio.clone()
    audio2[0] += torch.randn(32)  # (a constant shift would vanish in the pre-norm LayerNorm)
    moved = fuser(pyr, audio2, text)
    assert not torch.allclose(base.sparse[0][1], moved.sparse[0][1])  # frame 0's audio reaches frame 1
    for v in base.proj_visual:  # released Ref-AVS head normalises over the spatial axis
        assert torch.allclose(v.flatten(2).norm(dim=2), torch.ones(N, 128), atol=1e-5)


def test_audio_projection_only_when_sizes_differ():
    assert not hasattr(AuralFuser(FuserConfig.tiny()), "audio_proj")
    fuser, out = run(FuserConfig.tiny(audio_dim=64))
    norm, linear = fuser.audio_proj
    assert norm.normalized_shape == (64,) and linear.in_features == 64 and shapes(out.sparse) == [(N, 32)] * 3
    # The adapter's LayerNorm makes the fuser blind to the audio embeddings' overall scale.
    pyr, audio = tiny_pyramid(), torch.rand(N, 64)
    fuser.eval()
    with torch.no_grad():
        a, b = fuser(pyr, audio), fuser(pyr, 500 * audio)
    assert torch.allclose(a.sparse[0], b.sparse[0], atol=1e-4)


def test_paper_heads():
    _, out = run(FuserConfig.tiny(audiocon="paper"))
    assert shapes(out.proj_visual) == [(N, 64, 8, 8)] * 3 and shapes(out.proj_audio) == [(N, 64)] * 3
    assert torch.allclose(out.proj_visual[0].norm(dim=1), torch.ones(N, 8, 8), atol=1e-5)


def test_input_errors_name_the_problem():
    fuser = AuralFuser(FuserConfig.tiny()).eval()
    pyr = tiny_pyramid()
    with pytest.raises(ValueError, match="pyramid level 1"):
        fuser([pyr[0], pyr[1][..., :-1, :], pyr[2]], torch.randn(N, 32))
    with pytest.raises(ValueError, match=r"audio_embeddings must be \(5, 32\)"):
        fuser(pyr, torch.randn(N, 16))
    with pytest.raises(ValueError, match="divisible"):
        FuserConfig(dim=30, heads=4)


@pytest.mark.slow
def test_shapes_at_1024_geometry_with_b_plus_sizes():
    torch.manual_seed(0)
    fuser = AuralFuser(FuserConfig()).eval()
    pyr = [torch.randn(N, 256, 256, 256), torch.randn(N, 256, 128, 128), torch.randn(N, 256, 64, 64)]
    with torch.no_grad():
        out = fuser(pyr, torch.randn(N, 256))
    assert shapes(out.dense) == [(N, 4096, 256)] * 3
    assert shapes(out.sparse) == [(N, 256)] * 3
    assert shapes(out.proj_visual) == [(N, 128, 64, 64)] * 3
    assert shapes(out.proj_audio) == [(N, 128)] * 3


def test_mask_prompt_starts_from_sam2_plus_the_mask():
    cfg = FuserConfig.tiny(mask_prompt=True)
    fuser, out = run(cfg, train=True)
    # zero-initialised gates: the released prompts are exactly zero at the start
    assert all(float(d.detach().abs().max()) == 0 for d in out.dense)
    assert all(float(s.detach().abs().max()) == 0 for s in out.sparse)
    assert out.mask_prompt.shape == (N, 1, 8, 8)
    # AudioCon sees one set of projections (at the finest level's slot); the mask is their cosine,
    # on where it clears both the threshold (0.5 at init) and 0.80 x the frame's best cosine
    assert [v is not None for v in out.proj_visual] == [True, False, False]
    assert [a is not None for a in out.proj_audio] == [True, False, False]
    cosine = torch.einsum("nphw,np->nhw", out.proj_visual[0], out.proj_audio[0])[:, None]
    peak = cosine.amax(dim=(2, 3), keepdim=True)
    expect = torch.minimum(cosine - 0.5, cosine - 0.80 * peak) / cfg.mask_prompt_temperature
    assert torch.allclose(out.mask_prompt, expect, atol=1e-5)
    # the map is detached: a loss on the mask trains the threshold, not the projection heads
    out.mask_prompt.sum().backward()
    assert fuser.mask_prompt.threshold.grad is not None
    assert all(p.grad is None for p in fuser.train_proj_v1.parameters())
    assert all(p.grad is None for k in range(3) for p in fuser.patch_embeds[k].parameters())


def test_mask_prompt_reads_every_level_or_the_finest():
    torch.manual_seed(0)
    pyramid, audio = tiny_pyramid(), torch.randn(N, 32)
    fuser = AuralFuser(FuserConfig.tiny(mask_prompt=True, mask_prompt_peak_ratio=0.0)).eval()
    finest = AuralFuser(FuserConfig.tiny(mask_prompt=True, mask_prompt_peak_ratio=0.0, mask_prompt_levels="finest"))
    finest.load_state_dict(fuser.state_dict())
    finest.eval()
    with torch.no_grad():
        every, first = fuser(pyramid, audio), finest(pyramid, audio)
        embedded = sum(fuser.patch_embeds[k](pyramid[k]) for k in range(3))
        v = fuser.train_proj_v1(embedded.flatten(2).transpose(1, 2), None, 8, 8)
    assert torch.allclose(every.proj_visual[0], torch.nn.functional.normalize(v, dim=1), atol=1e-5)
    assert not torch.allclose(every.mask_prompt, first.mask_prompt)
    # the global threshold alone: the learnt threshold's margin over the temperature
    cosine = torch.einsum("nphw,np->nhw", first.proj_visual[0], first.proj_audio[0])[:, None]
    assert torch.allclose(first.mask_prompt, (cosine - 0.5) / 0.05, atol=1e-4)


def test_mask_prompt_projections_do_not_depend_on_position():
    # the released projections read the fused map (2-D sine PE added twice); the mask prompt's read the
    # patch embedding, so shifting the input by one grid cell shifts the map by one cell, exactly
    torch.manual_seed(0)
    fuser = AuralFuser(FuserConfig.tiny(mask_prompt=True)).eval()
    pyramid, audio = tiny_pyramid(), torch.randn(N, 32)
    shifted = [torch.roll(x, shifts=s, dims=-1) for x, s in zip(pyramid, (4, 2, 1), strict=True)]
    with torch.no_grad():
        a, b = fuser(pyramid, audio).mask_prompt, fuser(shifted, audio).mask_prompt
    assert torch.allclose(torch.roll(a, 1, dims=-1), b, atol=1e-5)


def test_mask_prompt_needs_audio_or_text():
    with pytest.raises(ValueError, match="mask_prompt=true with modalities='visual'.*set mask_prompt: false"):
        FuserConfig.tiny(mask_prompt=True, modalities="visual")
    assert FuserConfig.tiny(mask_prompt=True, dense_prompts=False, sparse_prompts=False).mask_prompt
    _, out = run(FuserConfig.tiny(mask_prompt=True, variant="refavs", audiocon="paper"))
    assert out.mask_prompt.shape == (N, 1, 8, 8)
    _, text_only = run(FuserConfig.tiny(mask_prompt=True, variant="refavs", modalities="text", audiocon="paper"))
    assert text_only.mask_prompt.shape == (N, 1, 8, 8) and text_only.proj_audio is None


def test_mask_prompt_with_audio_and_text_is_on_only_where_both_maps_are():
    """audio+text: the logits are the minimum of the audio map's and the text map's (each can only
    switch a cell off); the text heads learn from the mask logits."""
    cfg = FuserConfig.tiny(mask_prompt=True, variant="refavs", audiocon="paper", mask_prompt_peak_ratio=0.0)
    fuser, both = run(cfg)
    mp = fuser.mask_prompt
    with torch.no_grad():
        mp.text_threshold.fill_(-2.0)  # the text map marks every cell: only the audio decides
        out = fuser(tiny_pyramid(c=32), torch.randn(N, 32), torch.randn(25, 32))
        k = cfg.used_levels[0]
        audio_map = torch.einsum("nphw,np->nhw", out.proj_visual[k], out.proj_audio[k]) - mp.threshold
        assert torch.allclose(out.mask_prompt[:, 0], audio_map / cfg.mask_prompt_temperature, atol=1e-4)
        mp.text_threshold.fill_(2.0)  # the text map marks no cell: nothing is on, whatever the audio says
        assert (fuser(tiny_pyramid(c=32), torch.randn(N, 32), torch.randn(25, 32)).mask_prompt < 0).all()
    both.mask_prompt.sum().backward()
    assert fuser.mask_prompt.text_visual.proj[0].weight.grad is not None
    assert fuser.mask_prompt.text_threshold.grad is not None


def test_relative_text_map_shifts_the_audio_margin_from_a_branch_of_its_own():
    """`relative`: logits = (audio margin + gate x (text cosine - frame's best text cosine)) / T, the
    text term detached; the text map reads the raw pyramid and expression through its own branch,
    so a loss on the text cosine trains that branch and nothing of the fuser's trunk."""
    cfg = FuserConfig.tiny(mask_prompt=True, variant="refavs", audiocon="paper", mask_prompt_peak_ratio=0.0,
                           mask_prompt_text="relative", mask_prompt_text_gate=7.0)
    fuser, out = run(cfg, train=True)
    mp, k = fuser.mask_prompt, cfg.used_levels[0]
    audio_margin = torch.einsum("nphw,np->nhw", out.proj_visual[k], out.proj_audio[k]) - mp.threshold
    text = out.text_cosine[:, 0]
    assert out.text_cosine.shape == (N, 1, 8, 8) and float(text.abs().max()) <= 1 + 1e-5
    relative = text - text.flatten(1).amax(1)[:, None, None]
    expect = (audio_margin + 7.0 * relative) / cfg.mask_prompt_temperature
    assert torch.allclose(out.mask_prompt[:, 0], expect, atol=1e-4)
    # every frame keeps its best text cell at the audio margin: the text only pushes cells off
    best = relative.flatten(1).argmax(1)
    assert torch.allclose(out.mask_prompt[:, 0].flatten(1).gather(1, best[:, None]),
                          (audio_margin.flatten(1).gather(1, best[:, None])) / cfg.mask_prompt_temperature, atol=1e-4)
    out.mask_prompt.sum().backward(retain_graph=True)
    assert mp.text_gate.grad is not None and mp.text_patch_embeds[k].weight.grad is None  # detached in the mask
    out.text_cosine.sum().backward()
    assert mp.text_patch_embeds[k].weight.grad is not None and mp.text_tokens[0].weight.grad is not None
    assert all(p.grad is None for p in fuser.text_proj.parameters())  # the trunk's text projection: untouched
    assert all(p.grad is None for j in range(3) for p in fuser.patch_embeds[j].parameters())
    # the default ('min') has no such branch: its checkpoints keep their keys
    assert not any("text_gate" in name or "text_tokens" in name for name in
                   AuralFuser(FuserConfig.tiny(mask_prompt=True, variant="refavs")).state_dict())


def test_joint_mask_prompt_adds_the_evidence_of_audio_and_text():
    """`joint`: logits = (bias + a x audio cosine + b x text cosine) / T from the AudioCon heads on the
    map's own patch embeddings and the text branch (here reading only the cells' position), trained
    through the logits (nothing detached); the maps-only path (`mask_prompt_maps`, what the warm-up
    trains) gives the same maps as the full forward; no thresholds are built."""
    cfg = FuserConfig.tiny(mask_prompt=True, variant="refavs", audiocon="paper", mask_prompt_text="joint",
                           mask_prompt_text_visual="position")
    fuser, out = run(cfg, train=True)
    mp, k = fuser.mask_prompt, cfg.used_levels[0]
    audio = torch.einsum("nphw,np->nhw", out.proj_visual[k], out.proj_audio[k])
    text = out.text_cosine[:, 0]
    expect = (mp.joint_bias + mp.joint_scales[0] * audio + mp.joint_scales[1] * text) / cfg.mask_prompt_temperature
    assert torch.allclose(out.mask_prompt[:, 0], expect, atol=1e-4)
    assert not hasattr(mp, "threshold") and not hasattr(mp, "text_threshold") and not hasattr(mp, "text_patch_embeds")
    out.mask_prompt.sum().backward()
    assert mp.audio_patch_embeds[k].weight.grad is not None and mp.text_tokens[0].weight.grad is not None
    assert mp.joint_scales.grad is not None and mp.joint_bias.grad is not None
    assert all(p.grad is None for j in range(3) for p in fuser.patch_embeds[j].parameters())  # the trunk's own
    # position only: the text map does not depend on the picture, and it differs from cell to cell
    torch.manual_seed(0)
    audio_in, text_in = torch.randn(N, cfg.audio_dim), torch.randn(25, cfg.text_dim)
    fuser.eval()
    with torch.no_grad():
        a = fuser.mask_prompt_maps(tiny_pyramid(c=32, seed=1), audio_in, text_in)
        b = fuser.mask_prompt_maps(tiny_pyramid(c=32, seed=2), audio_in, text_in)
        full = fuser(tiny_pyramid(c=32, seed=1), audio_in, text_in)
    assert torch.allclose(a.text_cosine, b.text_cosine) and float(a.text_cosine.std()) > 1e-3
    assert not torch.allclose(a.logits, b.logits)
    assert torch.allclose(a.logits, full.mask_prompt, atol=1e-5) and torch.allclose(a.text_cosine, full.text_cosine)
    # one modality: its evidence alone; the setting needs a text branch of its own
    _, audio_only = run(cfg.model_copy(update={"modalities": "audio"}))
    assert audio_only.text_cosine is None and audio_only.mask_prompt.shape == (N, 1, 8, 8)
    with pytest.raises(ValueError, match="mask_prompt_text_visual='position' needs the text branch"):
        FuserConfig.tiny(mask_prompt=True, variant="refavs", mask_prompt_text_visual="position")


def test_the_joint_clip_term_is_each_cells_best_audio_match_over_the_whole_clip():
    """`mask_prompt_audio_clip`: the joint logits gain `c x max over the clip's frames m of cos(cell, audio m)`,
    so a frame's map hears the other seconds of its clip (without the term it does not); it needs the
    joint map, and without audio it adds nothing (no parameter)."""
    base = FuserConfig.tiny(mask_prompt=True, variant="refavs", audiocon="paper", mask_prompt_text="joint",
                            mask_prompt_text_visual="position")
    cfg = base.model_copy(update={"mask_prompt_audio_clip": True})
    fuser, out = run(cfg)
    mp, k = fuser.mask_prompt, cfg.used_levels[0]
    v, a = out.proj_visual[k], out.proj_audio[k]
    best = torch.einsum("nphw,mp->nhwm", v, a).amax(-1)
    expect = (mp.joint_bias + mp.joint_scales[0] * torch.einsum("nphw,np->nhw", v, a)
              + mp.joint_scales[1] * out.text_cosine[:, 0] + mp.joint_clip_scale * best) / cfg.mask_prompt_temperature
    assert torch.allclose(out.mask_prompt[:, 0], expect, atol=1e-4)
    torch.manual_seed(0)
    audio, text = torch.randn(N, cfg.audio_dim), torch.randn(25, cfg.text_dim)
    other = audio.clone()
    other[N - 1] = torch.randn(cfg.audio_dim) * 3  # only the clip's last second sounds different
    for config, hears_the_clip in ((cfg, True), (base, False)):
        torch.manual_seed(0)
        f = AuralFuser(config).eval()
        with torch.no_grad():
            one, two = (f.mask_prompt_maps(tiny_pyramid(c=32), x, text).logits for x in (audio, other))
        assert torch.equal(one[: N - 1], two[: N - 1]) != hears_the_clip
    assert not hasattr(AuralFuser(cfg.model_copy(update={"modalities": "text"})).mask_prompt, "joint_clip_scale")
    with pytest.raises(ValueError, match="mask_prompt_audio_clip=true is a term of the joint mask prompt"):
        FuserConfig.tiny(mask_prompt=True, variant="refavs", mask_prompt_text="relative", mask_prompt_audio_clip=True)


def test_derived_defaults_are_resolved_and_contradictions_are_errors():
    """None fields are derived from the fields they depend on and recorded resolved; a setting that
    contradicts another is an error naming both, never a silent change."""
    cfg = FuserConfig(variant="refavs", dim=64, heads=4, audiocon="paper", modalities="visual")
    assert (cfg.modalities, cfg.fusion_dim, cfg.proj_dim, cfg.sparse_prompts) == ("visual", 32, 64, False)
    assert FuserConfig().model_dump()["modalities"] == "audio"
    assert FuserConfig(variant="refavs").sparse_prompts is True
    assert FuserConfig(**FuserConfig(modalities="visual").model_dump()) == FuserConfig(modalities="visual")
    with pytest.raises(ValueError, match="sparse_prompts=true with modalities='visual'"):
        FuserConfig(modalities="visual", sparse_prompts=True)

