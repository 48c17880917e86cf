"""Clip plans of each synthetic dataset: AVSS (v1s, v1m, v2), Ref-AVS, and release-1 S4 / MS3.

Subset rules:
- v1s / S4 (single source): 2-4 objects, exactly one of them (uniform) sounds on every frame.
- v1m / v2 / MS3 (multi source): 2-4 objects; per frame 0..k-1 of them sound (`schedule_multi`),
  plus, in some clips, an off-screen category that is heard but never masked.
- Ref-AVS: 10-frame clips with 1-2 "sounders" (sound on >= 6 of 10 seconds) and >= 1 silent
  object; expressions refer to one on-screen object whose mask is shown on every frame (the
  Ref-AVS ground truth segments the referred object, not only while it sounds). test_u clips hold
  one unseen category (never in train/val/test_s or AVSBench) and only it is referred to.
  Null folders (`null_c-<vid>`: same frames, audio of absent categories only, as if crossed from
  another clip; `null_m-<vid>`: same frames, muted audio) carry expressions that name a category
  absent from the picture, with empty masks. The meaning of `c`/`m` is undocumented upstream;
  this is our reading.
"""

from __future__ import annotations

import numpy as np

from data_specs.synth_world import (
    CATALOG,
    Category,
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


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _sounder_texts(plan: ClipPlan, i: int, sounders: list[int]) -> list[str]:
    cat = plan.objects[i].category
    texts = [f"the {cat.look} that is making a sound", f"the {cat.spoken} that makes a sound",
             f"the object that sounds like {_article(cat.spoken)}", f"the {cat.look}, which is making a sound",
             f"the sounding {cat.shape}"]
    if len(sounders) == 1 and all(o.on_screen for o in plan.objects):  # no off-screen sound either
        texts += ["the object making a sound", "the only object that is sounding"]
    elif len(sounders) == 2:
        other = plan.objects[sounders[1] if sounders[0] == i else sounders[0]]
        me = plan.objects[i]
        dx = float(me.centres[:, 0].mean() - other.centres[:, 0].mean())
        if abs(dx) >= 0.2 * plan.width:
            texts.append(f"the object making a sound on the {'left' if dx < 0 else 'right'}")
        if abs(me.gain_db - other.gain_db) >= 3.0:
            texts.append(f"the {'louder' if me.gain_db > other.gain_db else 'quieter'} of the two sounding objects")
    return texts


def _silent_texts(plan: ClipPlan, i: int, n_silent: int) -> list[str]:
    cat = plan.objects[i].category
    texts = [f"the silent {cat.look}", f"the {cat.spoken} that makes no sound",
             f"the {cat.look} that is not making a sound"]
    if n_silent == 1:
        texts.append("the object that makes no sound")
    return texts


def _null_texts(cat: Category) -> list[str]:
    return [f"the {cat.look} that is making a sound", f"the {cat.spoken} that makes a sound",
            f"the object that sounds like {_article(cat.spoken)}"]


def _expressions(rng: np.random.Generator, plan: ClipPlan, split: str, targets: list[int]) -> list[ExpressionPlan]:
    """1-2 expressions per sounding target and, sometimes, one for a silent target."""
    sounders = [i for i, o in enumerate(plan.objects) if o.on_screen and plan.sounding[i].any()]
    silent = [i for i, o in enumerate(plan.objects) if o.on_screen and not plan.sounding[i].any()]
    chosen: list[tuple[int, str]] = []
    for i in targets:
        if i in sounders:
            texts = _sounder_texts(plan, i, sounders)
            for j in rng.choice(len(texts), size=min(len(texts), 1 + int(rng.random() < 0.6)), replace=False):
                chosen.append((i, texts[int(j)]))
        elif rng.random() < 0.5 or not chosen:
            texts = _silent_texts(plan, i, len(silent))
            chosen.append((i, texts[int(rng.integers(len(texts)))]))
    counters: dict[str, int] = {}
    rows = []
    for i, text in chosen:
        name = plan.objects[i].category.name
        counters[name] = counters.get(name, 0) + 1
        rows.append(ExpressionPlan(f"{plan.vid}_{name}_{counters[name]}", split, i, text, plan.vid))
    return rows


def plan_refavs_media(cfg: SynthConfig, index: int, split: str) -> ClipPlan:
    """One non-null Ref-AVS media folder with its expressions."""
    rng = clip_rng(cfg.seed, "refavs", "media", index)
    width, height = frame_size(cfg, rng)
    k = object_count(rng, cfg)
    if split == "test_u":
        names = choose(rng, cfg.unseen_categories, 1) + choose(rng, cfg.categories, k - 1)
        pool = list(cfg.categories) + list(cfg.unseen_categories)
    else:
        names = choose(rng, cfg.categories, k)
        pool = list(cfg.categories)
    order = rng.permutation(k)
    names = [names[j] for j in order]
    objects = draw_objects(rng, cfg, names, REFAVS_FRAMES, width, height)
    n_sounders = min(k - 1, 1 + int(rng.random() < 0.4))
    if split == "test_u":
        unseen = [i for i, n in enumerate(names) if n in cfg.unseen_categories]
        others = [i for i in range(k) if i not in unseen]
        sounders = unseen + choose(rng, others, n_sounders - 1)
    else:
        sounders = [int(i) for i in rng.choice(k, size=n_sounders, replace=False)]
    sounding = np.zeros((k, REFAVS_FRAMES), dtype=bool)
    for i in sounders:
        while sounding[i].sum() < 6:  # a sounder sounds on most seconds, so "the sounding X" is clear
            sounding[i] = rng.random(REFAVS_FRAMES) < 0.85
    if rng.random() < cfg.offscreen_clip_prob:
        name = choose(rng, [c for c in pool if c not in names], 1)[0]
        objects.append(offscreen_object(rng, cfg, name, REFAVS_FRAMES, width, height))
        sounding = np.vstack([sounding, schedule_offscreen(rng, cfg, REFAVS_FRAMES)[None]])
    yt = ytid(rng)
    start = int(rng.integers(0, 300))
    vid = f"{yt}_{start * 1000}_{(start + REFAVS_FRAMES) * 1000}"
    plan = ClipPlan("refavs", "refavs", split, yt, start, REFAVS_FRAMES, width, height, objects, sounding,
                    int(rng.integers(2**31)), uid=vid, vid=vid)
    if split == "test_u":
        targets = [i for i, n in enumerate(names) if n in cfg.unseen_categories]
    else:
        silent = [i for i in range(k) if i not in sounders]
        targets = sorted(sounders + [silent[int(rng.integers(len(silent)))]])
    plan.expressions = _expressions(rng, plan, split, targets)
    return plan


def plan_null_folder(cfg: SynthConfig, media: ClipPlan, kind: str, split: str, n_expressions: int) -> ClipPlan:
    """`null_<kind>-<vid>`: the frames of `media`, other audio, expressions naming absent categories."""
    rng = clip_rng(cfg.seed, "refavs-null", f"{kind}/{media.vid}", 0)
    on_screen = [o for o in media.objects if o.on_screen]
    present = {o.category.name for o in on_screen}
    absent = [c for c in cfg.categories if c not in present]
    objects = list(on_screen)
    sounding = np.zeros((len(objects), media.n_frames), dtype=bool)
    heard: list[str] = []
    if kind == "c":  # audio crossed in from elsewhere: only categories absent from the picture sound
        heard = choose(rng, absent, 1 + int(rng.random() < 0.5))
        for name in heard:
            objects.append(offscreen_object(rng, cfg, name, media.n_frames, media.width, media.height))
            row = rng.random(media.n_frames) < 0.7
            row[int(rng.integers(media.n_frames))] = True
            sounding = np.vstack([sounding, row[None]])
    folder = f"null_{kind}-{media.vid}"
    plan = ClipPlan("refavs", "refavs", split, media.ytid, media.start_s, media.n_frames, media.width,
                    media.height, objects, sounding, media.render_seed, uid=folder, vid=media.vid,
                    frames_from=media.uid)
    for n in range(1, n_expressions + 1):
        name = heard[0] if heard and rng.random() < 0.5 else absent[int(rng.integers(len(absent)))]
        texts = _null_texts(CATALOG[name])
        plan.expressions.append(ExpressionPlan(f"{folder}_null_{n}", split, 0, texts[int(rng.integers(len(texts)))],
                                               folder))
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
                cat = todo.objects[i].category
                todo.expressions.append(ExpressionPlan(f"{todo.vid}_{cat.name}_{j + 1}", "TODO", i,
                                                       f"the {cat.look}", todo.vid))
            folders.append(todo)
    folders += media["test_s"] + media["test_u"]
    for plan in media["test_s"]:
        folders += [plan_null_folder(cfg, plan, kind, "test_n", 2) for kind in ("c", "m")]
    return folders
