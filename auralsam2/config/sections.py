"""The sections of an experiment config (`data`, `model`, `loss`, `optim`, `train`, `eval`): typed,
documented, defaulted pydantic models that forbid unknown keys."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from auralsam2.audio import VGGishConfig
from auralsam2.config.project import resolve_path
from auralsam2.decoding import DecodeMode
from auralsam2.evaluation import PROTOCOLS
from auralsam2.fuser import FuserConfig
from auralsam2.losses import AudioConConfig, SegLossWeights


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan: a typo, never a setting


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
    mask_prompt_pos_weight: float = Field(1.0, gt=0, description="weight of the mask-prompt BCE's positive cells "
                                          "(ours; > 1 marks a cell the evidence leaves in doubt, e.g. two sounders "
                                          "for an audio-only map, as on rather than off)")
    text_contrast: float = Field(0.0, ge=0, description="ours, weight of the text map's contrast (mask prompt with "
                                 "text): which of the frame's cells the expression describes; needed by "
                                 "model.fuser.mask_prompt_text 'relative'")
    text_contrast_temperature: float = Field(0.1, gt=0, description="temperature of the text contrast's softmax "
                                             "over the frame's cells (on cosines)")


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
    mask_prompt_lr_scale: float = Field(
        1.0, ge=0, description="ours: the main loop's lr for the parameters the mask prompt's maps are computed from "
        "(`AuralFuser.mask_prompt_parameters`) = lr x this; 0 keeps a warmed-up map as the warm-up left it (the main "
        "loop's steps on 5-frame windows moved it away from the referred object: BENCHMARKS.md)")


class TrainConfig(_Strict):
    """Loop length, seeds, precision, checkpointing, validation and model selection."""

    epochs: int = Field(140, ge=1, description="epochs (released scripts: v1s/v1m 140, v2 90, Ref-AVS 50; paper 180)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (the poly schedule "
                                                          "decays over min(epochs x steps/epoch, max_steps))")
    clips_per_step: int = Field(1, ge=1, description="clips per GPU per micro-step (released: 1); each keeps its "
                                "own frames, memory and AudioCon sampling, and the loss is the mean over clips")
    accumulate_steps: int = Field(1, ge=1, description="micro-steps per optimizer step (gradient accumulation): "
                                  "a step sees clips_per_step x accumulate_steps clips per GPU, in the same order "
                                  "whatever the split")
    mask_prompt_warmup_steps: int = Field(
        0, ge=0, description="ours: before the first step, train the mask prompt's maps alone for this many steps "
        "on their own losses (loss.mask_prompt, loss.text_contrast; an audio map that is not 'joint' also AudioCon, "
        "the map's own logits telling hard cells), with no SAM2 pass (a frame costs ~1/15 of a training step's; "
        "nothing to do without a mask prompt); 0 = off")
    mask_prompt_warmup_epochs: float = Field(
        0, ge=0, description="ours: the warm-up's length in passes over the training items (clips; Ref-AVS: "
        "expressions) instead of steps, so that it scales with the training set (steps = ceil(epochs x items / "
        "mask_prompt_warmup_clips)); set this or mask_prompt_warmup_steps, not both; 0 = off")
    mask_prompt_warmup_clips: int = Field(4, ge=1, description="clips per mask-prompt warm-up step")
    checkpoint_fuser_blocks: bool = Field(
        False, description="recompute each of the fuser's visual blocks in backward instead of keeping its "
        "activations: at 1024^2 they are ~83 % of what a clip keeps for backward (python -m "
        "bench.activation_memory), so several times more clips per micro-step fit, for about a third more fuser "
        "compute; the same gradients")
    prefetch: Literal["auto", "on", "off"] = Field(
        "auto", description="read the next step's items in a background thread (on a GPU: pinned, copied on a side "
                            "stream) while this step computes; auto = on a GPU only")
    compile: Literal["off", "fuser", "all"] = Field(
        "off", description="torch.compile the per-frame modules: the fuser, or all (+ VGGish, SAM2's memory "
                           "attention and encoder, decoder blocks); a few graphs (clip lengths), then none")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; aot_eager checks "
                                                         "tracing without code generation)")
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

    @model_validator(mode="after")
    def _one_warmup_length(self) -> TrainConfig:
        if self.mask_prompt_warmup_steps and self.mask_prompt_warmup_epochs:
            raise ValueError("train.mask_prompt_warmup_steps and train.mask_prompt_warmup_epochs are both set; the "
                             "warm-up's length is one of them: set the other to 0")
        return self

    @property
    def warms_up_mask_prompt(self) -> bool:
        return bool(self.mask_prompt_warmup_steps or self.mask_prompt_warmup_epochs)

    def mask_prompt_warmup_steps_for(self, n_items: int) -> int:
        """Warm-up steps for a training set of `n_items` items (`mask_prompt_warmup_epochs` passes, or
        `mask_prompt_warmup_steps` as given)."""
        if self.mask_prompt_warmup_epochs:
            steps = self.mask_prompt_warmup_epochs * n_items / self.mask_prompt_warmup_clips
            return max(1, math.ceil(steps - 1e-9))  # 50 passes x 24 items / 4 = 300 steps, not 301
        return self.mask_prompt_warmup_steps


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
    clips_per_batch: int = Field(1, ge=1, description="items per forward (frame t of each clip of one length in one "
                                 "decoder batch, each with its own memory): the same numbers, faster on a GPU")
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
