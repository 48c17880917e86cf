"""The rules of the synthetic audio-visual world: categories, configuration, and clip plans.

A clip *plan* is everything random about one clip, drawn from its own seeded generator: which
objects are on screen (distinct categories, sizes, trajectories), which are off screen, who sounds
during each frame's second, and (for Ref-AVS) the referring expressions. Rendering
(`synth_render`), sound synthesis (`synth_audio`) and file writing (`synth`) are pure functions of a
plan, so the same config always gives the same bytes and clips do not depend on generation order.

Why the task is real:
- Each category is one shape + one colour and one sound signature that lives in its own spectral
  slot of the 125-7500 Hz log-mel range with its own temporal texture, so audio names the category
  and the category names the object on screen.
- Who sounds is drawn uniformly among the on-screen objects, independently of category, size,
  position and motion, and never all of them at once in multi-source clips: a visual-only model
  sees the same scene whatever sounds, and its best per-pixel guess is "silent" for every object.
- Silent frames, off-screen sources (audible, never in the mask), changing sources and stereo
  panning by horizontal position make the audio-visual mapping non-trivial.
- The three unseen categories (Ref-AVS `test_u` only) are each a relative of one seen category,
  as a real unseen category relates to seen ones (a cello to a violin): its shape and sound
  texture, a darker shade of its colour, and the next spectral slot down. Unrelated to every seen
  category, as they first were, nothing could tie an unseen sound to an unseen look and no model
  could find the referred sounder of `test_u`; related, a model that has learnt how
  looks go with sounds can carry that over, and its audio and text must still pick the object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_specs.palette import AVSS_CLASSES

SAMPLE_RATE = 16_000
EXAMPLE_SAMPLES = 15_360  # one VGGish example: 0.96 s at 16 kHz (96 hops of 160 samples)
YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class Category:
    """One kind of object: its AVSS class, its look and its sound."""

    name: str  # AVSS class name (data_specs.palette), also used in Ref-AVS uids and texts
    shape: str  # see synth_render.SHAPES
    colour: tuple[int, int, int]  # RGB of the painted object (not the palette label colour)
    colour_name: str
    texture: str  # see synth_audio.TEXTURES: the temporal pattern of its sound
    slot: int  # spectral slot 0..10 (synth_audio.slot_band): where its sound energy lives
    s4_class: str  # release-1 S4 category folder (one of the 23 S4 sound classes)

    @property
    def class_id(self) -> int:
        """0-based AVSS palette index (background = 0)."""
        return AVSS_CLASSES.index(self.name)

    @property
    def spoken(self) -> str:
        """The category as written in an expression ("emergency car")."""
        return self.name.replace("-", " ")

    @property
    def look(self) -> str:
        return f"{self.colour_name} {self.shape}"


# Slots are interleaved so that the three unseen categories (Ref-AVS test_u only) sit between seen
# ones: every seen signature has an empty guard slot on at least one side. Each unseen category is
# the relative of the seen one a slot above it: same shape and texture, a darker shade of its colour.
CATALOG: dict[str, Category] = {c.name: c for c in (
    Category("car", "ring", (235, 205, 30), "yellow", "hum", 0, "race_car"),
    Category("man", "hexagon", (245, 245, 245), "white", "syllables", 1, "male_speech"),
    Category("lion", "circle", (130, 20, 25), "maroon", "pluck", 2, "lions_roaring"),
    Category("guitar", "circle", (215, 35, 35), "red", "pluck", 3, "playing_acoustic_guitar"),
    Category("dog", "triangle", (245, 135, 20), "orange", "bark", 4, "dog_barking"),
    Category("emergency-car", "square", (20, 40, 130), "navy", "strike", 5, "ambulance_siren"),
    Category("piano", "square", (35, 75, 215), "blue", "strike", 6, "playing_piano"),
    Category("violin", "diamond", (30, 165, 60), "green", "vibrato", 7, "playing_violin"),
    Category("mower", "star", (20, 120, 130), "teal", "chirp", 8, "lawn_mowing"),
    Category("bird", "star", (30, 200, 215), "cyan", "chirp", 9, "mynah_bird_singing"),
    Category("tabla", "cross", (205, 40, 195), "magenta", "hits", 10, "playing_tabla"),
)}
SEEN_CATEGORIES = ("guitar", "dog", "piano", "violin", "car", "bird", "tabla", "man")
UNSEEN_CATEGORIES = ("lion", "emergency-car", "mower")
RELATIVES = {"lion": "guitar", "emergency-car": "piano", "mower": "bird"}  # unseen -> the seen category it resembles


class SynthConfig(BaseModel):
    """Everything that shapes the synthetic world. Same config -> byte-identical files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="Master seed; each clip draws from its own generator derived from it.")
    clips: int = Field(40, ge=4, description="Clips per AVSS subset (v1s, v1m, v2), non-null Ref-AVS media "
                                             "folders, and S4 / MS3 clips in release 1.")
    size: int = Field(160, ge=64, le=2048, description="Frame width in px (AVSS and Ref-AVS; release 1 is "
                                                       "always 224x224).")
    aspect_ratios: tuple[float, ...] = Field((0.75,), description="Frame height/width ratios; each clip draws "
                                                                  "one (real release-2 frames vary).")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of clips in val (at least one clip).")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Share of clips in test (Ref-AVS: split evenly "
                                                              "into test_s and test_u).")
    categories: tuple[str, ...] = Field(SEEN_CATEGORIES, description="Categories of every AVSBench clip and "
                                                                     "of Ref-AVS train/val/test_s (CATALOG keys).")
    unseen_categories: tuple[str, ...] = Field(UNSEEN_CATEGORIES, description="Categories that appear only in "
                                                                              "Ref-AVS test_u (CATALOG keys).")
    object_counts: tuple[int, ...] = Field((2, 3, 4), description="Possible numbers of on-screen objects.")
    object_count_weights: tuple[float, ...] = Field((0.2, 0.4, 0.4), description="Probabilities of "
                                                                                 "object_counts.")
    object_size: tuple[float, float] = Field((0.18, 0.32), description="Object diameter range as a fraction "
                                                                       "of the frame width.")
    motion: float = Field(0.03, ge=0, description="Largest per-frame displacement as a fraction of the width.")
    silent_frame_prob: float = Field(0.15, ge=0, le=1, description="Multi-source: chance a freshly drawn "
                                                                   "frame has no on-screen source.")
    source_count_weights: tuple[float, ...] = Field((0.65, 0.35, 0.1), description="Multi-source: relative "
                                                    "weights of 1, 2, 3 on-screen sources (capped at objects-1).")
    keep_prob: float = Field(0.5, ge=0, le=1, description="Multi-source: chance a frame keeps the previous "
                                                          "frame's sources (temporal persistence).")
    offscreen_clip_prob: float = Field(0.25, ge=0, le=1, description="Multi-source/Ref-AVS: chance a clip has "
                                                                     "an off-screen source.")
    offscreen_frame_prob: float = Field(0.5, ge=0, le=1, description="Chance the off-screen source sounds in "
                                                                     "a given frame's second.")
    source_rms: float = Field(0.08, gt=0, le=0.3, description="RMS of one source at 0 dB gain (full scale 1).")
    gain_db: tuple[float, float] = Field((-6.0, 0.0), description="Per-object loudness range in dB.")
    noise_rms: float = Field(0.002, ge=0, le=0.05, description="RMS of the white noise floor on each channel.")
    segment_alignment: Literal["examples", "seconds"] = Field(
        "examples", description="Frame t's sounding state spans VGGish example t, [0.96t, 0.96t+0.96) s "
                                "('examples'), or the video second [t, t+1) s ('seconds').")
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG quality of AVSS / Ref-AVS frames.")
    refavs_null_fraction: float = Field(0.25, ge=0, le=1, description="Share of Ref-AVS train/val videos with "
                                                                      "a null folder (test_s videos get two).")
    refavs_todo_rows: int = Field(2, ge=0, description="Stray `TODO` rows in Ref-AVS metadata.csv (readers "
                                                       "must skip them).")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        for field_name in ("categories", "unseen_categories"):
            names = getattr(self, field_name)
            unknown = [n for n in names if n not in CATALOG]
            if unknown or len(set(names)) != len(names):
                raise ValueError(f"SynthConfig.{field_name}: {list(names)} must be distinct names from "
                                 f"{sorted(CATALOG)} (unknown: {unknown})")
        if set(self.categories) & set(self.unseen_categories):
            raise ValueError("SynthConfig: categories and unseen_categories overlap; an unseen category must "
                             "never appear outside Ref-AVS test_u")
        if not self.unseen_categories:
            raise ValueError("SynthConfig.unseen_categories: at least one is needed for Ref-AVS test_u")
        if len(self.object_counts) != len(self.object_count_weights) or min(self.object_counts) < 2:
            raise ValueError("SynthConfig.object_counts: give >= 2 objects per clip and one weight per count")
        if len(self.categories) < max(self.object_counts) + 2:
            raise ValueError(f"SynthConfig.categories: {len(self.categories)} categories cannot fill "
                             f"{max(self.object_counts)} distinct on-screen objects plus an off-screen one and "
                             "an absent one for null expressions; add categories or lower object_counts")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("SynthConfig: val_fraction + test_fraction must leave clips for train")
        if not 0 < self.object_size[0] <= self.object_size[1] <= 0.4:
            raise ValueError("SynthConfig.object_size: need 0 < low <= high <= 0.4 (fraction of width)")
        if any(not 0.3 <= a <= 2.0 for a in self.aspect_ratios) or not self.aspect_ratios:
            raise ValueError("SynthConfig.aspect_ratios: each height/width ratio must be in [0.3, 2]")
        return self


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) clip counts: val and test get at least one clip each, train the rest."""
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    return n - n_val - n_test, n_val, n_test


@dataclass
class ObjectPlan:
    """One object of a clip. On-screen objects come first; their index is the Ref-AVS fid."""

    category: Category
    radius: float  # px; the shape is inscribed in this circle
    centres: np.ndarray  # (T, 2) float px (x, y) per frame; off-screen objects sit outside [0, W)
    angles: np.ndarray  # (T,) degrees
    gain_db: float
    seed: int  # seeds the object's sound waveform
    on_screen: bool = True

    @property
    def colour(self) -> tuple[int, int, int]:
        return self.category.colour

    @property
    def colour_name(self) -> str:
        return self.category.colour_name


@dataclass
class ExpressionPlan:
    """One Ref-AVS metadata row."""

    uid: str
    split: str
    fid: int
    text: str
    folder: str  # media / gt_mask folder (uid.rsplit('_', 2)[0] for null rows, else the vid)


@dataclass
class ClipPlan:
    """Everything random about one clip; rendering and synthesis are pure functions of it."""

    dataset: str  # "avss" | "refavs" | "s4" | "ms3"
    subset: str  # "v1s" | "v1m" | "v2" | "refavs" | "s4" | "ms3"
    split: str
    ytid: str
    start_s: int
    n_frames: int
    width: int
    height: int
    objects: list[ObjectPlan]
    sounding: np.ndarray  # (n_objects, T) bool: object i sounds during frame t's segment
    render_seed: int
    uid: str = ""  # AVSS uid / Ref-AVS media folder / release-1 name
    vid: str = ""
    expressions: list[ExpressionPlan] = field(default_factory=list)
    frames_from: str = ""  # Ref-AVS null folders reuse the frames of this media folder

    @property
    def on_screen(self) -> list[ObjectPlan]:
        return [o for o in self.objects if o.on_screen]

    def sounding_on_screen(self, t: int) -> list[int]:
        """Indices (fids) of on-screen objects sounding during frame t."""
        return [i for i, o in enumerate(self.objects) if o.on_screen and self.sounding[i, t]]

    def audible(self, t: int) -> bool:
        return bool(self.sounding[:, t].any())

    def a_obj(self) -> str:
        """AVSS `a_obj`: audible on-screen categories joined by '_', or `off-the-screen`."""
        names = [o.category.name for i, o in enumerate(self.objects) if o.on_screen and self.sounding[i].any()]
        return "_".join(names) if names else "off-the-screen"

    def truth(self) -> dict:
        """A JSON-able record of the clip's ground truth (for diagnostics; world.json)."""
        return {
            "dataset": self.dataset, "subset": self.subset, "split": self.split, "uid": self.uid,
            "size": [self.width, self.height], "n_frames": self.n_frames,
            "objects": [{
                "index": i, "category": o.category.name, "class_id": o.category.class_id,
                "colour": o.colour_name, "on_screen": o.on_screen, "radius": round(float(o.radius), 2), "gain_db": round(o.gain_db, 2),
                "centres": [[round(float(x), 1), round(float(y), 1)] for x, y in o.centres],
                "sounding": [int(s) for s in self.sounding[i]],
            } for i, o in enumerate(self.objects)],
            "expressions": [{"uid": e.uid, "split": e.split, "fid": e.fid, "exp": e.text} for e in self.expressions],
        }


def clip_rng(seed: int, dataset: str, subset: str, index: int) -> np.random.Generator:
    """A generator that depends only on (seed, dataset, subset, index), not on generation order."""
    words = [seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, index]
    words += [ord(c) for c in f"{dataset}/{subset}"]
    return np.random.default_rng(np.random.SeedSequence(words))


def ytid(rng: np.random.Generator) -> str:
    """An 11-character YouTube-like id; like real ones it may contain and even start with '-' or '_'."""
    return "".join(YTID_ALPHABET[i] for i in rng.integers(0, len(YTID_ALPHABET), 11))


def frame_size(cfg: SynthConfig, rng: np.random.Generator) -> tuple[int, int]:
    aspect = cfg.aspect_ratios[int(rng.integers(len(cfg.aspect_ratios)))]
    return cfg.size, max(32, int(round(cfg.size * aspect / 2)) * 2)


def draw_objects(rng: np.random.Generator, cfg: SynthConfig, names: list[str], n_frames: int,
                 width: int, height: int, halves: list[int] | None = None) -> list[ObjectPlan]:
    """Place one object per category name, non-overlapping on every frame, moving a little.
    `halves` (Ref-AVS): per object 0 = it stays in the left half of the frame, 1 = the right half."""
    lo, hi = cfg.object_size
    radii = rng.uniform(lo, hi, len(names)) * width / 2
    radii = np.minimum(radii, 0.42 * height)
    for _ in range(40):
        centres = _trajectories(rng, radii, n_frames, width, height, cfg.motion * width, halves=halves)
        if centres is not None:
            break
        radii = radii * 0.93  # crowded (small or wide frames): shrink and try again
    else:
        raise RuntimeError(f"cannot place {len(names)} objects in a {width}x{height} frame; lower object_size")
    objects = []
    for i, name in enumerate(names):
        cat = CATALOG[name]
        base = float(rng.uniform(0, 360))
        angles = base + np.cumsum(rng.uniform(-4, 4, n_frames))
        objects.append(ObjectPlan(cat, float(radii[i]), centres[i], angles, float(rng.uniform(*cfg.gain_db)),
                                  int(rng.integers(2**31))))
    return objects


def _trajectories(rng: np.random.Generator, radii: np.ndarray, n_frames: int, width: int, height: int,
                  step: float, tries: int = 60, halves: list[int] | None = None) -> np.ndarray | None:
    """(k, T, 2) centres with a constant drift, jitter and bounces; None if no non-overlapping set found.
    `halves`: per object, the half of the frame (0 left, 1 right) it never leaves, not even in part."""
    k = len(radii)
    need = (radii[:, None] + radii[None, :]) * 1.08 + 3
    np.fill_diagonal(need, 0)
    lo = np.stack([radii + 2, radii + 2], axis=1)  # (k, 2)
    hi = np.stack([width - radii - 2, height - radii - 2], axis=1)
    if halves is not None:
        side = np.asarray(halves, dtype=float)
        lo[:, 0] += side * width / 2
        hi[:, 0] -= (1 - side) * width / 2
        if (lo > hi).any():
            return None
    for _ in range(tries):
        centres = np.empty((k, n_frames, 2))
        p = rng.uniform(lo, hi)
        v = rng.uniform(-1, 1, (k, 2)) * step * 0.7
        jitter = rng.uniform(-1, 1, (n_frames, k, 2)) * step * 0.3
        for t in range(n_frames):
            centres[:, t] = p
            p = p + v + jitter[t]
            out = (p < lo) | (p > hi)  # bounce off the frame edges
            v = np.where(out, -v, v)
            p = np.clip(p, lo, hi)
        dist = np.linalg.norm(centres[:, None] - centres[None, :], axis=-1)  # (k, k, T)
        if (dist >= need[:, :, None]).all():
            return centres
    return None


def offscreen_object(rng: np.random.Generator, cfg: SynthConfig, name: str, n_frames: int, width: int,
                     height: int) -> ObjectPlan:
    """An audible object outside the picture: hard-panned to its side, never in any mask."""
    side = -0.25 if rng.random() < 0.5 else 1.25
    centres = np.tile([side * width, height / 2], (n_frames, 1)).astype(float)
    return ObjectPlan(CATALOG[name], 0.1 * width, centres, np.zeros(n_frames), float(rng.uniform(*cfg.gain_db)),
                      int(rng.integers(2**31)), on_screen=False)


def choose(rng: np.random.Generator, pool: list[str] | tuple[str, ...], k: int) -> list[str]:
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def object_count(rng: np.random.Generator, cfg: SynthConfig) -> int:
    w = np.asarray(cfg.object_count_weights, dtype=float)
    return int(cfg.object_counts[int(rng.choice(len(w), p=w / w.sum()))])


def schedule_single(rng: np.random.Generator, k: int, n_frames: int) -> np.ndarray:
    """Single source: one on-screen object, drawn uniformly, sounds on every frame."""
    sounding = np.zeros((k, n_frames), dtype=bool)
    sounding[int(rng.integers(k)), :] = True
    return sounding


def schedule_multi(rng: np.random.Generator, cfg: SynthConfig, k: int, n_frames: int) -> np.ndarray:
    """Multi-source: per frame either keep the last sources, go silent, or draw m of k sources anew.

    m is in 1..k-1 (never every object), and the m sources are a uniform subset: who sounds is
    independent of what the objects look like and where they are.
    """
    weights = np.asarray(cfg.source_count_weights[: k - 1], dtype=float)
    weights = weights / weights.sum()
    sounding = np.zeros((k, n_frames), dtype=bool)
    for t in range(n_frames):
        if t > 0 and rng.random() < cfg.keep_prob:
            sounding[:, t] = sounding[:, t - 1]
        elif rng.random() < cfg.silent_frame_prob:
            continue
        else:
            m = 1 + int(rng.choice(len(weights), p=weights))
            sounding[rng.choice(k, size=m, replace=False), t] = True
    return sounding


def schedule_offscreen(rng: np.random.Generator, cfg: SynthConfig, n_frames: int) -> np.ndarray:
    return rng.random(n_frames) < cfg.offscreen_frame_prob
