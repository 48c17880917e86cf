"""The frozen SAM2 of AuralSAM2, built on the unmodified `sam2==1.1.0` package.

This module builds and loads SAM2 (`build_sam2_model`, `load_sam2_checkpoint`,
`save_sam2_checkpoint`), keeps it frozen in `eval()` (`freeze_sam2`), and re-exports the rest of the
backbone API, which lives in three smaller modules:

* `auralsam2.sam2_encoding`: image encoder -> raw FPN `Pyramid` (+ the compact cache form);
* `auralsam2.sam2_decoder`: the prompted mask decoder (`prompted_two_way`, `prompted_decode`);
* `auralsam2.sam2_tracking`: video propagation with SAM2 memory over one clip (`track_clip`).

No SAM2 code is copied or patched: models come from the YAML configs the package ships (plus the
test-only `tiny` config of this project) through `hydra.utils.instantiate`, and official `.pt`
checkpoints (`{"model": state_dict}`) load strictly. `import sam2` initialises Hydra's GlobalHydra,
so configs are read with OmegaConf directly (never `hydra.initialize`/`compose`).

Config names accepted everywhere a SAM2 config is named (API and command line):

* package names, as `sam2.build_sam.build_sam2` takes them: `configs/sam2/sam2_hiera_{t,s,b+,l}.yaml`
  (SAM 2.0) and `configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml` (SAM 2.1), with or without the
  `configs/` prefix or the `.yaml` suffix;
* short aliases (`SAM2_CONFIG_ALIASES`): `sam2_hiera_b+`, `sam2.1_hiera_b+`, the checkpoint-style
  size words `sam2_hiera_base_plus`, `sam2.1_hiera_large`, ..., and the version-less `hiera_t`,
  `hiera_s`, `hiera_b+`, `hiera_l`, which mean **SAM 2.0** (the family the released AuralSAM2
  checkpoints were trained on);
* `tiny`: a TEST-ONLY SAM2 of ~0.65 M parameters at 128 px (`auralsam2/configs/sam2_tiny.yaml`);
  it never has a real checkpoint;
* `synth`: the synthetic demo's small SAM2 (hidden 128, ~2.8 M parameters, 128 px;
  `auralsam2/configs/sam2_synth.yaml`), pretrained by `auralsam2 pretrain-tiny-sam2` into the
  committed `auralsam2/assets/sam2_tiny_synth.pt`;
* a path to a SAM2 model YAML file of your own.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from auralsam2.sam2_decoder import (
    DecoderOutput,
    PointInputs,
    point_inputs_from_clicks,
    prompted_decode,
    prompted_two_way,
)
from auralsam2.sam2_encoding import (
    CompactLevel,
    CompactPyramid,
    DecoderFeatures,
    Pyramid,
    compact_bytes_per_frame,
    compact_layout,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    prepare_decoder_features,
)
from auralsam2.sam2_tracking import DecoderPrompts, FrameOutput, track_clip
from auralsam2.transforms import preprocess_frames, preprocess_masks

__all__ = [
    "SAM2_CONFIGS",
    "SAM2_CONFIG_ALIASES",
    "PROJECT_CONFIGS",
    "SYNTH_CONFIG",
    "TINY_CONFIG",
    "CompactLevel",
    "CompactPyramid",
    "DecoderFeatures",
    "DecoderOutput",
    "DecoderPrompts",
    "FrameOutput",
    "PointInputs",
    "Pyramid",
    "build_sam2_model",
    "compact_bytes_per_frame",
    "compact_layout",
    "encode_frames",
    "encode_frames_compact",
    "expand_compact",
    "freeze_sam2",
    "is_frozen",
    "load_sam2_checkpoint",
    "point_inputs_from_clicks",
    "prepare_decoder_features",
    "preprocess_frames",
    "preprocess_masks",
    "prompted_decode",
    "prompted_two_way",
    "resolve_sam2_config",
    "save_sam2_checkpoint",
    "track_clip",
]

TINY_CONFIG = "tiny"
SYNTH_CONFIG = "synth"
# The project's own SAM2 configs (auralsam2/configs/): `tiny` for tests, `synth` for the demo.
PROJECT_CONFIGS = {TINY_CONFIG: "sam2_tiny.yaml", SYNTH_CONFIG: "sam2_synth.yaml"}

# The eight model configs the package ships, by their package name.
SAM2_CONFIGS: tuple[str, ...] = tuple(
    f"configs/{family}/{family}_hiera_{size}.yaml"
    for family in ("sam2", "sam2.1")
    for size in ("t", "s", "b+", "l")
)

_SIZE_WORDS = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}


def _build_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for family in ("sam2", "sam2.1"):
        for size, word in _SIZE_WORDS.items():
            target = f"configs/{family}/{family}_hiera_{size}.yaml"
            aliases[f"{family}_hiera_{size}"] = target
            aliases[f"{family}_hiera_{word}"] = target
            if family == "sam2":  # version-less names mean SAM 2.0 (the released AuralSAM2 family)
                aliases[f"hiera_{size}"] = target
                aliases[f"hiera_{word}"] = target
    return aliases


SAM2_CONFIG_ALIASES: dict[str, str] = _build_aliases()

# Overrides `sam2.build_sam.build_sam2` applies by default (apply_postprocessing=True): they only
# change single-mask output in eval, which AuralSAM2 never asks for, but keeping them makes our
# build identical to the stock one for the same config.
_STOCK_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def resolve_sam2_config(config: str | os.PathLike) -> tuple[str, Path]:
    """Canonical name and YAML path of a SAM2 config name, alias, `tiny`, or YAML file path.

    Raises `ValueError` listing the accepted names when `config` is none of them.
    """
    raw = str(config)
    if raw in PROJECT_CONFIGS:
        return raw, Path(str(importlib.resources.files("auralsam2") / "configs" / PROJECT_CONFIGS[raw]))
    name = raw[: -len(".yaml")] if raw.endswith(".yaml") else raw
    name = name[len("configs/") :] if name.startswith("configs/") else name
    canonical = SAM2_CONFIG_ALIASES.get(name)
    if canonical is None and f"configs/{name}.yaml" in SAM2_CONFIGS:
        canonical = f"configs/{name}.yaml"
    if canonical is not None:
        return canonical, Path(str(importlib.resources.files("sam2") / canonical))
    path = Path(raw).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return str(path), path
    raise ValueError(
        f"unknown SAM2 config {raw!r}: use one of the package configs {list(SAM2_CONFIGS)}, "
        f"an alias such as 'sam2.1_hiera_b+' or 'hiera_l' (full list: "
        f"auralsam2.sam2_backbone.SAM2_CONFIG_ALIASES), 'tiny' (tests only), 'synth' (the demo's), or a path "
        f"to a SAM2 model YAML"
    )


def _model_config(config: str | os.PathLike, image_size: int | None):
    """The OmegaConf `model` node of `config`, with the stock post-processing overrides applied."""
    from omegaconf import OmegaConf

    name, path = resolve_sam2_config(config)
    cfg = OmegaConf.load(path)
    if "model" not in cfg or "_target_" not in cfg.model:
        raise ValueError(
            f"SAM2 config {name!r} ({path}) has no top-level 'model' with a '_target_': it is not a "
            f"SAM2 model config (training configs such as configs/sam2.1_training/* are not supported)"
        )
    model_cfg = cfg.model
    extra = model_cfg.get("sam_mask_decoder_extra_args") or {}
    model_cfg.sam_mask_decoder_extra_args = {**_STOCK_POSTPROCESSING, **extra}
    if image_size is not None:
        if image_size <= 0 or image_size % 32:
            raise ValueError(
                f"image_size={image_size} for SAM2 config {name!r}: it must be a positive multiple of 32 "
                f"(Hiera pools to stride 32, and the FPN's top-down path doubles that level back)"
            )
        model_cfg.image_size = image_size
        stride = int(model_cfg.get("backbone_stride", 16))
        layer = model_cfg.memory_attention.layer
        for attn in ("self_attention", "cross_attention"):
            if "feat_sizes" in layer[attn]:
                layer[attn].feat_sizes = [image_size // stride, image_size // stride]
    OmegaConf.resolve(model_cfg)
    return name, model_cfg


def build_sam2_model(
    config: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    image_size: int | None = None,
) -> nn.Module:
    """Build SAM2 (`sam2.modeling.sam2_base.SAM2Base`) from a config name, frozen and pinned to eval.

    `config`: a package config name, an alias, `"tiny"` (tests only) or a YAML path (module docstring).
    `checkpoint`: an official SAM2 `.pt` file (`{"model": state_dict}`), loaded strictly on CPU with
    `weights_only=True` before moving to `device`; `None` keeps the random initialisation.
    `image_size`: input size S override (a multiple of 32; default: the config's, 1024 for real
    configs, 128 for `tiny`). It also rewrites the memory-attention RoPE sizes to S/16.

    The model comes back through `freeze_sam2`: every parameter has `requires_grad=False`, it is in
    `eval()` and stays there even when a parent module calls `.train()` (the released regime), and
    the memory encoder binarises best masks as the released build does.
    """
    from hydra.utils import instantiate

    name, model_cfg = _model_config(config, image_size)
    model = instantiate(model_cfg, _recursive_=True)
    if checkpoint is not None:
        load_sam2_checkpoint(model, checkpoint, config_name=name)
    model = model.to(device)
    return freeze_sam2(model)


def _first(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}{', ...' if len(keys) > n else ''} ({len(keys)} in total)"


def load_sam2_checkpoint(model: nn.Module, checkpoint: str | os.PathLike, *, config_name: str = "?") -> None:
    """Load an official SAM2 checkpoint file into `model`, strictly.

    The file must be a `torch.save`d `{"model": state_dict}` readable with `weights_only=True` (the
    official format, also what `save_sam2_checkpoint` writes). Any unreadable file, missing `"model"`
    entry, missing or unexpected key, or shape mismatch raises `ValueError` naming the file, the
    config, and the first offending keys.
    """
    path = Path(checkpoint)
    where = f"SAM2 checkpoint {str(path)!r} for config {config_name!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on a wrong file (IndexError on text, ...)
        raise ValueError(
            f"{where}: cannot be read as a weights-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); expected an official SAM2 .pt file"
        ) from err
    if not isinstance(payload, dict) or "model" not in payload or not isinstance(payload["model"], dict):
        found = [str(k) for k in payload][:5] if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(
            f"{where}: expected a dict with a 'model' state dict (the official SAM2 format), found {found}"
        )
    state = payload["model"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model): {_first(mismatched)}")
    if problems:
        raise ValueError(
            f"{where} does not match the model: " + "; ".join(problems)
            + ". Check that the checkpoint belongs to this config (SAM 2.0 vs 2.1, t/s/b+/l)."
        )
    model.load_state_dict(state, strict=True)


def save_sam2_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s state dict in the official SAM2 format `{"model": state_dict}`, atomically.

    The file is written under a temporary name next to `path` and renamed when complete, so a
    crash never leaves a truncated checkpoint. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"model": state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _train_pinned_to_eval(model: nn.Module, mode: bool = True) -> nn.Module:
    """`model.train(mode)` for a frozen SAM2: always eval, whatever `mode` (the released regime)."""
    return nn.Module.train(model, False)


def freeze_sam2(model: nn.Module) -> nn.Module:
    """Freeze SAM2 for AuralSAM2 and pin it to eval mode; idempotent, returns `model`.

    * `requires_grad=False` on every parameter (no optimiser state, no `.grad`);
    * `eval()`, and pinned there: `model.train` is replaced on the instance by a function that always
      sets eval, so `composed.train()` on a parent module (which calls `child.train(True)`) leaves
      SAM2 in eval. The released code gets the same effect by calling `v_model.eval()` after
      `train()` every epoch; eval mode turns memory-attention dropout off, makes
      `only_obj_ptrs_in_the_past_for_eval` apply and enables mask binarisation for memory.
      State-dict keys are unchanged. (To unpin for an experiment: `del model.train`.)
    * `binarize_mask_from_pts_for_mem_enc=True`, the override the released builder adds: with the
      tracking loop's `is_mask_from_pts=True`, the memory encoder sees `(best mask > 0)` scaled to
      {-10, +10}.
    """
    model.requires_grad_(False)
    nn.Module.train(model, False)
    model.binarize_mask_from_pts_for_mem_enc = True
    if not isinstance(model.__dict__.get("train"), functools.partial):
        model.train = functools.partial(_train_pinned_to_eval, model)
    return model


def is_frozen(model: nn.Module) -> bool:
    """True when `model` is in eval, pinned there by `freeze_sam2`, and has no trainable parameter."""
    return (
        not model.training
        and isinstance(model.__dict__.get("train"), functools.partial)
        and not any(p.requires_grad for p in model.parameters())
    )
