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

The package's modules follow the config's seams: `sections` (one model per section), `experiment`
(`ExperimentConfig` and the cross-section checks), `loading` (files, overrides, dumping), `project` (the project root, relative paths).
"""

from auralsam2.config.experiment import ExperimentConfig
from auralsam2.config.loading import (
    TINY_MODEL_OVERRIDES,
    ConfigError,
    apply_overrides,
    config_from_mapping,
    config_to_yaml,
    demo_config_path,
    flatten_config,
    load_config,
    load_yaml,
)
from auralsam2.config.project import PROJECT_ROOT, resolve_path
from auralsam2.config.sections import (
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    SAM2Settings,
    TrainConfig,
)

__all__ = [
    "TINY_MODEL_OVERRIDES",
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
    "config_from_mapping",
    "config_to_yaml",
    "demo_config_path",
    "flatten_config",
    "load_config",
    "load_yaml",
    "resolve_path",
]
