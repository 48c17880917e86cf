"""Losses against hand-computed values: SAM2 multimask loss, supervised frames, AudioCon variants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from auralsam2.losses import (
    AudioConConfig,
    SegLossWeights,
    audiocon_loss,
    audiocon_official,
    audiocon_paper,
    dice_per_mask,
    focal_per_mask,
    info_nce_official,
    iou_l1_per_mask,
    mask_prompt_loss,
    official_samples,
    segmentation_loss,
    supcon,
    supervised_frames,
    text_contrast_loss,
)
from auralsam2.losses.contrastive import _balanced_sample, _grid_targets

BIG = 100.0  # |logit| that makes sigmoid exactly 0/1 in float32


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------
# Segmentation loss
# ---------------------------------------------------------------------------------------------


def test_focal_single_pixels():
    logits = torch.zeros(1, 1, 1, 2)
    targets = torch.tensor([[[[1.0, 0.0]]]])
    # p = 0.5: ce = ln 2, (1 - p_t)^2 = 1/4, alpha_t = 0.25 (pos) / 0.75 (neg)
    want = (0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)) / 2
    assert focal_per_mask(logits, targets).item() == pytest.approx(want, rel=1e-6)
    # alpha < 0 and gamma 0 is plain BCE
    assert focal_per_mask(logits, targets, alpha=-1, gamma=0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_dice_and_iou_single_mask():
    logits = torch.tensor([[[[BIG, BIG, -BIG, -BIG]]]])
    targets = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]])
    assert dice_per_mask(logits, targets).item() == pytest.approx(1 - 3 / 4)  # (2*1+1)/(2+1+1)
    assert iou_l1_per_mask(logits, targets, torch.tensor([[0.8]])).item() == pytest.approx(0.3)
    empty = torch.zeros_like(targets)
    # empty prediction and empty GT: union clamped to 1, IoU 0
    assert iou_l1_per_mask(-logits.abs(), empty, torch.tensor([[0.25]])).item() == pytest.approx(0.25)


def seg_fixture():
    """Two frames of 1x4 masks. Frame 0 GT = [1,0,0,0]; frame 1 GT empty."""
    a = [-BIG, -BIG, -BIG, -BIG]  # misses the object: focal 25/4, dice 1/2 -> combo 125.5 (best)
    b = [BIG, BIG, BIG, BIG]  # 3 false positives: focal 3*75/4, dice 1/2 -> 1125.5
    c = [BIG, BIG, -BIG, -BIG]  # 1 false positive: focal 75/4, dice 1/4 -> 375.25
    masks = torch.tensor([[a, b, c], [b, b, b]]).reshape(2, 3, 1, 4)
    ious = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.9, 0.9]])
    obj = torch.tensor([[-1.0], [2.0]])
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]).reshape(2, 1, 4)
    return masks, ious, obj, targets


def test_segmentation_loss_hand_computed():
    out = segmentation_loss(*seg_fixture())
    # frame 0: best mask a (20 focal + dice); IoUs (0, 1/4, 1/2) vs predicted (.1, .2, .3)
    assert out["focal"].item() == pytest.approx(6.25)
    assert out["dice"].item() == pytest.approx(0.5)
    assert out["iou"].item() == pytest.approx((0.1 + 0.05 + 0.2) / 3)
    # object score BCE: frame 0 target 1 with logit -1, frame 1 target 0 with logit 2
    obj = softplus(1.0) + softplus(2.0)
    assert out["object_score"].item() == pytest.approx(obj, rel=1e-6)
    want = 20 * 6.25 + 0.5 + 0.35 / 3 + obj
    assert out["total"].item() == pytest.approx(want, rel=1e-6)


def test_best_mask_follows_the_weights_and_empty_gt_is_gated():
    masks, ious, obj, targets = seg_fixture()
    dice_only = segmentation_loss(masks, ious, obj, targets, SegLossWeights(focal=0.0))
    assert dice_only["dice"].item() == pytest.approx(0.25)  # mask c wins on dice alone
    assert dice_only["focal"].item() == pytest.approx(18.75)
    # frame 1 alone (empty GT): only the object-score term remains
    only_empty = segmentation_loss(masks[1:], ious[1:], obj[1:], targets[1:])
    assert only_empty["focal"] == 0 and only_empty["dice"] == 0 and only_empty["iou"] == 0
    assert only_empty["total"].item() == pytest.approx(softplus(2.0), rel=1e-6)


def test_segmentation_loss_sums_over_frames():
    masks, ious, obj, targets = seg_fixture()
    both = segmentation_loss(masks, ious, obj, targets)["total"]
    parts = sum(segmentation_loss(masks[i : i + 1], ious[i : i + 1], obj[i : i + 1], targets[i : i + 1])["total"]
                for i in range(2))
    assert both.item() == pytest.approx(parts.item(), rel=1e-6)


def test_supervised_frames():
    assert supervised_frames("v1s", 5) == [0]
    assert supervised_frames("s4", 5) == [0]
    assert supervised_frames("v1s", 5, split="test") == [0, 1, 2, 3, 4]
    assert supervised_frames("v1m", 5) == [0, 1, 2, 3, 4]
    assert supervised_frames("refavs", 10) == list(range(10))
    # v2 merged pool: all frames unless a v1s clip is in the batch
    assert supervised_frames("v2", 5, batch_subsets=["v2", "v1m"]) == list(range(5))
    assert supervised_frames("v2", 5, batch_subsets=["v2", "v1s"]) == [0]


# ---------------------------------------------------------------------------------------------
# AudioCon
# ---------------------------------------------------------------------------------------------


def tiny_audiocon_inputs(logit: float = 0.3):
    """One frame, a 2x2 grid, P = 2, three identical levels.

    GT (raster order) [0, 0, 1, 1]: background pixels embed to (0, 1), foreground to (1, 0),
    the audio embedding is (1, 0). Predictions are a constant logit at the low-res size.
    """
    v = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]).reshape(1, 2, 2, 2)
    proj_v = [v.clone() for _ in range(3)]
    proj_a = [torch.tensor([[1.0, 0.0]]) for _ in range(3)]
    masks = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (1,8,8)
    preds = torch.full((1, 1, 2, 2), logit)
    return proj_v, proj_a, masks, preds


def test_official_label_quirk_hand_computed():
    # Every class set is sampled whole (3L >= set size). Quirk: labels = gt[local positions],
    # so the two foreground samples get gt[0], gt[1] = 0: every sample is background, no anchor
    # has a positive (visual-visual pairs are removed), the loss is exactly 0.
    cfg = AudioConConfig(mode="official", sample_limits=1, temperature=1.0)
    args = tiny_audiocon_inputs()
    anchors, labels, audio, audio_labels = official_samples(*args, frames=[0], config=cfg)
    assert anchors.shape == (12, 2) and labels.tolist() == [0.0] * 12
    assert audio_labels.tolist() == [1.0, 1.0, 1.0]
    assert audiocon_official(*args, frames=[0], config=cfg).item() == 0.0
    # Fixed labels: fg anchors (6) have the 3 audio samples as positives and the 6 bg visual
    # samples (all levels) as negatives: l = log(1 + 6 e^{0-1}); bg anchors (6) have no
    # positive and add 0 but count: loss = 6/12 * log(1 + 6/e).
    fixed = AudioConConfig(mode="official", sample_limits=1, temperature=1.0, official_quirks=False)
    want = 0.5 * math.log(1 + 6 / math.e)
    assert audiocon_official(*args, frames=[0], config=fixed).item() == pytest.approx(want, rel=1e-6)


def test_paper_audiocon_hand_computed():
    # fg anchors (2 per level) -> own-frame same-level audio (s = 1) vs the level's 2 bg samples
    # (s = 0): l = log(1 + 2/e) for all 6 anchors.
    cfg = AudioConConfig(mode="paper", temperature=1.0)
    got = audiocon_paper(*tiny_audiocon_inputs(), frames=[0], config=cfg)
    assert got.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    # tau = 0.1 scales the similarities by 10
    hot = audiocon_paper(*tiny_audiocon_inputs(), frames=[0], config=AudioConConfig(temperature=0.1))
    assert hot.item() == pytest.approx(math.log(1 + 2 * math.exp(-10)), rel=1e-5)


def test_supcon_hand_computed():
    # each anchor: one same-label partner (s = 1) against all 3 others (1, 0, 0)
    cfg = AudioConConfig(mode="supcon", temperature=1.0)
    got = supcon(tiny_audiocon_inputs()[0], *tiny_audiocon_inputs()[2:], frames=[0], config=cfg)
    assert got.item() == pytest.approx(math.log(math.e + 2) - 1, rel=1e-6)
    assert audiocon_loss(*tiny_audiocon_inputs(), frames=[0], config=cfg).item() == pytest.approx(got.item())


def test_silent_frames_give_no_paper_anchor_but_official_counts_them():
    proj_v, proj_a, masks, preds = tiny_audiocon_inputs()
    two_v = [torch.cat([v, v]) for v in proj_v]  # frame 1 = frame 0's embeddings, but silent
    two_a = [torch.cat([a, a]) for a in proj_a]
    two_masks, two_preds = torch.cat([masks, torch.zeros_like(masks)]), torch.cat([preds, preds])
    paper_cfg = AudioConConfig(temperature=1.0)
    alone = audiocon_paper(proj_v, proj_a, masks, preds, [0], paper_cfg)
    both = audiocon_paper(two_v, two_a, two_masks, two_preds, [0, 1], paper_cfg)
    assert both.item() == pytest.approx(alone.item(), rel=1e-6)  # the silent frame adds nothing
    cfg = AudioConConfig(mode="official", sample_limits=1, temperature=1.0, official_quirks=False)
    anchors, labels, audio, audio_labels = official_samples(two_v, two_a, two_masks, two_preds, [0, 1], cfg)
    assert audio_labels.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # silent frame's audio labelled 0
    assert anchors.shape[0] == 12 + 9  # silent frame: 3L of its 4 pixels per level
    alone_off = audiocon_official(proj_v, proj_a, masks, preds, [0], cfg)
    both_off = audiocon_official(two_v, two_a, two_masks, two_preds, [0, 1], cfg)
    assert both_off.item() != pytest.approx(alone_off.item(), rel=1e-3)


def test_official_easy_set_is_empty_with_real_valued_logits_and_counts_reach_3L():
    g = torch.Generator().manual_seed(0)
    proj_v = [F.normalize(torch.randn(1, 4, 16, 16, generator=g), dim=1) for _ in range(3)]
    proj_a = [F.normalize(torch.randn(1, 4, generator=g), dim=1) for _ in range(3)]
    masks = torch.zeros(1, 64, 64)
    masks[:, 40:, :] = 1.0  # rows 10..15 of the 16x16 grid: 96 fg after 160 bg pixels
    preds = torch.where(masks[:, None, ::4, ::4] > 0, 0.7, -0.7)  # correct but real-valued
    cfg = AudioConConfig(mode="official", sample_limits=8)
    anchors, labels, _, _ = official_samples(proj_v, proj_a, masks, preds, [0], cfg, g)
    assert anchors.shape[0] == 3 * 2 * 24  # 3L per class per level: easy set empty, hard topped up
    # label quirk: samples are labelled gt[local position], local < 160 (bg) or < 96 (fg): all
    # raster positions < 160 are background, so every label is 0
    assert labels.sum() == 0
    fixed = AudioConConfig(mode="official", sample_limits=8, official_quirks=False)
    anchors_f, labels_f, _, _ = official_samples(proj_v, proj_a, masks, preds, [0], fixed, g)
    assert anchors_f.shape[0] == 3 * 2 * 24 and labels_f.sum() == 3 * 24  # easy set used, true labels


def test_official_cap_keeps_a_random_prefix():
    g = torch.Generator()
    args = tiny_audiocon_inputs()
    base = AudioConConfig(mode="official", sample_limits=1)
    full, _, _, _ = official_samples(*args, frames=[0], config=base, generator=g.manual_seed(5))
    lengths = set()
    for seed in range(20):
        capped_cfg = AudioConConfig(mode="official", sample_limits=1, total_limits=4)
        capped, _, _, _ = official_samples(*args, frames=[0], config=capped_cfg, generator=g.manual_seed(seed))
        ref, _, _, _ = official_samples(*args, frames=[0], config=base, generator=g.manual_seed(seed))
        assert torch.equal(capped, ref[: capped.shape[0]])  # a prefix of the uncapped selection
        lengths.add(capped.shape[0])
    assert len(lengths) > 1 and max(lengths) < full.shape[0]
    fixed = AudioConConfig(mode="official", sample_limits=1, total_limits=4, official_quirks=False)
    assert official_samples(*args, frames=[0], config=fixed, generator=g)[0].shape[0] == 4


def test_paper_sampling_is_balanced_hard_easy():
    g = torch.Generator().manual_seed(0)
    hard, easy = torch.arange(40), torch.arange(40, 256)
    idx = _balanced_sample(hard, easy, 64, 0.5, g)
    assert (idx < 40).sum() == 32 and (idx >= 40).sum() == 32 and idx.unique().numel() == 64
    idx = _balanced_sample(torch.arange(10), torch.arange(10, 256), 64, 0.5, g)
    assert (idx < 10).sum() == 10 and idx.numel() == 64  # short hard side topped up with easy
    idx = _balanced_sample(torch.arange(100), torch.arange(100, 110), 64, 0.5, g)
    assert (idx >= 100).sum() == 10 and idx.numel() == 64
    assert _balanced_sample(torch.arange(5), torch.arange(5, 20), 512, 0.5, g).numel() == 20


def test_info_nce_official_pairs():
    # Two anchors (labels 1, 0), two audio (labels 1, 0), P = 1 and tau = 1.
    anchors = torch.tensor([[1.0], [-1.0]])
    audio = torch.tensor([[1.0], [-1.0]])
    loss = info_nce_official(anchors, torch.tensor([1.0, 0.0]), audio, torch.tensor([1.0, 0.0]), 1.0)
    # anchor 0: logits vs [a0, a1, au0, au1] = [1, -1, 1, -1] - 1; positive au0 (0); negatives
    # a1, au1 (e^-2 each): l = log(1 + 2 e^-2). Anchor 1 symmetric.
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_paper_and_official_differ_only_in_the_documented_structure():
    # Same inputs, official quirks off: the only differences left are the documented ones
    # (official anchors include background pixels, its negatives span all levels, its positives
    # are every same-label audio sample). Rebuild the official value from the paper's pieces.
    args = tiny_audiocon_inputs()
    paper = audiocon_paper(*args, frames=[0], config=AudioConConfig(temperature=1.0))
    fixed = AudioConConfig(mode="official", sample_limits=1, temperature=1.0, official_quirks=False)
    official = audiocon_official(*args, frames=[0], config=fixed)
    # paper: log(1 + n_neg_paper / e); official: (fg share) * log(1 + n_neg_official / e)
    n_neg_paper, n_neg_official, fg_share = 2, 6, 0.5
    assert paper.item() == pytest.approx(math.log(1 + n_neg_paper / math.e), rel=1e-6)
    assert official.item() == pytest.approx(fg_share * math.log(1 + n_neg_official / math.e), rel=1e-6)


def test_off_and_missing_audio():
    args = tiny_audiocon_inputs()
    assert audiocon_loss(*args, frames=[0], config=AudioConConfig(mode="off")).item() == 0.0
    with pytest.raises(ValueError, match="audio projection"):
        audiocon_paper(args[0], None, args[2], args[3], [0])


def test_audiocon_gradients_reach_visual_and_audio():
    proj_v, proj_a, masks, preds = tiny_audiocon_inputs()
    g = torch.Generator().manual_seed(0)
    proj_v = [(v + 0.1 * torch.randn(v.shape, generator=g)).requires_grad_() for v in proj_v]
    proj_a = [(a + 0.1 * torch.randn(a.shape, generator=g)).requires_grad_() for a in proj_a]
    for mode in ("paper", "official"):
        cfg = AudioConConfig(mode=mode, sample_limits=1, official_quirks=False)
        loss = audiocon_loss(proj_v, proj_a, masks, preds, [0], cfg)
        grads = torch.autograd.grad(loss, proj_v + proj_a)
        assert all(gr.abs().sum() > 0 for gr in grads), mode


def test_skipped_contrastive_steps_still_reach_every_head():
    """No foreground anchors: the loss is exactly 0 but every projection gets a (zero) gradient, so
    data-parallel training needs no find_unused_parameters for AudioCon."""
    import torch

    from auralsam2.losses import AudioConConfig, audiocon_paper

    pv = [torch.randn(2, 8, 4, 4, requires_grad=True) for _ in range(3)]
    pa = [torch.randn(2, 8, requires_grad=True) for _ in range(3)]
    masks = torch.zeros(2, 16, 16)  # silent frames: nothing to anchor
    loss = audiocon_paper(pv, pa, masks, torch.zeros(2, 1, 16, 16), [0, 1], AudioConConfig(mode="paper"))
    loss.backward()
    assert loss.item() == 0.0
    assert all(t.grad is not None and not t.grad.any() for t in pv + pa)


def test_audio_anchor_hand_computed():
    # audio (0.6, 0.8): fg anchors v = (1, 0) give s_pos = 0.6; pixel-pixel negatives s = 0 (paper
    # term), audio-background s = 0.8 (audio-anchored term); 2 background samples per frame and level
    proj_v, _, masks, preds = tiny_audiocon_inputs()
    audio = [torch.tensor([[0.6, 0.8]]) for _ in range(3)]
    cfg = AudioConConfig(mode="paper", temperature=1.0)
    paper = audiocon_paper(proj_v, audio, masks, preds, frames=[0], config=cfg)
    assert paper.item() == pytest.approx(math.log(1 + 2 * math.exp(-0.6)), rel=1e-6)
    both = audiocon_paper(proj_v, audio, masks, preds, frames=[0], config=cfg.model_copy(update={"audio_anchor": True}))
    expect = (math.log(1 + 2 * math.exp(-0.6)) + math.log(1 + 2 * math.exp(0.8 - 0.6))) / 2
    assert both.item() == pytest.approx(expect, rel=1e-6)


def test_label_resize_area_versus_nearest():
    # an 8x8 GT whose 2x2 grid cells are foreground on 9 of 16 pixels, never on the top-left one
    cell = torch.zeros(4, 4)
    cell[1:, 1:] = 1
    masks = cell.repeat(2, 2)[None]
    preds = torch.zeros(1, 1, 2, 2)
    area, _ = _grid_targets(masks, preds, (2, 2), "area")
    nearest, _ = _grid_targets(masks, preds, (2, 2), "nearest")
    assert area.tolist() == [[1.0] * 4] and nearest.tolist() == [[0.0] * 4]
    assert AudioConConfig().label_resize == "area"
    # class ids (AVSS labels) count as foreground by GT > 0, not by their size: a cell with one
    # pixel of class 56 stays background
    labels = torch.zeros(1, 8, 8)
    labels[0, 0, 0] = 56
    assert _grid_targets(labels, preds, (2, 2), "area")[0].tolist() == [[0.0] * 4]


def test_mask_prompt_loss_is_bce_against_the_area_resized_gt():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :4] = 1  # the top-left cell of a 2x2 grid
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    expect = F.binary_cross_entropy_with_logits(logits, target)
    assert mask_prompt_loss(logits, masks).item() == pytest.approx(expect.item())
    # pos_weight scales the positive cells' term only: by hand, -(w log s(x)) for the one positive cell
    # and -log(1 - s(x)) for the three negatives, averaged over the four cells
    by_hand = (3.0 * -F.logsigmoid(torch.tensor(2.0)) - sum(F.logsigmoid(-torch.tensor(x)) for x in (-1.0, 0.5, -3.0))) / 4
    assert mask_prompt_loss(logits, masks, pos_weight=3.0).item() == pytest.approx(by_hand.item())


def test_text_contrast_hand_computed():
    """InfoNCE over a frame's cells, the referred object's cells weighted by the share of the cell
    it covers; a frame without the object adds nothing."""
    masks = torch.zeros(2, 8, 8)
    masks[0, :4, :4] = 1  # frame 0: the whole top-left cell of a 2x2 grid
    masks[0, 4:6, 4:8] = 1  # and half of the bottom-right one
    cosine = torch.tensor([[[[0.5, -0.2], [0.1, 0.3]]], [[[0.9, 0.9], [0.9, 0.9]]]])
    t = 0.1
    z = [c / t for c in (0.5, -0.2, 0.1, 0.3)]
    positive = math.log(1.0 * math.exp(z[0]) + 0.5 * math.exp(z[3]))
    expect = math.log(sum(math.exp(v) for v in z)) - positive
    assert text_contrast_loss(cosine, masks, t).item() == pytest.approx(expect, rel=1e-5)
    # the absent frame (1) is not averaged in; a clip of absent frames gives 0 with a graph
    empty = cosine.clone().requires_grad_()
    loss = text_contrast_loss(empty, torch.zeros(2, 8, 8), t)
    assert loss.item() == 0 and loss.requires_grad
    # near 0 when the map peaks on the referred object, large when on the background
    on_object = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]]])
    on_background = torch.tensor([[[[-1.0, 1.0], [-1.0, -1.0]]]])
    assert text_contrast_loss(on_object, masks[:1], t).item() < 1e-6
    assert text_contrast_loss(on_background, masks[:1], t).item() > 19
