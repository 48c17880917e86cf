"""Where a training process runs, and the state that makes it resumable: the torchrun process
group, the device and autocast, seeding, every RNG's state, and atomic checkpoint writes.

Plumbing for `auralsam2.engine` (kept apart so the training loop reads top to bottom).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auralsam2.config import TrainConfig

__all__ = ["Runtime", "atomic_save", "gather", "rng_state", "seed_everything", "set_rng_state", "setup_runtime",
           "use_cudnn_attention"]


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
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU), pick the device, seed
    (seed + rank, released), and switch on deterministic algorithms when asked."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local_rank}")
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
    bf16 = device.type == "cuda" and cfg.precision in ("auto", "bf16")
    return Runtime(rank, world, device, bf16, owns)


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


def atomic_save(payload: Mapping[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(payload), tmp)
    os.replace(tmp, path)
