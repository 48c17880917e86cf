"""Exact resume: a run interrupted mid-epoch and resumed from last.ckpt ends with bit-identical
weights, optimizer state and history to an uninterrupted run (deterministic CPU mode)."""

from __future__ import annotations

import pytest
import torch

from auralsam2.checkpoints import load_fuser_checkpoint
from auralsam2.engine import train
from feature_cache.dataset import open_reader, training_data
from tests.train_fixtures import tiny_config


def _run(tmp_path, name: str, *overrides: str, resume: bool = False):
    # random views (2 cached per clip), dropout on, paper AudioCon sampling: every RNG stream is used
    cfg = tiny_config("train.deterministic=true", "data.views=random", "model.fuser.dropout=0.1",
                      "loss.audiocon.mode=paper", "train.epochs=2", *overrides)
    return train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / name, resume=resume)


def _state(path):
    return torch.load(path / "last.ckpt", weights_only=True)


def _assert_same(a, b):
    assert a["trainable"].keys() == b["trainable"].keys()
    for key in a["trainable"]:
        assert torch.equal(a["trainable"][key], b["trainable"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["progress"]["best_metric"] == b["progress"]["best_metric"]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    full = _run(tmp_path, "full")
    assert full.steps == 12 and not full.interrupted
    # stop after step 8 (mid epoch 2, no periodic checkpoint there): the hook writes last.ckpt
    cut = _run(tmp_path, "cut", "train.stop_after_steps=8")
    assert cut.interrupted and cut.steps == 8
    assert _state(tmp_path / "cut")["progress"]["step"] == 8
    resumed = _run(tmp_path, "cut", resume=True)
    assert resumed.steps == 12 and not resumed.interrupted
    _assert_same(_state(tmp_path / "full"), _state(tmp_path / "cut"))
    assert (tmp_path / "full" / "history.jsonl").read_text() == (tmp_path / "cut" / "history.jsonl").read_text()
    best_full, best_cut = (load_fuser_checkpoint(tmp_path / r / "best.ckpt") for r in ("full", "cut"))
    assert best_full.fingerprints == best_cut.fingerprints and best_full.extra["step"] == best_cut.extra["step"]


def test_resume_from_a_periodic_checkpoint_after_a_kill(tmp_path):
    """A kill loses the steps after the last checkpoint; they are recomputed identically."""
    full = _run(tmp_path, "full", "train.epochs=1")
    # checkpoint every 2 steps; "killed" at step 5: the hook saves there too, so copy the step-4 state
    # aside first by stopping at 4, then run on to 5 and put the step-4 checkpoint back (the kill)
    _run(tmp_path, "killed", "train.epochs=1", "train.checkpoint_every_steps=2", "train.stop_after_steps=4")
    saved = (tmp_path / "killed" / "last.ckpt").read_bytes()
    _run(tmp_path, "killed", "train.epochs=1", "train.checkpoint_every_steps=2", "train.stop_after_steps=5",
         resume=True)
    (tmp_path / "killed" / "last.ckpt").write_bytes(saved)
    resumed = _run(tmp_path, "killed", "train.epochs=1", "train.checkpoint_every_steps=2", resume=True)
    assert resumed.steps == full.steps == 6
    _assert_same(_state(tmp_path / "full"), _state(tmp_path / "killed"))
    assert (tmp_path / "full" / "history.jsonl").read_text() == (tmp_path / "killed" / "history.jsonl").read_text()


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="without --resume"):
        _run(tmp_path, "none", resume=True)


def test_a_training_state_written_before_a_loss_term_existed_resumes():
    """`last.ckpt` files from before the `text` term keep their sums; the new term starts at 0."""
    from auralsam2.engine.runtime import Runtime
    from auralsam2.engine.state import LOSS_TERMS, LossMeter

    rt = Runtime(rank=0, world=1, device=torch.device("cpu"), bf16=False)
    old = {"sums": {k: 1.0 for k in LOSS_TERMS if k != "text"}, "count": 2}
    meter = LossMeter.restore(old, rt)
    meter.add(dict.fromkeys(LOSS_TERMS, 1.0))
    means = meter.pop_means(rt)
    assert set(means) == set(LOSS_TERMS)
    assert means["total"] == pytest.approx(2 / 3) and means["text"] == pytest.approx(1 / 3)
