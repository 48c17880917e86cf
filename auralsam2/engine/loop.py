"""The training loop: config -> data -> model -> optimizer -> loop -> validation -> checkpoints.

Read `train` and its `_loop` top to bottom; they are the whole control flow (released
`trainer/train.py`, `main.py`):

* one item (an AVSBench clip, or one Ref-AVS expression) per GPU per step as released, or
  `clips_per_step` x `accumulate_steps` of them (the loss is the mean over the step's clips; each
  clip its own forward, memory and AudioCon sample; one all-reduce per step under DDP), its cached
  pyramid in the epoch's view; SAM2 frozen and in eval mode, tracking with memory through the stock
  modules; the fuser (and VGGish when it trains) learns; bf16 autocast around the forward on GPU only;
* AdamW with the released parameter groups and poly decay per iteration (`engine.optim`);
* validation on `val` by the configured protocol's J after every `validate_every_epochs` epochs and
  at the end; `best.ckpt` when it improves; `last.ckpt` after every epoch (and every
  `checkpoint_every_steps`), so `resume=True` continues exactly (`engine.state`); in deterministic
  CPU mode an interrupted and resumed run ends with bit-identical weights;
* DDP when launched by `torchrun` (`engine.runtime`); the training order is the released
  `DistributedSampler` (`engine.data.DataOrder`); evaluation scores every item exactly once.

The engine knows no orchestrator or tracker: data arrive as `TrainingData` (items from the feature
cache, built by `feature_cache.dataset`), metrics leave through an optional `RunLogger`
(`flows.tracking` implements it with MLflow).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from auralsam2.config import ExperimentConfig, TrainConfig
from auralsam2.engine.build import build_model, compile_model
from auralsam2.engine.data import DataOrder, StepReader, TrainingData
from auralsam2.engine.optim import make_optimizer
from auralsam2.engine.runtime import (
    Runtime,
    broadcast_buffers,
    finish_runtime,
    seed_everything,
    setup_runtime,
    wrap_ddp,
)
from auralsam2.engine.state import (
    LOSS_TERMS,
    Progress,
    RunFiles,
    RunLogger,
    load_training_state,
    save_best,
    save_training_state,
)
from auralsam2.engine.warmup import warm_up_mask_prompt
from auralsam2.evaluation import EvalResult, evaluate_source
from auralsam2.items import ClipItem
from auralsam2.model import AuralSAM2, clip_loss
from auralsam2.utils import stop

__all__ = ["DeviceMemoryError", "TrainResult", "train", "validate"]


@dataclass
class TrainResult:
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    total_steps: int
    interrupted: bool
    best_metric: float
    best_step: int
    selection: str
    epochs: list[dict[str, float]] = field(default_factory=list)
    model: AuralSAM2 | None = field(default=None, repr=False)  # the trained model (this rank's copy)
    data_wait_s: float = 0.0  # time the loop waited for items (the device idles meanwhile)


def train(
    cfg: ExperimentConfig,
    data: TrainingData,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    logger: RunLogger | None = None,
    checkpoint_extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `cfg` on `data`, writing `last.ckpt` / `best.ckpt` / `history.jsonl` to `run_dir`.

    `resume`: continue from `run_dir/last.ckpt` (same config and world size for an exact
    continuation). `checkpoint_extra`: plain values stored in `best.ckpt` (e.g. the MLflow run id).
    """
    # ---- config and runtime -----------------------------------------------------------------
    tc = cfg.train
    rt = setup_runtime(tc)
    run = RunFiles(run_dir, rt, logger)
    if tc.select_on == "test":
        warnings.warn("model selection on the TEST split (train.select_on: test), as the released code does: "
                      "the reported test numbers are optimistic; use val for honest numbers", stacklevel=2)
        run.tag({"selection_split": "test", "selection_warning": "selected on test (optimistic)"})

    # ---- data ---------------------------------------------------------------------------------
    per_step, per_process = tc.clips_per_step * tc.accumulate_steps, math.ceil(len(data.train) / rt.world)
    if per_step > per_process:
        raise ValueError(f"train.clips_per_step x train.accumulate_steps = {per_step} clips per step, but each of the "
                         f"{rt.world} process(es) has {per_process} training items; lower train.clips_per_step")
    order = DataOrder(len(data.train), tc.seed, rt.rank, rt.world, tc.clips_per_step * tc.accumulate_steps)
    steps_per_epoch = order.steps_per_epoch
    total_steps = tc.epochs * steps_per_epoch if tc.max_steps is None else min(tc.max_steps, tc.epochs * steps_per_epoch)

    # ---- model (same init on every rank; DDP would broadcast rank 0's anyway) -------------------
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, data.sam2).to(rt.device)
    model.fuser.checkpoint_blocks = tc.checkpoint_fuser_blocks
    compiled = compile_model(model, tc.compile, tc.compile_backend)
    if compiled:
        run.tag({"compiled": ",".join(compiled), "compile_backend": tc.compile_backend})
    seed_everything(tc.seed + rt.rank)
    loss_generator = torch.Generator().manual_seed(tc.seed + rt.rank)

    # ---- optimizer and poly schedule ------------------------------------------------------------
    optimizer, scheduler = make_optimizer(model, cfg.optim, total_steps)

    # ---- resume -------------------------------------------------------------------------------
    progress = Progress()
    if resume:
        progress = load_training_state(run.last, rt, model, optimizer, scheduler, loss_generator)
    run.truncate_history(progress.step)  # lines of a killed process after its checkpoint (or all: a fresh start)
    bar_name = cfg.run_name or cfg.experiment if tc.progress and rt.main else None  # progress bars: rank 0's
    if progress.step == 0 and tc.warms_up_mask_prompt:  # a resumed run has its warmed-up weights
        warmup = warm_up_mask_prompt(model, data.train, cfg, rt.device, bar_name)
        if warmup:
            run.log({"warmup/mask_prompt_first": warmup[0], "warmup/mask_prompt_last": warmup[-1]}, 0)
    model.train()
    forward, ddp_tags = wrap_ddp(TrainingStep(model, cfg, rt), cfg, rt)
    run.tag(ddp_tags)

    def save_last(finished: bool) -> None:
        save_training_state(run.last, cfg, rt, model, optimizer, scheduler, loss_generator, progress, total_steps,
                            finished)

    # ---- loop -----------------------------------------------------------------------------------
    bar = _progress_bar(bar_name, total_steps, progress.step)
    interrupted = False
    reader = StepReader(data.train, order, rt.device, prefetch=_prefetch(tc, rt))
    try:
        interrupted = _loop(cfg, data, model, forward, rt, run, order, reader, optimizer, scheduler, loss_generator,
                            progress, total_steps, bar, save_last, checkpoint_extra)
    finally:
        reader.close()
    if bar is not None:
        bar.close()
    finish_runtime(rt)
    return TrainResult(run.dir, run.last, run.best if run.best.is_file() else None, progress.step, total_steps,
                       interrupted, progress.best_metric, progress.best_step,
                       f"{data.select_split}/{tc.select_protocol}/{tc.select_decoding}/J", progress.epochs, model,
                       reader.wait_s)


def _prefetch(tc: TrainConfig, rt: Runtime) -> bool:
    return tc.prefetch == "on" or (tc.prefetch == "auto" and rt.device.type == "cuda")


def _loop(cfg: ExperimentConfig, data: TrainingData, model: AuralSAM2, forward: torch.nn.Module, rt: Runtime,
          run: RunFiles, order: DataOrder, reader: StepReader, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, loss_generator: torch.Generator, progress: Progress,
          total_steps: int, bar: Any, save_last: Callable[[bool], None],
          checkpoint_extra: Mapping[str, Any] | None) -> bool:
    """Optimizer steps from `progress.step` to `total_steps` (or `stop_after_steps`); True when stopped early."""
    tc = cfg.train
    steps_per_epoch = order.steps_per_epoch
    while progress.step < total_steps:
        stop.check()  # Ctrl-C / SIGTERM also reach a loop in a worker thread
        items = reader.take(progress.step, progress.step + 1 if progress.step + 1 < total_steps else None)
        optimizer.zero_grad(set_to_none=True)
        try:
            values = _step_gradients(cfg, forward, rt, loss_generator, items)
        except torch.OutOfMemoryError as exc:
            raise out_of_memory(cfg, rt, items, progress.step + 1, run.dir, exc) from exc
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        progress.step += 1
        step = progress.step

        # ---- bookkeeping: loss curves, then validation and checkpoints at epoch ends -------------
        progress.window.add(values)
        progress.epoch_losses.add(values)
        lr = optimizer.param_groups[0]["lr"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{lr:.2e}")
        if step % tc.log_every_steps == 0 or step == total_steps:
            run.log({**{f"train/{k}": v for k, v in progress.window.pop_means(rt).items()},
                     "train/lr": lr, "train/epoch": step / steps_per_epoch}, step)
        saved = step % steps_per_epoch == 0 or step == total_steps
        if saved:
            reader.idle()  # validation reads the same cache
            _end_epoch(cfg, data, model, rt, run, progress, steps_per_epoch, total_steps, checkpoint_extra)
            save_last(finished=step == total_steps)
        elif tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
            save_last(finished=False)
            saved = True
        if tc.stop_after_steps is not None and tc.stop_after_steps <= step < total_steps:
            if not saved:
                save_last(finished=False)
            return True
    return False


class TrainingStep(torch.nn.Module):
    """A micro-step's clips through the model and their loss terms, as one module: what DDP wraps.
    DDP's `find_unused_parameters` walks the graph back from the forward's outputs, so they must be
    the loss terms: with the model's outputs, a run without the contrastive term counts the AudioCon
    heads as used, their gradients never come, and DDP silently all-reduces nothing."""

    def __init__(self, model: AuralSAM2, cfg: ExperimentConfig, rt: Runtime) -> None:
        super().__init__()
        self.model, self.loss, self.rt, self.middle = model, cfg.loss, rt, cfg.train.cond_frame == "middle"

    def forward(self, items: list[ClipItem], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each loss term per clip, `(len(items),)`; each clip's AudioCon sample drawn from
        `generator` in the items' order."""
        device = self.rt.device
        clips = [(tuple(x.to(device) for x in item.pyramid), None if item.log_mel is None else item.log_mel.to(device),
                  None if item.text is None else item.text.to(device)) for item in items]
        conds = [item.n_frames // 2 if self.middle else 0 for item in items]
        with self.rt.autocast():  # the model only: the loss runs in fp32 (released)
            if len(items) == 1:  # the released path, exactly
                outs = [self.model(*clips[0], cond_frame=conds[0])]
            else:
                outs = self.model.forward_clips(clips, conds)
        text = (self.loss.text_contrast, self.loss.text_contrast_temperature)
        terms = [clip_loss(out, item.masks.to(device), item.supervised, self.loss.audiocon, self.loss.seg, generator,
                           self.loss.mask_prompt, text, self.loss.mask_prompt_pos_weight)
                 for out, item in zip(outs, items, strict=True)]
        return {name: torch.stack([t[name] for t in terms]) for name in LOSS_TERMS}


def _step_gradients(cfg: ExperimentConfig, forward: torch.nn.Module, rt: Runtime, loss_generator: torch.Generator,
                    items: list[ClipItem]) -> dict[str, float]:
    """Accumulate the gradient of one optimizer step: the mean loss over its clips, in micro-steps
    of `clips_per_step` clips (one forward and backward each; every clip keeps its own frames,
    memory and conditioning frame), drawing each clip's AudioCon sample from `loss_generator` in the
    data order; so neither the gradient nor the random streams depend on how the step splits into
    `clips_per_step` x `accumulate_steps`. Under DDP the gradients are all-reduced once, at the
    step's last backward. Returns each loss term's mean over the step's clips."""
    n = cfg.train.clips_per_step
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    for start in range(0, len(items), n):
        micro = items[start : start + n]
        last = start + n >= len(items)
        with contextlib.nullcontext() if last or rt.world == 1 else forward.no_sync():
            terms = forward(micro, loss_generator)
            (terms["total"].sum() / len(items)).backward()  # / 1 is exact: one clip per step as released
        for name in LOSS_TERMS:
            sums[name] += float(terms[name].detach().sum())
    return {name: total / len(items) for name, total in sums.items()}


class DeviceMemoryError(RuntimeError):
    """A training step ran out of device memory; the message says how to resume the run."""


def out_of_memory(cfg: ExperimentConfig, rt: Runtime, items: list[ClipItem], step: int, run_dir: Path,
                  exc: BaseException) -> DeviceMemoryError:
    """The error for a step that ran out of memory, with the resume commands that spend less: the
    step's clips in smaller micro-steps (N > 1; the same weights, since neither the gradient nor the
    random streams depend on the split), and checkpointing the fuser's blocks (the same gradients)."""
    tc = cfg.train
    n, k = tc.clips_per_step, tc.accumulate_steps
    frames = max(item.n_frames for item in items)
    what = (f"out of memory on {rt.device} in training step {step}: a micro-step of {n} clip{'s' * (n > 1)} of up "
            f"to {frames} frames (train.clips_per_step={n})")
    resume = f"auralsam2 train {run_dir / 'config.yaml'} --resume" + (f" --nproc-per-node {rt.world}" if rt.world > 1 else "")
    fixes = []
    if n > 1:
        per_step = n * k
        smaller = max(d for d in range(1, n) if per_step % d == 0)
        fixes.append(f"the step's {per_step} clips give the same weights in smaller micro-steps; resume with "
                     f"`{resume} --set train.clips_per_step={smaller} --set train.accumulate_steps={per_step // smaller}`")
    if not tc.checkpoint_fuser_blocks:
        fixes.append(f"{'or ' if fixes else ''}keep a fifth of the activations, for about a third more fuser compute "
                     f"and the same gradients: `{resume} --set train.checkpoint_fuser_blocks=true`")
    if n == 1 and tc.checkpoint_fuser_blocks:
        fixes.append("one clip with checkpointed blocks is the least this run can keep: " + (
            "bf16 autocast (train.precision: bf16) keeps about half the activations, or " if not rt.bf16 else "") +
            "use a device with more memory")
    detail = str(exc).strip().splitlines()
    return DeviceMemoryError(f"{what}; {'; '.join(fixes)}" + (f" (torch: {detail[0]})" if detail else ""))


def _progress_bar(name: str | None, total: int, initial: int):
    if name is None:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=f"train {name}")


def validate(cfg: ExperimentConfig, data: TrainingData, model: AuralSAM2, rt: Runtime) -> EvalResult | None:
    """The selection metric on the selection split; RNG untouched (exact resume), every item once."""
    if data.select is None:
        return None
    broadcast_buffers(model, rt)  # score rank 0's BN statistics, which it saves
    tc = cfg.train
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
        return evaluate_source(model, data.select, data.select_split or "val", task=cfg.task,
                               protocols=[tc.select_protocol], decodings=[tc.select_decoding],
                               cond_frame=cfg.eval.cond_frame, precision=tc.precision,
                               max_items=cfg.data.max_val_items, progress=False,
                               clips_per_batch=cfg.eval.clips_per_batch)


def _end_epoch(cfg: ExperimentConfig, data: TrainingData, model: AuralSAM2, rt: Runtime, run: RunFiles,
               progress: Progress, steps_per_epoch: int, total_steps: int,
               checkpoint_extra: Mapping[str, Any] | None) -> None:
    """At an epoch end (or the last step): the epoch's loss means, validation and model selection
    when due (`best.ckpt`), the epoch record (logged and kept in `last.ckpt`)."""
    tc, step = cfg.train, progress.step
    final = step == total_steps
    done_epochs = math.ceil(step / steps_per_epoch)
    record: dict[str, float] = {"epoch": done_epochs, "step": step}
    record.update({f"epoch/train_{k}": v for k, v in progress.epoch_losses.pop_means(rt).items()})
    if final or done_epochs % tc.validate_every_epochs == 0:
        result = validate(cfg, data, model, rt)
        if result is not None:
            metric = result.value(tc.select_protocol, tc.select_decoding, "J")
            record.update(result.flat(prefix="select/"))
            record["select/J"] = metric
            if metric > progress.best_metric:
                progress.best_metric, progress.best_step = metric, step
                if rt.main:
                    save_best(run.best, model, cfg, step, done_epochs, metric, data.select_split, checkpoint_extra)
            record["select/best_J"] = progress.best_metric
    if final and progress.best_step < 0:  # nothing to select on (no split, or no J on it): keep the last weights
        progress.best_step = step
        if rt.main:
            save_best(run.best, model, cfg, step, done_epochs, math.nan, None, checkpoint_extra)
    progress.epochs.append(record)
    run.log(record, step)
