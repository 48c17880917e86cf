"""Build the frozen SAM2 of AuralSAM2 from the unmodified `sam2==1.1.0` package, load its official
checkpoint, and keep it frozen in `eval()` (compose -> instantiate -> load -> device -> freeze, as
`sam2/build_sam.py` does).

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
* `tiny`: a TEST-ONLY SAM2 of ~0.65 M parameters at 128 px (`auralsam2/backbone/configs/sam2_tiny.yaml`);
  it never has a real checkpoint;
* `synth`: the synthetic demo's small SAM2 (hidden 128, ~2.8 M parameters, 128 px;
  `auralsam2/backbone/configs/sam2_synth.yaml`), pretrained by `auralsam2 pretrain-tiny-sam2` into the
  committed `auralsam2/assets/sam2_tiny_synth.pt`;
* a path to a SAM2 model YAML file of your own.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path

import torch
from torch import nn

from auralsam2.checkpoints.strict import CheckpointError, read_weights, strict_load
from auralsam2.utils.files import atomic_torch_save
from auralsam2.utils.limits import MAX_CONFIG_BYTES, MAX_YAML_ALIASES

__all__ = [
    "PROJECT_CONFIGS",
    "SAM2_CONFIGS",
    "SAM2_CONFIG_ALIASES",
    "SAM2_TARGETS",
    "SYNTH_CONFIG",
    "TINY_CONFIG",
    "build_sam2_model",
    "freeze_sam2",
    "is_frozen",
    "load_model_config",
    "load_sam2_checkpoint",
    "resolve_sam2_config",
    "save_sam2_checkpoint",
]

TINY_CONFIG = "tiny"
SYNTH_CONFIG = "synth"
# The project's own SAM2 configs (auralsam2/backbone/configs/): `tiny` for tests, `synth` for the demo.
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
        return raw, Path(str(importlib.resources.files("auralsam2.backbone") / "configs" / PROJECT_CONFIGS[raw]))
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
        f"auralsam2.backbone.SAM2_CONFIG_ALIASES), 'tiny' (tests only), 'synth' (the demo's), or a path "
        f"to a SAM2 model YAML"
    )


# The classes a SAM2 model is built from: every `_target_` of the package's eight model configs and
# ours (a test checks this against the configs). A YAML naming anything else is refused before
# anything is instantiated: Hydra would call any importable callable (`torch.load` with
# `weights_only: false`, `builtins.open`, `os.system`).
SAM2_TARGETS = frozenset({
    "sam2.modeling.sam2_base.SAM2Base",
    "sam2.modeling.backbones.image_encoder.ImageEncoder",
    "sam2.modeling.backbones.image_encoder.FpnNeck",
    "sam2.modeling.backbones.hieradet.Hiera",
    "sam2.modeling.position_encoding.PositionEmbeddingSine",
    "sam2.modeling.memory_attention.MemoryAttention",
    "sam2.modeling.memory_attention.MemoryAttentionLayer",
    "sam2.modeling.sam.transformer.RoPEAttention",
    "sam2.modeling.memory_encoder.MemoryEncoder",
    "sam2.modeling.memory_encoder.MaskDownSampler",
    "sam2.modeling.memory_encoder.Fuser",
    "sam2.modeling.memory_encoder.CXBlock",
})


def _targets(node, where: str = "model") -> list[tuple[str, str]]:
    """(dotted location, value) of every `_target_` under an OmegaConf node (resolved)."""
    from omegaconf import DictConfig, ListConfig

    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node[key]
            if key == "_target_":
                found.append((where, str(value)))
            else:
                found += _targets(value, f"{where}.{key}")
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            found += _targets(value, f"{where}[{i}]")
    return found


def _read_model_yaml(name: str, path: Path):
    """The YAML of a SAM2 config as OmegaConf, refused (`ValueError`) before parsing when it is large or
    uses many aliases."""
    import yaml
    from omegaconf import OmegaConf

    try:
        size = path.stat().st_size
        text = path.read_text(encoding="utf-8") if size <= MAX_CONFIG_BYTES else ""
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"SAM2 config {name!r} ({path}): cannot be read ({err})") from None
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"SAM2 config {name!r} ({path}) is {size} bytes; a SAM2 model YAML is a few KB "
                         f"(limit {MAX_CONFIG_BYTES}): it is not a model config")
    try:
        aliases = sum(isinstance(t, yaml.AliasToken) for t in yaml.scan(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ValueError(f"SAM2 config {name!r} ({path}): not valid YAML: {err}") from None
    if aliases > MAX_YAML_ALIASES:
        raise ValueError(f"SAM2 config {name!r} ({path}) uses {aliases} YAML aliases (limit {MAX_YAML_ALIASES}); "
                         "it is not a model config")
    try:
        return OmegaConf.create(text)
    except Exception as err:  # noqa: BLE001 (OmegaConf's errors: grammar, interpolation, types)
        raise ValueError(f"SAM2 config {name!r} ({path}): not a valid config: {err}") from None


def _model_config(config: str | os.PathLike, image_size: int | None):
    """The OmegaConf `model` node of `config`, with the stock post-processing overrides applied; every
    `_target_` checked against `SAM2_TARGETS` (`ValueError` naming the refused ones)."""
    from omegaconf import OmegaConf

    name, path = resolve_sam2_config(config)
    cfg = _read_model_yaml(name, path)
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
    try:
        OmegaConf.resolve(model_cfg)
    except Exception as err:  # noqa: BLE001 (an interpolation that does not resolve)
        raise ValueError(f"SAM2 config {name!r} ({path}): {err}") from None
    refused = [f"{where}: {target}" for where, target in _targets(model_cfg) if target not in SAM2_TARGETS]
    if refused:
        raise ValueError(f"SAM2 config {name!r} ({path}) names classes a SAM2 model is not built from, refused "
                         f"before anything was built: {'; '.join(refused)}. Allowed: the sam2.modeling classes of "
                         "the package's own configs (auralsam2.backbone.build.SAM2_TARGETS)")
    return name, model_cfg


def load_model_config(config: str | os.PathLike):
    """(canonical name, the checked OmegaConf `model` node) of a SAM2 config; what `build_sam2_model`
    instantiates."""
    return _model_config(config, None)


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


def load_sam2_checkpoint(model: nn.Module, checkpoint: str | os.PathLike, *, config_name: str = "?") -> None:
    """Load an official SAM2 checkpoint file (`{"model": state_dict}`, weights-only; also what
    `save_sam2_checkpoint` writes) into `model`, strictly. Errors name the file, the config and the
    offending keys."""
    where = f"SAM2 checkpoint {str(checkpoint)!r} for config {config_name!r}"
    payload = read_weights(checkpoint, where)
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        found = [str(k) for k in payload][:5] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{where}: expected a dict with a 'model' state dict (the official SAM2 format), "
                              f"found {found}")
    strict_load(model, payload["model"], where, "SAM2",
                hint=". Check that the checkpoint belongs to this config (SAM 2.0 vs 2.1, t/s/b+/l).")


def save_sam2_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write `model`'s state dict in the official SAM2 format `{"model": state_dict}`, atomically.

    Unsealed on purpose: it stands in for a released checkpoint (which carries no checksum), so the
    files it writes take exactly the path an official download takes.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({"model": state}, path, seal=False)


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
