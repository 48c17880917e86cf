"""Loading (YAML with `extends`, `--set a.b=c` overrides), validating with errors that name the
field, dumping and flattening experiment configs; the demo presets and the tiny test model."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from auralsam2.config.experiment import ExperimentConfig
from auralsam2.config.project import PROJECT_ROOT, resolve_path
from auralsam2.utils.limits import MAX_CONFIG_BYTES, MAX_YAML_ALIASES


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, the field and the fix."""


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans,
    so `mode: off` or `--set train.ddp_find_unused_parameters=on` would arrive as False / True;
    as strings they reach the Literal fields as written, and pydantic still reads them for a bool."""


def _compose_node_counting_aliases(self, parent, index):
    if self.check_event(yaml.AliasEvent):
        self.aliases_seen = getattr(self, "aliases_seen", 0) + 1
        if self.aliases_seen > MAX_YAML_ALIASES:
            raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (*name); a config needs none, and many "
                                 "can expand it exponentially")
    return yaml.SafeLoader.compose_node(self, parent, index)


_Yaml12Loader.compose_node = _compose_node_counting_aliases
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse user-written YAML (config files, grids, `--set` values) with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, (*seen, path)))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (presets are in {PROJECT_ROOT / 'configs'})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is not an experiment config (they are a few KB; "
                          f"limit {MAX_CONFIG_BYTES})")
    try:
        raw = load_yaml(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_yaml(path.parent / str(parent), (*seen, path))
    return _merge(base, raw)


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: `1e-4`, `true`, `[3, 3, 3]`, `null`, `sam2_hiera_l`."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def _field_names(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    if model is None or name not in model.model_fields:
        return None
    annotation = model.model_fields[name].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw config mapping; an unknown field is an error naming
    it and listing the valid names at that level."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE, e.g. optim.lr=3e-4")
        dotted, text = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"{source} {item!r}: empty key")
        model: type[BaseModel] | None = ExperimentConfig
        node = out
        for depth, part in enumerate(parts):
            if model is not None and part not in model.model_fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(f"{source} {item!r}: unknown field {'.'.join(parts[: depth + 1])!r}; fields of "
                                  f"{where}: {', '.join(_field_names(model))}")
            if depth == len(parts) - 1:
                node[part] = _parse_value(text)
            else:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = {} if child is None else child
                    if not isinstance(child, dict):
                        raise ConfigError(f"{source} {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
                    node[part] = child
                node = child
                model = _submodel(model, part)
    return out


def _validation_message(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown field (check the spelling; see auralsam2/config/sections.py)")
            continue
        msg = e["msg"].removeprefix("Value error, ")  # our validators' own words, without pydantic's label
        if "input" in e and not isinstance(e["input"], Mapping):
            lines.append(f"  {loc}: {msg} (got {e['input']!r})")
        else:  # a cross-field check: its message names the fields; echoing the whole section would bury it
            lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid experiment config:\n" + "\n".join(lines)


def config_from_mapping(raw: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a raw mapping; errors name the source and every offending field."""
    try:
        return ExperimentConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_validation_message(err, source)) from None


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config (None = all defaults), apply `--set` overrides, validate."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    return config_from_mapping(raw, str(path) if path is not None else "<defaults>")


def config_to_yaml(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML (every field, defaults included): load_config round-trips it."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten_config(config: ExperimentConfig | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim.lr": 1e-4, "model.fuser.levels": 3, ...}` (lists become strings), for MLflow params."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            out[name] = value
    return out


def demo_config_path(name: str = "demo") -> Path:
    """`configs/<name>.yaml` (the pretrained synthetic SAM2; `demo` for AVSBench, `demo_refavs` for
    Ref-AVS) when its SAM2 checkpoint is present, else `configs/<name>_tiny.yaml` (the random `tiny`
    SAM2; learns much less)."""
    demo = PROJECT_ROOT / "configs" / f"{name}.yaml"
    checkpoint = load_config(demo).model.sam2.checkpoint
    if checkpoint and resolve_path(checkpoint).is_file():
        return demo
    return PROJECT_ROOT / "configs" / f"{name}_tiny.yaml"


# A fuser and VGGish small enough for CPU tests and benchmarks, matching the `tiny` SAM2 (hidden 32) and
# the `tiny` text encoder (hidden 32); `--set` overrides, one place for the tests and `bench/`.
TINY_MODEL_OVERRIDES = (
    "model.sam2.config=tiny",
    "model.fuser.dim=32", "model.fuser.audio_dim=32", "model.fuser.text_dim=32", "model.fuser.text_hidden=64",
    "model.fuser.f_depths=[1,1,1]", "model.fuser.a_depth=1", "model.fuser.heads=2", "model.fuser.mlp_hidden=64",
    "model.fuser.fusion_dim=16",
    "model.vggish.conv_widths=[4,8,16,16]", "model.vggish.fc_width=32", "model.vggish.embedding_dim=16",
)
