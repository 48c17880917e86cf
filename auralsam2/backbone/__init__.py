"""The frozen SAM2 of AuralSAM2, on the unmodified `sam2==1.1.0` package, one module per step:

* `build`: config names and aliases, build + official checkpoint load, freeze in eval;
* `transforms`: frames and masks -> SAM2 input (ImageNet normalisation, resize);
* `encoding`: image encoder -> raw FPN `Pyramid` (+ the compact form the feature cache stores);
* `decoder`: the prompted mask decoder (feature-level prompts injected into the stock modules);
* `tracking`: video propagation with SAM2 memory over one clip (`track_clip`).
"""

from auralsam2.backbone.build import (
    PROJECT_CONFIGS,
    SAM2_CONFIG_ALIASES,
    SAM2_CONFIGS,
    SYNTH_CONFIG,
    TINY_CONFIG,
    build_sam2_model,
    freeze_sam2,
    is_frozen,
    load_sam2_checkpoint,
    resolve_sam2_config,
    save_sam2_checkpoint,
)
from auralsam2.backbone.decoder import (
    DecoderOutput,
    PointInputs,
    point_inputs_from_clicks,
    prompted_decode,
    prompted_two_way,
)
from auralsam2.backbone.encoding import (
    CompactLevel,
    CompactPyramid,
    DecoderFeatures,
    Pyramid,
    compact_bytes_per_frame,
    compact_layout,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    prepare_decoder_features,
)
from auralsam2.backbone.tracking import DecoderPrompts, FrameOutput, track_clip, track_clips
from auralsam2.backbone.transforms import preprocess_frames, preprocess_masks

__all__ = [
    "PROJECT_CONFIGS",
    "SAM2_CONFIGS",
    "SAM2_CONFIG_ALIASES",
    "SYNTH_CONFIG",
    "TINY_CONFIG",
    "CompactLevel",
    "CompactPyramid",
    "DecoderFeatures",
    "DecoderOutput",
    "DecoderPrompts",
    "FrameOutput",
    "PointInputs",
    "Pyramid",
    "build_sam2_model",
    "compact_bytes_per_frame",
    "compact_layout",
    "encode_frames",
    "encode_frames_compact",
    "expand_compact",
    "freeze_sam2",
    "is_frozen",
    "load_sam2_checkpoint",
    "point_inputs_from_clicks",
    "prepare_decoder_features",
    "preprocess_frames",
    "preprocess_masks",
    "prompted_decode",
    "prompted_two_way",
    "resolve_sam2_config",
    "save_sam2_checkpoint",
    "track_clip",
    "track_clips",
]
