"""AVSS 71-class mIoU / F against hand-computed answers, with masks built from the real AVSS palette."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auralsam2.evaluation import AVSSAccumulator, avss_semantic
from data_specs.palette import AVSS_CLASSES, PALETTE, colours_to_labels

BASSOON, WOMAN = AVSS_CLASSES.index("bassoon"), AVSS_CLASSES.index("woman")


def f_beta(p: float, r: float) -> float:
    return 1.3 * p * r / (0.3 * p + r)


def palette_frames(*label_grids: list[list[int]]) -> torch.Tensor:
    """Class-id frames decoded from palette-coloured RGB masks, as the data pipeline produces them."""
    frames = []
    for grid in label_grids:
        rgb = PALETTE[np.array(grid)]
        labels, unmatched = colours_to_labels(rgb)
        assert not unmatched.any()
        frames.append(torch.from_numpy(labels.astype(np.int64)))
    return torch.stack(frames)


# frame 1: background + bassoon; frame 2: woman + background
GT = palette_frames([[0, 0], [BASSOON, BASSOON]], [[WOMAN, WOMAN], [0, 0]])
PRED = palette_frames([[0, BASSOON], [BASSOON, BASSOON]], [[WOMAN, 0], [0, 0]])

# per frame and class (hand-computed):
#  f1 bg:      inter 1, A_p 1, A_g 2 -> IoU 1/2, F = f(1, 1/2)
#  f1 bassoon: inter 2, A_p 3, A_g 2 -> IoU 2/3, F = f(2/3, 1)
#  f2 woman:   inter 1, A_p 1, A_g 2 -> IoU 1/2, F = f(1, 1/2)
#  f2 bg:      inter 2, A_p 3, A_g 2 -> IoU 2/3, F = f(2/3, 1)
M_BG, M_BASSOON, M_WOMAN = (1 / 2 + 2 / 3) / 2, 2 / 3, 1 / 2
F_BG, F_BASSOON, F_WOMAN = (f_beta(1, 0.5) + f_beta(2 / 3, 1)) / 2, f_beta(2 / 3, 1), f_beta(1, 0.5)


def test_palette_classes_hand_computed():
    assert (BASSOON, WOMAN) == (5, 70)
    miou, fscore = avss_semantic(PRED, GT)
    # absent classes count as 0: the sum of the three present classes over all 71
    assert miou == pytest.approx((M_BG + M_BASSOON + M_WOMAN) / 71)
    assert fscore == pytest.approx((F_BG + F_BASSOON + F_WOMAN) / 71)
    # the official "noBg" drops class 70 (woman), not the background
    assert miou.no_bg_official == pytest.approx((M_BG + M_BASSOON) / 70)
    assert fscore.no_bg_official == pytest.approx((F_BG + F_BASSOON) / 70)
    # the true no-background mean drops class 0
    assert miou.no_background == pytest.approx((M_BASSOON + M_WOMAN) / 70)
    assert fscore.no_background == pytest.approx((F_BASSOON + F_WOMAN) / 70)
    assert miou.present_classes == pytest.approx((M_BG + M_BASSOON + M_WOMAN) / 3)
    assert miou.per_class[0] == pytest.approx(M_BG) and miou.per_class[1] == 0.0
    assert isinstance(miou, float) and float(miou) == pytest.approx((M_BG + M_BASSOON + M_WOMAN) / 71)


def test_padded_frames_count_officially_and_valid_excludes_them():
    padded_gt = torch.cat([GT, torch.zeros(1, 2, 2, dtype=torch.long)])
    padded_pred = torch.cat([PRED, torch.zeros(1, 2, 2, dtype=torch.long)])
    # official: the all-background padding frame adds a perfect background term (IoU 1, F 1)
    miou, fscore = avss_semantic(padded_pred, padded_gt)
    assert miou == pytest.approx(((1 / 2 + 2 / 3 + 1) / 3 + M_BASSOON + M_WOMAN) / 71)
    assert fscore == pytest.approx(((f_beta(1, 0.5) + f_beta(2 / 3, 1) + 1) / 3 + F_BASSOON + F_WOMAN) / 71)
    valid = torch.tensor([True, True, False])
    miou_valid, fscore_valid = avss_semantic(padded_pred, padded_gt, valid=valid)
    assert miou_valid == pytest.approx((M_BG + M_BASSOON + M_WOMAN) / 71)
    assert fscore_valid == pytest.approx((F_BG + F_BASSOON + F_WOMAN) / 71)


def test_scores_are_argmaxed_and_streaming_equals_one_batch():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 71, 8, 8, generator=g)
    gt = torch.randint(0, 71, (6, 8, 8), generator=g)
    whole = avss_semantic(scores, gt)
    assert whole == avss_semantic(scores.argmax(1), gt)
    acc = AVSSAccumulator()
    acc.update(scores[:4], gt[:4])
    acc.update(scores[4:].argmax(1), gt[4:])
    streamed = acc.result()
    assert streamed.miou == pytest.approx(float(whole.miou), abs=1e-12)
    assert streamed.fscore == pytest.approx(float(whole.fscore), abs=1e-12)
    assert acc.n_frames == 6
    assert set(whole.as_dict()) >= {
        "avss_miou",
        "avss_miou_noBg_official_drops_class70",
        "avss_miou_no_background_drops_class0",
    }


def test_perfect_prediction_of_one_class_scores_one_over_71():
    gt = torch.full((2, 3, 3), BASSOON)
    miou, fscore = avss_semantic(gt.clone(), gt)
    assert miou == pytest.approx(1 / 71) and fscore == pytest.approx(1 / 71)
    assert miou.present_classes == pytest.approx(1.0)


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        avss_semantic(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="channels"):
        avss_semantic(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="valid"):
        avss_semantic(
            torch.zeros(2, 2, 2, dtype=torch.long),
            torch.zeros(2, 2, 2, dtype=torch.long),
            valid=torch.ones(3, dtype=torch.bool),
        )


def _official_sums(pred: torch.Tensor, gt: torch.Tensor, nclass: int = 71):
    """Oracle: the official per-frame float32 histc accumulation (ids shifted by 1, 71 bins over [1, 71])."""
    iou_sum, f_sum, count = torch.zeros(nclass), torch.zeros(nclass), torch.zeros(nclass)
    predict, target = pred.float() + 1, gt.float() + 1
    hit = predict * (predict == target).float()
    for i in range(gt.shape[0]):
        inter = torch.histc(hit[i], bins=nclass, min=1, max=nclass)
        area_pred = torch.histc(predict[i], bins=nclass, min=1, max=nclass)
        area_gt = torch.histc(target[i], bins=nclass, min=1, max=nclass)
        union = area_pred + area_gt - inter
        iou_sum += inter / (2.220446049250313e-16 + union)
        count[torch.nonzero(union).squeeze(-1)] += 1
        precision, recall = inter / area_pred, inter / area_gt
        f = 1.3 * precision * recall / (0.3 * precision + recall)
        f[torch.isnan(f)] = 0.0
        f_sum += f
    miou = torch.nan_to_num(iou_sum / count, nan=0.0)
    fscore = torch.nan_to_num(f_sum / count, nan=0.0)
    return float(miou.mean()), float(miou[:-1].mean()), float(fscore.mean()), float(fscore[:-1].mean())


def test_matches_the_official_histc_accumulation_on_random_maps():
    g = torch.Generator().manual_seed(1)
    # few classes per frame, like real masks: blocks of a handful of ids
    gt = torch.randint(0, 71, (8, 1, 4, 4), generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)[:, 0]
    pred = torch.where(
        torch.rand(8, 16, 16, generator=g) < 0.7, gt, torch.randint(0, 71, (8, 16, 16), generator=g)
    )
    miou, fscore = avss_semantic(pred, gt)
    o_miou, o_miou_nobg, o_f, o_f_nobg = _official_sums(pred, gt)
    assert float(miou) == pytest.approx(o_miou, abs=1e-6)
    assert miou.no_bg_official == pytest.approx(o_miou_nobg, abs=1e-6)
    assert float(fscore) == pytest.approx(o_f, abs=1e-6)
    assert fscore.no_bg_official == pytest.approx(o_f_nobg, abs=1e-6)
