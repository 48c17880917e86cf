"""Evaluation with the official protocols, one module per concern:

* `metrics`: binary J, F (one-pass curve) and the Ref-AVS null metric S, as the official code computes them;
* `semantic`: the AVSS 71-class mIoU and F;
* `protocols`: named recipes (resolution, thresholds, grouping into calls): AVSBench official,
  Ref-AVS official, the released AuralSAM2 trainer;
* `streaming`: `StreamingEvaluator`, every protocol at once, one clip at a time;
* `evaluate`: decode a split with the model and score it (`evaluate_source`), DDP-sharded;
* `prompts`: SAM2 prompts from the ground truth (paper Tables 6-7), for SAM2 alone and AuralSAM2.
"""

from auralsam2.evaluation.evaluate import (
    EvalResult,
    avss_oracle_semantic,
    cond_frame_for,
    evaluate_source,
    predict_item,
    schema_rows,
    shard_indices,
)
from auralsam2.evaluation.metrics import (
    as_bool,
    fmeasure,
    fmeasure_curve,
    fmeasure_from_curves,
    fmeasure_histograms,
    fmeasure_thresholds,
    foreground_ratio,
    is_binary,
    jaccard,
    jaccard_from_counts,
    jaccard_from_masks,
    mask_counts,
    refavs_null_s,
)
from auralsam2.evaluation.prompts import METHODS, PROMPT_MODES, GTPrompts, gt_prompts, parse_prompt_modes
from auralsam2.evaluation.protocols import (
    AURALSAM2_RELEASED,
    AVSBENCH_OFFICIAL,
    PROTOCOLS,
    REFAVS_OFFICIAL,
    Protocol,
    at_model_resolution,
    get_protocol,
    resize_for_protocol,
    resize_logits_and_gt,
)
from auralsam2.evaluation.semantic import (
    AVSS_NUM_CLASSES,
    AVSSAccumulator,
    AVSSResult,
    SemanticScore,
    avss_semantic,
)
from auralsam2.evaluation.streaming import Rows, StreamingEvaluator

__all__ = [
    "AURALSAM2_RELEASED",
    "AVSBENCH_OFFICIAL",
    "AVSS_NUM_CLASSES",
    "METHODS",
    "PROMPT_MODES",
    "PROTOCOLS",
    "REFAVS_OFFICIAL",
    "AVSSAccumulator",
    "AVSSResult",
    "EvalResult",
    "GTPrompts",
    "Protocol",
    "Rows",
    "SemanticScore",
    "StreamingEvaluator",
    "as_bool",
    "at_model_resolution",
    "avss_oracle_semantic",
    "avss_semantic",
    "cond_frame_for",
    "evaluate_source",
    "fmeasure",
    "fmeasure_curve",
    "fmeasure_from_curves",
    "fmeasure_histograms",
    "fmeasure_thresholds",
    "foreground_ratio",
    "get_protocol",
    "gt_prompts",
    "is_binary",
    "jaccard",
    "jaccard_from_counts",
    "jaccard_from_masks",
    "mask_counts",
    "parse_prompt_modes",
    "predict_item",
    "refavs_null_s",
    "resize_for_protocol",
    "resize_logits_and_gt",
    "schema_rows",
    "shard_indices",
]
