"""Augmented views: seeded, clip-consistent renderings of a clip, following the released recipe.

The released training (official_auralsam2.md §7.3) draws one random transform per clip and applies
it to every frame: horizontal flip (p 0.5), `RandomAffine` with rotation in ±25° and an x-shear in
±20° (no translation or scale; image bilinear, fill (123,116,103); mask nearest, fill 0), a resize to
S x S, and grayscale (p 0.05). Its two ColorJitters never reach the image (a released no-op), so they
are not reproduced. A frozen-feature cache cannot draw a new transform every epoch, so it stores
views: view 0 is the unaugmented frame (the released test transform, exactly what
`preprocess_frames`/`preprocess_masks` compute), views 1..K-1 are transforms drawn from a generator
seeded by (seed, clip key, view); the same seed gives the same views on any machine.

Deviations, on purpose: the resize after the geometric transform is the test transform's (bicubic
image, nearest mask) rather than the released bilinear for both, so that masks stay exact label
maps (a bilinear label map mixes class ids) and views differ from view 0 only by the augmentation;
grayscale is applied before the resize instead of after (a per-pixel linear map: equal up to uint8
rounding).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from auralsam2.backbone.transforms import preprocess_frames, preprocess_masks
from feature_cache.schema import VIEW_RECIPE


@dataclass(frozen=True)
class ViewParams:
    """The transform of one view of one clip (shared by all its frames and masks)."""

    view: int
    hflip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise (torchvision convention)
    shear_x: float = 0.0  # degrees
    grayscale: bool = False

    @property
    def identity(self) -> bool:
        return not self.hflip and self.angle == 0.0 and self.shear_x == 0.0 and not self.grayscale

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewParams:
        return cls(**json.loads(text))


def view_params(clip_key: str, view: int, seed: int, recipe: dict[str, Any] = VIEW_RECIPE) -> ViewParams:
    """The seeded transform of view `view` of clip `clip_key`; view 0 is the identity."""
    if view < 0:
        raise ValueError(f"view index must be >= 0, got {view}")
    if view == 0:
        return ViewParams(0)
    digest = hashlib.sha256(f"{recipe['name']}\0{seed}\0{clip_key}\0{view}".encode()).digest()
    rng = np.random.default_rng(list(struct.unpack("<4I", digest[:16])))
    return ViewParams(
        view=view,
        hflip=bool(rng.random() < recipe["hflip_p"]),
        angle=float(rng.uniform(-recipe["degrees"], recipe["degrees"])),
        shear_x=float(rng.uniform(-recipe["shear_x"], recipe["shear_x"])),
        grayscale=bool(rng.random() < recipe["grayscale_p"]),
    )


def _geometric(image: Image.Image, params: ViewParams, interpolation, fill) -> Image.Image:
    import torchvision.transforms.functional as TF

    if params.hflip:
        image = TF.hflip(image)
    if params.angle or params.shear_x:
        image = TF.affine(image, angle=params.angle, translate=[0, 0], scale=1.0, shear=[params.shear_x, 0.0],
                          interpolation=interpolation, fill=fill)
    return image


def transform_image(image: Image.Image, params: ViewParams, recipe: dict[str, Any] = VIEW_RECIPE) -> Image.Image:
    """One RGB frame at its original size -> the view's frame (same size)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = image.convert("RGB")
    if params.identity:
        return image
    image = _geometric(image, params, InterpolationMode.BILINEAR, list(recipe["image_fill"]))
    if params.grayscale:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


def transform_mask(mask: np.ndarray, params: ViewParams, recipe: dict[str, Any] = VIEW_RECIPE) -> np.ndarray:
    """One (H, W) uint8 label map or 0/1 mask -> the view's mask (nearest, fill 0), same size."""
    from torchvision.transforms import InterpolationMode

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if params.identity:
        return mask
    out = _geometric(Image.fromarray(mask), params, InterpolationMode.NEAREST, [recipe["mask_fill"]])
    return np.asarray(out, dtype=np.uint8)


def render_frames(frames: Sequence[Image.Image], params: ViewParams, image_size: int) -> Tensor:
    """A clip's frames -> (N, 3, S, S) model input of this view (ImageNet-normalised float32)."""
    return preprocess_frames([transform_image(f, params) for f in frames], image_size)


def render_masks(masks: Sequence[np.ndarray], params: ViewParams, image_size: int) -> Tensor:
    """(H, W) uint8 masks/label maps -> (N, S, S) uint8 of this view, transformed like the frames."""
    return preprocess_masks([transform_mask(m, params) for m in masks], image_size)
