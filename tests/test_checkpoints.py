"""Checkpoint loaders: released AuralSAM2 layouts (built from the published key lists), legacy names,
errors that name keys, and our own fingerprinted format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
from auralsam2.checkpoints import (
    CheckpointError,
    load_fuser_checkpoint,
    load_released_fuser,
    remap_legacy_key,
    save_fuser_checkpoint,
    state_fingerprint,
)
from auralsam2.checkpoints import is_released_unused as unused
from auralsam2.fuser import AuralFuser, FuserConfig

KEYS = Path(__file__).parent / "data" / "released_checkpoint_keys"


def key_list(variant: str) -> list[dict]:
    return json.loads((KEYS / f"auralfuser_{variant}.json").read_text())["keys"]


def released_state_dict(variant: str, seed: int = 0, vgg: bool = True) -> dict[str, torch.Tensor]:
    """A state dict in the released layout: every key and exact shape of the list, random values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for e in key_list(variant):
        if not vgg and e["key"].startswith("vgg."):
            continue
        if e["dtype"] == "int64":
            out[e["key"]] = torch.randint(0, 1000, e["shape"], generator=g)
        else:
            out[e["key"]] = torch.randn(e["shape"], generator=g)
    return out


@pytest.fixture(scope="module")
def avs_sd() -> dict[str, torch.Tensor]:
    return released_state_dict("avs")


@pytest.fixture(scope="module")
def avs_models() -> tuple[AuralFuser, AudioEncoder]:
    return AuralFuser(FuserConfig()), AudioEncoder(VGGish(), trainable=False)


def assert_loaded(fuser: AuralFuser, encoder: AudioEncoder | None, sd: dict[str, torch.Tensor]) -> None:
    for k, v in fuser.state_dict().items():
        assert torch.equal(v, sd[k]), k
    if encoder is not None:
        for k, v in encoder.vggish.state_dict().items():
            assert torch.equal(v, sd[f"vgg.{k}"]), k


@pytest.mark.parametrize("variant", ["avs", "refavs"])
def test_unused_list_matches_the_published_key_list(variant):
    for e in key_list(variant):
        is_unused = e.get("receives_grad") is False and "unused" in e.get("no_grad_reason", "")
        assert unused(e["key"]) == is_unused, e["key"]


def test_released_avs_layout_loads_with_no_missing_keys(avs_sd, avs_models):
    fuser, encoder = avs_models
    report = load_released_fuser(fuser, {f"aural_fuser.{k}": v for k, v in avs_sd.items()}, encoder)
    assert len(report.loaded) == len(fuser.state_dict()) == 754 - 18 - 66
    assert report.vggish_loaded == 18 and len(report.skipped_unused) == 66
    assert report.ignored == [] and report.remapped == {}
    assert_loaded(fuser, encoder, avs_sd)
    # bare keys (an AuralFuser-only dict) load the same way
    bare = load_released_fuser(fuser, avs_sd, encoder)
    assert len(bare.loaded) == 670


def test_full_model_file_ignores_v_model_with_a_note(avs_sd, avs_models, tmp_path):
    fuser, _ = avs_models
    sd = {f"aural_fuser.{k}": v for k, v in avs_sd.items() if not k.startswith("vgg.")}  # smaller file
    sd["v_model.sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    sd["v_model.image_encoder.neck.convs.0.conv.weight"] = torch.zeros(256, 112, 1, 1)
    path = tmp_path / "auralsam2_avs_v1m.pth"
    torch.save(sd, path)
    report = load_released_fuser(fuser, path)  # no audio encoder given
    assert len(report.ignored) == 2 and report.vggish_loaded == 0
    assert any("v_model" in n for n in report.notes)
    assert load_released_fuser(fuser, avs_sd).notes == ["vgg.* present but no audio encoder given: VGGish "
                                                        "weights not loaded."]
    assert "auralsam2_avs_v1m.pth" in report.source
    assert_loaded(fuser, None, avs_sd)


def legacy_name(key: str) -> str:
    """Inverse of the release's remap table (0-based module lists -> 1-based attributes)."""
    for new, old in (("patch_embeds", "train_f_patch_embed"), ("fusion_modules", "train_f_a_block"),
                     ("f_blocks", "train_f_block"), ("a_blocks", "train_a_block"), ("smooth_convs", "train_smooth")):
        m = re.match(rf"{new}\.(\d+)\.(.*)", key)
        if m:
            return f"{old}{int(m.group(1)) + 1}.{m.group(2)}"
    return key


def test_legacy_names_are_remapped(avs_sd, avs_models):
    fuser, encoder = avs_models
    legacy = {f"audio_prompter.{legacy_name(k)}": v for k, v in avs_sd.items()}
    legacy["audio_prompter.training_layers.0.weight"] = torch.zeros(3)  # duplicate containers: dropped
    legacy["audio_prompter.finetuning_layers.1.bias"] = torch.zeros(3)
    report = load_released_fuser(fuser, legacy, encoder)
    assert report.remapped["audio_prompter.train_f_a_block3.q_frame.weight"] == "fusion_modules.2.q_frame.weight"
    assert report.remapped["audio_prompter.train_f_block1.0.norm1.weight"] == "f_blocks.0.0.norm1.weight"
    assert len(report.ignored) == 2 and len(report.loaded) == 670
    assert_loaded(fuser, encoder, avs_sd)
    assert remap_legacy_key("train_f_patch_embed2.weight") == "patch_embeds.1.weight"
    assert remap_legacy_key("train_smooth2.bias") == "smooth_convs.1.bias"
    assert remap_legacy_key("train_a_block3.2.attn.q.bias") == "a_blocks.2.2.attn.q.bias"


def test_wrong_missing_and_misshaped_keys_are_named(avs_sd, avs_models):
    fuser, _ = avs_models
    wrong = dict(avs_sd)
    wrong["f_blocks.2.12.attn.q.weight"] = wrong.pop("f_blocks.2.11.attn.q.weight")
    with pytest.raises(CheckpointError, match=r"missing 1: f_blocks\.2\.11\.attn\.q\.weight.*unexpected 1: "
                                              r"f_blocks\.2\.12\.attn\.q\.weight"):
        load_released_fuser(fuser, wrong)
    shaped = dict(avs_sd)
    shaped["smooth_convs.0.weight"] = torch.zeros(256, 256, 3, 3)
    with pytest.raises(CheckpointError, match=r"shape mismatch 1: smooth_convs\.0\.weight"):
        load_released_fuser(fuser, shaped)
    stray = {f"aural_fuser.{k}": v for k, v in avs_sd.items()}
    stray["optimizer.state"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="optimizer.state"):
        load_released_fuser(fuser, stray)


def test_variant_hint():
    torch.manual_seed(0)
    ref_sd = AuralFuser(FuserConfig.tiny(variant="refavs")).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected 8: text_proj.*variant='refavs'"):
        load_released_fuser(AuralFuser(FuserConfig.tiny()), ref_sd)
    with pytest.raises(CheckpointError, match="audio_proj.*audio_dim 64 != dim 32"):
        load_released_fuser(AuralFuser(FuserConfig.tiny(audio_dim=64)), AuralFuser(FuserConfig.tiny()).state_dict())


@pytest.mark.slow
def test_released_refavs_layout_loads_with_no_missing_keys():
    ref_sd = released_state_dict("refavs", seed=1, vgg=False)
    ref = AuralFuser(FuserConfig(variant="refavs"))
    report = load_released_fuser(ref, {f"aural_fuser.{k}": v for k, v in ref_sd.items()})
    assert len(report.loaded) == 752 - 18 - 66 and len(report.skipped_unused) == 66 and report.notes == []
    assert_loaded(ref, None, ref_sd)


def test_paper_heads_skip_the_released_heads_with_a_note():
    # tiny stand-in for a released dict: an official-head fuser's weights
    torch.manual_seed(0)
    released = AuralFuser(FuserConfig.tiny()).state_dict()
    paper = AuralFuser(FuserConfig.tiny(audiocon="paper"))
    heads_before = {k: v.clone() for k, v in paper.state_dict().items() if k.startswith("audiocon_proj")}
    report = load_released_fuser(paper, released)
    assert sorted({k.split(".")[0] for k in report.ignored}) == ["train_proj_a1", "train_proj_v1"]
    assert any("paper's AudioCon heads" in n for n in report.notes)
    for k, v in paper.state_dict().items():
        if k in heads_before:
            assert torch.equal(v, heads_before[k])  # new heads keep their init
        else:
            assert torch.equal(v, released[k]), k
    # any other missing key is still an error
    partial = {k: v for k, v in released.items() if not k.startswith("smooth_convs.1")}
    with pytest.raises(CheckpointError, match=r"missing 2: smooth_convs\.1\.bias, smooth_convs\.1\.weight"):
        load_released_fuser(paper, partial)


# ---------------------------------------------------------------------------------------------
# Our own format
# ---------------------------------------------------------------------------------------------


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    fuser = AuralFuser(FuserConfig.tiny(variant="refavs", fusion="paper"))
    encoder = AudioEncoder(VGGish(VGGishConfig.tiny()), channels=2, trainable=True)
    return fuser, encoder


def test_own_format_round_trip(tmp_path):
    fuser, encoder = tiny_models()
    with torch.no_grad():  # BN buffers too
        fuser.fusion_modules[0].W_z[1].running_mean.add_(1.0)
    path = save_fuser_checkpoint(tmp_path / "ckpt" / "best.pt", fuser, encoder, extra={"step": 7, "miou": 0.5})
    assert path.is_file() and not path.with_name("best.pt.tmp").exists()
    loaded = load_fuser_checkpoint(path)
    assert loaded.fuser.config == fuser.config
    assert loaded.extra == {"step": 7, "miou": 0.5}
    assert loaded.fingerprints["fuser"] == state_fingerprint(fuser.state_dict())
    for k, v in fuser.state_dict().items():
        assert torch.equal(loaded.fuser.state_dict()[k], v), k
    for k, v in encoder.vggish.state_dict().items():
        assert torch.equal(loaded.audio_encoder.vggish.state_dict()[k], v), k
    assert loaded.audio_encoder.channels == 2 and loaded.audio_encoder.vggish.config == encoder.vggish.config
    payload = torch.load(path, weights_only=True)  # loads without unpickling code
    assert payload["format"] == "auralsam2-fuser/1"


def test_own_format_detects_tampering_and_wrong_files(tmp_path):
    fuser, encoder = tiny_models()
    path = save_fuser_checkpoint(tmp_path / "a.pt", fuser, encoder)
    payload = torch.load(path, weights_only=True)
    payload["fuser"]["patch_embeds.0.bias"] += 1e-3
    torch.save(payload, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="b.pt: fails its checksum"):
        load_fuser_checkpoint(tmp_path / "b.pt")
    payload.pop("payload_sha256")  # a file without the whole-payload seal still has the weights' fingerprints
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_fuser_checkpoint(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    payload["extra"]["note"] = "changed"  # not a tensor: only the payload seal covers it
    torch.save(payload, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="d.pt: fails its checksum"):
        load_fuser_checkpoint(tmp_path / "d.pt")
    torch.save({"aural_fuser.x": torch.zeros(1)}, tmp_path / "released.pth")
    with pytest.raises(CheckpointError, match="load_released_fuser"):
        load_fuser_checkpoint(tmp_path / "released.pth")
    with pytest.raises(FileNotFoundError):
        load_fuser_checkpoint(tmp_path / "nope.pt")
    other, _ = tiny_models(seed=1)
    assert state_fingerprint(other.state_dict()) != state_fingerprint(fuser.state_dict())


LEGACY = Path(__file__).parent / "data" / "legacy" / "fuser_mask_prompt_v0.ckpt"


def test_a_fuser_checkpoint_written_before_the_mask_prompt_module_still_loads() -> None:
    """`fuser_mask_prompt_v0.ckpt` was written by commit a95025e, when the mask prompt's parameters
    were `mask_prompt_threshold` / `prompt_gates` on the fuser itself: it loads into today's
    `fuser.mask_prompt.{threshold,gates}` with every value unchanged."""
    from auralsam2.checkpoints import read_weights, state_fingerprint, upgrade_fuser_state

    raw = read_weights(LEGACY)["fuser"]
    assert {"mask_prompt_threshold", "prompt_gates"} <= set(raw)
    loaded = load_fuser_checkpoint(LEGACY)
    assert loaded.fuser.mask_prompt.threshold.item() == pytest.approx(0.37)
    assert torch.equal(loaded.fuser.mask_prompt.gates.detach(), torch.arange(6.0).reshape(2, 3) / 10)
    assert state_fingerprint(upgrade_fuser_state(raw)) == state_fingerprint(loaded.fuser.state_dict())
    assert loaded.audio_encoder is not None
    # a training state keeps the fuser under `fuser.`: the same renames apply there
    state = upgrade_fuser_state({f"fuser.{k}": v for k, v in raw.items()}, prefix="fuser.")
    assert "fuser.mask_prompt.threshold" in state and "fuser.mask_prompt_threshold" not in state
