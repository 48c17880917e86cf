"""DDP with 2 CPU processes on gloo: training keeps the ranks in sync, and evaluation scores every
item exactly once (no DistributedSampler padding) with the same aggregates as one process."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.train_fixtures import out_of_memory_injected, tiny_cache, tiny_config

OVERRIDES = ("train.max_steps=2", "train.epochs=1", "loss.audiocon.mode=official")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate(cfg, checkpoint: Path, sink=None):
    from auralsam2.engine import build_model, load_fuser_weights
    from auralsam2.evaluation import evaluate_source
    from feature_cache.dataset import eval_items, open_reader

    reader = open_reader(cfg)
    model = build_model(cfg.model, reader.model)
    load_fuser_weights(model, checkpoint)
    return evaluate_source(model, eval_items(cfg, reader, "test"), "test", task="avs", protocols=cfg.eval.protocols,
                           decodings=["iou_select", "first"], rows_sink=sink, run_id="ddp", avss_semantic=True)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from auralsam2.engine import train
    from feature_cache.dataset import open_reader, training_data

    out_dir = Path(out)
    cfg = tiny_config(*OVERRIDES)
    # one process group for training and evaluation (train() uses a group it finds and leaves it open)
    torch.distributed.init_process_group("gloo")
    result = train(cfg, training_data(cfg, open_reader(cfg)), out_dir / "run")
    state = torch.load(out_dir / "run" / "last.ckpt", weights_only=True) if rank == 0 else None
    keys: list[str] = []
    evaluated = _evaluate(cfg, out_dir / "run" / "best.ckpt",
                          sink=lambda mode, frames, clips: keys.extend(r["clip_key"] for r in clips
                                                                        if r["protocol"] == "auralsam2_released"
                                                                        and mode == "iou_select"))
    # parameters only: BatchNorm running stats stay per rank between forwards (no SyncBN, as released)
    torch.save({k: v.detach().clone() for k, v in result.model.named_parameters() if v.requires_grad},
               out_dir / f"weights{rank}.pt")
    (out_dir / f"rank{rank}.json").write_text(json.dumps({
        "steps": result.steps, "keys": keys, "metrics": evaluated.metrics, "semantic": evaluated.semantic,
        "n_items": evaluated.n_items, "last_step": None if state is None else state["progress"]["step"]}))
    torch.distributed.destroy_process_group()


def test_two_gloo_processes_train_in_sync_and_evaluate_each_item_once(tmp_path):
    tiny_cache("avss")  # build the shared cache before the workers start
    context = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a collective mismatch would hang forever: fail instead
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 DDP processes did not finish within 240 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["steps"] for r in ranks] == [2, 2] and ranks[0]["last_step"] == 2
    # DDP averaged the gradients: both ranks end with the same weights
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in range(2))
    assert w0 and all(torch.equal(w0[k], w1[k]) for k in w0)
    # every test clip scored exactly once across the ranks (3 clips: 2 + 1, no padded duplicate)
    cfg = tiny_config(*OVERRIDES)
    from feature_cache.dataset import eval_items, open_reader

    all_keys = eval_items(cfg, open_reader(cfg), "test").item_keys()
    scored = ranks[0]["keys"] + ranks[1]["keys"]
    assert sorted(scored) == sorted(all_keys) and len(set(scored)) == len(scored)
    assert ranks[0]["keys"] and ranks[1]["keys"]
    # the merged aggregates equal a single-process evaluation of the same checkpoint
    single = _evaluate(cfg, tmp_path / "run" / "best.ckpt")
    for r in ranks:
        assert r["n_items"] == single.n_items == len(all_keys)
        for mode, per_protocol in single.metrics.items():
            for protocol, values in per_protocol.items():
                for metric, value in values.items():
                    assert r["metrics"][mode][protocol][metric] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert r["semantic"] == pytest.approx(single.semantic)


ACCUMULATING = ("train.max_steps=1", "train.epochs=1", "loss.audiocon.mode=off", "model.fuser.dropout=0",
                "data.views=first", "optim.lr=1e-2", "optim.eps=1e-4")  # eps: see tests/test_accumulation.py


def _accumulating_worker(rank: int, world: int, port: int, out: str, n: int, k: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from auralsam2.engine import train
    from feature_cache.dataset import open_reader, training_data

    cfg = tiny_config(*ACCUMULATING, f"train.clips_per_step={n}", f"train.accumulate_steps={k}")
    result = train(cfg, training_data(cfg, open_reader(cfg)), Path(out) / "run")
    torch.save({k: v.detach().clone() for k, v in result.model.named_parameters() if v.requires_grad},
               Path(out) / f"weights{rank}.pt")


@pytest.mark.parametrize("n,k", [(1, 2), pytest.param(2, 1, marks=pytest.mark.slow)])
def test_two_gloo_processes_accumulating_take_the_step_of_one_process_over_the_same_clips(tmp_path, n, k):
    """2 ranks x (N clips x K micro-steps, all-reduced once, at the step's last backward) = 1 process
    with 2 clips x 2 micro-steps: the same 4 clips (the sampler's first 4), the same mean gradient."""
    from auralsam2.engine import train
    from feature_cache.dataset import open_reader, training_data

    tiny_cache("avss")
    context = mp.start_processes(_accumulating_worker, args=(2, _free_port(), str(tmp_path), n, k), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 DDP processes did not finish within 240 s")
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in range(2))
    assert w0 and all(torch.equal(w0[k], w1[k]) for k in w0)
    cfg = tiny_config(*ACCUMULATING, "train.clips_per_step=2", "train.accumulate_steps=2")
    single = {k: v.detach() for k, v in train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "single")
              .model.named_parameters() if v.requires_grad}
    cfg = tiny_config(*ACCUMULATING)
    one_clip = {k: v.detach() for k, v in train(cfg, training_data(cfg, open_reader(cfg)), tmp_path / "one")
                .model.named_parameters() if v.requires_grad}
    from tests.test_accumulation import _relative_difference

    assert _relative_difference(w0, single) < 1e-5
    assert _relative_difference(one_clip, single) > 1e-3


def test_a_torchrun_run_out_of_memory_says_so_in_one_line_and_its_resume_finishes(tmp_path):
    """`auralsam2 train --nproc-per-node 2` (torchrun, gloo) with a fault injected into rank 1: the
    command prints one `error:` line naming the rank and the resume command (with its process
    count), not the ranks' and the launcher's tracebacks; that command finishes the run. (That the
    split leaves the weights alone under DDP is the accumulation test's above.)"""
    import re
    import subprocess
    import sys

    from auralsam2.config import TINY_MODEL_OVERRIDES
    from auralsam2.paths import data_home

    sets = [f"data.cache={tiny_cache('avss')}", "experiment=ddp_cli", *TINY_MODEL_OVERRIDES, "train.epochs=2",
            "train.progress=false", "eval.progress=false", "train.threads=1", "train.clips_per_step=2",
            "train.checkpoint_every_steps=1", "train.deterministic=true"]
    args = [a for s in sets for a in ("--set", s)]

    # rank 1's second micro-step runs out of device memory
    env = out_of_memory_injected(tmp_path, "len(calls) >= 2", only_here='os.environ.get("RANK") == "1"')
    failed = subprocess.run([sys.executable, "-m", "flows", "train", *args, "--set", "run_name=oom",
                             "--nproc-per-node", "2"], capture_output=True, text=True, timeout=600, env=env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    run_dir = data_home() / "runs" / "ddp_cli" / "oom"
    assert error.startswith("error: rank 1 of 2: out of memory on cpu in training step 2: a micro-step of 2 clips")
    command = re.search(r"`auralsam2 (train \S+ --resume --nproc-per-node 2 --set \S+ --set \S+)`", error)
    assert command.group(1) == (f"train {run_dir / 'config.yaml'} --resume --nproc-per-node 2 --set "
                                "train.clips_per_step=1 --set train.accumulate_steps=2")
    assert (run_dir / "last.ckpt").is_file() and json.loads((run_dir / "run.json").read_text())["status"] == "FAILED"

    resumed = subprocess.run([sys.executable, "-m", "flows", *command.group(1).split()], capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0 and "training finished after 4/4 steps" in resumed.stdout, resumed.stderr[-3000:]
    assert not list(run_dir.glob("error.rank*.txt"))  # a new launch clears the last one's
    assert json.loads((run_dir / "run.json").read_text())["status"] == "FINISHED"
