"""Training losses: SAM2's multi-mask segmentation loss (`segmentation`), the audio-guided
contrastive loss (`contrastive`) and the loss of our mask prompt (`mask_prompt`)."""

from auralsam2.losses.contrastive import (
    AudioConConfig,
    audiocon_loss,
    audiocon_official,
    audiocon_paper,
    grid_foreground,
    info_nce_official,
    official_samples,
    supcon,
)
from auralsam2.losses.mask_prompt import mask_prompt_loss, mask_prompt_terms, text_contrast_loss
from auralsam2.losses.segmentation import (
    SegLossWeights,
    dice_per_mask,
    focal_per_mask,
    iou_l1_per_mask,
    segmentation_loss,
    supervised_frames,
)

__all__ = [
    "AudioConConfig",
    "SegLossWeights",
    "audiocon_loss",
    "audiocon_official",
    "audiocon_paper",
    "dice_per_mask",
    "focal_per_mask",
    "grid_foreground",
    "info_nce_official",
    "iou_l1_per_mask",
    "mask_prompt_loss",
    "mask_prompt_terms",
    "official_samples",
    "segmentation_loss",
    "supcon",
    "text_contrast_loss",
    "supervised_frames",
]
