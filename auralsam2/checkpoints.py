"""Foreign and own checkpoint formats for the trainable side (AuralFuser, VGGish, text projection).

SAM2's `.pt` loader lives in `auralsam2.sam2_backbone`. Everything here loads with
`torch.load(..., weights_only=True)` and is strict: every missing or unexpected key is an error
that names it, except the explicit lists below.

Released AuralSAM2 checkpoints (`yyliu01/AuralSAM2`, key lists in
`reference/released_checkpoint_keys/`): `aural_fuser.state_dict()`, either bare, under
`aural_fuser.`, or as a full-model dict (`v_model.*` = SAM2, ignored with a note: SAM2 comes from
its own `.pt`). Legacy (pre-refactor) names are remapped as the release's
`tools/remap_aural_ckpt_keys.py` does. `vgg.*` is the VGGish inside the fuser and goes to
`AudioEncoder.vggish`. Known released-but-unused parameters (`RELEASED_UNUSED`) are skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
from auralsam2.fuser import AuralFuser, FuserConfig

__all__ = [
    "CheckpointError",
    "FUSER_FORMAT",
    "LEGACY_RENAMES",
    "LoadReport",
    "LoadedFuser",
    "RELEASED_UNUSED",
    "is_released_unused",
    "load_fuser_checkpoint",
    "load_released_fuser",
    "load_vggish_weights",
    "remap_legacy_key",
    "save_fuser_checkpoint",
    "state_fingerprint",
]

FUSER_FORMAT = "auralsam2-fuser/1"

# Released parameters that the released forward never calls (key-list JSON: receives_grad False,
# "unused in forward"); 66 tensors, 9,733,632 values in both variants. Our modules do not build them.
RELEASED_UNUSED: tuple[str, ...] = (
    r"a_blocks\.\d+\.\d+\.attn\.sr\.(weight|bias)",  # OneDAttention spatial-reduction conv
    r"a_blocks\.\d+\.\d+\.attn\.norm\.(weight|bias)",  # ... and its LayerNorm
    r"a_blocks\.\d+\.\d+\.mlp\.dwconv\.dwconv\.(weight|bias)",  # OneDMlp depthwise conv
    r"fusion_modules\.\d+\.g\.(weight|bias)",  # TPAVI value conv `g`
    r"fusion_modules\.\d+\.align_channel_back\.(weight|bias)",
)
_UNUSED_RE = re.compile("^(" + "|".join(RELEASED_UNUSED) + ")$")

# Legacy names (1-based module attributes) -> current ModuleList entries (0-based).
LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"train_f_patch_embed([123])", "patch_embeds.{}"),
    (r"train_f_a_block([123])", "fusion_modules.{}"),
    (r"train_f_block([123])", "f_blocks.{}"),
    (r"train_a_block([123])", "a_blocks.{}"),
    (r"train_smooth([12])", "smooth_convs.{}"),
)
_LEGACY_RE = [(re.compile(rf"(^|\.){old}\."), new) for old, new in LEGACY_RENAMES]
_RELEASED_HEADS = ("train_proj_v1.", "train_proj_a1.")
_PAPER_HEADS = ("audiocon_proj_v.", "audiocon_proj_a.")


class CheckpointError(ValueError):
    """A checkpoint does not match the model it is loaded into; the message says which keys."""


def is_released_unused(key: str) -> bool:
    """True for a released fuser key (no prefix) that the released forward never uses."""
    return bool(_UNUSED_RE.match(key))


def remap_legacy_key(key: str) -> str:
    """`train_f_block2.0.norm1.weight` -> `f_blocks.1.0.norm1.weight` (and the other legacy names)."""
    for pattern, new in _LEGACY_RE:
        key = pattern.sub(lambda m, new=new: f"{m.group(1)}{new.format(int(m.group(2)) - 1)}.", key)
    return key


@dataclass
class LoadReport:
    """What a load did: keys loaded, renamed, skipped (and why), plus notes for the run log."""

    source: str
    loaded: list[str] = field(default_factory=list)
    remapped: dict[str, str] = field(default_factory=dict)
    skipped_unused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    vggish_loaded: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {len(self.loaded)} fuser tensors"]
        if self.vggish_loaded:
            parts.append(f"{self.vggish_loaded} VGGish tensors")
        if self.remapped:
            parts.append(f"{len(self.remapped)} legacy names remapped")
        if self.skipped_unused:
            parts.append(f"{len(self.skipped_unused)} released-but-unused skipped")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored")
        return "; ".join(parts) + ("" if not self.notes else " (" + " ".join(self.notes) + ")")


def _read(source: str | os.PathLike | Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    if isinstance(source, Mapping):
        return "<state dict>", source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return str(path), torch.load(path, map_location="cpu", weights_only=True)


def _unwrap(name: str, obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """Accept a state dict or a `{"model"|"state_dict": state dict}` container."""
    if not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return _unwrap(name, obj[key])
        raise CheckpointError(f"{name}: no tensors at the top level and no 'model'/'state_dict' entry; "
                              f"top-level keys: {sorted(obj)[:8]}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{name}: non-tensor entries {bad[:5]} in a state dict")
    return dict(obj)


def _listing(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_released_fuser(
    fuser: AuralFuser,
    state_dict: str | os.PathLike | Mapping[str, Any],
    audio_encoder: AudioEncoder | None = None,
) -> LoadReport:
    """Load a released AuralSAM2 checkpoint (file or dict) into `fuser` (and `audio_encoder`).

    Key handling, in order: a leading `module.` (DDP) is dropped; `v_model.*` is ignored (noted);
    `audio_prompter.` (legacy) and `aural_fuser.` prefixes are stripped, legacy module names are
    remapped and legacy `training_layers`/`finetuning_layers` duplicates dropped; `vgg.*` goes to
    `audio_encoder.vggish` (ignored with a note when no encoder is given); `RELEASED_UNUSED` names
    are skipped; the released `train_proj_*` heads are skipped with a note when the fuser uses the
    paper's AudioCon heads (they are training-only). Everything else must match the fuser's
    state dict exactly in names and shapes, or a `CheckpointError` names the offending keys.
    """
    name, raw = _read(state_dict)
    sd = _unwrap(name, raw)
    report = LoadReport(source=name)
    fuser_sd: dict[str, Tensor] = {}
    vgg_sd: dict[str, Tensor] = {}
    foreign: list[str] = []
    heads_skipped = False
    prefixed = any(k.removeprefix("module.").startswith(("aural_fuser.", "audio_prompter.")) for k in sd)
    for original, value in sd.items():
        key = original.removeprefix("module.")
        if key.startswith("v_model."):
            report.ignored.append(original)
            continue
        legacy = key.startswith("audio_prompter.")
        if legacy or key.startswith("aural_fuser."):
            key = key.split(".", 1)[1]
        elif prefixed:
            foreign.append(original)
            continue
        if legacy and (".training_layers." in f".{key}" or ".finetuning_layers." in f".{key}"):
            report.ignored.append(original)
            continue
        new = remap_legacy_key(key)
        if new != key:
            report.remapped[original] = new
        key = new
        if key.startswith("vgg."):
            vgg_sd[key[4:]] = value
        elif is_released_unused(key):
            report.skipped_unused.append(key)
        elif key.startswith(_RELEASED_HEADS) and not hasattr(fuser, "train_proj_v1"):
            report.ignored.append(original)
            heads_skipped = True
        else:
            fuser_sd[key] = value
    if foreign:
        raise CheckpointError(
            f"{name}: keys outside 'aural_fuser.'/'v_model.' in a prefixed checkpoint: {_listing(foreign)}; "
            "give the AuralFuser part only or a full released model dict"
        )
    paper_heads = () if hasattr(fuser, "train_proj_v1") else _PAPER_HEADS
    _strict_load(fuser, fuser_sd, name, "fuser", hint=_variant_hint(fuser, fuser_sd), may_miss=paper_heads)
    report.loaded = sorted(fuser_sd)
    if report.ignored and any(k.removeprefix("module.").startswith("v_model.") for k in report.ignored):
        report.notes.append("v_model.* (SAM2) ignored: SAM2 weights come from their own .pt.")
    if heads_skipped:
        report.notes.append("released train_proj_* heads ignored: this fuser uses the paper's AudioCon heads, "
                            "which keep their initial weights.")
    if vgg_sd:
        if audio_encoder is None:
            report.ignored.extend(f"vgg.{k}" for k in vgg_sd)
            report.notes.append("vgg.* present but no audio encoder given: VGGish weights not loaded.")
        else:
            _strict_load(audio_encoder.vggish, vgg_sd, name, "VGGish (vgg.*)")
            report.vggish_loaded = len(vgg_sd)
    elif audio_encoder is not None:
        report.notes.append("no vgg.* keys: the audio encoder keeps its current weights.")
    return report


def _variant_hint(fuser: AuralFuser, sd: Mapping[str, Tensor]) -> str:
    cfg = fuser.config
    has_text = any(k.startswith("text_proj.") for k in sd)
    if has_text and not hasattr(fuser, "text_proj"):
        return " (the checkpoint has text_proj.*: a Ref-AVS fuser, build it with FuserConfig(variant='refavs'))"
    if not has_text and hasattr(fuser, "text_proj"):
        return " (no text_proj.* in the checkpoint: an AVSBench fuser, use FuserConfig(variant='avs'))"
    if hasattr(fuser, "audio_proj"):
        return f" (released fusers take 256-d audio: audio_dim {cfg.audio_dim} != dim {cfg.dim} adds audio_proj)"
    return ""


def _strict_load(
    module: nn.Module, sd: Mapping[str, Tensor], name: str, what: str, hint: str = "", may_miss: tuple[str, ...] = ()
) -> None:
    """`load_state_dict(strict=True)` with an error naming every missing/unexpected/misshaped key;
    keys starting with a `may_miss` prefix may be absent (they keep their current values)."""
    own = module.state_dict()
    missing = {k for k in set(own) - set(sd) if not k.startswith(may_miss)} if may_miss else set(own) - set(sd)
    unexpected = set(sd) - set(own)
    wrong = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(sd) & set(own))
             if sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {len(wrong)}: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{name}: {what} keys do not match the model — " + " | ".join(problems) + hint)
    if may_miss:
        sd = {**{k: v for k, v in own.items() if k.startswith(may_miss)}, **sd}
    module.load_state_dict(sd, strict=True)


def load_vggish_weights(vggish: VGGish, source: str | os.PathLike | Mapping[str, Any]) -> LoadReport:
    """Load a torchvggish state dict (e.g. `vggish-10086976.pth`: `features.*`, `embeddings.*`).

    Also accepts the same keys under `vgg.` or `aural_fuser.vgg.`; PCA post-processing entries
    (`pproc.*`) are ignored (no PCA, as released). Strict otherwise.
    """
    name, raw = _read(source)
    sd = _unwrap(name, raw)
    report = LoadReport(source=name)
    clean: dict[str, Tensor] = {}
    for key, value in sd.items():
        k = key.removeprefix("module.").removeprefix("aural_fuser.").removeprefix("vgg.")
        if k.startswith("pproc."):
            report.ignored.append(key)
            continue
        clean[k] = value
    _strict_load(vggish, clean, name, "VGGish")
    report.vggish_loaded = len(clean)
    return report


# --------------------------------------------------------------------------------------------
# Our own format
# --------------------------------------------------------------------------------------------


def state_fingerprint(state: Mapping[str, Tensor]) -> str:
    """sha256 over sorted names, dtypes, shapes and raw bytes of a state dict (16 hex chars)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


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
    configs and content fingerprints; atomic (temp file + rename). `extra` must hold only plain
    Python values (it is read back with `weights_only=True`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_fuser_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedFuser:
    """Rebuild the fuser (and audio encoder, if saved) from `save_fuser_checkpoint`'s file.

    Verifies the format tag and both fingerprints; a mismatch means the file was altered or
    truncated and is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fuser checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, Mapping) or payload.get("format") != FUSER_FORMAT:
        got = payload.get("format") if isinstance(payload, Mapping) else type(payload).__name__
        raise CheckpointError(f"{path}: format {got!r} is not {FUSER_FORMAT!r}; released AuralSAM2 "
                              "checkpoints load with load_released_fuser")
    fps = payload["fingerprints"]
    if state_fingerprint(payload["fuser"]) != fps["fuser"]:
        raise CheckpointError(f"{path}: fuser weights do not match their fingerprint {fps['fuser']}")
    fuser = AuralFuser(FuserConfig(**payload["fuser_config"]))
    _strict_load(fuser, payload["fuser"], str(path), "fuser")
    encoder = None
    if "vggish" in payload:
        if state_fingerprint(payload["vggish"]) != fps["vggish"]:
            raise CheckpointError(f"{path}: VGGish weights do not match their fingerprint {fps['vggish']}")
        audio = payload["audio"]
        encoder = AudioEncoder(VGGish(VGGishConfig(**payload["vggish_config"])), audio["channels"], audio["trainable"])
        _strict_load(encoder.vggish, payload["vggish"], str(path), "VGGish")
        encoder.to(device)
    return LoadedFuser(fuser.to(device), encoder, dict(fps), dict(payload.get("extra", {})))
