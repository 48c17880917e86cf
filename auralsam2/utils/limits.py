"""Limits on what untrusted inputs may ask for, checked before anything is allocated: YAML aliases
(a "billion laughs" file expands exponentially), and model sizes (a config from a YAML file or stored
in a checkpoint is first built on PyTorch's `meta` device, which holds shapes and no memory)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MAX_CONFIG_BYTES", "MAX_PARAMETERS", "MAX_YAML_ALIASES", "meta_parameter_count"]

# YAML aliases (`*name`) a config may use. Our configs use none; with A aliases a file can expand
# to about 3 ** (A / 3) nodes, so 16 keeps any file's expansion in the hundreds.
MAX_YAML_ALIASES = 16
MAX_CONFIG_BYTES = 1 << 20  # an experiment or SAM2 model config is a few KB

# The trained side of AuralSAM2 (fuser + VGGish) has ~49 M + 72 M parameters at Hiera scale; a
# config asking for more than this is a typo or a hostile file, not a model (a 1 B-parameter fp32
# model is 4 GB before gradients and optimizer state).
MAX_PARAMETERS = 1_000_000_000


def meta_parameter_count(build: Callable[[], nn.Module], what: str, limit: int = MAX_PARAMETERS) -> int:
    """Parameters of the module `build()` makes, counted on the meta device; `ValueError` naming
    `what` when they exceed `limit`."""
    with torch.device("meta"):
        module = build()
    count = sum(p.numel() for p in module.parameters())
    if count > limit:
        raise ValueError(f"{what} describes a model of {count / 1e6:,.0f} M parameters, above the limit of "
                         f"{limit / 1e6:,.0f} M (auralsam2.utils.limits.MAX_PARAMETERS); check its sizes "
                         "(dim, mlp_hidden, depths, widths)")
    return count
