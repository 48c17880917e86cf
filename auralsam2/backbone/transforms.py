"""The released AuralSAM2 test-time transform: square resize to SAM2's input size, ImageNet normalisation.

Released `test_process`: frames resized **bicubic** to S x S on PIL images, masks resized
**nearest** to S x S, then `ToTensor` (/255) and `Normalize(ImageNet mean, std)` on the frames.
Frames go through PIL exactly like that (PIL's bicubic filter adapts its support when
downsampling, so this is not the same as `F.interpolate(mode="bicubic")`). Masks use PIL's
nearest-neighbour rule (source pixel `floor((i + 0.5) * H / S)`) computed by indexing, so label
maps of any integer dtype keep their values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_pil_rgb(frame) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    array = frame.numpy() if isinstance(frame, Tensor) else np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 RGB arrays (H, W, 3) or PIL images, got dtype {array.dtype} shape {array.shape}"
        )
    return Image.fromarray(array)


def preprocess_frames(frames: np.ndarray | Tensor | Sequence, image_size: int) -> Tensor:
    """uint8 RGB frames (N, H, W, 3) (numpy or torch) or a list of PIL images / (H, W, 3) arrays ->
    (N, 3, S, S) float32, bicubic-resized to S = `image_size` and ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    out = []
    for frame in frames:
        resized = _as_pil_rgb(frame).resize((image_size, image_size), Image.BICUBIC)
        x = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
        out.append((x - mean) / std)
    if not out:
        raise ValueError("preprocess_frames: no frames given")
    return torch.stack(out)


def _nearest_index(src: int, dst: int) -> np.ndarray:
    return np.minimum(np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def preprocess_masks(masks: np.ndarray | Tensor | Sequence, image_size: int) -> Tensor:
    """Masks or label maps (N, H, W) (or a list of (H, W) arrays / PIL images) -> (N, S, S),
    nearest-resized as PIL does, dtype kept (bool, uint8, int labels...)."""
    out = []
    for mask in masks:
        array = np.asarray(mask) if not isinstance(mask, Tensor) else mask.numpy()
        if array.ndim != 2:
            raise ValueError(f"masks must be (H, W) each, got shape {array.shape}")
        rows = _nearest_index(array.shape[0], image_size)
        cols = _nearest_index(array.shape[1], image_size)
        out.append(torch.from_numpy(np.ascontiguousarray(array[rows][:, cols])))
    if not out:
        raise ValueError("preprocess_masks: no masks given")
    return torch.stack(out)
