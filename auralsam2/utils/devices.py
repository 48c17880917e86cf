"""Which device a command runs on, and the autocast it uses there: one rule for every command.

`auto` = the CUDA device of this process when one is present (`cuda:LOCAL_RANK`), else the CPU.
Precision `auto`/`bf16` = bf16 autocast on CUDA; on the CPU everything runs in fp32 (released).
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["DEVICE_HELP", "autocast", "resolve_device", "uses_bf16"]

DEVICE_HELP = "auto (the GPU when present, else the CPU), cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """`auto` -> `cuda:LOCAL_RANK` (LOCAL_RANK from the environment, default 0) when CUDA is
    available, else `cpu`; a bare `cuda` also gets the local rank's index; anything else as given."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"unknown device {spec!r}: use {DEVICE_HELP}") from err
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def uses_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast on CUDA unless fp32 is asked for; never on the CPU."""
    return device.type == "cuda" and precision in ("auto", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `uses_bf16`, or nothing."""
    if uses_bf16(device, precision):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
