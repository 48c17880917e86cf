"""Pictures of a clip plan: a textured background, shaded shapes, and the per-pixel object owner map.

The owner map (which object covers each pixel, -1 for background) is drawn with the same polygon
rasteriser as the painted frame, so masks and pictures agree to the pixel before JPEG coding.
Objects never overlap (the planner guarantees it), so z-order does not matter.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from data_specs.synth_world import ClipPlan

SHAPES = ("circle", "ring", "square", "triangle", "diamond", "star", "cross", "hexagon")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in the circle (cx, cy, r), rotated by `angle` degrees."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in np.deg2rad([45, 135, 225, 315])]
    elif shape == "diamond":
        pts = [(0.75, 0), (0, 1), (-0.75, 0), (0, -1)]
    elif shape in ("triangle", "hexagon"):
        n = {"triangle": 3, "hexagon": 6}[shape]
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(-math.pi / 2, 1.5 * math.pi, n, endpoint=False)]
    elif shape == "star":
        pts = [((1.0 if j % 2 == 0 else 0.45) * math.cos(a), (1.0 if j % 2 == 0 else 0.45) * math.sin(a))
               for j, a in enumerate(np.linspace(-math.pi / 2, 1.5 * math.pi, 10, endpoint=False))]
    elif shape == "cross":
        w = 0.33
        pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w), (-w, -1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    else:
        raise ValueError(f"unknown synthetic shape {shape!r}; known: {SHAPES}")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
               inset: float = 0.0) -> None:
    """Draw one shape as 255 on an "L" image; `inset` px shrinks it (the fill inside the outline)."""
    ro = r - inset
    if shape in ("circle", "ring"):
        draw.ellipse([cx - ro, cy - ro, cx + ro, cy + ro], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, ro, angle), fill=255)
    if shape == "ring":  # the hole is background: not part of the object or its mask
        ri = 0.5 * r + inset
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)


def object_mask(shape: str, cx: float, cy: float, r: float, angle: float, width: int, height: int,
                inset: float = 0.0) -> np.ndarray:
    """(H, W) bool mask of one shape."""
    box, local = _local_mask(shape, cx, cy, r, angle, width, height, inset)
    mask = np.zeros((height, width), dtype=bool)
    mask[box] = local
    return mask


def _local_mask(shape: str, cx: float, cy: float, r: float, angle: float, width: int, height: int,
                inset: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray]:
    """The shape's mask inside its bounding box: (box slices into the frame, (h, w) bool)."""
    x0, y0 = max(0, int(cx - r) - 2), max(0, int(cy - r) - 2)
    x1, y1 = min(width, int(cx + r) + 3), min(height, int(cy + r) + 3)
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx - x0, cy - y0, r, angle, inset)
    return (slice(y0, y1), slice(x0, x1)), np.asarray(img) > 0


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 muted texture: value noise at three scales over a low-saturation base colour,
    plus a few faint blobs and stripes, so the objects are not on a flat field."""
    base = rng.uniform(85, 165) + rng.uniform(-12, 12, 3)
    out = np.tile(base.astype(np.float32), (height, width, 1))
    for cells, amp, chroma in ((3, 24.0, 8.0), (8, 14.0, 4.0), (24, 7.0, 0.0)):
        grid = rng.normal(0, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
        grid = grid[..., :1] + grid * (chroma / amp)  # mostly brightness, a little colour
        small = Image.fromarray(np.uint8(np.clip(128 + 40 * grid, 0, 255)))
        big = np.asarray(small.resize((width, height), Image.BICUBIC), dtype=np.float32)
        out += (big - 128) / 40 * amp
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta, period = rng.uniform(0, math.pi), rng.uniform(0.1, 0.3) * width
    out += (5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) / period * 2 * math.pi))[..., None]
    for _ in range(int(rng.integers(2, 5))):
        bx, by, br = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.2) * width
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))
        out += blob[..., None] * rng.uniform(-25, 25, 3).astype(np.float32)
    return out


def render_clip(plan: ClipPlan) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames (T x (H, W, 3) uint8) and the owner map (T, H, W) int8: on-screen object index or -1."""
    rng = np.random.default_rng(plan.render_seed)
    w, h = plan.width, plan.height
    bg = background(rng, w, h)
    light = [float(rng.uniform(0, 2 * math.pi)) for _ in plan.objects]
    frames, owners = [], np.full((plan.n_frames, h, w), -1, dtype=np.int8)
    for t in range(plan.n_frames):
        frame = bg * np.float32(rng.uniform(0.97, 1.03))
        for i, obj in enumerate(plan.objects):
            if not obj.on_screen:
                continue
            (cx, cy), r, a = obj.centres[t], obj.radius, float(obj.angles[t])
            box, mask = _local_mask(obj.category.shape, cx, cy, r, a, w, h)
            _, inner = _local_mask(obj.category.shape, cx, cy, r, a, w, h, inset=max(1.0, 0.06 * r))
            owners[t][box][mask] = i
            # Shading: a linear light gradient across the object inside a darker outline.
            yy, xx = np.mgrid[box[0], box[1]].astype(np.float32)
            proj = ((xx - cx) * math.cos(light[i]) + (yy - cy) * math.sin(light[i])) / max(r, 1.0)
            shade = (0.88 + 0.14 * proj)[..., None]
            colour = np.asarray(obj.colour, dtype=np.float32)
            patch = frame[box]
            patch[mask] = colour * 0.55
            fill = np.clip(colour * shade + 10 * (shade - 0.88), 0, 255)
            patch[inner] = fill[inner]
        frame += rng.normal(0, 3.0, frame.shape).astype(np.float32)
        frames.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
    return frames, owners
