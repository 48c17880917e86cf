"""Frozen SAM2 backbone: configs, build/freeze, checkpoints, encoding, compact cache form, transforms.

Everything runs the real stock `sam2` modules on the test-only `tiny` config with random weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auralsam2.backbone import (
    SAM2_CONFIG_ALIASES,
    SAM2_CONFIGS,
    build_sam2_model,
    compact_bytes_per_frame,
    compact_layout,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    freeze_sam2,
    is_frozen,
    point_inputs_from_clicks,
    prepare_decoder_features,
    preprocess_frames,
    preprocess_masks,
    resolve_sam2_config,
    save_sam2_checkpoint,
)


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
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 128, 128)


# ---------------------------------------------------------------- configs and build


def test_every_package_config_and_alias_resolves():
    for name in SAM2_CONFIGS:
        canonical, path = resolve_sam2_config(name)
        assert canonical == name and path.is_file()
        assert resolve_sam2_config(name.removeprefix("configs/").removesuffix(".yaml"))[0] == name
    assert resolve_sam2_config("sam2.1_hiera_b+")[0] == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert resolve_sam2_config("sam2_hiera_large")[0] == "configs/sam2/sam2_hiera_l.yaml"
    assert resolve_sam2_config("hiera_b+")[0] == "configs/sam2/sam2_hiera_b+.yaml"  # version-less = SAM 2.0
    assert set(SAM2_CONFIG_ALIASES.values()) == set(SAM2_CONFIGS)
    assert resolve_sam2_config("tiny")[1].name == "sam2_tiny.yaml"
    with pytest.raises(ValueError, match="unknown SAM2 config 'hiera_xl'"):
        resolve_sam2_config("hiera_xl")


def test_build_matches_stock_build_sam2():
    from sam2.build_sam import build_sam2

    name = "configs/sam2.1/sam2.1_hiera_t.yaml"
    torch.manual_seed(3)
    ours = build_sam2_model("sam2.1_hiera_t")
    torch.manual_seed(3)
    stock = build_sam2(name, ckpt_path=None, device="cpu")
    ours_sd, stock_sd = ours.state_dict(), stock.state_dict()
    assert list(ours_sd) == list(stock_sd)
    assert all(torch.equal(ours_sd[k], stock_sd[k]) for k in ours_sd)
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability  # stock post-processing kept


def test_tiny_is_small_frozen_and_pinned_to_eval(tiny):
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    assert tiny.image_size == 128 and tiny.hidden_dim == 32
    assert not tiny.training and is_frozen(tiny)
    assert all(not p.requires_grad for p in tiny.parameters())
    assert tiny.binarize_mask_from_pts_for_mem_enc

    parent = nn.ModuleDict({"sam2": tiny, "fuser": nn.Linear(2, 2)})
    parent.train()
    assert parent.training and parent["fuser"].training
    assert not any(m.training for m in tiny.modules())
    assert tiny.train(True) is tiny and not tiny.training
    clone = copy.deepcopy(parent)
    clone.train()
    assert not any(m.training for m in clone["sam2"].modules()) and clone["sam2"] is not tiny


def test_freeze_does_not_change_state_dict_keys():
    from hydra.utils import instantiate

    from auralsam2.backbone.build import _model_config

    _, cfg = _model_config("tiny", None)
    raw = instantiate(cfg, _recursive_=True)
    keys = list(raw.state_dict())
    freeze_sam2(raw)
    freeze_sam2(raw)  # idempotent
    assert list(raw.state_dict()) == keys and is_frozen(raw)


def test_image_size_override():
    torch.manual_seed(0)
    model = build_sam2_model("tiny", image_size=256)
    assert model.image_size == 256 and model.sam_image_embedding_size == 16
    pyr = encode_frames(model, torch.randn(1, 3, 256, 256))
    assert [tuple(x.shape) for x in pyr] == [(1, 32, 64, 64), (1, 32, 32, 32), (1, 32, 16, 16)]
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2_model("tiny", image_size=100)


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_official_format(tiny, tmp_path):
    path = save_sam2_checkpoint(tiny, tmp_path / "tiny.pt")
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model"} and list(payload["model"]) == list(tiny.state_dict())
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = build_sam2_model("tiny", checkpoint=path)
    assert is_frozen(loaded)
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def _write(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_checkpoint_errors_name_file_config_and_keys(tiny, tmp_path):
    state = tiny.state_dict()
    missing = {k: v for k, v in state.items() if k != "no_mem_embed"}
    path = _write(tmp_path, "missing.pt", {"model": missing})
    with pytest.raises(ValueError, match=r"missing\.pt.*'tiny'.*missing 1: no_mem_embed"):
        build_sam2_model("tiny", checkpoint=path)

    path = _write(tmp_path, "extra.pt", {"model": {**state, "fuser.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"extra\.pt.*unexpected 1: fuser\.weight"):
        build_sam2_model("tiny", checkpoint=path)

    path = _write(tmp_path, "shape.pt", {"model": {**state, "no_mem_embed": torch.zeros(1, 1, 7)}})
    with pytest.raises(ValueError, match=r"shape mismatch 1: no_mem_embed \(1, 1, 7\) vs model \(1, 1, 32\)"):
        build_sam2_model("tiny", checkpoint=path)

    path = _write(tmp_path, "bare.pt", state)  # a bare state dict, not {"model": ...}
    with pytest.raises(ValueError, match=r"bare\.pt.*expected a dict with a 'model' state dict"):
        build_sam2_model("tiny", checkpoint=path)

    path = tmp_path / "notes.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt.*cannot be read as a weights-only torch checkpoint"):
        build_sam2_model("tiny", checkpoint=path)

    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_sam2_model("tiny", checkpoint=tmp_path / "nowhere.pt")


class _Args:
    """An arbitrary Python object: unpickling it would run code, weights_only must refuse it."""


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = _write(tmp_path, "pickled.pt", {"model": {"x": torch.zeros(1)}, "args": _Args()})
    with pytest.raises(ValueError, match="not weights.*refused"):
        build_sam2_model("tiny", checkpoint=path)


# ---------------------------------------------------------------- encoding


def test_encode_frames_is_the_raw_fpn_before_conv_s0_s1(tiny, images):
    pyr = encode_frames(tiny, images)
    assert [tuple(x.shape) for x in pyr] == [(3, 32, 32, 32), (3, 32, 16, 16), (3, 32, 8, 8)]
    assert pyr[0] is pyr.s4 and not pyr.s4.requires_grad
    with torch.no_grad():
        stock = tiny.forward_image(images)  # overwrites levels 0/1 with conv_s0/conv_s1 outputs
        dec = tiny.sam_mask_decoder
        assert torch.equal(stock["vision_features"], pyr.s16)
        assert torch.equal(stock["backbone_fpn"][0], dec.conv_s0(pyr.s4))
        assert torch.equal(stock["backbone_fpn"][1], dec.conv_s1(pyr.s8))
        feats = prepare_decoder_features(tiny, pyr)
        _, ref_feats, ref_pos, ref_sizes = tiny._prepare_backbone_features(stock)
    assert feats.feat_sizes == [tuple(s) for s in ref_sizes] == [(32, 32), (16, 16), (8, 8)]
    for a, b in zip(feats.vision_feats + feats.vision_pos_embeds, ref_feats + ref_pos, strict=True):
        assert torch.equal(a, b)


def test_encode_frames_chunking_matches_one_batch(tiny, images):
    whole = encode_frames(tiny, images, chunk_size=8)
    chunked = encode_frames(tiny, images, chunk_size=1)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_encode_frames_rejects_wrong_size(tiny):
    with pytest.raises(ValueError, match=r"\(N, 3, 128, 128\).*preprocess_frames"):
        encode_frames(tiny, torch.randn(1, 3, 64, 64))


def test_compact_layout_and_bytes(tiny, images):
    layout = compact_layout(tiny)
    assert [(lv.form, lv.channels, lv.stride) for lv in layout] == [
        ("trunk", 8, 4),
        ("trunk", 16, 8),
        ("fpn", 32, 16),  # level 2 has the FPN's top-down term: only the FPN output is exact
    ]
    compact = encode_frames_compact(tiny, images)
    assert compact.forms == ("trunk", "trunk", "fpn")
    assert [tuple(x.shape) for x in compact.levels] == [(3, 8, 32, 32), (3, 16, 16, 16), (3, 32, 8, 8)]
    assert all(x.dtype == torch.bfloat16 for x in compact.levels)
    # hand count: (8*32*32 + 16*16*16 + 32*8*8) elements * 2 bytes
    assert compact_bytes_per_frame(tiny) == (8192 + 4096 + 2048) * 2 == compact.nbytes // 3


def test_compact_fp32_expands_bit_exactly(tiny, images):
    direct = encode_frames(tiny, images)
    expanded = expand_compact(tiny, encode_frames_compact(tiny, images, dtype=torch.float32))
    for a, b in zip(direct, expanded, strict=True):
        assert a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max().item() == 0.0


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)])
def test_compact_expands_within_storage_rounding(tiny, images, dtype, unit_roundoff):
    """Trunk levels: |conv(round(x)) - conv(x)| <= u * (|W| conv |x|); FPN levels: <= u * |x|."""
    direct = encode_frames(tiny, images)
    compact = encode_frames_compact(tiny, images, dtype=dtype)
    expanded = expand_compact(tiny, compact)
    trunk = tiny.image_encoder.trunk(images)
    neck = tiny.image_encoder.neck
    n = len(neck.convs) - 1
    with torch.no_grad():
        for k, form in enumerate(compact.forms):
            err = (expanded[k] - direct[k]).abs()
            if form == "trunk":
                w = neck.convs[n - k].conv.weight.abs()
                bound = unit_roundoff * torch.nn.functional.conv2d(trunk[k].abs(), w)
            else:
                bound = unit_roundoff * direct[k].abs()
            assert err.max() > 0  # it really was rounded
            assert (err <= bound * 1.001 + 1e-6).all(), (k, form, (err - bound).max().item())


def test_bf16_autocast_encoding_and_its_compact_form(tiny, images):
    """Under bf16 autocast (the released precision) s4/s8 come out bf16 and s16 fp32; the compact bf16
    form then loses nothing on the trunk levels (the lateral conv reads bf16 either way)."""
    pyr = encode_frames(tiny, images, autocast=True)
    assert [x.dtype for x in pyr] == [torch.bfloat16, torch.bfloat16, torch.float32]
    compact = encode_frames_compact(tiny, images, autocast=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expanded = expand_compact(tiny, compact)
    assert torch.equal(expanded.s4, pyr.s4) and torch.equal(expanded.s8, pyr.s8)
    assert (expanded.s16 - pyr.s16).abs().le(2.0**-8 * pyr.s16.abs()).all()


def test_expand_compact_rejects_other_layout(tiny, images):
    compact = encode_frames_compact(tiny, images)
    wrong = compact._replace(forms=("fpn", "fpn", "fpn"))
    with pytest.raises(ValueError, match="different SAM2 config"):
        expand_compact(tiny, wrong)


# ---------------------------------------------------------------- transforms and prompts helpers


def test_preprocess_frames_is_pil_bicubic_then_imagenet_normalisation():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 45, 60, 3), dtype=np.uint8)
    out = preprocess_frames(frames, 64)
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    resized = np.asarray(Image.fromarray(frames[1]).resize((64, 64), Image.BICUBIC), dtype=np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((resized - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out[1].numpy(), expected, rtol=1e-5, atol=1e-5)
    as_pil = preprocess_frames([Image.fromarray(f) for f in frames], 64)
    assert torch.equal(as_pil, out)
    assert torch.equal(preprocess_frames(torch.from_numpy(frames), 64), out)
    with pytest.raises(ValueError, match="uint8 RGB"):
        preprocess_frames(frames.astype(np.float32), 64)


def test_preprocess_masks_is_pil_nearest_and_keeps_labels():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 71, size=(37, 53), dtype=np.uint8)
    for size in (16, 64, 100):
        expected = np.asarray(Image.fromarray(labels).resize((size, size), Image.NEAREST))
        assert np.array_equal(preprocess_masks([labels], size)[0].numpy(), expected)
    wide = labels.astype(np.int64) * 1000  # labels beyond uint8 survive
    out = preprocess_masks(wide[None], 64)
    assert out.dtype == torch.int64 and set(out.unique().tolist()) <= set(np.unique(wide).tolist())
    # hand-computed: 2x2 -> 4x4 repeats each pixel twice
    assert preprocess_masks([np.array([[1, 2], [3, 4]])], 4)[0].tolist() == [
        [1, 1, 2, 2],
        [1, 1, 2, 2],
        [3, 3, 4, 4],
        [3, 3, 4, 4],
    ]


def test_point_inputs_from_clicks_scales_and_puts_box_first():
    pts = point_inputs_from_clicks(
        1024, orig_hw=(256, 512), points=torch.tensor([[256.0, 64.0]]), labels=[1], box=[0, 0, 512, 128]
    )
    assert pts["point_coords"].tolist() == [[[0.0, 0.0], [1024.0, 512.0], [512.0, 256.0]]]
    assert pts["point_labels"].tolist() == [[2, 3, 1]] and pts["point_labels"].dtype == torch.int32
    with pytest.raises(ValueError, match="one label"):
        point_inputs_from_clicks(1024, (10, 10), points=torch.zeros(2, 2), labels=[1])
