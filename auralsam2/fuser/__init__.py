"""The AuralFuser (paper §3.2): audio (+ text) tokens and SAM2's pyramid -> feature-level prompts.

* `config`: `FuserConfig`, every architecture, ablation and size knob;
* `fuser`: `AuralFuser`, the per-level visual blocks, token blocks and fusion modules;
* `blocks`: the PVT-v2 visual blocks, the 1-D token blocks and the fusion module;
* `heads`: the AudioCon projection heads (released and paper);
* `mask_prompt`: ours, the audio-visual similarity as a per-frame SAM2 mask prompt.
"""

from auralsam2.fuser.config import FuserConfig, Modalities
from auralsam2.fuser.fuser import PATCH_STRIDES, AuralFuser, FuserOutput, pe1d
from auralsam2.fuser.mask_prompt import MaskPrompt

__all__ = ["PATCH_STRIDES", "AuralFuser", "FuserConfig", "FuserOutput", "MaskPrompt", "Modalities", "pe1d"]
