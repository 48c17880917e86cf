"""The training loop: config -> data -> model -> optimizer -> loop -> validation -> checkpoints.

Read `train` top to bottom; it is the whole control flow (released `trainer/train.py`, `main.py`):

* one item (an AVSBench clip, or one Ref-AVS expression) per GPU per step, its cached pyramid in
  the epoch's view; SAM2 frozen and in eval mode, tracking with memory through the stock modules;
  the fuser (and VGGish when it trains) learns; bf16 autocast around the forward on GPU only;
* AdamW with the released parameter groups (weight decay 0 for norm layers and positional
  embeddings; VGGish at `vggish_lr_scale` x lr), poly decay per iteration, no warm-up, no clipping;
* validation on `val` by the configured protocol's J after every `validate_every_epochs` epochs and
  at the end; `best.ckpt` (our fuser format, `auralsam2.checkpoints`) when it improves;
* `last.ckpt` after every epoch (and every `checkpoint_every_steps`): trainable weights, optimizer,
  scheduler, every rank's RNG states and the position in the data order (a function of (seed,
  epoch)), so `resume=True` continues exactly; in deterministic CPU mode an interrupted and resumed
  run ends with bit-identical weights;
* DDP when launched by `torchrun` (NCCL on GPU, gloo on CPU); the training order is the released
  `DistributedSampler` (shuffled per epoch, padded to equal length per rank); evaluation scores
  every item exactly once (`auralsam2.evaluation`).

The engine knows no orchestrator or tracker: data arrive as `TrainingData` (items from the feature
cache, built by `feature_cache.dataset`), metrics leave through an optional `RunLogger`
(`flows.tracking` implements it with MLflow).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from auralsam2.audio import AudioEncoder, VGGish
from auralsam2.checkpoints import (
    CheckpointError,
    load_fuser_checkpoint,
    load_released_fuser,
    load_vggish_weights,
    save_fuser_checkpoint,
)
from auralsam2.config import (
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    config_to_yaml,
    resolve_path,
)
from auralsam2.evaluation import EvalResult, ItemSource, evaluate_source
from auralsam2.fuser import AuralFuser
from auralsam2.model import AuralSAM2, clip_loss
from auralsam2.runtime import (
    Runtime,
    atomic_save,
    gather,
    rng_state,
    seed_everything,
    set_rng_state,
    setup_runtime,
)

__all__ = [
    "STATE_FORMAT",
    "DataOrder",
    "Runtime",
    "RunLogger",
    "TrainResult",
    "TrainingData",
    "build_model",
    "load_fuser_weights",
    "needs_find_unused",
    "param_groups",
    "poly_factor",
    "setup_runtime",
    "train",
]

STATE_FORMAT = "auralsam2-train-state/1"
LOSS_TERMS = ("total", "seg", "focal", "dice", "iou", "object_score", "audiocon", "mask")


class RunLogger(Protocol):
    """Where metrics go (rank 0 only). `flows.tracking.MlflowLogger` batches them to MLflow."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...


@dataclass
class TrainingData:
    """Everything `train` reads: the frozen SAM2 the cache was built with, the training items and
    the items used for model selection (the `val` split, or `test` when `select_on: test`)."""

    sam2: nn.Module
    train: ItemSource
    select: ItemSource | None = None
    select_split: str | None = None


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


# --------------------------------------------------------------------------------------------
# Building blocks (each used once by `train`, public for tests and benchmarks)
# --------------------------------------------------------------------------------------------


class DataOrder:
    """The released `DistributedSampler(shuffle=True)` order: a permutation of all items per epoch
    (seeded by seed + epoch, the same on every rank), padded by wrap-around to a multiple of the
    world size, rank r taking every world-th item from r. A pure function of (seed, epoch): resuming
    needs only the step counter."""

    def __init__(self, n_items: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n_items < 1:
            raise ValueError("no training items")
        self.n, self.seed, self.rank, self.world = n_items, seed, rank, world
        self.steps_per_epoch = math.ceil(n_items / world)
        self._epoch, self._indices = -1, []

    def index(self, epoch: int, position: int) -> int:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            total = self.steps_per_epoch * self.world
            perm = (perm * math.ceil(total / self.n))[:total]
            self._epoch, self._indices = epoch, perm[self.rank :: self.world]
        return self._indices[position]


def build_model(cfg: ModelConfig, sam2: nn.Module) -> AuralSAM2:
    """Fuser + audio encoder (+ the frozen SAM2) from the config; `init_checkpoint` loaded if set."""
    fuser = AuralFuser(cfg.fuser)
    audio = None
    if cfg.fuser.uses_audio:
        audio = AudioEncoder(VGGish(cfg.vggish), cfg.audio_channels, trainable=cfg.train_vggish)
        if cfg.vggish_checkpoint:
            load_vggish_weights(audio.vggish, resolve_path(cfg.vggish_checkpoint))
            audio.vggish.requires_grad_(cfg.train_vggish)
    if cfg.fuser.dim != sam2.hidden_dim:
        raise ValueError(f"model.fuser.dim={cfg.fuser.dim} but the cache's SAM2 has hidden dim {sam2.hidden_dim}; "
                         "set model.fuser.dim (and fusion_dim) to match")
    model = AuralSAM2(sam2, fuser, audio, official_query_pe=cfg.official_query_pe)
    if cfg.init_checkpoint:
        load_fuser_weights(model, resolve_path(cfg.init_checkpoint))
    return model


def load_fuser_weights(model: AuralSAM2, path: str | os.PathLike) -> str:
    """Load our `best.ckpt`/fuser checkpoint or a released AuralSAM2 `.pth` into `model`; returns
    a one-line report. Our format must match the model's fuser config exactly."""
    try:
        loaded = load_fuser_checkpoint(path)
    except CheckpointError as err:
        if "load_released_fuser" not in str(err):
            raise
        report = load_released_fuser(model.fuser, path, model.audio_encoder)
        return report.summary()
    if loaded.fuser.config != model.fuser.config:
        raise CheckpointError(f"{path}: fuser config {loaded.fuser.config.model_dump()} differs from the model's "
                              f"{model.fuser.config.model_dump()}; evaluate it with its own config")
    model.fuser.load_state_dict(loaded.fuser.state_dict())
    if loaded.audio_encoder is not None and model.audio_encoder is not None:
        model.audio_encoder.vggish.load_state_dict(loaded.audio_encoder.vggish.state_dict())
    return f"{path}: loaded our fuser checkpoint (fingerprints {loaded.fingerprints})"


def param_groups(model: AuralSAM2, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay 0 for LayerNorm/BatchNorm/GroupNorm/Embedding weights and biases
    and for `pos_embed` names, `cfg.weight_decay` otherwise (released `manipulate_params`); VGGish
    at `vggish_lr_scale` x lr. Only parameters with `requires_grad` (SAM2 is frozen)."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            no_decay = isinstance(module, norms) or "pos_embed" in full
            buckets.setdefault((full.startswith("audio_encoder."), no_decay), []).append(param)
    groups = []
    for (is_vgg, no_decay), params in sorted(buckets.items()):
        groups.append({"params": params, "name": f"{'vggish' if is_vgg else 'fuser'}_{'no_decay' if no_decay else 'decay'}",
                       "lr": cfg.lr * (cfg.vggish_lr_scale if is_vgg else 1.0),
                       "weight_decay": 0.0 if no_decay else cfg.weight_decay})
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return groups


def poly_factor(step: int, total_steps: int, power: float, warmup_steps: int = 0) -> float:
    """lr multiplier after `step` optimizer steps: (1 - step / total) ** power (released, per
    iteration, no warm-up), times a linear warm-up when asked; 0 at and after `total_steps`."""
    decay = max(0.0, 1.0 - step / total_steps) ** power
    return decay * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def needs_find_unused(cfg: ExperimentConfig) -> tuple[bool, str]:
    """Whether DDP needs `find_unused_parameters`, and why. The release needed it for ~9.7 M
    built-but-unused fuser parameters, which we do not build; what remains are parameters that a
    step can leave without a gradient: AudioCon heads when the contrastive term is off (a skipped
    step still reaches every head through an exact zero, `losses._zero_through`), and the last
    level's token path when sparse or dense prompts are ablated."""
    mode = cfg.train.ddp_find_unused_parameters
    if mode != "auto":
        return mode == "on", f"train.ddp_find_unused_parameters = {mode}"
    fuser, con = cfg.model.fuser, cfg.loss.audiocon
    reasons = []
    if con.mode == "off" or con.weight == 0:
        reasons.append("contrastive loss off: the AudioCon projection heads get no gradient")
    elif con.mode == "supcon" and fuser.uses_audio:
        reasons.append("SupCon uses no audio: the audio projection head gets no gradient")
    if fuser.modalities != "visual" and not (fuser.sparse_prompts and fuser.dense_prompts):
        reasons.append("with sparse or dense prompts off, part of the deepest level's fusion feeds nothing")
    return bool(reasons), "; ".join(reasons) or "every trainable parameter gets a gradient on every step"


def _trainable_state(model: AuralSAM2) -> dict[str, Tensor]:
    """Fuser and audio-encoder tensors (parameters and buffers); SAM2 is frozen and comes from its .pt."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("sam2.")}


def _log(logger: RunLogger | None, rt: Runtime, metrics: Mapping[str, float], step: int, run_dir: Path) -> None:
    """Rank 0: to the tracker and to `history.jsonl` in the run folder (curves without a tracker)."""
    if not rt.main:
        return
    clean = {k: float(v) for k, v in metrics.items()
             if k != "step" and isinstance(v, int | float) and math.isfinite(v)}
    if logger is not None:
        logger.log_metrics(clean, step)
    with open(run_dir / "history.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, **clean}) + "\n")


def _truncate_history(run_dir: Path, step: int) -> None:
    """On resume: drop history lines logged after the checkpoint (they are recomputed identically)."""
    path = run_dir / "history.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


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
    run_dir = Path(run_dir)
    if rt.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = run_dir / "last.ckpt", run_dir / "best.ckpt"
    if tc.select_on == "test":
        warnings.warn("model selection on the TEST split (train.select_on: test), as the released code does: "
                      "the reported test numbers are optimistic; use val for honest numbers", stacklevel=2)
        if logger is not None and rt.main:
            logger.set_tags({"selection_split": "test", "selection_warning": "selected on test (optimistic)"})

    # ---- data ---------------------------------------------------------------------------------
    order = DataOrder(len(data.train), tc.seed, rt.rank, rt.world)
    steps_per_epoch = order.steps_per_epoch
    total_steps = tc.epochs * steps_per_epoch if tc.max_steps is None else min(tc.max_steps, tc.epochs * steps_per_epoch)

    # ---- model (same init on every rank; DDP would broadcast rank 0's anyway) -------------------
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, data.sam2).to(rt.device)
    seed_everything(tc.seed + rt.rank)
    loss_generator = torch.Generator().manual_seed(tc.seed + rt.rank)

    # ---- optimizer and poly schedule ----------------------------------------------------------
    # foreach: one kernel per parameter group instead of one per tensor (~10% of a CPU demo step)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), betas=cfg.optim.betas, eps=cfg.optim.eps, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: poly_factor(s, total_steps, cfg.optim.poly_power, cfg.optim.warmup_steps))

    # ---- resume ---------------------------------------------------------------------------------
    step, best_metric, best_step, epochs_log = 0, -math.inf, -1, []
    epoch_sum: dict[str, float] = dict.fromkeys(LOSS_TERMS, 0.0)
    epoch_count = 0
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: {last_path} does not exist; start the run without --resume")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{last_path}: not a training state ({state.get('format')!r})")
        missing, unexpected = model.load_state_dict(state["trainable"], strict=False)
        if unexpected or any(not k.startswith("sam2.") for k in missing):
            raise CheckpointError(f"{last_path}: weights do not match the model (unexpected {unexpected[:5]}, "
                                  f"missing {[k for k in missing if not k.startswith('sam2.')][:5]}); resume with "
                                  "the run's own config (its config.yaml)")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        step, best_metric, best_step = progress["step"], progress["best_metric"], progress["best_step"]
        epoch_sum, epoch_count = dict(progress["epoch_sum"]), progress["epoch_count"]
        epochs_log = list(state["epochs"])
        if state["world_size"] == rt.world:
            set_rng_state(state["rng"][rt.rank], loss_generator, rt.device)
        else:
            warnings.warn(f"resuming a {state['world_size']}-process run on {rt.world}: RNG streams are re-seeded, "
                          "so the continuation is not bit-identical", stacklevel=2)
        if rt.main:
            _truncate_history(run_dir, step)

    # ---- DDP --------------------------------------------------------------------------------------
    model.train()
    forward = model
    if rt.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        find_unused, why = needs_find_unused(cfg)
        if rt.main and logger is not None:
            logger.set_tags({"ddp_find_unused_parameters": str(find_unused), "ddp_find_unused_reason": why})
        forward = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                          find_unused_parameters=find_unused)

    def save_last(finished: bool) -> None:
        """last.ckpt: everything needed to continue exactly (all ranks' RNG; rank 0 writes)."""
        rng = gather(rng_state(loss_generator, rt.device), rt)
        if rt.main:
            atomic_save({
                "format": STATE_FORMAT, "config_yaml": config_to_yaml(cfg), "world_size": rt.world,
                "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng, "epochs": epochs_log,
                "progress": {"step": step, "total_steps": total_steps, "best_metric": best_metric,
                             "best_step": best_step, "epoch_sum": epoch_sum, "epoch_count": epoch_count,
                             "finished": finished},
            }, last_path)

    def validate() -> EvalResult | None:
        """Selection metric on the selection split; RNG untouched (exact resume), every item once."""
        if data.select is None:
            return None
        if rt.world > 1:  # BN running stats are per rank (no SyncBN, released): score rank 0's, which it saves
            import torch.distributed as dist

            for name, buffer in model.named_buffers():
                if not name.startswith("sam2."):
                    dist.broadcast(buffer, 0)
        with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else []):
            return evaluate_source(model, data.select, data.select_split or "val", task=cfg.task,
                                   protocols=[tc.select_protocol], decodings=[tc.select_decoding],
                                   cond_frame=cfg.eval.cond_frame, precision=tc.precision,
                                   max_items=cfg.data.max_val_items, progress=False)

    # ---- loop ------------------------------------------------------------------------------------
    bar = None
    if tc.progress and rt.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", desc=f"train {cfg.run_name or cfg.experiment}")
    window: dict[str, float] = dict.fromkeys(LOSS_TERMS, 0.0)
    window_count = 0
    interrupted = False
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        item = data.train.item(order.index(epoch, position), epoch)
        n = item.n_frames
        with rt.autocast():
            out = forward(tuple(x.to(rt.device) for x in item.pyramid),
                          None if item.log_mel is None else item.log_mel.to(rt.device),
                          None if item.text is None else item.text.to(rt.device),
                          cond_frame=n // 2 if tc.cond_frame == "middle" else 0)
        losses = clip_loss(out, item.masks.to(rt.device), item.supervised, cfg.loss.audiocon, cfg.loss.seg,
                           loss_generator, cfg.loss.mask_prompt)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1

        values = {k: float(losses[k].detach()) for k in LOSS_TERMS}
        for k, v in values.items():
            window[k] += v
            epoch_sum[k] += v
        window_count += 1
        epoch_count += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if step % tc.log_every_steps == 0 or step == total_steps:
            means = _reduce_means(window, window_count, rt)
            _log(logger, rt, {**{f"train/{k}": v for k, v in means.items()},
                              "train/lr": optimizer.param_groups[0]["lr"], "train/epoch": step / steps_per_epoch},
                 step, run_dir)
            window, window_count = dict.fromkeys(LOSS_TERMS, 0.0), 0

        epoch_end, final = step % steps_per_epoch == 0, step == total_steps
        if epoch_end or final:
            done_epochs = math.ceil(step / steps_per_epoch)
            record: dict[str, float] = {"epoch": done_epochs, "step": step}
            record.update({f"epoch/train_{k}": v for k, v in _reduce_means(epoch_sum, epoch_count, rt).items()})
            epoch_sum, epoch_count = dict.fromkeys(LOSS_TERMS, 0.0), 0
            if final or done_epochs % tc.validate_every_epochs == 0:
                result = validate()
                if result is not None:
                    metric = result.value(tc.select_protocol, tc.select_decoding, "J")
                    record.update(result.flat(prefix="select/"))
                    record["select/J"] = metric
                    if metric > best_metric:
                        best_metric, best_step = metric, step
                        if rt.main:
                            _save_best(best_path, model, cfg, step, done_epochs, metric, data.select_split,
                                       checkpoint_extra)
                    record["select/best_J"] = best_metric
            if final and best_step < 0:  # nothing to select on (no split, or no J on it): keep the last weights
                best_step = step
                if rt.main:
                    _save_best(best_path, model, cfg, step, done_epochs, math.nan, None, checkpoint_extra)
            epochs_log.append(record)
            _log(logger, rt, record, step, run_dir)
            save_last(finished=final)
        elif tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0:
            save_last(finished=False)
        if tc.stop_after_steps is not None and step >= tc.stop_after_steps and step < total_steps:
            if not (epoch_end or (tc.checkpoint_every_steps and step % tc.checkpoint_every_steps == 0)):
                save_last(finished=False)
            interrupted = True
            break
    if bar is not None:
        bar.close()
    if rt.world > 1:  # every rank returns after rank 0 has written its files
        import torch.distributed as dist

        dist.barrier()
        if rt.owns_group:
            dist.destroy_process_group()
    return TrainResult(run_dir, last_path, best_path if best_path.is_file() else None, step, total_steps,
                       interrupted, best_metric, best_step,
                       f"{data.select_split}/{tc.select_protocol}/{tc.select_decoding}/J", epochs_log, model)


def _reduce_means(sums: Mapping[str, float], count: int, rt: Runtime) -> dict[str, float]:
    """Means over the window on all ranks (one all-reduce under DDP)."""
    keys = list(sums)
    values = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    if rt.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    total = max(values[-1].item(), 1.0)
    return {k: values[i].item() / total for i, k in enumerate(keys)}


def _save_best(path: Path, model: AuralSAM2, cfg: ExperimentConfig, step: int, epoch: int, metric: float,
               split: str | None, extra: Mapping[str, Any] | None) -> None:
    save_fuser_checkpoint(path, model.fuser, model.audio_encoder, extra={
        "config_yaml": config_to_yaml(cfg), "step": step, "epoch": epoch, "metric": metric,
        "selection": f"{split}/{cfg.train.select_protocol}/{cfg.train.select_decoding}/J" if split else "last",
        **dict(extra or {}),
    })
