"""The typed experiment config: presets, validation errors that name the field, overrides, YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from auralsam2.audio import VGGishConfig
from auralsam2.config import (
    PROJECT_ROOT,
    ConfigError,
    ExperimentConfig,
    config_to_yaml,
    demo_config_path,
    flatten_config,
    load_config,
)
from auralsam2.fuser import FuserConfig
from auralsam2.losses import AudioConConfig, SegLossWeights

PRESETS = sorted(p for p in (PROJECT_ROOT / "configs").rglob("*.yaml")
                 if not p.name.startswith("_") and p.name not in ("ablations.yaml", "paper_prompts.yaml"))


def test_every_field_is_typed_documented_and_defaulted():
    def walk(model: type, where: str) -> None:
        assert model.model_config.get("extra") == "forbid", where
        for name, info in model.model_fields.items():
            assert info.description, f"{where}.{name} has no description"
            assert not info.is_required(), f"{where}.{name} has no default"
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields") and sub.__module__.startswith("auralsam2.config."):
                walk(sub, f"{where}.{name}")

    walk(ExperimentConfig, "config")
    # the issue-4 models are embedded, not copied
    cfg = ExperimentConfig()
    assert isinstance(cfg.model.fuser, FuserConfig) and isinstance(cfg.model.vggish, VGGishConfig)
    assert isinstance(cfg.loss.audiocon, AudioConConfig) and isinstance(cfg.loss.seg, SegLossWeights)


def test_defaults_are_the_released_recipe():
    cfg = ExperimentConfig()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas) == (1e-4, 0.05, (0.9, 0.999))
    assert (cfg.optim.poly_power, cfg.optim.warmup_steps, cfg.optim.grad_clip) == (0.9, 0, None)
    assert cfg.train.clips_per_step == 1 and cfg.train.seed == 666 and cfg.train.select_on == "val"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: str(p.relative_to(PROJECT_ROOT / "configs")))
def test_presets_validate(path: Path):
    cfg = load_config(path)
    assert cfg.experiment and cfg.train.select_on == "val"
    if path.name.startswith(("avss_", "refavs_")):
        assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 0.05 and cfg.optim.grad_clip is None
        assert cfg.train.epochs == {"v1s": 140, "v1m": 140, "v2": 90, "refavs": 50}[
            "refavs" if path.name.startswith("refavs") else path.name.split("_")[1]]
        family = "sam2.1" if path.parent.name == "sam2.1" else "sam2"
        assert cfg.model.sam2.config.startswith(f"{family}_hiera_")


def test_preset_matrix_is_complete():
    names = {p.name for p in PRESETS if p.parent.name == "configs"}
    for size in ("l", "b+"):
        for data in ("avss_v1s", "avss_v1m", "avss_v2_merged", "avss_v2_alone", "refavs"):
            assert f"{data}_hiera_{size}.yaml" in names
    merged = load_config(PROJECT_ROOT / "configs" / "avss_v2_merged_hiera_l.yaml")
    alone = load_config(PROJECT_ROOT / "configs" / "avss_v2_alone_hiera_l.yaml")
    assert merged.data.subsets == () and alone.data.subsets == ("v2",)
    ref = load_config(PROJECT_ROOT / "configs" / "refavs_hiera_b+.yaml")
    assert ref.task == "ref" and ref.model.fuser.variant == "refavs" and "test_n" in ref.eval.splits


def test_unknown_field_in_yaml_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown field") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_value_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  fuser:\n    levels: 5\n")
    with pytest.raises(ConfigError, match=r"model\.fuser\.levels"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"train\.select_protocol"):
        load_config(None, ["train.select_protocol=nope"])


def test_set_overrides_any_field_and_rejects_unknown_ones():
    cfg = load_config(PROJECT_ROOT / "configs" / "avss_v1s_hiera_l.yaml",
                      ["optim.lr=3e-4", "model.fuser.levels=2", "eval.splits=[val, test]", "train.max_steps=7",
                       "model.sam2.checkpoint=null"])
    assert cfg.optim.lr == 3e-4 and cfg.model.fuser.levels == 2 and cfg.eval.splits == ("val", "test")
    assert cfg.train.max_steps == 7 and cfg.model.sam2.checkpoint is None
    with pytest.raises(ConfigError, match=r"unknown field 'model\.fuser\.levelz'.*levels"):
        load_config(None, ["model.fuser.levelz=2"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["optim.lr"])


def test_cross_field_checks_say_what_to_set():
    with pytest.raises(ConfigError, match=r"model\.fuser\.audio_dim"):
        load_config(None, ["model.vggish.embedding_dim=16"])  # 2 x 16 != 256
    with pytest.raises(ConfigError, match="variant 'refavs'"):
        load_config(None, ["data.dataset=refavs"])
    with pytest.raises(ConfigError, match="reads the expressions: set model.text_encoder"):
        load_config(None, ["data.dataset=refavs", "model.fuser.variant=refavs"])
    with pytest.raises(ConfigError, match="has no expressions"):
        load_config(None, ["model.text_encoder=distilbert/distilroberta-base"])
    ref = load_config(None, ["data.dataset=refavs", "model.fuser.variant=refavs", "model.fuser.modalities=audio"])
    assert ref.model.text_encoder is None  # audio + visual only: no text encoder needed
    relative = ["model.fuser.mask_prompt_text=relative", "model.fuser.mask_prompt_text_visual=appearance",
                "model.fuser.mask_prompt_audio_clip=false", "train.mask_prompt_warmup_epochs=0",
                "optim.mask_prompt_lr_scale=1", "loss.text_contrast=0"]
    with pytest.raises(ConfigError, match="set loss.text_contrast > 0"):  # the relative text map learns from it alone
        load_config(PROJECT_ROOT / "configs" / "demo_refavs.yaml", relative)
    # ... which an audio + visual row does not have
    load_config(PROJECT_ROOT / "configs" / "demo_refavs.yaml", [*relative, "model.fuser.modalities=audio"])
    # the message is the check's own words, not the whole config echoed after them
    with pytest.raises(ConfigError) as err:
        load_config(PROJECT_ROOT / "configs" / "demo.yaml", ["optim.mask_prompt_lr_scale=0",
                                                             "train.mask_prompt_warmup_epochs=0"])
    assert "nothing trains them before it" in str(err.value) and "'experiment'" not in str(err.value)
    assert len(str(err.value)) < 600, str(err.value)
    with pytest.raises(ConfigError, match=r"optim\.lr: .*\(got 'fast'\)"):  # a single field's value still shows
        load_config(None, ["optim.lr=fast"])


def test_extends_merges_and_yaml_round_trips(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.5\n  weight_decay: 0.1\ntrain:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim:\n  lr: 0.25\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.epochs) == (0.25, 0.1, 3)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(config_to_yaml(cfg))
    assert load_config(dumped) == cfg
    flat = flatten_config(cfg)
    assert flat["optim.lr"] == 0.25 and flat["model.fuser.f_depths"] == "[3, 6, 12]"
    assert yaml.safe_load(config_to_yaml(cfg))["model"]["fuser"]["dim"] == 256


def test_demo_config_falls_back_to_tiny_without_the_synth_checkpoint():
    path = demo_config_path()
    cfg = load_config(path)
    checkpoint = load_config(PROJECT_ROOT / "configs" / "demo.yaml").model.sam2.checkpoint
    if (PROJECT_ROOT / checkpoint).is_file():
        assert path.name == "demo.yaml" and cfg.model.fuser.dim == 128
    else:
        assert path.name == "demo_tiny.yaml" and cfg.model.sam2.config == "tiny" and cfg.model.fuser.dim == 32
    assert cfg.train.max_steps is not None and cfg.model.train_vggish


def test_the_library_imports_no_orchestration_tracking_or_tool_package():
    import subprocess
    import sys

    code = ("import sys, auralsam2.config, auralsam2.engine, auralsam2.evaluation; "
            "bad = [m for m in ('prefect', 'mlflow', 'duckdb', 'feature_cache', 'flows', 'dashboards') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bare_yaml_off_is_the_mode_off():
    # YAML 1.1 reads `off` as false; `--set loss.audiocon.mode=off` and `mode: off` mean the mode
    assert load_config(None, ["loss.audiocon.mode=off"]).loss.audiocon.mode == "off"
    with pytest.raises(ConfigError, match="loss.audiocon.mode"):
        load_config(None, ["loss.audiocon.mode=true"])
    # the same in a config file, and for every Literal with an on/off value
    assert load_config(None, ["train.ddp_find_unused_parameters=on"]).train.ddp_find_unused_parameters == "on"
    assert load_config(None, ["train.progress=off"]).train.progress is False  # a bool still reads off


def test_a_config_file_keeps_on_and_off_as_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  audiocon:\n    mode: off\ntrain:\n  ddp_find_unused_parameters: on\n  progress: no\n")
    cfg = load_config(path)
    assert (cfg.loss.audiocon.mode, cfg.train.ddp_find_unused_parameters, cfg.train.progress) == ("off", "on", False)
