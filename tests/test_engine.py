"""The training engine on the tiny cache: parameter groups, schedule, data order, items, the loop,
checkpoints and selection (real tiny SAM2, real cache files, no mocks)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from auralsam2.backbone import is_frozen
from auralsam2.checkpoints import load_fuser_checkpoint
from auralsam2.engine import (
    DataOrder,
    build_model,
    needs_find_unused,
    param_groups,
    poly_factor,
    train,
)
from feature_cache.dataset import CacheItems, choose_view, open_reader, training_data
from tests.train_fixtures import tiny_config


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def reader(cfg):
    return open_reader(cfg)


def test_param_groups_follow_the_released_rule(cfg, reader):
    model = build_model(cfg.model, reader.model)
    groups = {g["name"]: g for g in param_groups(model, cfg.optim.model_copy(update={"vggish_lr_scale": 0.1}))}
    assert set(groups) == {"fuser_decay", "fuser_no_decay", "vggish_decay"}  # VGGish has no norm layers
    assert groups["fuser_decay"]["weight_decay"] == 0.05 and groups["fuser_no_decay"]["weight_decay"] == 0.0
    assert groups["vggish_decay"]["lr"] == pytest.approx(cfg.optim.lr * 0.1)
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    norm = model.fuser.f_blocks[0][0].norm1
    assert id(norm.weight) in ids["fuser_no_decay"] and id(norm.bias) in ids["fuser_no_decay"]
    linear = model.fuser.patch_embeds[0]
    assert id(linear.weight) in ids["fuser_decay"] and id(linear.bias) in ids["fuser_decay"]  # biases decay (released)
    trainable = {id(p) for _, p in model.trainable_parameters()}
    assert set().union(*ids.values()) == trainable
    assert not any(p.requires_grad for p in model.sam2.parameters()) and is_frozen(model.sam2)
    # a frozen VGGish (released) gets no group
    frozen = build_model(cfg.model.model_copy(update={"train_vggish": False}), reader.model)
    assert {g["name"] for g in param_groups(frozen, cfg.optim)} == {"fuser_decay", "fuser_no_decay"}


def test_poly_schedule_values():
    assert poly_factor(0, 10, 0.9) == 1.0
    assert poly_factor(5, 10, 0.9) == pytest.approx(0.5**0.9)
    assert poly_factor(10, 10, 0.9) == 0.0 and poly_factor(12, 10, 0.9) == 0.0
    assert poly_factor(0, 10, 0.9, warmup_steps=4) == pytest.approx(0.25)


def test_data_order_is_the_distributed_sampler_order():
    single = DataOrder(5, seed=3)
    epoch0 = [single.index(0, i) for i in range(single.steps_per_epoch)]
    assert sorted(epoch0) == list(range(5))
    assert epoch0 != [single.index(1, i) for i in range(5)]  # reshuffled per epoch
    ranks = [DataOrder(5, seed=3, rank=r, world=2) for r in range(2)]
    assert all(o.steps_per_epoch == 3 for o in ranks)
    seen = [o.index(0, i) for o in ranks for i in range(3)]
    assert sorted(set(seen)) == list(range(5)) and len(seen) == 6  # one padded duplicate, as released
    assert DataOrder(5, seed=3).index(2, 1) == DataOrder(5, seed=3).index(2, 1)  # a pure function


def test_items_know_views_and_supervised_frames(cfg, reader):
    items = CacheItems(reader, "train", task="avs", training=True, views="random", seed=1)
    by_subset = {}
    for i in range(len(items)):
        item = items.item(i, epoch=0)
        by_subset.setdefault(item.subset, item)
        assert item.view == choose_view("random", 2, 1, 0, i) and item.masks.dtype == torch.bool
        assert item.log_mel.shape == (item.n_frames, 2, 96, 64) and item.pyramid[2].shape[0] == item.n_frames
    assert by_subset["v1s"].supervised == [0] and by_subset["v1s"].labelled.tolist() == [True] + [False] * 4
    assert by_subset["v1m"].supervised == list(range(5))
    assert {items.item(0, e).view for e in range(8)} == {0, 1}  # both cached views get used
    assert CacheItems(reader, "train", training=True, views="cycle").item(0, 3).view == 1
    evaluation = CacheItems(reader, "test")
    assert evaluation.item(0).view == 0 and evaluation.item(0).supervised == []
    only = CacheItems(reader, "train", subsets=["v1m"])
    assert {only.item(i).subset for i in range(len(only))} == {"v1m"}
    with pytest.raises(ValueError, match="no avs items for split 'nope'"):
        CacheItems(reader, "nope")


def test_find_unused_decision_is_explained():
    base = tiny_config()
    on, why = needs_find_unused(base.model_copy(update={"loss": base.loss.model_copy(
        update={"audiocon": base.loss.audiocon.model_copy(update={"mode": "off"})})}))
    assert on and "contrastive loss off" in why
    official = tiny_config("loss.audiocon.mode=official")
    assert needs_find_unused(official) == (False, "every trainable parameter gets a gradient on every step")
    assert needs_find_unused(tiny_config("loss.audiocon.mode=paper"))[0] is False
    assert needs_find_unused(tiny_config("loss.audiocon.mode=official", "model.fuser.sparse_prompts=false"))[0]


class ListLogger:
    def __init__(self):
        self.metrics, self.tags = [], {}

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags):
        self.tags.update(tags)


def test_training_lowers_the_loss_and_writes_checkpoints(tmp_path, cfg, reader):
    logger = ListLogger()
    long = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 4, "log_every_steps": 3})})
    result = train(long, training_data(long, reader), tmp_path, logger=logger)
    assert result.steps == result.total_steps == 4 * 6 and not result.interrupted
    losses = [e["epoch/train_total"] for e in result.epochs]
    assert losses[-1] < losses[0], losses
    # poly schedule per iteration, logged after each window
    for step, metrics in logger.metrics:
        if "train/lr" in metrics:
            assert metrics["train/lr"] == pytest.approx(1e-3 * (1 - step / 24) ** 0.9, abs=1e-12)
    assert [e["select/best_J"] for e in result.epochs][-1] == result.best_metric
    best = load_fuser_checkpoint(result.best_checkpoint)
    assert best.extra["step"] == result.best_step and best.extra["metric"] == pytest.approx(result.best_metric)
    assert best.extra["selection"] == "val/auralsam2_released/iou_select/J" and "config_yaml" in best.extra
    state = torch.load(result.last_checkpoint, weights_only=True)
    assert state["progress"]["step"] == 24 and state["progress"]["finished"]
    assert all(not k.startswith("sam2.") for k in state["trainable"])
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "epoch" in x] == [6, 12, 18, 24]


def test_selection_on_test_is_loud(tmp_path, reader):
    cfg = tiny_config("train.select_on=test", "train.max_steps=2", "train.epochs=1")
    logger = ListLogger()
    with pytest.warns(UserWarning, match="TEST split"):
        result = train(cfg, training_data(cfg, reader), tmp_path, logger=logger)
    assert logger.tags["selection_split"] == "test" and result.selection.startswith("test/")
    assert math.isfinite(result.best_metric)


def test_refavs_expressions_train_and_null_only_selection_keeps_the_last(tmp_path):
    cfg = tiny_config("train.max_steps=3", "train.epochs=1", dataset="refavs")
    reader = open_reader(cfg)
    data = training_data(cfg, reader)
    flags = data.train.null_flags()
    assert any(flags) and not all(flags)
    item = data.train.item(flags.index(True))
    assert item.is_null and not item.masks.any() and item.supervised == list(range(item.n_frames))
    assert item.text.shape == (25, 32) and item.expression_uid == item.key
    result = train(cfg, data, tmp_path)
    assert result.steps == 3 and result.best_checkpoint is not None


def test_cudnn_attention_is_excluded_unless_asked():
    """cuDNN's SDPA backward put NaN into the decoder's gradients on an H100 (bench/gpu_demo.py), so
    the runtime excludes that backend by default and allows it only when the config says so."""
    from auralsam2.config import TrainConfig
    from auralsam2.engine.runtime import setup_runtime

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        setup_runtime(TrainConfig(device="cpu"))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        setup_runtime(TrainConfig(device="cpu", cudnn_attention=True))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
