"""AuralSAM2: a frozen SAM2 that hears, through feature-level prompts from an AuralFuser.

Submodules mirror the paper's figure: `sam2_backbone` (frozen SAM2), `audio` (log-mel + VGGish),
`text` (frozen text encoder), `fuser` (AuralFuser), `losses`, `metrics`, `checkpoints`, `model`
(the composed AuralSAM2), `engine` (training/evaluation loop). Importing the package is cheap; it
does not import torch or sam2 until a submodule is used.
"""

__version__ = "0.1.0"
