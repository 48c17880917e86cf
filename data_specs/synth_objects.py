"""Per-object video clips from the synthetic world, for pretraining the tiny SAM2 (issue 8).

SAM2 is trained to segment *an object* given clicks or a box, and to track it with memory. The
synthetic world's rendered clips know every object's pixels (the owner map), so each draw here is
one rendered clip plus the mask of one on-screen object on every frame, regardless of whether it
sounds. Clips are drawn from a seed range disjoint from the demo world's, so the pretraining never
sees a demo evaluation clip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from data_specs.synth_plans import plan_avss_clip
from data_specs.synth_render import render_clip
from data_specs.synth_world import SynthConfig

PRETRAIN_SEED_OFFSET = 1_000_003  # world seeds used by demos/tests are small integers


@dataclass
class ObjectClip:
    frames: list[np.ndarray]  # T x (H, W, 3) uint8
    masks: np.ndarray  # (K, T, H, W) bool: each on-screen object's pixels on each frame
    categories: list[str]


def object_clip(seed: int, index: int, size: int = 160, n_frames: int = 5, disappear_prob: float = 0.25) -> ObjectClip:
    """The `index`-th pretraining clip of stream `seed`: a rendered clip and every on-screen object's masks.

    With probability `disappear_prob` one object leaves the scene after a random frame (the clip is
    spliced with a render of the same scene without it), so SAM2's object-score head also learns
    "no object here"; its masks are empty on those frames. Frame 0 shows every object.
    """
    cfg = SynthConfig(seed=PRETRAIN_SEED_OFFSET + seed, size=size)
    subset = "v2" if n_frames > 5 else "v1m"
    plan = plan_avss_clip(cfg, subset, index, "train")
    frames, owners = render_clip(plan)
    frames, owners = frames[:n_frames], owners[:n_frames]
    on_screen = [i for i, o in enumerate(plan.objects) if o.on_screen]
    rng = np.random.default_rng([seed, index])
    masks = np.stack([owners == i for i in on_screen])
    target = int(rng.choice(on_screen))
    if n_frames > 1 and rng.random() < disappear_prob:
        gone_from = int(rng.integers(1, n_frames))
        objects = list(plan.objects)
        objects[target] = dataclasses.replace(objects[target], on_screen=False)
        # Same render seed and the same random draws: background and noise are identical.
        without, _ = render_clip(dataclasses.replace(plan, objects=objects))
        frames = frames[:gone_from] + without[gone_from:n_frames]
        masks[on_screen.index(target), gone_from:] = False
    return ObjectClip(frames, masks, [plan.objects[i].category.name for i in on_screen])


@dataclass
class AudioClip:
    pcm: np.ndarray  # (n, 2) int16 stereo at 16 kHz
    labels: np.ndarray  # (T, K) bool: which CATALOG category sounds during frame t's example (on or off screen)
    categories: tuple[str, ...]  # the K category names, in CATALOG order


def audio_clip(seed: int, index: int) -> AudioClip:
    """The `index`-th audio pretraining clip of stream `seed`: a 10-second multi-source mixture
    (on- and off-screen sources, silences) and, per one-second frame, the set of sounding categories."""
    from data_specs.synth_audio import mix_clip
    from data_specs.synth_world import CATALOG

    cfg = SynthConfig(seed=PRETRAIN_SEED_OFFSET + seed)
    plan = plan_avss_clip(cfg, "v2", index, "train")
    names = tuple(CATALOG)
    labels = np.zeros((plan.n_frames, len(names)), dtype=bool)
    for i, obj in enumerate(plan.objects):
        labels[plan.sounding[i], names.index(obj.category.name)] = True
    return AudioClip(mix_clip(plan, cfg), labels, names)
