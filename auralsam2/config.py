"""The typed experiment config: one YAML file (plus `--set a.b=c` overrides) -> `ExperimentConfig`.

Every field has a type, a default and one line of documentation (`Field(description=...)`), and
every model forbids unknown keys, so a misspelt field is an error naming it. The architecture and
loss settings are the issue-4 models themselves (`FuserConfig`, `VGGishConfig`, `AudioConConfig`,
`SegLossWeights`), embedded, not copied.

Defaults are the released AuralSAM2 training recipe (reference `official_auralsam2.md` §5-8):
AdamW lr 1e-4, weight decay 0.05 (0 for norm layers and positional embeddings), betas
(0.9, 0.999), poly decay (power 0.9) per iteration without warm-up, one clip per GPU, bf16 autocast
on GPU (fp32 on CPU), no gradient clipping. Epochs are per preset (released scripts: v1s 140,
v1m 140, v2 90, Ref-AVS 50; the paper states 180 for all). Deliberate differences from the
release are named options: model selection on `val` (the release selects on test; `select_on:
test` is allowed and logged loudly), VGGish trained (the paper; the release freezes it:
`model.train_vggish: false`).

YAML files may start with `extends: other.yaml` (a path relative to the file): the other file is
loaded first and this one's keys are merged into it (nested mappings merge key by key).
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from auralsam2.audio import VGGishConfig
from auralsam2.decoding import DecodeMode
from auralsam2.evaluation import PROTOCOLS
from auralsam2.fuser import FuserConfig
from auralsam2.losses import AudioConConfig, SegLossWeights

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PROJECT_ROOT",
    "SAM2Settings",
    "TrainConfig",
    "apply_overrides",
    "config_to_yaml",
    "demo_config_path",
    "flatten_config",
    "load_config",
    "resolve_path",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SAM2Settings(_Strict):
    """The frozen SAM2. Training and evaluation use the SAM2 the feature cache was built with; these
    fields name it and are checked against the cache's fingerprint."""

    config: str = Field("sam2_hiera_l", description="SAM2 config name or alias (SAM 2.0 by default), 'tiny', "
                                                    "'synth' or a YAML path")
    checkpoint: str | None = Field(None, description="official SAM2 .pt (checked by sha256 against the cache); "
                                                     "None = whatever the cache recorded")
    image_size: int | None = Field(None, description="model input size S; None = the config's (1024 real)")


class DataConfig(_Strict):
    """Where the training and evaluation clips come from: a feature cache (one view per epoch)."""

    dataset: Literal["avss", "avsbench-s4", "avsbench-ms3", "refavs"] = Field(
        "avss", description="dataset the cache was built from (decides AVS clip vs Ref-AVS expression items)")
    cache: str = Field("cache/avss", description="feature cache folder; relative = under the data folder")
    ingest: str = Field("ingest/avss", description="ingest folder the cache is built from (pipeline); relative = "
                                                   "under the data folder")
    cache_views: int = Field(1, ge=1, description="views per training clip when the pipeline builds the cache "
                                                  "(view 0 + seeded augmentations)")
    subsets: tuple[str, ...] = Field((), description="subsets used (v1s, v1m, v2); empty = all in the cache "
                                                     "(the released v2 'merged pool')")
    train_split: str = Field("train", description="split trained on")
    val_split: str | None = Field("val", description="split used for model selection (None: keep the last epoch)")
    views: Literal["random", "cycle", "first"] = Field(
        "random", description="view of a training clip each epoch: seeded random, epoch modulo views, or view 0")
    max_train_items: int | None = Field(None, ge=1, description="use only the first N training items (demos)")
    train_frames: int | None = Field(None, ge=1, description="ours: train on a window of this many consecutive "
                                     "frames of each clip, placed per (seed, epoch, item); None = every frame "
                                     "(released). Evaluation always sees whole clips")
    max_val_items: int | None = Field(None, ge=1, description="validate on the first N val items only")
    include_null_train: bool = Field(True, description="Ref-AVS: train on null expressions too (released)")


class ModelConfig(_Strict):
    """AuralSAM2 = frozen SAM2 + AuralFuser (+ VGGish; + the frozen text encoder's cached output)."""

    sam2: SAM2Settings = Field(default_factory=SAM2Settings, description="the frozen SAM2 (see SAM2Settings)")
    fuser: FuserConfig = Field(default_factory=FuserConfig, description="AuralFuser architecture and ablations")
    vggish: VGGishConfig = Field(default_factory=VGGishConfig, description="VGGish widths (default: AudioSet VGGish)")
    vggish_checkpoint: str | None = Field(None, description="torchvggish weights (vggish-10086976.pth); None = random")
    train_vggish: bool = Field(True, description="train VGGish (paper); false = frozen as released")
    audio_channels: int = Field(2, ge=1, description="audio channels, one VGGish pass each (2 = stereo, released)")
    text_encoder: str | None = Field(None, description="Ref-AVS: the frozen encoder of expressions, a local Hugging "
                                     "Face folder or a model id in the local HF cache (released: "
                                     "distilbert/distilroberta-base); its output is cached once. None = no text")
    official_query_pe: bool = Field(True, description="reproduce the released query-PE aliasing in the decoder")
    init_checkpoint: str | None = Field(None, description="start from this fuser checkpoint (ours or a released "
                                                          "AuralSAM2 .pth); None = fresh init")

    @property
    def text_encoder_source(self) -> str | None:
        """`text_encoder` as an absolute folder when it names one (relative: the current directory,
        else the project root), else the model id as given (looked up in the local HF cache)."""
        if not self.text_encoder:
            return None
        folder = resolve_path(self.text_encoder)
        return str(folder) if folder.is_dir() else self.text_encoder

    @model_validator(mode="after")
    def _audio_width(self) -> ModelConfig:
        width = self.audio_channels * self.vggish.embedding_dim
        if self.fuser.uses_audio and self.fuser.audio_dim != width:
            raise ValueError(
                f"model.fuser.audio_dim={self.fuser.audio_dim} but the audio encoder gives model.audio_channels "
                f"({self.audio_channels}) x model.vggish.embedding_dim ({self.vggish.embedding_dim}) = {width}; "
                "set model.fuser.audio_dim to that product")
        return self


class LossConfig(_Strict):
    """The training loss: released SAM2 multimask segmentation loss + the contrastive term."""

    seg: SegLossWeights = Field(default_factory=SegLossWeights, description="segmentation loss weights")
    audiocon: AudioConConfig = Field(default_factory=AudioConConfig, description="contrastive loss (mode, weight)")
    mask_prompt: float = Field(5.0, ge=0, description="weight of the mask-prompt BCE (only with "
                               "model.fuser.mask_prompt; it calibrates the mask threshold)")


class OptimConfig(_Strict):
    """AdamW over the fuser (+ VGGish) with the released parameter groups and poly schedule."""

    lr: float = Field(1e-4, gt=0, description="base learning rate (released: 1e-4)")
    weight_decay: float = Field(0.05, ge=0, description="weight decay; 0 for norm layers and pos-embeds (released)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (released)")
    eps: float = Field(1e-8, gt=0, description="AdamW eps (torch default, released)")
    vggish_lr_scale: float = Field(0.1, ge=0, description="VGGish lr = lr x this (released `manipulate_params`)")
    poly_power: float = Field(0.9, ge=0, description="lr = base (1 - step / total_steps) ** power, per iteration")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (released: none)")
    grad_clip: float | None = Field(None, gt=0, description="max grad norm; None = no clipping (released)")


class TrainConfig(_Strict):
    """Loop length, seeds, precision, checkpointing, validation and model selection."""

    epochs: int = Field(140, ge=1, description="epochs (released scripts: v1s/v1m 140, v2 90, Ref-AVS 50; paper 180)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (the poly schedule "
                                                          "decays over min(epochs x steps/epoch, max_steps))")
    clips_per_step: Literal[1] = Field(1, description="clips per GPU per step (released: 1; the fuser mixes "
                                                       "frames of all clips in a batch, so only 1 is supported)")
    seed: int = Field(666, description="seed; rank r uses seed + r (released: 666 + rank)")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms + fixed threads: "
                                                   "an interrupted + resumed CPU run ends bit-identical")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 autocast around the forward on GPU, fp32 on CPU (released)")
    device: str = Field("auto", description="auto (cuda:LOCAL_RANK when present, else cpu), cpu, cuda, cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    cudnn_attention: bool = Field(False, description="allow cuDNN's scaled-dot-product attention kernels on GPU. "
                                  "Off: on H100 with torch 2.11 their backward returned NaN gradients for SAM2's "
                                  "token-to-image attention (bench/gpu_demo.py; pytorch#196678); flash / "
                                  "memory-efficient attention are used instead")
    cond_frame: Literal["middle", "first"] = Field("middle", description="conditioning frame in training "
                                                                         "(released: N // 2)")
    log_every_steps: int = Field(10, ge=1, description="log step metrics (batched to the tracker) every N steps")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="also write last.ckpt every N steps "
                                                                       "(always at each epoch end)")
    validate_every_epochs: int = Field(1, ge=1, description="validate (and select) every N epochs and at the end")
    select_on: Literal["val", "test"] = Field("val", description="split for model selection; 'test' reproduces "
                                                                 "the release and is logged as a warning + tag")
    select_protocol: str = Field("auralsam2_released", description="protocol whose J selects the best checkpoint")
    select_decoding: DecodeMode = Field("iou_select", description="decoding used for selection (released)")
    stop_after_steps: int | None = Field(None, ge=1, description="stop as if interrupted after this global step "
                                                                 "(last.ckpt written; resume with --resume)")
    ddp_find_unused_parameters: Literal["auto", "on", "off"] = Field(
        "auto", description="DDP find_unused_parameters; auto = on when some trainable parameter can miss a "
                            "gradient (see engine.needs_find_unused)")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("select_protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        if value not in PROTOCOLS:
            raise ValueError(f"unknown protocol {value!r}; known: {sorted(PROTOCOLS)}")
        return value


class EvalConfig(_Strict):
    """Test-time evaluation: splits, protocols, decoding modes and what to write."""

    splits: tuple[str, ...] = Field(("test",), description="splits evaluated by `auralsam2 evaluate` (Ref-AVS: "
                                                           "test_s, test_u, test_n)")
    protocols: tuple[str, ...] = Field(("avsbench_official", "auralsam2_released"),
                                       description="metric protocols (auralsam2.evaluation.PROTOCOLS)")
    decodings: tuple[DecodeMode, ...] = Field(("first", "iou_select", "iou_occ_select"),
                                            description="mask decoding modes, all from one forward per clip")
    cond_frame: Literal["auto", "first", "middle"] = Field(
        "auto", description="conditioning frame: auto = 0 for AVSBench, N // 2 for Ref-AVS (released)")
    primary_protocol: str | None = Field(None, description="protocol of the headline numbers and overlays; "
                                                           "None = the first of `protocols`")
    primary_decoding: DecodeMode = Field("iou_select", description="decoding of the headline numbers and overlays")
    avss_semantic: bool = Field(True, description="AVSS: also the 71-class metric with the oracle class of each "
                                                  "frame (a class-agnostic model has no class prediction)")
    overlays: int = Field(3, ge=0, description="overlay PNGs of the N best and N worst clips (frame | gt | pred)")
    max_items: int | None = Field(None, ge=1, description="evaluate only the first N items of each split")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("protocols")
    @classmethod
    def _known_protocols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in PROTOCOLS]
        if unknown or not value:
            raise ValueError(f"unknown or no protocols {unknown or list(value)}; known: {sorted(PROTOCOLS)}")
        return value

    @property
    def headline_protocol(self) -> str:
        return self.primary_protocol or self.protocols[0]


class ExperimentConfig(_Strict):
    """One experiment: what to train on, which model, how to train and evaluate, where to write."""

    experiment: str = Field("auralsam2", description="experiment name (one MLflow experiment per dataset preset)")
    run_name: str | None = Field(None, description="run name; None = a UTC timestamp at start")
    description: str = Field("", description="free text, logged as the MLflow run description")
    runs_dir: str = Field("runs", description="run folders live in <runs_dir>/<experiment>/<run_name>; relative "
                                              "= under the data folder")
    data: DataConfig = Field(default_factory=DataConfig, description="data (see DataConfig)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="model (see ModelConfig)")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss (see LossConfig)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="optimizer (see OptimConfig)")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training loop (see TrainConfig)")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation (see EvalConfig)")

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.eval.primary_protocol is not None and self.eval.primary_protocol not in self.eval.protocols:
            raise ValueError(f"eval.primary_protocol {self.eval.primary_protocol!r} is not in eval.protocols "
                             f"{list(self.eval.protocols)}")
        if (self.data.dataset == "refavs") != (self.model.fuser.variant == "refavs"):
            raise ValueError(f"data.dataset={self.data.dataset!r} with model.fuser.variant="
                             f"{self.model.fuser.variant!r}: use model.fuser.variant 'refavs' for Ref-AVS and "
                             "'avs' for the AVSBench datasets (ablate inputs with model.fuser.modalities)")
        con = self.loss.audiocon
        if con.mode in ("paper", "official") and con.weight > 0 and not self.model.fuser.uses_audio:
            raise ValueError(f"loss.audiocon.mode={con.mode!r} contrasts pixels with the audio, but "
                             f"model.fuser.modalities={self.model.fuser.modalities!r} has none; set "
                             "loss.audiocon.mode to 'supcon' or 'off'")
        if self.data.dataset != "refavs" and (self.model.fuser.uses_text or self.model.text_encoder):
            raise ValueError(f"data.dataset={self.data.dataset!r} has no expressions: model.fuser.modalities="
                             f"{self.model.fuser.modalities!r} / model.text_encoder={self.model.text_encoder!r} need "
                             "Ref-AVS; use modalities 'audio' or 'visual' and no text encoder")
        if self.data.dataset == "refavs" and self.model.fuser.uses_text and not self.model.text_encoder:
            raise ValueError(f"model.fuser.modalities={self.model.fuser.modalities!r} reads the expressions: set "
                             "model.text_encoder (released: distilbert/distilroberta-base, a local folder or a model "
                             "id in the local Hugging Face cache)")
        return self

    @property
    def task(self) -> Literal["avs", "ref"]:
        """`ref` (one item per expression) for Ref-AVS, `avs` (one item per clip) otherwise."""
        return "ref" if self.data.dataset == "refavs" else "avs"

    def with_run_name(self, run_name: str | None = None) -> ExperimentConfig:
        """A copy with `run_name` set (default: a UTC timestamp), as the run folder needs one."""
        name = run_name or self.run_name or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        return self.model_copy(update={"run_name": name})


# --------------------------------------------------------------------------------------------
# Loading, overrides, dumping
# --------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.expanduser().resolve()
    if path in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, (*seen, path)))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (presets are in {PROJECT_ROOT / 'configs'})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
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
        return yaml.safe_load(text)
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
            lines.append(f"  {loc}: unknown field (check the spelling; see auralsam2/config.py)")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})" if "input" in e else f"  {loc}: {e['msg']}")
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


def resolve_path(value: str | os.PathLike, base: Path | None = None) -> Path:
    """A config path: absolute as is; relative -> under `base` when given (the data folder for data
    paths), else the current directory if it exists there, else the project root."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if base is not None:
        return (base / path).resolve()
    if path.exists():
        return path.resolve()
    return (PROJECT_ROOT / path).resolve()


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
