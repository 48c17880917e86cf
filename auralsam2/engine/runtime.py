"""Where a training process runs: the torchrun process group and DDP, the device and autocast,
seeding and every RNG's state (what makes a resumed run continue exactly).

Plumbing for `auralsam2.engine.loop` (kept apart so the training loop reads top to bottom).
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auralsam2.config import ExperimentConfig, TrainConfig
from auralsam2.utils.devices import autocast, resolve_device, uses_bf16

__all__ = ["Runtime", "broadcast_buffers", "finish_runtime", "gather", "needs_find_unused", "rng_state",
           "seed_everything", "set_rng_state", "setup_runtime", "use_cudnn_attention", "wrap_ddp"]


@dataclass
class Runtime:
    """Where this process runs: rank, world size, device, autocast; `owns_group` if we created it."""

    rank: int
    world: int
    device: torch.device
    bf16: bool
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, "bf16" if self.bf16 else "fp32")


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU), pick the device, seed
    (seed + rank, released), and switch on deterministic algorithms when asked."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(cfg.device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    use_cudnn_attention(cfg.cudnn_attention)
    torch.backends.cudnn.deterministic = True  # released: cuDNN deterministic, benchmark off
    torch.backends.cudnn.benchmark = False
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return Runtime(rank, world, device, uses_bf16(device, cfg.precision), owns)


def use_cudnn_attention(enabled: bool) -> None:
    """Allow or exclude cuDNN's SDPA backend (process-wide; torch then picks flash, memory-efficient or
    math). Excluded by default: on an H100 (torch 2.11, cuDNN 9) its backward put NaN into the
    gradients of SAM2's decoder cross-attention (few query tokens against 64 image tokens) on the
    second step of the demo, which then poisoned every weight; the other kernels stay finite."""
    torch.backends.cuda.enable_cudnn_sdp(enabled)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loss_generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator, device: torch.device) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["loss_generator"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def gather(obj: Any, rt: Runtime) -> list[Any]:
    if rt.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


def needs_find_unused(cfg: ExperimentConfig) -> tuple[bool, str]:
    """Whether DDP needs `find_unused_parameters`, and why. The release needed it for ~9.7 M
    built-but-unused fuser parameters, which we do not build; what remains are parameters that a
    step can leave without a gradient: AudioCon heads when the contrastive term is off (a skipped
    step still reaches every head through an exact zero, `losses.contrastive._zero_through`), and
    the last level's token path when sparse or dense prompts are ablated."""
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


def wrap_ddp(model: nn.Module, cfg: ExperimentConfig, rt: Runtime) -> tuple[nn.Module, dict[str, str]]:
    """The module the loop calls: `model` itself, or under torchrun its DDP wrapper; plus the tags
    that record the `find_unused_parameters` choice (empty in one process)."""
    if rt.world == 1:
        return model, {}
    from torch.nn.parallel import DistributedDataParallel

    find_unused, why = needs_find_unused(cfg)
    # the fuser's depthwise convolutions' weights are (C, 1, k, k): their gradients' stride along
    # the size-1 dimension differs from DDP's bucket view, which it warns about on every rank,
    # though a stride over one element changes nothing
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                  find_unused_parameters=find_unused)
    return ddp, {"ddp_find_unused_parameters": str(find_unused), "ddp_find_unused_reason": why}


def broadcast_buffers(model: nn.Module, rt: Runtime, skip_prefix: str = "sam2.") -> None:
    """Copy rank 0's buffers (BN running stats are per rank: no SyncBN, released) to every rank."""
    if rt.world == 1:
        return
    import torch.distributed as dist

    for name, buffer in model.named_buffers():
        if not name.startswith(skip_prefix):
            dist.broadcast(buffer, 0)


def finish_runtime(rt: Runtime) -> None:
    """Every rank returns after rank 0 has written its files; leave a group we created."""
    if rt.world == 1:
        return
    import torch.distributed as dist

    dist.barrier()
    if rt.owns_group:
        dist.destroy_process_group()
