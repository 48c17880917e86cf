"""The trainable model from an experiment config: AuralFuser + audio encoder around the frozen SAM2,
optionally started from a fuser checkpoint (ours or a released AuralSAM2 `.pth`)."""

from __future__ import annotations

import os

from torch import nn

from auralsam2.audio import AudioEncoder, VGGish
from auralsam2.checkpoints import (
    CheckpointError,
    load_fuser_checkpoint,
    load_released_fuser,
    load_vggish_weights,
)
from auralsam2.config import ModelConfig, resolve_path
from auralsam2.fuser import AuralFuser
from auralsam2.model import AuralSAM2
from auralsam2.utils.limits import meta_parameter_count

__all__ = ["build_model", "compile_model", "load_fuser_weights"]


def build_model(cfg: ModelConfig, sam2: nn.Module) -> AuralSAM2:
    """Fuser + audio encoder (+ the frozen SAM2) from the config; `init_checkpoint` loaded if set.
    Sizes are checked on the meta device first (`auralsam2.utils.limits`)."""
    meta_parameter_count(lambda: AuralFuser(cfg.fuser), "model.fuser")
    if cfg.fuser.uses_audio:
        meta_parameter_count(lambda: VGGish(cfg.vggish), "model.vggish")
    fuser = AuralFuser(cfg.fuser)
    audio = None
    if cfg.fuser.uses_audio:
        audio = AudioEncoder(VGGish(cfg.vggish), cfg.audio_channels, trainable=cfg.train_vggish)
        if cfg.vggish_checkpoint:
            load_vggish_weights(audio.vggish, resolve_path(cfg.vggish_checkpoint))
            audio.vggish.requires_grad_(cfg.train_vggish)
    if cfg.fuser.dim != sam2.hidden_dim:
        raise ValueError(f"model.fuser.dim={cfg.fuser.dim} but the cache's SAM2 has hidden dim {sam2.hidden_dim}; "
                         "set model.fuser.dim (and fusion_dim) to match")
    model = AuralSAM2(sam2, fuser, audio, official_query_pe=cfg.official_query_pe)
    if cfg.init_checkpoint:
        load_fuser_weights(model, resolve_path(cfg.init_checkpoint))
    return model


def load_fuser_weights(model: AuralSAM2, path: str | os.PathLike) -> str:
    """Load our `best.ckpt`/fuser checkpoint or a released AuralSAM2 `.pth` into `model`; returns
    a one-line report. Our format must match the model's fuser config exactly."""
    try:
        loaded = load_fuser_checkpoint(path)
    except CheckpointError as err:
        if "load_released_fuser" not in str(err):
            raise
        report = load_released_fuser(model.fuser, path, model.audio_encoder)
        return report.summary()
    if loaded.fuser.config != model.fuser.config:
        raise CheckpointError(f"{path}: fuser config {loaded.fuser.config.model_dump()} differs from the model's "
                              f"{model.fuser.config.model_dump()}; evaluate it with its own config")
    model.fuser.load_state_dict(loaded.fuser.state_dict())
    if loaded.audio_encoder is not None and model.audio_encoder is not None:
        model.audio_encoder.vggish.load_state_dict(loaded.audio_encoder.vggish.state_dict())
    return f"{path}: loaded our fuser checkpoint (fingerprints {loaded.fingerprints})"


def compile_model(model: AuralSAM2, what: str, backend: str = "inductor") -> list[str]:
    """`torch.compile` the parts of `model` that run every frame, in place (`nn.Module.compile`: the
    parameter names, so checkpoints, do not change); returns their names. `what`: "off", "fuser",
    or "all" = the fuser, VGGish, and SAM2's memory attention, memory encoder and decoder blocks
    (the stock modules our tracking calls). Shapes change only between clip lengths, expression
    lengths and the memory bank's first frames, so after those few graphs no step recompiles."""
    if what == "off":
        return []
    parts: dict[str, nn.Module] = {"fuser": model.fuser}
    if what == "all":
        sam2 = model.sam2
        if model.audio_encoder is not None:
            parts["audio_encoder"] = model.audio_encoder
        parts["sam2.memory_attention"] = sam2.memory_attention
        parts["sam2.memory_encoder"] = sam2.memory_encoder
        for i, layer in enumerate(sam2.sam_mask_decoder.transformer.layers):
            parts[f"sam2.sam_mask_decoder.transformer.layers.{i}"] = layer
    for module in parts.values():
        module.compile(backend=backend)
    return list(parts)
