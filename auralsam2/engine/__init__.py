"""The training engine: `loop.train` reads top to bottom; the rest is its plumbing.

* `loop`: `train` (config -> data -> model -> optimizer -> loop -> validation -> checkpoints);
* `data`: `TrainingData` and the released `DistributedSampler` order (`DataOrder`);
* `build`: the trainable model from a config (`build_model`, `load_fuser_weights`);
* `optim`: AdamW with the released parameter groups and poly schedule;
* `state`: loss accumulators, progress, `last.ckpt` / `best.ckpt` / `history.jsonl`;
* `runtime`: the process group and DDP, the device, seeding and RNG states.
"""

from auralsam2.engine.build import build_model, compile_model, load_fuser_weights
from auralsam2.engine.data import DataOrder, StepReader, TrainingData, item_to_device
from auralsam2.engine.loop import DeviceMemoryError, TrainingStep, TrainResult, train, validate
from auralsam2.engine.optim import make_optimizer, param_groups, poly_factor
from auralsam2.engine.runtime import Runtime, needs_find_unused, setup_runtime
from auralsam2.engine.state import LOSS_TERMS, STATE_FORMAT, RunLogger

__all__ = [
    "LOSS_TERMS",
    "STATE_FORMAT",
    "DataOrder",
    "DeviceMemoryError",
    "RunLogger",
    "Runtime",
    "StepReader",
    "TrainResult",
    "TrainingData",
    "TrainingStep",
    "build_model",
    "compile_model",
    "item_to_device",
    "load_fuser_weights",
    "make_optimizer",
    "needs_find_unused",
    "param_groups",
    "poly_factor",
    "setup_runtime",
    "train",
    "validate",
]
