"""The bookkeeping of a training run, in small named pieces so the loop shows only the step:
loss accumulators, the resumable progress, the run folder's files (`last.ckpt`, `best.ckpt`,
`history.jsonl`) and their writers and readers.

`last.ckpt` holds everything needed to continue exactly: trainable weights, optimizer, scheduler,
every rank's RNG states and the progress (the data order is a function of (seed, epoch), so the
step counter locates it). `best.ckpt` is our fuser format (`auralsam2.checkpoints.fuser`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from auralsam2.checkpoints import CheckpointError, read_weights, save_fuser_checkpoint, upgrade_fuser_state
from auralsam2.config import ExperimentConfig, config_to_yaml
from auralsam2.engine.runtime import Runtime, gather, rng_state, set_rng_state
from auralsam2.model import AuralSAM2
from auralsam2.utils.files import atomic_torch_save, atomic_write_text

__all__ = ["LOSS_TERMS", "STATE_FORMAT", "LossMeter", "Progress", "RunFiles", "RunLogger", "load_training_state",
           "save_best", "save_training_state"]

STATE_FORMAT = "auralsam2-train-state/1"
LOSS_TERMS = ("total", "seg", "focal", "dice", "iou", "object_score", "audiocon", "mask", "text")


class RunLogger(Protocol):
    """Where metrics go (rank 0 only). `flows.tracking.MlflowLogger` batches them to MLflow."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


@dataclass
class LossMeter:
    """Running sums of the loss terms over a logging window or an epoch."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_TERMS, 0.0))
    count: int = 0

    def add(self, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] += v
        self.count += 1

    def totals(self, rt: Runtime) -> tuple[dict[str, float], int]:
        """Sums and count over all ranks (one all-reduce under DDP), the meter unchanged."""
        keys = list(self.sums)
        values = torch.tensor([self.sums[k] for k in keys] + [float(self.count)], dtype=torch.float64)
        if rt.world > 1:
            import torch.distributed as dist

            dist.all_reduce(values)
        return {k: values[i].item() for i, k in enumerate(keys)}, int(values[-1].item())

    def pop_means(self, rt: Runtime) -> dict[str, float]:
        """Means since the last pop, over all ranks; then start again."""
        sums, count = self.totals(rt)
        self.sums, self.count = dict.fromkeys(LOSS_TERMS, 0.0), 0
        return {k: v / max(count, 1) for k, v in sums.items()}

    def state(self, rt: Runtime) -> dict[str, Any]:
        """What `last.ckpt` keeps: the all-rank totals (restored on rank 0, zeros elsewhere), so the
        means a resumed run logs equal those of an uninterrupted one."""
        sums, count = self.totals(rt)
        return {"sums": sums, "count": count}

    @classmethod
    def restore(cls, saved: Mapping[str, Any] | None, rt: Runtime) -> LossMeter:
        if not saved or not rt.main:
            return cls()
        # a state written before a term existed (e.g. "text") resumes with that term at 0
        return cls({**dict.fromkeys(LOSS_TERMS, 0.0), **saved["sums"]}, int(saved["count"]))


@dataclass
class Progress:
    """Where a run stands: optimizer steps done, the best selection metric so far, the epoch records
    and the current epoch's loss sums. Restored from `last.ckpt` on resume."""

    step: int = 0
    best_metric: float = -math.inf
    best_step: int = -1
    epochs: list[dict[str, float]] = field(default_factory=list)
    epoch_losses: LossMeter = field(default_factory=LossMeter)
    window: LossMeter = field(default_factory=LossMeter)  # the loss terms since the last train/* log line


class RunFiles:
    """The run folder: its checkpoint paths and the metric log (tracker + `history.jsonl`, rank 0)."""

    def __init__(self, run_dir: str | Path, rt: Runtime, logger: RunLogger | None) -> None:
        self.dir, self.rt, self.logger = Path(run_dir), rt, logger
        self.last, self.best, self.history = self.dir / "last.ckpt", self.dir / "best.ckpt", self.dir / "history.jsonl"
        if rt.main:
            self.dir.mkdir(parents=True, exist_ok=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Rank 0: to the tracker and to `history.jsonl` (curves without a tracker)."""
        if not self.rt.main:
            return
        clean = {k: float(v) for k, v in metrics.items()
                 if k != "step" and isinstance(v, int | float) and math.isfinite(v)}
        if self.logger is not None:
            self.logger.log_metrics(clean, step)
        with open(self.history, "a") as fh:
            fh.write(json.dumps({"step": step, **clean}) + "\n")

    def tag(self, tags: Mapping[str, str]) -> None:
        if self.rt.main and self.logger is not None and tags:
            self.logger.set_tags(tags)

    def truncate_history(self, step: int) -> None:
        """Drop history lines logged after the checkpoint at `step` (0: a fresh start): a killed process
        logged them, and they are recomputed identically."""
        if self.rt.main and self.history.is_file():
            lines = [line for line in self.history.read_text().splitlines() if line]
            if lines and not _parses(lines[-1]):
                lines.pop()  # torn by a kill mid-write: it came after the checkpoint
            kept = [line for line in lines if json.loads(line)["step"] <= step]
            atomic_write_text(self.history, "".join(line + "\n" for line in kept))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _trainable_state(model: AuralSAM2) -> dict[str, Tensor]:
    """Fuser and audio-encoder tensors (parameters and buffers); SAM2 is frozen and comes from its .pt."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("sam2.")}


def save_training_state(path: Path, cfg: ExperimentConfig, rt: Runtime, model: AuralSAM2,
                        optimizer: torch.optim.Optimizer, scheduler: Any, generator: torch.Generator,
                        progress: Progress, total_steps: int, finished: bool) -> None:
    """`last.ckpt` (all ranks gather their RNG states; rank 0 writes, atomically)."""
    rng = gather(rng_state(generator, rt.device), rt)
    epoch_losses, window = progress.epoch_losses.state(rt), progress.window.state(rt)
    if not rt.main:
        return
    atomic_torch_save({
        "format": STATE_FORMAT, "config_yaml": config_to_yaml(cfg), "world_size": rt.world,
        "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng, "epochs": progress.epochs,
        "progress": {"step": progress.step, "total_steps": total_steps, "best_metric": progress.best_metric,
                     "best_step": progress.best_step, "epoch_losses": epoch_losses, "window": window,
                     "finished": finished},
    }, path)


def load_training_state(path: Path, rt: Runtime, model: AuralSAM2, optimizer: torch.optim.Optimizer,
                        scheduler: Any, generator: torch.Generator) -> Progress:
    """Restore weights, optimizer, scheduler and this rank's RNG from `last.ckpt`; returns the progress."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist; start the run without --resume")
    state = read_weights(path, "training state")
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        got = state.get("format") if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{path}: not a training state ({got!r})")
    missing, unexpected = model.load_state_dict(upgrade_fuser_state(state["trainable"], "fuser."), strict=False)
    if unexpected or any(not k.startswith("sam2.") for k in missing):
        raise CheckpointError(f"{path}: weights do not match the model (unexpected {unexpected[:5]}, "
                              f"missing {[k for k in missing if not k.startswith('sam2.')][:5]}); resume with "
                              "the run's own config (its config.yaml)")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    saved = state["progress"]
    if "epoch_losses" in saved:
        epoch_losses = LossMeter.restore(saved["epoch_losses"], rt)
    else:  # a state written before the meters were kept as all-rank totals: rank 0's sums
        epoch_losses = LossMeter(dict(saved["epoch_sum"]), saved["epoch_count"])
    progress = Progress(saved["step"], saved["best_metric"], saved["best_step"], list(state["epochs"]),
                        epoch_losses, LossMeter.restore(saved.get("window"), rt))
    if state["world_size"] == rt.world:
        set_rng_state(state["rng"][rt.rank], generator, rt.device)
    else:
        warnings.warn(f"resuming a {state['world_size']}-process run on {rt.world}: RNG streams are re-seeded, "
                      "so the continuation is not bit-identical", stacklevel=3)
    return progress


def save_best(path: Path, model: AuralSAM2, cfg: ExperimentConfig, step: int, epoch: int, metric: float,
              split: str | None, extra: Mapping[str, Any] | None) -> None:
    """`best.ckpt`: our fuser checkpoint, with the config and what selected it."""
    save_fuser_checkpoint(path, model.fuser, model.audio_encoder, extra={
        "config_yaml": config_to_yaml(cfg), "step": step, "epoch": epoch, "metric": metric,
        "selection": f"{split}/{cfg.train.select_protocol}/{cfg.train.select_decoding}/J" if split else "last",
        **dict(extra or {}),
    })
