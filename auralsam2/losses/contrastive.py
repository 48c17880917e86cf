"""The audio-guided contrastive loss: the paper's AudioCon (Eq. 8, supplement §6.4), the released
`ContrastLoss` with its quirks, and a SupCon baseline; `audiocon_loss` dispatches on
`AudioConConfig.mode`. Each formulation is documented at its function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

__all__ = [
    "AudioConConfig",
    "audiocon_loss",
    "audiocon_official",
    "audiocon_paper",
    "grid_foreground",
    "info_nce_official",
    "official_samples",
    "supcon",
]


class AudioConConfig(BaseModel):
    """Audio-guided contrastive loss settings (`mode` picks the formulation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf/nan: a typo, never a setting

    mode: Literal["paper", "official", "supcon", "off"] = Field(
        "paper", description="paper Eq. 8 | released ContrastLoss with its quirks | SupCon baseline | off"
    )
    weight: float = Field(1.0, description="weight of the contrastive term in the total loss")
    temperature: float = Field(0.1, description="InfoNCE temperature tau")
    samples_per_level: int = Field(512, description="paper/supcon: pixels sampled per level per frame")
    hard_fraction: float = Field(0.5, description="paper/supcon: share of hard (mispredicted) samples")
    audio_anchor: bool = Field(
        False,
        description="paper mode, ours: also anchor on the audio: each foreground pixel is the positive of the "
        "frame's audio against the sampled background pixels (which include silent objects), so the audio is "
        "pushed away from what does not sound; the paper's term alone only separates pixels from pixels",
    )
    label_resize: Literal["area", "nearest"] = Field(
        "area",
        description="paper/supcon: how the GT reaches the embedding grid. 'area': a cell is foreground when "
        "at least half of it is (what the cell's features see); 'nearest': the cell's top-left pixel "
        "(torch nearest, as released; official mode always uses it). At 1024 px (64x64 grid, 16 px "
        "cells) the two agree closely; on a coarse grid nearest shifts labels by half a cell",
    )
    sample_limits: int = Field(128, description="official: L per class and set (128 AVS, 64 Ref-AVS)")
    total_limits: int = Field(15240, description="official: cap on visual samples (prefix-cut quirk)")
    official_quirks: bool = Field(
        True, description="official: reproduce label-indexing, empty-easy-set and prefix-cap quirks"
    )


def _grid_targets(
    masks: Tensor, predictions: Tensor, grid: tuple[int, int], resize: str = "nearest"
) -> tuple[Tensor, Tensor]:
    """GT `(F, S, S)` -> `(F, G*G)` by `resize` ("nearest" or "area": foreground share >= 0.5);
    best low-res logits `(F, 1, h, w)` -> bilinear `(F, G*G)`."""
    if resize == "area":
        m = grid_foreground(masks, grid).flatten(1)
    else:
        m = F.interpolate(masks[:, None].float(), size=grid, mode="nearest")[:, 0].flatten(1)
    p = F.interpolate(predictions.float(), size=grid, mode="bilinear", align_corners=False)[:, 0].flatten(1)
    return m, p


def grid_foreground(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """GT `(F, S, S)` (binary or class ids) -> float `(F, G, G)`: 1 where at least half of the cell
    is foreground (GT > 0)."""
    return (F.adaptive_avg_pool2d((masks[:, None] > 0).float(), grid)[:, 0] >= 0.5).float()


def _balanced_sample(hard: Tensor, easy: Tensor, total: int, hard_fraction: float, gen) -> Tensor:
    """Random pixel indices: `hard_fraction` of `total` from `hard`, the rest from `easy`; a short
    side is topped up from the other."""
    want_h = int(round(total * hard_fraction))
    n_h = min(hard.numel(), max(want_h, total - easy.numel()))
    n_e = min(easy.numel(), total - n_h)
    pick_h = hard[torch.randperm(hard.numel(), generator=gen, device="cpu")[:n_h].to(hard.device)]
    pick_e = easy[torch.randperm(easy.numel(), generator=gen, device="cpu")[:n_e].to(easy.device)]
    return torch.cat([pick_h, pick_e])


def _used_levels(
    proj_visual: Sequence[Tensor | None], proj_audio: Sequence[Tensor | None] | None, needs_audio: bool
) -> tuple[list[Tensor], list[Tensor] | None]:
    """Drop the levels the fuser did not compute (None entries); check audio is there when needed."""
    if needs_audio and (proj_audio is None or len(proj_audio) != len(proj_visual)):
        raise ValueError("AudioCon needs one audio projection per visual projection level (fuser modalities "
                         "without audio cannot use audiocon paper/official; use supcon or off)")
    keep = [k for k, v in enumerate(proj_visual) if v is not None]
    if not keep:
        raise ValueError("no visual projection level to compute a contrastive loss on")
    visual = [proj_visual[k] for k in keep]
    audio = None if proj_audio is None else [proj_audio[k] for k in keep]
    return visual, audio


def _zero_through(*groups: Sequence[Tensor | None] | None) -> Tensor:
    """An exact 0 that still depends on every given projection, so every head gets a (zero)
    gradient on steps the contrastive term skips (DDP then needs no `find_unused_parameters`)."""
    parts = [t.sum() for g in groups if g is not None for t in g if t is not None]
    return torch.stack(parts).sum() * 0.0


def _frame_samples(gt: Tensor, logits: Tensor, frames: Sequence[int], cfg: AudioConConfig, generator):
    """Per supervised frame (in order): `(t, fg, idx)`, the frame index, its foreground map on the
    grid and the hard/easy balanced pixel sample shared by `audiocon_paper` and `supcon`."""
    for row, t in enumerate(frames):
        fg = gt[row] > 0
        correct = (logits[row] > 0) == fg
        idx = _balanced_sample(
            (~correct).nonzero()[:, 0], correct.nonzero()[:, 0], cfg.samples_per_level, cfg.hard_fraction, generator
        )
        yield t, fg, idx


def audiocon_paper(
    proj_visual: Sequence[Tensor | None],
    proj_audio: Sequence[Tensor | None],
    masks: Tensor,
    predictions: Tensor,
    frames: Sequence[int],
    config: AudioConConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """AudioCon as the paper states it (Eq. 8, supplement §6.4).

    Tensors: `proj_visual[k]` `(N, P, G, G)` and `proj_audio[k]` `(N, P)` (L2-normalised; None
    entries, levels the fuser did not compute, are skipped), `masks` `(F, S, S)` GT of the supervised `frames` (F of
    them, in that order), `predictions` `(F, 1, h, w)` best-IoU low-res logits of those frames.
    GT is resized nearest and predictions bilinearly to the G x G embedding grid; labels are
    binarised (foreground = GT > 0, the sounding object).

    For each supervised frame t and level k: sample `samples_per_level` pixels, half hard
    (`(logit > 0) != gt`) and half easy (correct), topping up from the other side when one is
    short. Anchors are the sampled foreground pixels v_i; the positive is the frame's own audio
    embedding a_t^k (the prototype); negatives are the sampled background pixels v_j of the same
    frame and level:
        l_i = -log( exp(v_i.a/tau) / (exp(v_i.a/tau) + sum_j exp(v_i.v_j/tau)) ).
    With `audio_anchor` (ours), each anchor also gives
        m_i = -log( exp(v_i.a/tau) / (exp(v_i.a/tau) + sum_j exp(v_j.a/tau)) ),
    the audio's own foreground pixel against the background ones (silent objects included).
    The loss is the mean of l_i (and m_i) over all anchors (0 when no frame has foreground).
    """
    cfg = config or AudioConConfig()
    proj_visual, proj_audio = _used_levels(proj_visual, proj_audio, True)
    grid = tuple(proj_visual[0].shape[-2:])
    if any(tuple(v.shape[-2:]) != grid for v in proj_visual):
        raise ValueError("audiocon_paper: every level's projection must share one grid")
    gt, logits = _grid_targets(masks, predictions, grid, cfg.label_resize)
    terms = []
    for t, fg, idx in _frame_samples(gt, logits, frames, cfg, generator):
        pos_idx, neg_idx = idx[fg[idx]], idx[~fg[idx]]
        if pos_idx.numel() == 0:
            continue
        for v_map, a in zip(proj_visual, proj_audio, strict=True):
            v = v_map[t].flatten(1).T  # (G*G, P)
            anchors = v[pos_idx]
            s_pos = anchors @ a[t] / cfg.temperature  # (A,)
            s_neg = anchors @ v[neg_idx].T / cfg.temperature  # (A, B)
            if neg_idx.numel() == 0:
                terms.append(s_pos * 0.0)
                continue
            # log(1 + sum_j e^{s_j - s_p}) as softplus(logsumexp): accurate when the loss is tiny
            terms.append(F.softplus(torch.logsumexp(s_neg - s_pos[:, None], dim=1)))
            if cfg.audio_anchor:  # a_t . v_p against a_t . v_j: the audio finds its own pixels
                s_bg = v[neg_idx] @ a[t] / cfg.temperature  # (B,)
                terms.append(F.softplus(torch.logsumexp(s_bg[None, :] - s_pos[:, None], dim=1)))
    if not terms:
        return _zero_through(proj_visual, proj_audio)
    return torch.cat(terms).mean()


def supcon(
    proj_visual: Sequence[Tensor | None],
    masks: Tensor,
    predictions: Tensor,
    frames: Sequence[int],
    config: AudioConConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Supervised contrastive baseline (Khosla et al. 2020) on visual pixels only, no audio.

    Same sampling as `audiocon_paper` (per frame and level, hard/easy balanced, binary labels).
    Within each (frame, level) sample set, for every anchor i with at least one positive:
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(v_i.v_p/tau) / sum_{a != i} exp(v_i.v_a/tau) ),
    P(i) = other samples with the same label. The loss is the mean over those anchors.
    """
    cfg = config or AudioConConfig()
    proj_visual, _ = _used_levels(proj_visual, None, False)
    grid = tuple(proj_visual[0].shape[-2:])
    gt, logits = _grid_targets(masks, predictions, grid, cfg.label_resize)
    terms = []
    for t, fg, idx in _frame_samples(gt, logits, frames, cfg, generator):
        labels = fg[idx]
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(idx.numel(), dtype=torch.bool, device=idx.device)
        pos = same & ~eye
        has_pos = pos.any(1)
        if not has_pos.any():
            continue
        for v_map in proj_visual:
            v = v_map[t].flatten(1).T[idx]
            sim = (v @ v.T / cfg.temperature).masked_fill(eye, float("-inf"))
            log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
            mean_pos = (log_prob.masked_fill(~pos, 0.0)).sum(1)[has_pos] / pos.sum(1)[has_pos]
            terms.append(-mean_pos)
    if not terms:
        return proj_visual[0].sum() * 0.0
    return torch.cat(terms).mean()


def info_nce_official(
    anchors: Tensor, anchor_labels: Tensor, audio: Tensor, audio_labels: Tensor, temperature: float
) -> Tensor:
    """The released `info_nce`: visual anchors `(n, P)` against `[visual; audio]` `(n + m, P)`.

    `mask[i, j] = label_i == label_j` over the contrast set; negatives are every sample with a
    different label (visual or audio); positives are `mask` minus the visual-visual pairs whose
    label product `(l_i + 1)(l_j + 1)` is 1 or 4 (i.e. equal labels 0 or 1) minus the diagonal,
    so in practice visual -> same-label audio. Per anchor and positive p:
    `log(e^{s_ip} / (e^{s_ip} + sum_neg e^{s_in}))` with a row-max shift; mean over positives,
    then over ALL anchors (an anchor without positives adds 0 and still counts).
    """
    labels = torch.cat([anchor_labels, audio_labels])
    contrast = torch.cat([anchors, audio])
    same = (anchor_labels[:, None] == labels[None, :]).float()  # (n, n+m)
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    neg_mask = 1 - same
    pos = same.clone()
    shifted = anchor_labels.float() + 1
    product = shifted[:, None] * shifted[None, :]
    n = anchors.shape[0]
    block = pos[:, :n]
    block[(product == 1.0) | (product == 4.0)] = 0.0
    pos.fill_diagonal_(0.0)
    exp_logits = logits.exp()
    neg_sum = (exp_logits * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + neg_sum)
    count = pos.sum(1)
    count = torch.where(count < 1e-6, torch.ones_like(count), count)
    return -((pos * log_prob).sum(1) / count).mean()


def official_samples(
    proj_visual: Sequence[Tensor | None],
    proj_audio: Sequence[Tensor | None],
    masks: Tensor,
    predictions: Tensor,
    frames: Sequence[int],
    config: AudioConConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The released sample selection: `(anchors (n, P), labels (n,), audio (m, P), audio_labels (m,))`.

    See `audiocon_official` for the rules; the cap is applied here too.
    """
    cfg = config or AudioConConfig(mode="official")
    proj_visual, proj_audio = _used_levels(proj_visual, proj_audio, True)
    grid = tuple(proj_visual[0].shape[-2:])
    gt, logits = _grid_targets(masks, predictions, grid)
    quirks = cfg.official_quirks
    limit = cfg.sample_limits
    vis, vis_labels, aud, aud_labels = [], [], [], []
    dev = gt.device
    for row, t in enumerate(frames):
        mask = gt[row]
        pred = logits[row] if quirks else (logits[row] > 0).to(mask.dtype)
        classes = torch.unique(mask)
        for v_map, a_all in zip(proj_visual, proj_audio, strict=True):
            emb = v_map[t].flatten(1).T  # (G*G, P)
            if classes.numel() > 1:
                for c in classes[1:]:
                    aud.append(a_all[t][None])
                    aud_labels.append(c[None])
            else:
                aud.append(a_all[t][None])
                aud_labels.append(torch.zeros(1, device=dev))
            for c in classes:
                hard = ((mask != pred) & (mask == c)).nonzero()[:, 0]
                easy = ((mask == pred) & (mask == c)).nonzero()[:, 0]
                n_h, n_e = min(limit, hard.numel()), min(limit, easy.numel())
                if n_h + n_e < 2 * limit:
                    if n_h > n_e:
                        n_h += 2 * limit - n_e
                    else:
                        n_e += 2 * limit - n_h
                for subset, count in ((hard, n_h), (easy, n_e)):
                    local = torch.randperm(subset.numel(), generator=generator)[:count].to(dev)
                    vis.append(emb[subset[local]])
                    vis_labels.append(mask[local] if quirks else c.expand(local.numel()))
    anchors = torch.cat(vis)
    labels = torch.cat(vis_labels)
    if anchors.shape[0] > cfg.total_limits:
        if quirks:
            keep = int(torch.randperm(anchors.shape[0], generator=generator)[cfg.total_limits])
            anchors, labels = anchors[:keep], labels[:keep]
        else:
            keep_idx = torch.randperm(anchors.shape[0], generator=generator)[: cfg.total_limits].to(dev)
            anchors, labels = anchors[keep_idx], labels[keep_idx]
    return anchors, labels, torch.cat(aud), torch.cat(aud_labels)


def audiocon_official(
    proj_visual: Sequence[Tensor | None],
    proj_audio: Sequence[Tensor | None],
    masks: Tensor,
    predictions: Tensor,
    frames: Sequence[int],
    config: AudioConConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The released `ContrastLoss` (reference §5.2), quirks reproduced when `official_quirks`.

    Same tensors as `audiocon_paper` (the released heads give P = 128 and 3 levels). For each
    supervised frame t (in `frames` order) and each level k, with the frame's classes
    `U = unique(gt)` on the G x G grid:
      * audio samples: `a_t^k` once per non-zero class in U, labelled with the class, or once
        labelled 0 when U has one value (silent frame, or all-foreground frame);
      * for each class c in U: hard set H = {gt == c and gt != prediction}, easy set
        E = {gt == c and gt == prediction} where `prediction` is the real-valued LOGIT (quirk:
        E is practically empty); `n_h = min(L, |H|)`, `n_e = min(L, |E|)`, and if
        `n_h + n_e < 2L` the larger gets `2L - other` added, so up to `min(|H|, n_h + 2L)` random
        pixels are drawn from H (3L with E empty) and `n_e` from E;
      * label quirk: the sampled pixels are labelled `gt[perm]`, i.e. the full flattened GT
        indexed with positions LOCAL to H (or E), instead of c;
      * cap quirk: if more than `total_limits` visual samples, keep the first `R` where
        `R = randperm(n)[total_limits]` (a random prefix length), not a random subset.
    Then `info_nce_official` over all samples of all frames and levels. With
    `official_quirks=False`: predictions are binarised (`logit > 0`) before the H/E split, labels
    are c, and the cap keeps a random subset of `total_limits`.
    """
    anchors, labels, audio, audio_labels = official_samples(
        proj_visual, proj_audio, masks, predictions, frames, config, generator
    )
    if anchors.shape[0] == 0:
        return proj_visual[0].sum() * 0.0
    cfg = config or AudioConConfig(mode="official")
    return info_nce_official(anchors, labels, audio, audio_labels, cfg.temperature)


def audiocon_loss(
    proj_visual: Sequence[Tensor | None],
    proj_audio: Sequence[Tensor | None] | None,
    masks: Tensor,
    predictions: Tensor,
    frames: Sequence[int],
    config: AudioConConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dispatch on `config.mode`; returns the UNWEIGHTED contrastive loss (scalar)."""
    cfg = config or AudioConConfig()
    if cfg.mode == "off":
        return next(v for v in proj_visual if v is not None).sum() * 0.0
    if cfg.mode == "supcon":
        return supcon(proj_visual, masks, predictions, frames, cfg, generator)
    fn = audiocon_paper if cfg.mode == "paper" else audiocon_official
    return fn(proj_visual, proj_audio, masks, predictions, frames, cfg, generator)
