"""J, F, S and the protocols against hand-computed answers (official definitions:
shared/reference/datasets_metrics.md section 2)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from auralsam2.evaluation import (
    AURALSAM2_RELEASED,
    AVSBENCH_OFFICIAL,
    PROTOCOLS,
    REFAVS_OFFICIAL,
    at_model_resolution,
    fmeasure,
    fmeasure_curve,
    fmeasure_thresholds,
    foreground_ratio,
    get_protocol,
    jaccard,
    jaccard_from_masks,
    refavs_null_s,
    resize_for_protocol,
    resize_logits_and_gt,
)

BIG = 20.0  # a logit whose sigmoid is 1.0 in float32 (passes every threshold, the last one = 1.0 included)
F_HALF = 1.3 * 0.5 / (0.3 * 0.5 + 1)  # F with precision 1/2 and recall 1 = 13/23


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def masks(*rows: str) -> torch.Tensor:
    """One (H, W) bool mask from strings of '#' (on) and '.' (off)."""
    return torch.tensor([[c == "#" for c in row] for row in rows])


def as_logits(mask: torch.Tensor, on: float = BIG, off: float = -BIG) -> torch.Tensor:
    return torch.where(mask, torch.tensor(on), torch.tensor(off))


# ---------------------------------------------------------------------------------------------- J

FULL = masks("####", "####", "####", "####")
EMPTY = masks("....", "....", "....", "....")
LEFT = masks("##..", "##..", "##..", "##..")
TOP = masks("####", "####", "....", "....")
CORNER = masks("##..", "##..", "....", "....")


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (FULL, FULL, 1.0),
        (EMPTY, FULL, 0.0),
        (FULL, EMPTY, 0.0),  # empty GT: true-negative fraction, none left
        (EMPTY, EMPTY, 1.0),  # empty GT predicted empty
        (TOP, LEFT, 4 / 12),  # half overlaps: inter 4, union 12
        (CORNER, EMPTY, 12 / 16),  # empty GT, 4 false positives: 12 of 16 pixels right
        (CORNER, LEFT, 4 / 8),
    ],
)
def test_jaccard_hand_computed(pred, gt, expected):
    got = jaccard(as_logits(pred)[None], gt[None])
    assert got.shape == (1,) and got.dtype == torch.float32
    assert float(got[0]) == pytest.approx(expected, abs=1e-6)
    assert float(jaccard_from_masks(pred[None], gt[None].int())[0]) == pytest.approx(expected, abs=1e-6)


def test_jaccard_per_frame_and_gt_dtypes():
    logits = torch.stack([as_logits(TOP), as_logits(EMPTY), as_logits(CORNER)])
    gt = torch.stack([LEFT, EMPTY, EMPTY])
    expected = [4 / 12, 1.0, 12 / 16]
    for gt_as in (gt, gt.long(), gt.float(), gt.to(torch.uint8)):
        assert jaccard(logits, gt_as).tolist() == pytest.approx(expected, abs=1e-6)


def test_jaccard_threshold_is_strict_and_0p4_differs_from_0p5():
    gt = LEFT[None]
    p045 = as_logits(LEFT, on=logit(0.45), off=-BIG)[None]  # sigmoid 0.45 on the object
    assert float(jaccard(p045, gt, threshold=0.4)[0]) == pytest.approx(1.0)  # Ref-AVS: 0.45 > 0.4
    assert float(jaccard(p045, gt, threshold=0.5)[0]) == pytest.approx(0.0)  # AVSBench: 0.45 < 0.5
    zero = as_logits(LEFT, on=0.0)[None]  # sigmoid(0) = 0.5 exactly: not > 0.5
    assert float(jaccard(zero, gt)[0]) == pytest.approx(0.0)


def test_protocol_binarisation_auralsam2_logits_vs_official_sigmoid():
    # sigmoid(1e-9) rounds to 0.5 in float32, so the official `sigmoid > 0.5` says background while
    # AuralSAM2's `logits > 0` says foreground.
    tiny = torch.full((1, 2, 2), 1e-9)
    assert torch.sigmoid(tiny).eq(0.5).all()
    assert not AVSBENCH_OFFICIAL.binarize(tiny).any()
    assert AURALSAM2_RELEASED.binarize(tiny).all()
    p045 = torch.full((1, 2, 2), logit(0.45))
    assert REFAVS_OFFICIAL.binarize(p045).all() and not AVSBENCH_OFFICIAL.binarize(p045).any()


def test_jaccard_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(F, H, W\)"):
        jaccard(torch.zeros(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        jaccard(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="NaN"):
        jaccard(torch.full((1, 4, 4), float("nan")), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        jaccard(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))


# ---------------------------------------------------------------------------------------------- F


def test_thresholds_are_the_official_list():
    t = fmeasure_thresholds()
    assert t.dtype == torch.float32 and t.shape == (255,)
    assert float(t[0]) == 0.0 and float(t[-1]) == 1.0  # 1 - 1e-10 rounds to 1.0 in float32
    assert float(t[127]) == 0.5  # the middle threshold is exactly 0.5


def test_curve_of_a_perfect_prediction():
    curve = fmeasure_curve(as_logits(LEFT, on=10.0, off=-10.0)[None], LEFT[None])[0]
    assert curve.shape == (255,)
    # t = 0: every pixel passes (p >= 0), precision 1/2, recall 1
    assert float(curve[0]) == pytest.approx(F_HALF, abs=1e-6)
    # thresholds strictly inside (sigmoid(-10), sigmoid(10)): exactly the object passes, F = 1
    assert torch.allclose(curve[1:254], torch.ones(253))
    # t = 1.0: sigmoid(10) < 1, nothing passes: precision = recall = 0, F = NaN -> 0
    assert float(curve[254]) == 0.0


def test_curve_of_a_constant_probability_map_uses_non_strict_threshold():
    # p = sigmoid(0) = 0.5 everywhere: passes t_0..t_127 (t_127 = 0.5 itself, because p >= t).
    curve = fmeasure_curve(torch.zeros(1, 4, 4), LEFT[None])[0]
    assert torch.allclose(curve[:128], torch.full((128,), F_HALF))
    assert torch.equal(curve[128:], torch.zeros(127))
    assert fmeasure(torch.zeros(1, 4, 4), LEFT[None]) == pytest.approx(13 / 23, abs=1e-6)


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (FULL, FULL, 1.0),  # P = R = 1 at every threshold (sigmoid(20) = 1.0 passes t = 1.0 too)
        (EMPTY, FULL, 1.0),  # t = 0 passes every pixel, so even an empty prediction scores P = R = 1
        (FULL, LEFT, F_HALF),  # every threshold passes everything: P = 1/2, R = 1
        (TOP, LEFT, F_HALF),  # t = 0: 13/23; t_1..t_254 pass TOP only: P = R = 1/2, F = 1/2 < 13/23
        (EMPTY, EMPTY, 0.0),  # the only frame has an empty GT: the call scores 0
        (FULL, EMPTY, 0.0),
    ],
)
def test_fmeasure_full_and_empty_combinations(pred, gt, expected):
    assert fmeasure(as_logits(pred)[None], gt[None]) == pytest.approx(expected, abs=1e-6)


def test_curve_of_half_overlap():
    curve = fmeasure_curve(as_logits(TOP)[None], LEFT[None])[0]
    assert float(curve[0]) == pytest.approx(F_HALF, abs=1e-6)
    assert torch.allclose(curve[1:], torch.full((254,), 0.5))


def test_fmeasure_skips_empty_gt_frames():
    perfect = as_logits(LEFT, on=10.0, off=-10.0)
    garbage = as_logits(FULL)  # a full prediction on an empty GT: would drag a mean down, but is skipped
    logits = torch.stack([perfect, garbage])
    gt = torch.stack([LEFT, EMPTY])
    assert fmeasure(logits, gt) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(fmeasure_curve(logits, gt)[1], torch.zeros(255))


def test_fmeasure_of_a_call_whose_gts_are_all_empty_is_zero():
    assert fmeasure(torch.randn(3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.bool)) == 0.0


def test_fmeasure_depends_on_how_frames_are_grouped_into_calls():
    # Frame A separates at t in (0.1, 0.3], frame B at t in (0.6, 0.8]: each alone scores 1.
    frame_a = as_logits(LEFT, on=logit(0.3), off=logit(0.1))
    frame_b = as_logits(LEFT, on=logit(0.8), off=logit(0.6))
    gt = torch.stack([LEFT, LEFT])
    alone = [fmeasure(frame_a[None], LEFT[None]), fmeasure(frame_b[None], LEFT[None])]
    assert alone == pytest.approx([1.0, 1.0], abs=1e-6)
    # One call shares one threshold: at (0.1, 0.3] A = 1, B = 13/23 (everything passes): mean 18/23.
    assert fmeasure(torch.stack([frame_a, frame_b]), gt) == pytest.approx(18 / 23, abs=1e-6)


# ---------------------------------------------------------------------------------------------- S


def test_refavs_null_s_is_a_mean_of_square_roots_per_40_frame_call():
    logits = torch.full((80, 2, 2), -BIG)
    logits[:40] = BIG  # call 1: all positive -> sqrt(1) = 1
    logits[40:, 0, 0] = BIG  # call 2: a quarter positive -> sqrt(1/4) = 1/2
    assert refavs_null_s(logits) == pytest.approx(0.75)
    assert foreground_ratio(logits) == pytest.approx((160 + 40) / 320)  # no sqrt, global ratio


def test_refavs_null_s_counts_a_short_last_call():
    logits = torch.full((50, 2, 2), -BIG)
    logits[:40] = BIG
    assert refavs_null_s(logits, batch_frames=40) == pytest.approx((1.0 + 0.0) / 2)
    assert foreground_ratio(logits) == pytest.approx(40 / 50)
    assert refavs_null_s(logits, batch_frames=50) == pytest.approx(math.sqrt(0.8))


def test_null_metrics_use_strict_sigmoid_0p5():
    zero = torch.zeros(4, 3, 3)  # sigmoid = 0.5: not > 0.5
    assert refavs_null_s(zero) == 0.0 and foreground_ratio(zero) == 0.0


# ---------------------------------------------------------------------------------------- protocols


def test_protocol_objects_bundle_the_official_settings():
    assert (AVSBENCH_OFFICIAL.resolution, AVSBENCH_OFFICIAL.j_threshold, AVSBENCH_OFFICIAL.j_on_logits) == (
        224,
        0.5,
        False,
    )
    assert AVSBENCH_OFFICIAL.calls_of("avs") == 1
    assert (REFAVS_OFFICIAL.resolution, REFAVS_OFFICIAL.j_threshold, REFAVS_OFFICIAL.calls_of("ref")) == (
        256,
        0.4,
        4,
    )
    assert REFAVS_OFFICIAL.null_metric == "refavs_s"
    assert (
        AURALSAM2_RELEASED.resolution,
        AURALSAM2_RELEASED.j_threshold,
        AURALSAM2_RELEASED.j_on_logits,
    ) == (1024, 0.5, True)
    assert (AURALSAM2_RELEASED.calls_of("avs"), AURALSAM2_RELEASED.calls_of("ref")) == (1, 4)
    assert AURALSAM2_RELEASED.null_metric == "foreground_ratio"
    assert all(p.n_thresholds == 255 and p.beta2 == 0.3 for p in PROTOCOLS.values())
    assert get_protocol("refavs_official") is REFAVS_OFFICIAL
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        get_protocol("nope")
    with pytest.raises(ValueError, match="no grouping for task 'ref'"):
        AVSBENCH_OFFICIAL.calls_of("ref")
    # the released trainer scores at its model's image_size (224 for hiera_t); the official protocols never move
    assert at_model_resolution("auralsam2_released", 224) == replace(AURALSAM2_RELEASED, resolution=224)
    assert at_model_resolution(AURALSAM2_RELEASED, 1024) is AURALSAM2_RELEASED
    assert at_model_resolution("refavs_official", 1024) is REFAVS_OFFICIAL
    assert at_model_resolution(AVSBENCH_OFFICIAL, 128) is AVSBENCH_OFFICIAL


def test_resize_logits_bilinear_and_gt_nearest_like_pil():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 9, generator=g)
    gt = torch.rand(2, 7, 9, generator=g) > 0.5
    out_logits, out_gt = resize_logits_and_gt(logits, gt, 16)
    expected = torch.nn.functional.interpolate(
        logits[:, None], size=(16, 16), mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.equal(out_logits, expected)
    for f in range(2):  # nearest exactly as PIL resizes a label image (what the released loaders do)
        pil = Image.fromarray(gt[f].numpy().astype(np.uint8)).resize((16, 16), Image.NEAREST)
        assert np.array_equal(out_gt[f].numpy(), np.asarray(pil).astype(bool))
    same_logits, same_gt = resize_for_protocol(
        torch.zeros(1, 224, 224), torch.ones(1, 224, 224), AVSBENCH_OFFICIAL
    )
    assert same_logits.shape == (1, 224, 224) and same_gt.dtype == torch.bool and same_gt.all()
    big, _ = resize_for_protocol(torch.zeros(1, 64, 64), None, "auralsam2_released")
    assert big.shape == (1, 1024, 1024)
