"""Pretraining a small SAM2 the way SAM2 itself is trained: promptable video segmentation.

The synthetic demo needs a frozen SAM2 that *actually segments objects* (a random one would make
the audio question moot). This trains every SAM2 module (image encoder, prompt encoder, mask
decoder, memory attention, memory encoder, object pointers) on clips of one target object:

* the conditioning frame gets SAM-style prompts drawn from the target's mask: 1-3 clicks (the first
  positive, inside the object; later ones positive or negative, in the object or its surround) or
  a jittered box, or both;
* every other frame of the clip is segmented through SAM2's memory, as in video training;
* the loss is the released SAM2 multimask loss (`losses.segmentation_loss`) summed over frames.

It runs SAM2 through the same functions the AuralSAM2 model uses (`track_clip`, `prompted_decode`)
with no audio prompts, in eval mode (no dropout; the tiny config has none), so what is learned is
exactly what the frozen model later does. The data source is any iterator of `PretrainClip`s; the
`auralsam2 pretrain-tiny-sam2` command feeds synthetic-world clips (`data_specs.synth_objects`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auralsam2.backbone.decoder import PointInputs, point_inputs_from_clicks
from auralsam2.backbone.encoding import Pyramid
from auralsam2.backbone.tracking import track_clip
from auralsam2.backbone.transforms import preprocess_frames, preprocess_masks
from auralsam2.losses import SegLossWeights, segmentation_loss
from auralsam2.pretrain.history import StepHistory


@dataclass
class PromptedObject:
    """One object to segment in a clip: masks (T, S, S) {0,1}, its conditioning frame and prompts
    (clicks/box as `point_inputs`, or a coarse mask as `mask_inputs` (1, 1, S, S), or both None-free)."""

    masks: Tensor
    cond_frame: int
    point_inputs: PointInputs | None
    mask_inputs: Tensor | None = None


@dataclass
class PretrainClip:
    """One training example: frames (T, 3, S, S) preprocessed and the objects to segment in them.

    The image encoder runs once per clip; each object is then tracked separately (SAM2 tracks one
    object per memory bank), so a step sees every object of the scene.
    """

    images: Tensor
    objects: list[PromptedObject]


def coarse_mask(mask: np.ndarray, rng: np.random.Generator, image_size: int) -> Tensor:
    """A degraded copy of an object mask as a SAM2 mask prompt (1, 1, S, S) in {0, 1}: grown or
    shrunk by a few pixels, or its (jittered) bounding box, as SAM's previous-iteration masks are."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    kind = rng.choice(["grow", "shrink", "box"])
    if kind == "box":
        ys, xs = np.nonzero(mask)
        pad = rng.integers(0, 4, 4)
        out = torch.zeros_like(m)
        out[..., max(0, ys.min() - pad[0]): ys.max() + 1 + pad[1], max(0, xs.min() - pad[2]): xs.max() + 1 + pad[3]] = 1
        m = out
    else:
        r = int(rng.integers(1, 4))
        pooled = F.max_pool2d(m if kind == "grow" else 1 - m, 2 * r + 1, stride=1, padding=r)
        m = pooled if kind == "grow" else 1 - pooled
    return F.interpolate(m, size=(image_size, image_size), mode="nearest")


def sample_prompts(mask: np.ndarray, rng: np.random.Generator, image_size: int
                   ) -> tuple[PointInputs | None, Tensor | None]:
    """SAM-style prompts for one object mask (H, W) bool: (point_inputs, mask_inputs) in model-input
    coordinates. Clicks, a box, box + click, or a coarse mask (the dense path, which is also how
    AuralSAM2's dense prompts reach the decoder: added to the image tokens)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("cannot prompt an empty mask")
    kind = rng.choice(["clicks", "box", "box+click", "mask"], p=[0.35, 0.2, 0.1, 0.35])
    if kind == "mask":
        return None, coarse_mask(mask, rng, image_size)
    points, labels, box = [], [], None
    if kind in ("box", "box+click"):
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        jitter = 0.1 * max(x1 - x0, y1 - y0, 1)
        noise = rng.normal(0, jitter / 2, 4)
        box = np.clip([x0 + noise[0], y0 + noise[1], x1 + noise[2], y1 + noise[3]], 0, [w - 1, h - 1, w - 1, h - 1])
    n_clicks = 0 if kind == "box" else int(rng.integers(1, 4)) if kind == "clicks" else 1
    for i in range(n_clicks):
        positive = i == 0 or rng.random() < 0.6
        if positive:
            j = int(rng.integers(len(xs)))
            points.append((xs[j] + 0.5, ys[j] + 0.5))
        else:  # a negative click near the object
            cy, cx = ys.mean(), xs.mean()
            for _ in range(20):
                px, py = cx + rng.normal(0, 0.35 * w), cy + rng.normal(0, 0.35 * h)
                if 0 <= px < w and 0 <= py < h and not mask[int(py), int(px)]:
                    break
            points.append((float(np.clip(px, 0, w - 1)), float(np.clip(py, 0, h - 1))))
        labels.append(1 if positive else 0)
    return point_inputs_from_clicks(
        image_size, (h, w),
        points=torch.tensor(points, dtype=torch.float32) if points else None,
        labels=torch.tensor(labels, dtype=torch.int32) if points else None,
        box=torch.tensor(box, dtype=torch.float32) if box is not None else None,
    ), None


def make_clip(frames: list[np.ndarray], masks: np.ndarray, image_size: int, rng: np.random.Generator) -> PretrainClip:
    """Preprocess a rendered clip and its objects' masks (K, T, H, W); draw each object's prompts.

    Each object's conditioning frame is a random frame showing it (the AuralSAM2 regime uses the
    middle frame in training and frame 0 at AVSBench evaluation, so both must work).
    """
    objects = []
    for object_masks in masks:
        visible = [t for t in range(len(frames)) if object_masks[t].any()]
        cond = int(rng.choice(visible))
        point_inputs, mask_inputs = sample_prompts(object_masks[cond], rng, image_size)
        objects.append(PromptedObject(
            masks=preprocess_masks(object_masks.astype(np.uint8), image_size).float(),
            cond_frame=cond, point_inputs=point_inputs, mask_inputs=mask_inputs,
        ))
    return PretrainClip(images=preprocess_frames(np.stack(frames), image_size), objects=objects)


def encode_with_grad(model: nn.Module, images: Tensor) -> Pyramid:
    """The raw FPN pyramid with gradients (the image encoder trains here, unlike in AuralSAM2)."""
    return Pyramid(*model.image_encoder(images)["backbone_fpn"])


def clip_loss(model: nn.Module, clip: PretrainClip) -> tuple[Tensor, dict[str, float]]:
    """Loss summed over the clip's objects; stats averaged over them."""
    pyramid = encode_with_grad(model, clip.images)
    total, stats = 0.0, []
    for target in clip.objects:
        loss, s = object_loss(model, pyramid, target)
        total = total + loss
        stats.append(s)
    return total, {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}


def object_loss(model: nn.Module, pyramid: Pyramid, clip: PromptedObject) -> tuple[Tensor, dict[str, float]]:
    outputs = track_clip(model, pyramid, None, clip.cond_frame, point_inputs=clip.point_inputs,
                         mask_inputs=clip.mask_inputs)
    masks = torch.cat([o.high_res_masks for o in outputs])
    ious = torch.cat([o.ious for o in outputs])
    scores = torch.cat([o.object_score_logits for o in outputs])
    # The released loss's L1 on the sigmoid IoU head saturates when trained from scratch: early masks
    # all have IoU ~0, the head's logits run far negative and L1 gradients through the saturated
    # sigmoid vanish, leaving a constant 0 IoU (and an arbitrary "best" mask). Pretraining therefore
    # supervises the IoU head with BCE, whose gradient wrt the logit is (p - target).
    terms = segmentation_loss(masks, ious, scores, clip.masks, SegLossWeights(iou=0.0))
    with torch.no_grad():
        hard = masks.flatten(2) > 0
        gt_flat = (clip.masks > 0.5).flatten(1)[:, None]
        target_iou = (hard & gt_flat).sum(-1).float() / (hard | gt_flat).sum(-1).float().clamp(min=1)
    has_object = gt_flat.flatten(1).any(-1).float()[:, None]
    iou_bce = (F.binary_cross_entropy(ious.float().clamp(1e-6, 1 - 1e-6), target_iou, reduction="none")
               * has_object).mean(-1).sum()
    terms["iou"] = iou_bce
    terms["total"] = terms["total"] + iou_bce
    with torch.no_grad():
        best = torch.stack([o.high_res_masks[0, o.best_index] for o in outputs]) > 0
        gt = clip.masks > 0.5
        inter = (best & gt).flatten(1).sum(1).float()
        union = (best | gt).flatten(1).sum(1).float().clamp(min=1)
        iou = inter / union
        cond_iou = float(iou[clip.cond_frame])
        others = [t for t in range(len(outputs)) if t != clip.cond_frame and bool(gt[t].any())]
        tracked_iou = float(iou[others].mean()) if others else cond_iou
    stats = {k: float(v.detach()) for k, v in terms.items()} | {"cond_iou": cond_iou, "tracked_iou": tracked_iou}
    return terms["total"], stats


def pretrain_sam2(
    model: nn.Module,
    clips: Iterator[PretrainClip],
    steps: int,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    warmup: int = 100,
    log_every: int = 50,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train every SAM2 parameter for `steps` clips with AdamW and a cosine schedule.

    The model stays in eval mode (the regime it is later used in) but all its parameters train.
    Returns the logged averages.
    """
    model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history = StepHistory(steps, log_every, on_log)
    for step in range(steps):
        clip = next(clips)
        loss, stats = clip_loss(model, clip)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        history.add(step, stats)
    model.requires_grad_(False)
    return history.history


@torch.no_grad()
def evaluate_prompted(model: nn.Module, clips: list[PretrainClip]) -> dict[str, float]:
    """Mean IoU of the best mask on the prompted frame and on the frames reached through memory."""
    cond, tracked = [], []
    for clip in clips:
        _, stats = clip_loss(model, clip)
        cond.append(stats["cond_iou"])
        tracked.append(stats["tracked_iou"])
    return {"cond_iou": float(np.mean(cond)), "tracked_iou": float(np.mean(tracked)), "clips": len(clips)}
