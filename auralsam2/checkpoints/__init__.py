"""Every checkpoint format of the trainable side, with explicit remapping and strict loading.

* `strict`: safe reading (`weights_only=True`) and strict loading with errors naming every key;
* `released`: released AuralSAM2 checkpoints (including legacy key names) -> our AuralFuser;
* `vggish`: torchvggish `vggish-10086976.pth` -> our VGGish;
* `fuser`: our own fuser + VGGish format (`best.ckpt`).

SAM2's official `.pt` loads beside its builder, in `auralsam2.backbone.build`.
"""

from auralsam2.checkpoints.fuser import (
    FUSER_FORMAT,
    LoadedFuser,
    load_fuser_checkpoint,
    save_fuser_checkpoint,
    state_fingerprint,
    upgrade_fuser_state,
)
from auralsam2.checkpoints.released import (
    LEGACY_RENAMES,
    RELEASED_UNUSED,
    is_released_unused,
    load_released_fuser,
    remap_legacy_key,
)
from auralsam2.checkpoints.strict import CheckpointError, LoadReport, read_weights, strict_load
from auralsam2.checkpoints.vggish import load_vggish_weights

__all__ = [
    "FUSER_FORMAT",
    "LEGACY_RENAMES",
    "RELEASED_UNUSED",
    "CheckpointError",
    "LoadReport",
    "LoadedFuser",
    "is_released_unused",
    "load_fuser_checkpoint",
    "load_released_fuser",
    "load_vggish_weights",
    "read_weights",
    "remap_legacy_key",
    "save_fuser_checkpoint",
    "state_fingerprint",
    "strict_load",
    "upgrade_fuser_state",
]
