"""Our own checkpoint format for the trainable side: the AuralFuser (with its text projection) and
VGGish, with their resolved configs and content fingerprints (`best.ckpt` of a run)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
from auralsam2.checkpoints.strict import CheckpointError, read_weights, strict_load
from auralsam2.fuser import AuralFuser, FuserConfig
from auralsam2.fuser.mask_prompt import LEGACY_KEYS as MASK_PROMPT_LEGACY_KEYS
from auralsam2.utils.files import atomic_torch_save
from auralsam2.utils.hashing import state_sha256
from auralsam2.utils.limits import meta_parameter_count

__all__ = ["FUSER_FORMAT", "LoadedFuser", "load_fuser_checkpoint", "save_fuser_checkpoint", "state_fingerprint",
           "upgrade_fuser_state"]

FUSER_FORMAT = "auralsam2-fuser/1"


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """The first 16 hex chars of `state_sha256` (names, dtypes, shapes and raw bytes)."""
    return state_sha256(state)[:16]


def upgrade_fuser_state(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename keys written before a module moved (the mask prompt's parameters) to today's names;
    `prefix`: where the fuser sits in the state dict (`fuser.` in a training state)."""
    renames = {prefix + old: prefix + new for old, new in MASK_PROMPT_LEGACY_KEYS.items()}
    return {renames.get(k, k): v for k, v in state.items()}


@dataclass
class LoadedFuser:
    """`load_fuser_checkpoint` result: rebuilt modules plus the checkpoint's metadata."""

    fuser: AuralFuser
    audio_encoder: AudioEncoder | None
    fingerprints: dict[str, str]
    extra: dict[str, Any]


def save_fuser_checkpoint(
    path: str | os.PathLike,
    fuser: AuralFuser,
    audio_encoder: AudioEncoder | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write fuser (+ text projection, which lives in the fuser) and VGGish weights with the resolved
    configs and content fingerprints, atomically. `extra` must hold only plain Python values (it is
    read back with `weights_only=True`)."""
    fuser_sd = {k: v.detach().cpu() for k, v in fuser.state_dict().items()}
    payload: dict[str, Any] = {
        "format": FUSER_FORMAT,
        "fuser_config": fuser.config.model_dump(mode="json"),
        "fuser": fuser_sd,
        "fingerprints": {"fuser": state_fingerprint(fuser_sd)},
        "extra": dict(extra or {}),
    }
    if audio_encoder is not None:
        vgg_sd = {k: v.detach().cpu() for k, v in audio_encoder.vggish.state_dict().items()}
        payload["vggish_config"] = audio_encoder.vggish.config.model_dump(mode="json")
        payload["audio"] = {"channels": audio_encoder.channels, "trainable": audio_encoder.trainable}
        payload["vggish"] = vgg_sd
        payload["fingerprints"]["vggish"] = state_fingerprint(vgg_sd)
    return atomic_torch_save(payload, path)


def _check_config_fits(build, state: Mapping[str, Tensor], path: Path, field: str) -> None:
    """The stored config describes the stored weights (counted on the meta device, before the model is
    allocated): a config altered to ask for a huge model is an error, not an allocation."""
    want = meta_parameter_count(build, f"{path}: {field}")
    have = sum(v.numel() for v in state.values() if isinstance(v, Tensor) and v.is_floating_point())
    if want > have:
        raise CheckpointError(f"{path}: its {field} describes {want:,} parameters but it holds {have:,} weights; "
                              "the file was altered or belongs to another format")


def load_fuser_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedFuser:
    """Rebuild the fuser (and audio encoder, if saved) from `save_fuser_checkpoint`'s file.

    Verifies the format tag and both fingerprints; a mismatch means the file was altered or
    truncated and is an error.
    """
    path = Path(path)
    payload = read_weights(path, "fuser checkpoint")
    if not isinstance(payload, Mapping) or payload.get("format") != FUSER_FORMAT:
        got = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(f"{path}: format {got!r} is not {FUSER_FORMAT!r}; released AuralSAM2 "
                              "checkpoints load with load_released_fuser")
    fps = payload["fingerprints"]
    if state_fingerprint(payload["fuser"]) != fps["fuser"]:
        raise CheckpointError(f"{path}: fuser weights do not match their fingerprint {fps['fuser']}")
    fuser_config = FuserConfig(**payload["fuser_config"])
    _check_config_fits(lambda: AuralFuser(fuser_config), payload["fuser"], path, "fuser_config")
    fuser = AuralFuser(fuser_config)
    strict_load(fuser, upgrade_fuser_state(payload["fuser"]), str(path), "fuser")
    encoder = None
    if "vggish" in payload:
        if state_fingerprint(payload["vggish"]) != fps["vggish"]:
            raise CheckpointError(f"{path}: VGGish weights do not match their fingerprint {fps['vggish']}")
        audio = payload["audio"]
        vggish_config = VGGishConfig(**payload["vggish_config"])
        _check_config_fits(lambda: VGGish(vggish_config), payload["vggish"], path, "vggish_config")
        encoder = AudioEncoder(VGGish(vggish_config), audio["channels"], audio["trainable"])
        strict_load(encoder.vggish, payload["vggish"], str(path), "VGGish")
        encoder.to(device)
    return LoadedFuser(fuser.to(device), encoder, dict(fps), dict(payload.get("extra", {})))
