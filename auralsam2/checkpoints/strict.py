"""Reading weights files safely and loading state dicts strictly: the generic half of every loader.

Format-specific code (SAM2 `.pt`, VGGish `.pth`, released AuralSAM2 checkpoints, our own fuser
format) turns a file into a state dict in the model's own key layout; `strict_load` then loads it
with an error that names every missing, unexpected or misshaped key.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from auralsam2.utils.files import PAYLOAD_SHA256
from auralsam2.utils.hashing import payload_sha256

__all__ = ["CheckpointError", "LoadReport", "key_listing", "read_state_dict", "read_weights", "strict_load",
           "unwrap_state_dict"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the model it is loaded into; the message names
    the file and the keys."""


def read_weights(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a missing file is `FileNotFoundError`, an
    unreadable one a `CheckpointError` naming the file (torch fails in many ways on a wrong file).
    A payload our writer sealed (`payload_sha256`) is verified and returned without the seal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message advises weights_only=False: never do that here
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        raise CheckpointError(f"{what} {path}: holds Python objects that are not weights"
                              f"{f' ({found[1]})' if found else ''}; refused, as loading them could run code "
                              "(a checkpoint holds tensors and plain values only)") from None
    except Exception as err:  # noqa: BLE001 (IndexError on text, RuntimeError on a zip, ...)
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"{what} {path}: cannot be read as a weights-only torch checkpoint "
                              f"({type(err).__name__}: {first})") from None
    if isinstance(payload, dict) and PAYLOAD_SHA256 in payload:
        want = payload.pop(PAYLOAD_SHA256)
        if payload_sha256(payload) != want:
            raise CheckpointError(f"{what} {path}: fails its checksum (a byte was changed or damaged); "
                                  "write it again (re-run the step that made it)")
    return payload


def unwrap_state_dict(name: str, obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state dict, or the one inside a `{"model"|"state_dict": state dict}` container."""
    if not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return unwrap_state_dict(name, obj[key])
        raise CheckpointError(f"{name}: no tensors at the top level and no 'model'/'state_dict' entry; "
                              f"top-level keys: {sorted(obj)[:8]}")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{name}: non-tensor entries {bad[:5]} in a state dict")
    return dict(obj)


def read_state_dict(source: str | os.PathLike | Mapping[str, Any], what: str = "checkpoint"
                    ) -> tuple[str, dict[str, Tensor]]:
    """(name for messages, state dict) of a weights file or an in-memory state dict / container."""
    if isinstance(source, Mapping):
        return "<state dict>", unwrap_state_dict("<state dict>", source)
    raw = read_weights(source, what)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{what} {source}: holds a {type(raw).__name__}, not a state dict")
    return str(source), unwrap_state_dict(str(source), raw)


def key_listing(keys: Iterable[str], limit: int = 8) -> str:
    """`a, b, c ... (+5 more)`, sorted."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


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


def strict_load(module: nn.Module, state: Mapping[str, Tensor], name: str, what: str, hint: str = "",
                may_miss: tuple[str, ...] = ()) -> None:
    """`module.load_state_dict(state, strict=True)` with one error naming every missing, unexpected
    and misshaped key (`name`: the file, `what`: which part, `hint`: how to fix it). Keys starting
    with a `may_miss` prefix may be absent: they keep their current values."""
    own = module.state_dict()
    missing = {k for k in own if k not in state and not (may_miss and k.startswith(may_miss))}
    unexpected = set(state) - set(own)
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in sorted(set(state) & set(own))
             if isinstance(state[k], Tensor) and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {key_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {key_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {len(wrong)}: {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(f"{name}: {what} keys do not match the model — " + " | ".join(problems) + hint)
    if may_miss:
        state = {**{k: v for k, v in own.items() if k.startswith(may_miss)}, **state}
    module.load_state_dict(state, strict=True)
