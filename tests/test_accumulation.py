"""Many clips per optimizer step (issue 15): `train.clips_per_step` N and `train.accumulate_steps` K.

One optimizer step over the same items gives the same weights however it is split into N x K, the
data order and the random streams do not depend on the split, and a run killed in the middle of
an accumulation resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from auralsam2.engine import DataOrder, train
from feature_cache.dataset import open_reader, training_data
from tests.train_fixtures import tiny_config


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.named_parameters() if v.requires_grad}


def _one_step(tmp_path, dataset: str, n: int, k: int, *extra: str):
    # fp32 on CPU, dropout off; AudioCon sampling draws from the loss generator per clip. Adam's first
    # step is lr * g / (|g| + eps): with the default eps (1e-8) the float noise of a batched forward
    # (~1e-7 of the gradient) flips the sign of parameters whose gradient is ~0 (the 1-D blocks'
    # query biases: a softmax is nearly blind to them) and moves them by lr; eps = 1e-4 keeps the
    # step a smooth function of the gradient, so the weights compare the gradients
    cfg = tiny_config("train.deterministic=true", "model.fuser.dropout=0", "train.max_steps=1", "train.epochs=1",
                      f"train.clips_per_step={n}", f"train.accumulate_steps={k}", "optim.lr=1e-2",
                      "optim.eps=1e-4", *extra, dataset=dataset)
    return train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / f"{dataset}-{n}x{k}")


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |b| over all trainable weights together."""
    assert a.keys() == b.keys()
    flat_a, flat_b = (torch.cat([w[key].flatten() for key in sorted(w)]) for w in (a, b))
    return float((flat_a - flat_b).norm() / flat_b.norm())


@pytest.mark.parametrize("dataset,audiocon", [("avss", "paper"), ("refavs", "official")])
def test_one_step_is_the_same_for_every_split_of_its_clips(tmp_path, dataset, audiocon):
    extra = (f"loss.audiocon.mode={audiocon}",)
    splits = {(n, k): _weights(_one_step(tmp_path, dataset, n, k, *extra)) for n, k in ((4, 1), (1, 4), (2, 2))}
    reference = splits[(4, 1)]
    for split, weights in splits.items():
        assert _relative_difference(weights, reference) < 1e-5, split
    # ... and it is a step over 4 clips, not over the first one: one clip alone moves the weights elsewhere
    single = _weights(_one_step(tmp_path, dataset, 1, 1, *extra))
    assert _relative_difference(single, reference) > 1e-3


def test_the_data_order_does_not_depend_on_the_split():
    flat = DataOrder(7, seed=5, items_per_step=1)
    sequence = [flat.index(e, p) for e in range(2) for p in range(flat.items_per_epoch)]
    for per_step in (2, 3, 4, 7, 9):
        order = DataOrder(7, seed=5, items_per_step=per_step)
        assert order.steps_per_epoch == -(-7 // per_step)  # the epoch's last step takes what is left
        grouped = [i for e in range(2) for s in range(order.steps_per_epoch) for i in order.step_items(e, s)]
        assert grouped == sequence, per_step


class _KilledMidStep(Exception):
    pass


@pytest.mark.parametrize("prefetch", ["off", "on"])
def test_a_run_killed_mid_accumulation_resumes_to_the_same_weights(tmp_path, prefetch):
    overrides = ("train.deterministic=true", "data.views=random", "model.fuser.dropout=0.1",
                 "loss.audiocon.mode=paper", "train.epochs=2", "train.clips_per_step=2", "train.accumulate_steps=2",
                 "train.checkpoint_every_steps=1", f"train.prefetch={prefetch}")
    cfg = tiny_config(*overrides)
    full = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "full")
    assert full.steps == 4  # 6 training clips, 4 per step: steps of 4 and 2 clips per epoch

    data = training_data(cfg, open_reader(cfg))
    item, fetched = data.train.item, []

    def dies_in_step_3(index, epoch):  # the process dies at the 3rd clip of step 3 (epoch 1, step 0)
        fetched.append(index)
        if len(fetched) == 6 + 3:
            raise _KilledMidStep
        return item(index, epoch)

    data.train.item = dies_in_step_3
    with pytest.raises(_KilledMidStep):
        train(cfg, data, tmp_path / "killed")
    assert torch.load(tmp_path / "killed" / "last.ckpt", weights_only=True)["progress"]["step"] == 2
    resumed = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "killed", resume=True)
    assert resumed.steps == 4
    a, b = (torch.load(tmp_path / run / "last.ckpt", weights_only=True) for run in ("full", "killed"))
    for key in a["trainable"]:
        assert torch.equal(a["trainable"][key], b["trainable"][key]), key
    assert (tmp_path / "full" / "history.jsonl").read_text() == (tmp_path / "killed" / "history.jsonl").read_text()


def test_prefetching_the_next_step_changes_nothing(tmp_path):
    """The background reader (on by default on a GPU) hands over the same items: bit-identical runs,
    validation included (it waits for the background read before reading the same cache)."""
    runs = {}
    for prefetch in ("off", "on"):
        cfg = tiny_config("train.deterministic=true", "data.views=random", "train.epochs=2", "train.clips_per_step=2",
                          f"train.prefetch={prefetch}", "loss.audiocon.mode=paper")
        runs[prefetch] = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / prefetch)
    a, b = (torch.load(tmp_path / p / "last.ckpt", weights_only=True) for p in ("off", "on"))
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    assert (tmp_path / "off" / "history.jsonl").read_text() == (tmp_path / "on" / "history.jsonl").read_text()
    assert runs["on"].data_wait_s >= 0 and runs["off"].data_wait_s > 0


def test_checkpointing_the_fuser_blocks_changes_no_weight(tmp_path):
    """`train.checkpoint_fuser_blocks` recomputes each visual block in backward (its forward runs
    again there), replaying its dropout's random draws: two clips per micro-step, dropout on,
    bit-identical weights and history. (What it saves: `python -m bench.activation_memory
    --checkpoint-fuser-blocks`.)"""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from auralsam2.fuser.blocks import Block

    block_forwards = {}
    for on in ("false", "true"):
        cfg = tiny_config("train.deterministic=true", "data.views=random", "train.max_steps=3", "train.clips_per_step=2",
                          "model.fuser.dropout=0.1", "loss.audiocon.mode=paper", f"train.checkpoint_fuser_blocks={on}")
        block_forwards[on] = 0

        def count(module, inputs, on=on):
            block_forwards[on] += isinstance(module, Block)

        hook = register_module_forward_pre_hook(count)
        try:
            train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / on)
        finally:
            hook.remove()
    # 3 steps x 2 clips x 3 levels' blocks more: the recomputation (validation runs without grad either way)
    assert block_forwards["true"] == block_forwards["false"] + 3 * 2 * 3
    a, b = (torch.load(tmp_path / on / "last.ckpt", weights_only=True) for on in ("false", "true"))
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in a["trainable"])
    assert (tmp_path / "false" / "history.jsonl").read_text() == (tmp_path / "true" / "history.jsonl").read_text()


class _GraphCounter:
    """A RunLogger that notes how many graphs torch.compile has made by each logged step."""

    def __init__(self) -> None:
        self.graphs: dict[int, int] = {}
        self.tags: dict[str, str] = {}

    def log_metrics(self, metrics, step: int) -> None:
        from torch._dynamo.utils import counters

        self.graphs[step] = counters["stats"]["unique_graphs"]

    def set_tags(self, tags) -> None:
        self.tags.update(tags)


@pytest.mark.slow  # 35 s: make test-all
def test_the_compiled_path_trains_like_eager_and_stops_recompiling(tmp_path):
    """`train.compile: all` (aot_eager here: the graphs are traced, forward and backward, without
    code generation) gives eager's weights; once every shape bucket (clip length x clips of that
    length in a micro-step) has been seen, in the first epoch, the second epoch compiles nothing."""
    from torch._dynamo.utils import counters

    # AudioCon off: its hard samples are the mispredicted pixels, a discrete choice that float noise
    # flips; eps: see _one_step
    common = ("train.deterministic=true", "model.fuser.dropout=0", "train.epochs=2", "train.clips_per_step=2",
              "loss.audiocon.mode=off", "data.val_split=null", "train.log_every_steps=1", "optim.eps=1e-4")
    eager_cfg = tiny_config(*common)
    eager = train(eager_cfg, training_data(eager_cfg, open_reader(eager_cfg)), tmp_path / "eager")
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config(*common, "train.compile=all", "train.compile_backend=aot_eager")
    log = _GraphCounter()
    try:
        compiled = train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "compiled", logger=log)
    finally:
        torch._dynamo.reset()
    assert log.tags["compiled"].startswith("fuser,audio_encoder,sam2.memory_attention")
    per_epoch = compiled.total_steps // 2
    assert log.graphs[per_epoch] > 0 and log.graphs[compiled.total_steps] == log.graphs[per_epoch], log.graphs
    # 6 steps in: 5e-5 measured (a pixel of a memory mask or a best-mask argmax may flip under the
    # graphs' float order); a wrong graph (a lost gradient, a stale buffer) is off by 1e-2 and more
    assert _relative_difference(_weights(compiled), _weights(eager)) < 2e-4
