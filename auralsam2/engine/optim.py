"""AdamW with the released parameter groups and the released poly learning-rate schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from auralsam2.config import OptimConfig
from auralsam2.model import AuralSAM2

__all__ = ["make_optimizer", "param_groups", "poly_factor"]


def param_groups(model: AuralSAM2, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay 0 for LayerNorm/BatchNorm/GroupNorm/Embedding weights and biases
    and for `pos_embed` names, `cfg.weight_decay` otherwise (released `manipulate_params`); VGGish
    at `vggish_lr_scale` x lr. Only parameters with `requires_grad` (SAM2 is frozen). With
    `mask_prompt_lr_scale` != 1, the mask prompt's map parameters get groups of their own
    (`mask_prompt_decay` / `_no_decay`) at that scale x lr."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.modules.batchnorm._BatchNorm)
    map_params = {id(p) for p in model.fuser.mask_prompt_parameters()} if cfg.mask_prompt_lr_scale != 1.0 else set()
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{name}" if module_name else name
            no_decay = isinstance(module, norms) or "pos_embed" in full
            part = ("vggish" if full.startswith("audio_encoder.")
                    else "mask_prompt" if id(param) in map_params else "fuser")
            buckets.setdefault((part, no_decay), []).append(param)
    scale = {"vggish": cfg.vggish_lr_scale, "mask_prompt": cfg.mask_prompt_lr_scale, "fuser": 1.0}
    groups = []
    for (part, no_decay), params in sorted(buckets.items()):
        groups.append({"params": params, "name": f"{part}_{'no_decay' if no_decay else 'decay'}",
                       "lr": cfg.lr * scale[part], "weight_decay": 0.0 if no_decay else cfg.weight_decay})
    if not groups:
        raise ValueError("the model has no trainable parameter")
    return groups


def poly_factor(step: int, total_steps: int, power: float, warmup_steps: int = 0) -> float:
    """lr multiplier after `step` optimizer steps: (1 - step / total) ** power (released, per
    iteration, no warm-up), times a linear warm-up when asked; 0 at and after `total_steps`."""
    decay = max(0.0, 1.0 - step / total_steps) ** power
    return decay * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


def make_optimizer(model: AuralSAM2, cfg: OptimConfig, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over `param_groups` and its per-iteration poly schedule over `total_steps`."""
    groups = param_groups(model, cfg)
    # on a GPU the fused kernel (one launch for every tensor); elsewhere foreach: one kernel per
    # parameter group instead of one per tensor (~10% of a CPU demo step)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps, **({"fused": True} if fused else {"foreach": True}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: poly_factor(s, total_steps, cfg.poly_power, cfg.warmup_steps))
    return optimizer, scheduler
