"""Released AuralSAM2 checkpoints (`yyliu01/AuralSAM2`) into our AuralFuser (and VGGish), strictly.

Layouts accepted: `aural_fuser.state_dict()` bare, under `aural_fuser.`, or as a full-model dict
(`v_model.*` = SAM2, ignored with a note: SAM2 comes from its own `.pt`). Legacy (pre-refactor)
names are remapped as the release's `tools/remap_aural_ckpt_keys.py` does. `vgg.*` is the VGGish
inside the fuser and goes to `AudioEncoder.vggish`. Known released-but-unused parameters
(`RELEASED_UNUSED`) are skipped; every other missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from auralsam2.audio import AudioEncoder
from auralsam2.checkpoints.strict import (
    CheckpointError,
    LoadReport,
    key_listing,
    read_state_dict,
    strict_load,
)
from auralsam2.fuser import AuralFuser

__all__ = ["LEGACY_RENAMES", "RELEASED_UNUSED", "is_released_unused", "load_released_fuser", "remap_legacy_key"]


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


def is_released_unused(key: str) -> bool:
    """True for a released fuser key (no prefix) that the released forward never uses."""
    return bool(_UNUSED_RE.match(key))


def remap_legacy_key(key: str) -> str:
    """`train_f_block2.0.norm1.weight` -> `f_blocks.1.0.norm1.weight` (and the other legacy names)."""
    for pattern, new in _LEGACY_RE:
        key = pattern.sub(lambda m, new=new: f"{m.group(1)}{new.format(int(m.group(2)) - 1)}.", key)
    return key


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
    name, sd = read_state_dict(state_dict, "released AuralSAM2 checkpoint")
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
            f"{name}: keys outside 'aural_fuser.'/'v_model.' in a prefixed checkpoint: {key_listing(foreign)}; "
            "give the AuralFuser part only or a full released model dict"
        )
    paper_heads = () if hasattr(fuser, "train_proj_v1") else _PAPER_HEADS
    strict_load(fuser, fuser_sd, name, "fuser", hint=_variant_hint(fuser, fuser_sd), may_miss=paper_heads)
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
            strict_load(audio_encoder.vggish, vgg_sd, name, "VGGish (vgg.*)")
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
