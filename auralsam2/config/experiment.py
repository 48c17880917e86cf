"""`ExperimentConfig`: the sections together, and the checks that span sections."""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from auralsam2.config.sections import (
    DataConfig,
    EvalConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    _Strict,
)

# Experiment and run names become folder names (<runs_dir>/<experiment>/<run_name>) and MLflow names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]{0,127}")


def check_name(value: str, what: str) -> str:
    """`value` when it is a name (letters, digits, `. _ + = @ -`, no separators, not `..`), else ValueError."""
    if not NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} must be a name: letters, digits and . _ + = @ - (starting with a letter or "
                         "digit, no '/' or '..', at most 128 characters), as it names a folder")
    return value


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

    @field_validator("experiment")
    @classmethod
    def _experiment_is_a_name(cls, value: str) -> str:
        return check_name(value, "experiment")

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_name(cls, value: str | None) -> str | None:
        return value if value is None else check_name(value, "run_name")

    @field_validator("runs_dir")
    @classmethod
    def _runs_dir_stays_put(cls, value: str) -> str:
        if ".." in value.replace("\\", "/").split("/"):
            raise ValueError("runs_dir must not climb with '..' (a relative folder is under the data folder; give an "
                             "absolute path for another place)")
        return value

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
        fuser = self.model.fuser
        if self.optim.mask_prompt_lr_scale == 0 and fuser.mask_prompt and not self.warm_up_trains_the_map:
            raise ValueError("optim.mask_prompt_lr_scale: 0 freezes the mask prompt's maps in the main loop, and "
                             "nothing trains them before it: set train.mask_prompt_warmup_epochs (or _steps; an audio "
                             "map that is not 'joint' needs loss.audiocon on for it) or mask_prompt_lr_scale > 0")
        if (fuser.mask_prompt and fuser.mask_prompt_text == "relative" and fuser.uses_audio and fuser.uses_text
                and self.loss.text_contrast == 0):
            raise ValueError("model.fuser.mask_prompt_text='relative' trains the text map by the text contrast "
                             "alone (its shift of the audio margin is detached), and loss.text_contrast is 0: set "
                             "loss.text_contrast > 0 (the demo: 5) or mask_prompt_text: 'min'")
        return self

    @property
    def warm_up_audiocon(self) -> bool:
        """Whether the mask-prompt warm-up adds AudioCon: an audio map that reads its cosine detached
        (any `mask_prompt_text` but joint, e.g. AVSBench) with AudioCon on in a form with audio."""
        fuser, audiocon = self.model.fuser, self.loss.audiocon
        return (fuser.mask_prompt and fuser.mask_prompt_text != "joint" and fuser.uses_audio
                and audiocon.mode in ("paper", "official") and audiocon.weight > 0)

    @property
    def warm_up_trains_the_map(self) -> bool:
        """Whether `train.mask_prompt_warmup_*` has more to train than an audio map's threshold (which
        the main loop's mask loss trains as well): a joint map, AudioCon, or a text map's contrast."""
        fuser = self.model.fuser
        return bool(self.train.warms_up_mask_prompt and fuser.mask_prompt and (
            fuser.mask_prompt_text == "joint" or self.warm_up_audiocon
            or (fuser.uses_text and self.loss.text_contrast > 0)))

    @property
    def task(self) -> Literal["avs", "ref"]:
        """`ref` (one item per expression) for Ref-AVS, `avs` (one item per clip) otherwise."""
        return "ref" if self.data.dataset == "refavs" else "avs"

    def with_run_name(self, run_name: str | None = None) -> ExperimentConfig:
        """A copy with `run_name` set (default: a UTC timestamp), as the run folder needs one."""
        name = run_name or self.run_name or dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
        return self.model_copy(update={"run_name": check_name(name, "run_name")})
