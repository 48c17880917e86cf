"""The frozen SAM2 the cache is built with: loading it once per process, and its fingerprint.

The fingerprint holds everything that determines a stored tensor: the SAM2 config, the checkpoint
(its file sha256, or "random-init:<seed>" for random weights), a sha256 of the image encoder's
weights as loaded (so a worker that loaded something else is caught), the input size, the storage
dtype and compact layout, how it was computed (CUDA bf16 autocast or CPU fp32), the preprocessing,
the view recipe and seed, the log-mel recipe, and the code versions. Speed settings (batch size,
threads, device index, compression) are not part of it.
"""

from __future__ import annotations

import importlib.metadata
import threading
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auralsam2.backbone import build_sam2_model, compact_layout, resolve_sam2_config
from auralsam2.utils.hashing import sha256_file, state_sha256
from feature_cache.schema import FORMAT_VERSION, LOG_MEL, PREPROCESS, VIEW_RECIPE, CacheSettings

_MODELS: dict[tuple, nn.Module] = {}
_ENCODER_HASHES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_CHECKPOINT_HASHES: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()


def default_image_size(sam2_config: str) -> int:
    """The input size S a SAM2 config declares (1024 for the packaged configs, 128 for `tiny`)."""
    from omegaconf import OmegaConf

    _, path = resolve_sam2_config(sam2_config)
    return int(OmegaConf.load(path).model.image_size)


def checkpoint_id(settings: CacheSettings) -> str:
    """"sha256:<hex>" of the checkpoint file, or "random-init:<seed>" without one (cached per file state)."""
    if settings.checkpoint is None:
        return f"random-init:{settings.seed}"
    path = Path(settings.checkpoint).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint {str(path)!r} (--checkpoint): no such file")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKPOINT_HASHES:
        _CHECKPOINT_HASHES[key] = sha256_file(path)
    return f"sha256:{_CHECKPOINT_HASHES[key]}"


def encoder_sha256(model: nn.Module) -> str:
    """`state_sha256` of `model.image_encoder`, computed once per model object."""
    if model not in _ENCODER_HASHES:
        _ENCODER_HASHES[model] = state_sha256(model.image_encoder.state_dict())
    return _ENCODER_HASHES[model]


def load_model(settings: CacheSettings, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen SAM2 of `settings` on `device`, built once per process and reused by later tasks.

    Random weights are drawn on CPU under `torch.manual_seed(settings.seed)` (without touching the
    caller's RNG), so every process that builds them gets the same model.
    """
    device = torch.device(device)
    key = (settings.sam2_config, settings.checkpoint, settings.seed if settings.checkpoint is None else None,
           settings.image_size, str(device))
    with _LOCK:
        if key not in _MODELS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                model = build_sam2_model(settings.sam2_config, settings.checkpoint, "cpu",
                                         image_size=settings.image_size)
            _MODELS[key] = model.to(device)
        return _MODELS[key]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("auralsam2-pipeline", "sam2"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def compute_mode(device: torch.device) -> dict[str, str]:
    """How the encoder runs on `device`: bf16 autocast on CUDA (released regime), fp32 on CPU."""
    if device.type == "cuda":
        return {"device_type": "cuda", "autocast": "bf16"}
    return {"device_type": device.type, "autocast": "none"}


def make_fingerprint(settings: CacheSettings, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """The cache fingerprint for building with `settings` on a device of `device`'s type."""
    canonical, _ = resolve_sam2_config(settings.sam2_config)
    return {
        "format": FORMAT_VERSION,
        "sam2_config": canonical,
        "checkpoint": checkpoint_id(settings),
        "image_encoder_sha256": encoder_sha256(model),
        "image_size": int(model.image_size),
        "dtype": settings.dtype,
        "storage": {"form": "compact", "layout": [[lv.form, lv.channels, lv.stride] for lv in compact_layout(model)]},
        "encode": compute_mode(device),
        "preprocess": PREPROCESS,
        "views": view_fields(settings),
        "audio": LOG_MEL,
        "versions": package_versions(),
    }


def expected_fields(settings: CacheSettings) -> dict[str, Any]:
    """The fingerprint fields `settings` pins down without building a model (for the stale-cache guard)."""
    canonical, _ = resolve_sam2_config(settings.sam2_config)
    return {
        "sam2_config": canonical,
        "checkpoint": checkpoint_id(settings),
        "image_size": settings.image_size or default_image_size(settings.sam2_config),
        "dtype": settings.dtype,
        **{f"views.{k}": v for k, v in view_fields(settings).items() if k != "recipe"},
    }


def view_fields(settings: CacheSettings) -> dict[str, Any]:
    """The fingerprint's `views` entry; seed and splits only matter when there are augmented views."""
    augmented = settings.views > 1
    return {"count": settings.views, "augment_splits": list(settings.augment_splits) if augmented else [],
            "seed": settings.seed if augmented else None, "recipe": VIEW_RECIPE}
