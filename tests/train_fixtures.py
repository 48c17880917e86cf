"""Shared, built-once data for the training/evaluation tests: a tiny synthetic world, its ingest
folders and feature caches made with the `tiny` SAM2, and tiny experiment configs.

Everything is built under the test session's data folder on first use and reused by every test
module (the builders are idempotent and check for a complete cache), so the cost is paid once per
pytest session: about 15-25 s on a 2-core machine.
"""

from __future__ import annotations

import threading
from pathlib import Path

from auralsam2.config import TINY_MODEL_OVERRIDES, ExperimentConfig, load_config
from auralsam2.paths import data_home

_LOCK = threading.RLock()

TINY_MODEL = list(TINY_MODEL_OVERRIDES)
QUIET = ["train.progress=false", "eval.progress=false", "train.threads=1"]


def _world() -> Path:
    from data_specs.synth import SynthConfig, generate_world

    world = data_home() / "train-tests" / "world"
    if not (world / "world.json").is_file():
        generate_world(world, SynthConfig(clips=4, size=64))
    return world


def _ingest(dataset: str) -> Path:
    from data_specs.ingest import PALETTE_MASKS, finalize, prepare
    from data_specs.shards import write_shard

    out = data_home() / "train-tests" / "ingest" / dataset
    if not (out / "manifest.parquet").is_file():
        folder = {"avss": "AVSBench", "refavs": "REFAVS"}[dataset]
        plan = prepare(dataset, _world() / folder, out)
        results = [write_shard(p, Path(plan.out) / "shards", palette_masks=dataset in PALETTE_MASKS)
                   for p in plan.shards]
        finalize(plan, results)
    return out


def tiny_text_encoder_dir() -> Path:
    """The tests' text encoder as a `save_pretrained` folder (hidden 32): it loads through the code
    the released distilroberta-base takes (built on first call)."""
    from auralsam2.pretrain.text import write_tiny_text_encoder
    from data_specs.synth_plans import expression_corpus

    out = data_home() / "train-tests" / "text-encoder"
    with _LOCK:
        if not (out / "config.json").is_file():
            write_tiny_text_encoder(out, expression_corpus(), hidden_size=32)
    return out


def tiny_cache(dataset: str = "avss", sam2_config: str = "tiny", image_size: int | None = None,
               views: int = 2) -> Path:
    """A complete feature cache of the tiny world (built on first call; thread-safe, idempotent)."""
    from feature_cache.build import build_cache, read_cache_json
    from feature_cache.schema import CacheSettings

    name = f"{dataset}-{sam2_config}-{image_size or 'default'}-v{views}"
    out = data_home() / "train-tests" / "cache" / name
    with _LOCK:
        info = read_cache_json(out)
        if info is None or info.get("status") != "complete":
            settings = CacheSettings(sam2_config=sam2_config, image_size=image_size, views=views,
                                     text_encoder=str(tiny_text_encoder_dir()) if dataset == "refavs" else None, device="cpu")
            build_cache(_ingest(dataset), out, settings, progress=False)
    return out


def tiny_config(*overrides: str, dataset: str = "avss", experiment: str = "tests") -> ExperimentConfig:
    """An experiment config on the tiny cache with the tiny model; `overrides` as `--set` items."""
    cache = tiny_cache(dataset)
    base = [f"data.cache={cache}", f"data.dataset={dataset}", f"experiment={experiment}", *TINY_MODEL, *QUIET,
            "train.epochs=2", "train.log_every_steps=2", "optim.lr=1e-3"]
    if dataset == "refavs":
        base += ["model.fuser.variant=refavs", f"model.text_encoder={tiny_text_encoder_dir()}", "eval.splits=[test_s,test_n]",
                 "eval.protocols=[refavs_official,auralsam2_released]"]
    return load_config(None, [*base, *overrides])


_OUT_OF_MEMORY_SITECUSTOMIZE = """
import os
if {only_here}:
    import torch
    from auralsam2.engine import TrainingStep
    forward, calls = TrainingStep.forward, []
    def out_of_memory(self, items, generator):
        calls.append(len(items))
        if {when}:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(self, items, generator)
    TrainingStep.forward = out_of_memory
"""


def out_of_memory_injected(folder: Path, when: str, only_here: str = "True") -> dict[str, str]:
    """The environment of a process (and every process it starts) whose training micro-steps run
    out of device memory when `when` holds: a `sitecustomize` in `folder`, first on PYTHONPATH.
    `when` reads `items` (the micro-step's clips) and `calls` (clip counts of the forwards so far,
    this one included); `only_here` (reads `os.environ`) picks the processes, e.g. one torchrun rank."""
    import os

    (folder / "sitecustomize.py").write_text(_OUT_OF_MEMORY_SITECUSTOMIZE.format(when=when, only_here=only_here))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
