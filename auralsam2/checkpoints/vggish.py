"""torchvggish weights (`vggish-10086976.pth`: `features.*`, `embeddings.*`) into our `VGGish`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from auralsam2.audio import VGGish
from auralsam2.checkpoints.strict import LoadReport, read_state_dict, strict_load

__all__ = ["load_vggish_weights"]


def load_vggish_weights(vggish: VGGish, source: str | os.PathLike | Mapping[str, Any]) -> LoadReport:
    """Load a torchvggish state dict, strictly.

    Also accepts the same keys under `vgg.` or `aural_fuser.vgg.`; PCA post-processing entries
    (`pproc.*`) are ignored (no PCA, as released).
    """
    name, sd = read_state_dict(source, "VGGish weights")
    report = LoadReport(source=name)
    clean: dict[str, Tensor] = {}
    for key, value in sd.items():
        k = key.removeprefix("module.").removeprefix("aural_fuser.").removeprefix("vgg.")
        if k.startswith("pproc."):
            report.ignored.append(key)
            continue
        clean[k] = value
    strict_load(vggish, clean, name, "VGGish")
    report.vggish_loaded = len(clean)
    return report
