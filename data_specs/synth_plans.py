"""Clip plans of each synthetic dataset: AVSS (v1s, v1m, v2), Ref-AVS, and release-1 S4 / MS3.

Subset rules:
- v1s / S4 (single source): 2-4 objects, exactly one of them (uniform) sounds on every frame.
- v1m / v2 / MS3 (multi source): 2-4 objects; per frame 0..k-1 of them sound (`schedule_multi`),
  plus, in some clips, an off-screen category that is heard but never masked.
- Ref-AVS: 10-frame clips of four objects (distinct categories, each with its own look and sound),
  two in each half of the frame; in each half one object sounds (on >= 6 of 10 seconds) and one is
  silent. An expression names the half and that the object sounds ("the object on the left that is
  making a sound"), never its category, so neither the text (two objects in that half) nor the
  audio (two sounders) is enough alone: the task needs hearing AND reading. The referred object's
  mask is shown on every frame (the Ref-AVS ground truth segments the referred object, not only
  while it sounds). test_u clips hold
  one unseen category (never in train/val/test_s or AVSBench), the referred sounder: a relative of
  a seen category (`synth_world.RELATIVES`: its shape and sound texture, its own colour and
  spectral slot), which may itself be on screen.
  Null folders (`null_c-<vid>`: same frames, audio of absent categories only, as if crossed from
  another clip; `null_m-<vid>`: same frames, muted audio) carry expressions naming a half of the
  frame whose objects are present and silent, with empty masks. The meaning of `c`/`m` is
  undocumented upstream; this is our reading.
"""

from __future__ import annotations

import numpy as np

from data_specs.synth_world import (
    ClipPlan,
    ExpressionPlan,
    SynthConfig,
    choose,
    clip_rng,
    draw_objects,
    frame_size,
    object_count,
    offscreen_object,
    schedule_multi,
    schedule_offscreen,
    schedule_single,
    split_counts,
    ytid,
)

AVSS_FRAMES = {"v1s": 5, "v1m": 5, "v2": 10}
REFAVS_FRAMES = 10
REFAVS_SPLITS = ("train", "val", "test_s", "test_u", "test_n")


def splits_of(n: int, cfg: SynthConfig) -> list[str]:
    n_train, n_val, n_test = split_counts(n, cfg.val_fraction, cfg.test_fraction)
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def _sources(rng: np.random.Generator, cfg: SynthConfig, plan_objects: list, names: list[str], pool,
             n_frames: int, width: int, height: int, single: bool) -> np.ndarray:
    """Sounding matrix for an AVSBench-style clip; appends an off-screen object when drawn."""
    k = len(names)
    if single:
        return schedule_single(rng, k, n_frames)
    for _ in range(100):  # a multi-source clip hears at least one on-screen source somewhere
        sounding = schedule_multi(rng, cfg, k, n_frames)
        if sounding.any():
            break
    if rng.random() < cfg.offscreen_clip_prob:
        name = choose(rng, [c for c in pool if c not in names], 1)[0]
        plan_objects.append(offscreen_object(rng, cfg, name, n_frames, width, height))
        sounding = np.vstack([sounding, schedule_offscreen(rng, cfg, n_frames)[None]])
    return sounding


def plan_avss_clip(cfg: SynthConfig, subset: str, index: int, split: str) -> ClipPlan:
    """One AVSS clip; uid `<vid>_<start_ms>_<end_ms>` (v1s, v2) or `<ytid>_<segment>` (v1m)."""
    rng = clip_rng(cfg.seed, "avss", subset, index)
    n_frames = AVSS_FRAMES[subset]
    width, height = frame_size(cfg, rng)
    names = choose(rng, cfg.categories, object_count(rng, cfg))
    objects = draw_objects(rng, cfg, names, n_frames, width, height)
    sounding = _sources(rng, cfg, objects, names, cfg.categories, n_frames, width, height, subset == "v1s")
    yt = ytid(rng)
    if subset == "v1m":
        segment = int(rng.integers(0, 10))
        start = segment * 5
        vid = uid = f"{yt}_{segment}"
    else:
        start = int(rng.integers(0, 300))
        vid, uid = yt, f"{yt}_{start * 1000}_{(start + n_frames) * 1000}"
    return ClipPlan("avss", subset, split, yt, start, n_frames, width, height, objects, sounding,
                    int(rng.integers(2**31)), uid=uid, vid=vid)


def plan_avss(cfg: SynthConfig) -> dict[str, list[ClipPlan]]:
    return {subset: [plan_avss_clip(cfg, subset, i, split) for i, split in enumerate(splits_of(cfg.clips, cfg))]
            for subset in AVSS_FRAMES}


def plan_release1(cfg: SynthConfig) -> dict[str, list[ClipPlan]]:
    """S4 (single source) and MS3 (multi source) clips at 224x224, 5 frames each."""
    plans: dict[str, list[ClipPlan]] = {"s4": [], "ms3": []}
    for subset in plans:
        for i, split in enumerate(splits_of(cfg.clips, cfg)):
            rng = clip_rng(cfg.seed, "release1", subset, i)
            names = choose(rng, cfg.categories, object_count(rng, cfg))
            objects = draw_objects(rng, cfg, names, 5, 224, 224)
            sounding = _sources(rng, cfg, objects, names, cfg.categories, 5, 224, 224, subset == "s4")
            yt = ytid(rng)
            start = int(rng.integers(0, 6))  # S4: start <= 5 s, so the clip is 5 s long
            uid = yt if subset == "s4" else f"{yt}_{int(rng.integers(0, 10))}"
            plans[subset].append(ClipPlan(subset, subset, split, yt, start, 5, 224, 224, objects, sounding,
                                          int(rng.integers(2**31)), uid=uid, vid=uid))
    return plans


# ----------------------------------------------------------------------------------------------- Ref-AVS

def refavs_split_counts(cfg: SynthConfig) -> dict[str, int]:
    n_val = max(1, round(cfg.clips * cfg.val_fraction))
    n_test_s = max(1, round(cfg.clips * cfg.test_fraction / 2))
    n_test_u = max(1, round(cfg.clips * cfg.test_fraction / 2))
    return {"train": cfg.clips - n_val - n_test_s - n_test_u, "val": n_val, "test_s": n_test_s, "test_u": n_test_u}


# An expression names a side of the picture and the fact that the object sounds, never its category,
# colour or shape: every media clip holds two objects in each half of the frame, one sounding and one
# silent, so the text alone leaves two candidates (that half) and the audio alone two (the sounders);
# only both together single out the target. Each object keeps its category's own look (shape and
# colour) and sound, as in AVSBench, so what sounds can be told by hearing which categories sound.
# Null expressions use the same words where nothing on screen sounds.
SIDES = ("left", "right")
SOUNDING_TEMPLATES = (
    "the sounding object on the {s}",
    "the object on the {s} that is making a sound",
    "the {s} one you can hear",
    "of the two objects on the {s}, the one that sounds",
    "the thing on the {s} making a noise",
    "the {s}-hand object that makes a sound",
)


def named_side(text: str) -> int:
    """0 (left) or 1 (right): the half of the frame an expression names."""
    words = text.replace(",", " ").replace("-", " ").split()
    sides = [i for i, side in enumerate(SIDES) if side in words]
    if len(sides) != 1:
        raise ValueError(f"expression {text!r} must name exactly one of {SIDES}")
    return sides[0]


def object_side(plan: ClipPlan, fid: int) -> int:
    """The half of the frame (0 left, 1 right) on-screen object `fid` stays in."""
    return int(plan.objects[fid].centres[0, 0] >= plan.width / 2)


def oracle_candidates(plan: ClipPlan, expression: ExpressionPlan) -> dict[str, list[int]]:
    """The on-screen objects (fids) an oracle that knows only some modalities cannot rule out for a
    non-null expression: `visual` sees the objects, `text` also reads the side, `audio` also hears
    who sounds, `audio+text` both. Objects never overlap and the referred object is masked on every
    frame, so an oracle that picks uniformly among its candidates has expected J = 1 / candidates:
    by construction 4, 2, 2 and 1 candidates, i.e. chance-level J of 0.25 (visual-only), 0.50
    (text-only), 0.50 (audio-only) and 1.0 (audio + text). On test_u the same holds for an oracle
    that recognises the unseen category's sound and look; a model learns them only through their
    seen relatives."""
    side = named_side(expression.text)
    visual = [i for i, o in enumerate(plan.objects) if o.on_screen]
    text = [i for i in visual if object_side(plan, i) == side]
    audio = [i for i in visual if plan.sounding[i].any()]
    return {"visual": visual, "text": text, "audio": audio, "audio+text": [i for i in text if i in audio]}


def expression_corpus() -> list[str]:
    """Every expression the synthetic Ref-AVS world can write (for the demo's tokenizer)."""
    return [t.format(s=side) for t in SOUNDING_TEMPLATES for side in SIDES]


def _texts(rng: np.random.Generator, side: int, n: int) -> list[str]:
    picks = rng.choice(len(SOUNDING_TEMPLATES), size=n, replace=False)
    return [SOUNDING_TEMPLATES[int(j)].format(s=SIDES[side]) for j in picks]


def plan_refavs_media(cfg: SynthConfig, index: int, split: str) -> ClipPlan:
    """One non-null Ref-AVS media folder: four on-screen objects of distinct categories, two in each
    half of the frame; in each half one object sounds (on most seconds) and one is silent. test_u
    clips hold one unseen category, the sounder of one half, and only it is referred to."""
    rng = clip_rng(cfg.seed, "refavs", "media", index)
    width, height = frame_size(cfg, rng)
    if split == "test_u":
        names = choose(rng, cfg.unseen_categories, 1) + choose(rng, cfg.categories, 3)
        pool = list(cfg.categories) + list(cfg.unseen_categories)
    else:
        names = choose(rng, cfg.categories, 4)
        pool = list(cfg.categories)
    first_side = int(rng.integers(2))  # the half of names[0] (test_u: the unseen sounder)
    roles = [(first_side, True), (first_side, False), (1 - first_side, True), (1 - first_side, False)]
    order = [int(j) for j in rng.permutation(4)]  # on-screen index (fid) -> role
    objects = draw_objects(rng, cfg, [names[j] for j in order], REFAVS_FRAMES, width, height,
                           halves=[roles[j][0] for j in order])
    sounding = np.zeros((4, REFAVS_FRAMES), dtype=bool)
    for fid, j in enumerate(order):
        while roles[j][1] and sounding[fid].sum() < 6:  # a sounder sounds on most seconds
            sounding[fid] = rng.random(REFAVS_FRAMES) < 0.85
    if rng.random() < cfg.offscreen_clip_prob:
        name = choose(rng, [c for c in pool if c not in names], 1)[0]
        objects.append(offscreen_object(rng, cfg, name, REFAVS_FRAMES, width, height))
        sounding = np.vstack([sounding, schedule_offscreen(rng, cfg, REFAVS_FRAMES)[None]])
    yt = ytid(rng)
    start = int(rng.integers(0, 300))
    vid = f"{yt}_{start * 1000}_{(start + REFAVS_FRAMES) * 1000}"
    plan = ClipPlan("refavs", "refavs", split, yt, start, REFAVS_FRAMES, width, height, objects, sounding,
                    int(rng.integers(2**31)), uid=vid, vid=vid)
    targets = [order.index(0)] if split == "test_u" else sorted(order.index(j) for j in (0, 2))
    counters: dict[str, int] = {}
    for fid in targets:
        name = objects[fid].category.name
        for text in _texts(rng, object_side(plan, fid), 1 + int(rng.random() < 0.5)):
            counters[name] = counters.get(name, 0) + 1
            plan.expressions.append(ExpressionPlan(f"{vid}_{name}_{counters[name]}", split, fid, text, vid))
    return plan


def plan_null_folder(cfg: SynthConfig, media: ClipPlan, kind: str, split: str, n_expressions: int) -> ClipPlan:
    """`null_<kind>-<vid>`: the frames of `media` with other audio (`c`: only absent categories,
    off screen; `m`: muted), so no on-screen object sounds; expressions name a half of the frame
    (its objects are present and silent)."""
    rng = clip_rng(cfg.seed, "refavs-null", f"{kind}/{media.vid}", 0)
    on_screen = [o for o in media.objects if o.on_screen]
    present = {o.category.name for o in on_screen}
    absent = [c for c in cfg.categories if c not in present]
    objects = list(on_screen)
    sounding = np.zeros((len(objects), media.n_frames), dtype=bool)
    if kind == "c":  # audio crossed in from elsewhere: only categories absent from the picture sound
        for name in choose(rng, absent, 1 + int(rng.random() < 0.5)):
            objects.append(offscreen_object(rng, cfg, name, media.n_frames, media.width, media.height))
            row = rng.random(media.n_frames) < 0.7
            row[int(rng.integers(media.n_frames))] = True
            sounding = np.vstack([sounding, row[None]])
    folder = f"null_{kind}-{media.vid}"
    plan = ClipPlan("refavs", "refavs", split, media.ytid, media.start_s, media.n_frames, media.width,
                    media.height, objects, sounding, media.render_seed, uid=folder, vid=media.vid,
                    frames_from=media.uid)
    for n in range(1, n_expressions + 1):
        side = int(rng.integers(2))
        plan.expressions.append(ExpressionPlan(f"{folder}_null_{n}", split, 0, _texts(rng, side, 1)[0], folder))
    return plan


def plan_refavs(cfg: SynthConfig) -> list[ClipPlan]:
    """All Ref-AVS folders in metadata order: train (+ nulls), TODO, val (+ nulls), test_s, test_u, test_n."""
    counts = refavs_split_counts(cfg)
    media: dict[str, list[ClipPlan]] = {s: [] for s in counts}
    index = 0
    for split, n in counts.items():
        for _ in range(n):
            media[split].append(plan_refavs_media(cfg, index, split))
            index += 1
    folders: list[ClipPlan] = []
    for split in ("train", "val"):
        for plan in media[split]:
            folders.append(plan)
            rng = clip_rng(cfg.seed, "refavs-null-pick", split, index)
            index += 1
            if rng.random() < cfg.refavs_null_fraction:
                kind = "c" if rng.random() < 0.5 else "m"
                folders.append(plan_null_folder(cfg, plan, kind, split, 1 + int(rng.random() < 0.5)))
        if split == "train" and cfg.refavs_todo_rows:
            # Stray rows as in the release (25 `TODO` rows on their own videos): readers must skip them.
            todo = plan_refavs_media(cfg, 10**6, "TODO")
            todo.expressions = []
            for j in range(cfg.refavs_todo_rows):
                i = j % len(todo.on_screen)
                obj = todo.objects[i]
                todo.expressions.append(ExpressionPlan(f"{todo.vid}_{obj.category.name}_{j + 1}", "TODO", i,
                                                       f"the {obj.colour_name} {obj.category.shape}", todo.vid))
            folders.append(todo)
    folders += media["test_s"] + media["test_u"]
    for plan in media["test_s"]:
        folders += [plan_null_folder(cfg, plan, kind, "test_n", 2) for kind in ("c", "m")]
    return folders
