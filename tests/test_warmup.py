"""The mask-prompt warm-up (`train.mask_prompt_warmup_steps`, `auralsam2.engine.warmup`): it trains the
joint mask prompt's maps alone before the first step (an audio map's AudioCon heads and threshold),
deterministically, leaves the main loop's random streams alone, and is skipped on resume (a resumed
run ends bit-identical)."""

from __future__ import annotations

import pytest
import torch

from auralsam2.config import ConfigError, load_config
from auralsam2.engine import build_model, train
from auralsam2.engine.optim import param_groups
from auralsam2.engine.warmup import warm_up_mask_prompt
from auralsam2.losses import AudioConConfig, audiocon_loss, mask_prompt_loss
from feature_cache.dataset import open_reader, training_data
from tests.train_fixtures import tiny_config

JOINT = ["model.fuser.mask_prompt=true", "model.fuser.mask_prompt_text=joint",
         "model.fuser.mask_prompt_text_visual=position", "loss.audiocon.mode=off", "train.deterministic=true"]


def _config(*overrides: str):
    return tiny_config(*JOINT, *overrides, dataset="refavs")


def _mask_loss(model, items) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(len(items)):
            item = items.item(i)
            maps = model.fuser.mask_prompt_maps(list(item.pyramid), model.audio_embeddings(item.log_mel), item.text)
            rows = torch.as_tensor(item.supervised)
            total += float(mask_prompt_loss(maps.logits[rows], item.masks[rows]))
    return total / len(items)


def test_warm_up_trains_the_maps_alone_and_deterministically():
    cfg = _config("train.mask_prompt_warmup_steps=30", "train.mask_prompt_warmup_clips=2")
    data = training_data(cfg, open_reader(cfg))
    states, losses = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(cfg.model, data.sam2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        start = _mask_loss(model, data.train)
        curve = warm_up_mask_prompt(model, data.train, cfg, torch.device("cpu"))
        assert torch.equal(torch.get_rng_state(), rng)  # the main loop's random streams are untouched
        assert len(curve) == 30 and _mask_loss(model, data.train) < 0.7 * start
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        odd = sorted(k for k in changed if not k.startswith(("fuser.mask_prompt.", "fuser.audio", "fuser.train_proj")))
        assert changed and not odd, odd
        assert not any(k.startswith(("fuser.patch_embeds", "fuser.f_blocks", "audio_encoder.")) for k in changed)
        states.append(model.state_dict())
        losses.append(curve)
    assert losses[0] == losses[1]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_resumed_run_skips_the_warm_up_and_ends_bit_identical(tmp_path):
    cfg = _config("train.mask_prompt_warmup_steps=10", "train.epochs=1")
    full = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "full")
    cut_cfg = _config("train.mask_prompt_warmup_steps=10", "train.epochs=1", "train.stop_after_steps=2")
    cut = train(cut_cfg, training_data(cut_cfg, open_reader(cut_cfg)), tmp_path / "cut")
    assert cut.interrupted
    resumed = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "cut", resume=True)
    assert resumed.steps == full.steps and not resumed.interrupted
    a, b = (torch.load(tmp_path / r / "last.ckpt", weights_only=True)["trainable"] for r in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = (tmp_path / "full" / "history.jsonl").read_text()
    assert history == (tmp_path / "cut" / "history.jsonl").read_text() and "warmup/mask_prompt_last" in history


def _audiocon_on_train(model, items) -> float:
    """AudioCon of the mask prompt's maps over the training clips (the map's logits telling hard cells)."""
    total, generator = 0.0, torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()  # the official heads' BatchNorm statistics stay as they are
    with torch.no_grad():
        for i in range(len(items)):
            item = items.item(i)
            maps = model.fuser.mask_prompt_maps(list(item.pyramid), model.audio_embeddings(item.log_mel), None)
            rows = list(item.supervised)
            total += float(audiocon_loss([maps.visual], [maps.audio], (item.masks[rows] > 0).float(), maps.logits[rows],
                                         rows, AudioConConfig(), generator))
    model.train(was_training)
    return total / len(items)


@pytest.mark.parametrize("audiocon", ["paper", "off"])
def test_an_audio_map_warms_up_on_audiocon_and_without_it_not_at_all(audiocon):
    # the AVSBench map reads its cosine detached: AudioCon trains its heads, the mask loss its threshold
    cfg = tiny_config("model.fuser.mask_prompt=true", f"loss.audiocon.mode={audiocon}", "train.deterministic=true",
                      "train.mask_prompt_warmup_steps=20", "train.mask_prompt_warmup_clips=2", "optim.lr=1e-2")
    assert cfg.warm_up_audiocon == cfg.warm_up_trains_the_map == (audiocon == "paper")
    data = training_data(cfg, open_reader(cfg))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.sam2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = _audiocon_on_train(model, data.train)
    rng = torch.get_rng_state()
    curve = warm_up_mask_prompt(model, data.train, cfg, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    if audiocon == "off":  # only the threshold would learn, as it does in the main loop: no warm-up
        assert curve == [] and not changed
        return
    maps = {id(p) for p in model.fuser.mask_prompt_parameters()}
    of_the_maps = {f"fuser.{k}" for k, p in model.fuser.named_parameters() if id(p) in maps}
    changed = {k for k in changed if k in dict(model.named_parameters())}  # (the official heads' BatchNorm stats too)
    assert len(curve) == 20
    visual_head = {k for k in of_the_maps if "proj_v" in k}  # audiocon_proj_v, or train_proj_v1 (official heads)
    assert "fuser.mask_prompt.threshold" in changed and visual_head and changed & visual_head
    assert changed <= of_the_maps, sorted(changed - of_the_maps)
    assert _audiocon_on_train(model, data.train) < 0.9 * start


def test_a_frozen_map_needs_a_warm_up():
    with pytest.raises(ConfigError, match="nothing trains them before it"):
        load_config(None, ["model.fuser.mask_prompt=true", "optim.mask_prompt_lr_scale=0"])
    load_config(None, ["model.fuser.mask_prompt=true", "optim.mask_prompt_lr_scale=0", "train.mask_prompt_warmup_steps=5"])
    with pytest.raises(ConfigError, match="nothing trains them before it"):  # a warm-up with nothing to train
        load_config(None, ["model.fuser.mask_prompt=true", "optim.mask_prompt_lr_scale=0", "loss.audiocon.mode=off",
                           "train.mask_prompt_warmup_steps=5"])
    # without a mask prompt there is nothing to warm up or freeze (the visual-only row of a warmed-up config)
    load_config(None, ["model.fuser.mask_prompt=false", "optim.mask_prompt_lr_scale=0"])
    load_config(None, ["model.fuser.mask_prompt=false", "train.mask_prompt_warmup_steps=5"])


def test_a_warm_up_in_epochs_is_that_many_passes_over_the_training_items():
    steps_cfg = _config("train.mask_prompt_warmup_steps=3", "train.mask_prompt_warmup_clips=2")
    data = training_data(steps_cfg, open_reader(steps_cfg))
    n_items = len(data.train.whole_clips())  # Ref-AVS: expressions
    assert n_items >= 2
    epochs = 3 * 2 / n_items  # exactly 3 steps of 2 clips
    runs = {}
    epochs_cfg = _config(f"train.mask_prompt_warmup_epochs={epochs}", "train.mask_prompt_warmup_clips=2")
    for name, cfg in (("steps", steps_cfg), ("epochs", epochs_cfg)):
        torch.manual_seed(0)
        model = build_model(cfg.model, data.sam2)
        runs[name] = (warm_up_mask_prompt(model, data.train, cfg, torch.device("cpu")), model.state_dict())
    assert len(runs["epochs"][0]) == 3 and runs["epochs"][0] == runs["steps"][0]
    assert all(torch.equal(runs["epochs"][1][k], v) for k, v in runs["steps"][1].items())
    # the step count grows with the training set, and a part pass rounds up
    tc = _config("train.mask_prompt_warmup_epochs=50").train
    assert [tc.mask_prompt_warmup_steps_for(n) for n in (24, 72, 25)] == [300, 900, 313]  # 50 x 25 / 4 = 312.5
    with pytest.raises(ConfigError, match="are both set"):
        load_config(None, ["train.mask_prompt_warmup_steps=5", "train.mask_prompt_warmup_epochs=2"])


@pytest.mark.parametrize("modalities", ["audio+text", "audio", "text"])
def test_the_mask_prompt_parameters_are_exactly_what_its_maps_are_computed_from(modalities):
    cfg = _config(f"model.fuser.modalities={modalities}", "train.mask_prompt_warmup_steps=0")
    data = training_data(cfg, open_reader(cfg))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.sam2)
    item = data.train.whole_clips().item(0)
    audio = model.audio_embeddings(item.log_mel)  # VGGish is not the map's (None without audio)
    audio = None if audio is None else audio.detach()
    maps = model.fuser.mask_prompt_maps(list(item.pyramid), audio, model.text_hidden(item.text))
    maps.logits.square().sum().backward()
    reached = {id(p) for p in model.parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    named = {id(p) for p in model.fuser.mask_prompt_parameters()}
    assert named == reached
    assert id(model.fuser.mask_prompt.gates) not in named  # the prompt gates are the segmentation loss's


def test_a_zero_mask_prompt_lr_scale_leaves_the_map_as_the_warm_up_left_it(tmp_path):
    def run(name: str, *overrides: str) -> dict[str, torch.Tensor]:
        cfg = _config("train.mask_prompt_warmup_steps=3", "train.epochs=1", *overrides)
        train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / name)
        return torch.load(tmp_path / name / "last.ckpt", weights_only=True)["trainable"]

    cfg = _config("optim.mask_prompt_lr_scale=0", "train.mask_prompt_warmup_steps=3")
    model = build_model(cfg.model, training_data(cfg, open_reader(cfg)).sam2)
    groups = {g["name"]: g for g in param_groups(model, cfg.optim)}
    assert {"mask_prompt_decay", "fuser_decay"} <= set(groups)
    assert groups["mask_prompt_decay"]["lr"] == 0 and groups["fuser_decay"]["lr"] == cfg.optim.lr
    names = {id(p): n for n, p in model.named_parameters()}
    map_names = {names[id(p)] for p in model.fuser.mask_prompt_parameters()}
    # the same warm-up, then 1 or 3 main-loop steps: the map stays where the warm-up left it, the rest trains on
    one, three = (run(f"frozen{n}", "optim.mask_prompt_lr_scale=0", f"train.max_steps={n}") for n in (1, 3))
    assert map_names and all(torch.equal(one[n], three[n]) for n in map_names)
    assert any(not torch.equal(one[n], three[n]) for n in one if n not in map_names)
    free = run("free", "train.max_steps=3")  # at the default scale the main loop moves the map too
    assert any(not torch.equal(free[n], three[n]) for n in map_names)
