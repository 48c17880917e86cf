"""The synthetic world: exact dataset layouts, determinism, and that audio, pictures and masks agree."""

from __future__ import annotations

import csv
import json
import pickletools
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from data_specs import palette
from data_specs.synth import PKL_PLACEHOLDER, SynthConfig, generate_avsbench_v1, generate_world
from data_specs.synth_audio import GUARD, N_SLOTS, RAMP, gate, segment_bounds, slot_band
from data_specs.synth_plans import plan_avss, plan_refavs
from data_specs.synth_world import (
    CATALOG,
    EXAMPLE_SAMPLES,
    RELATIVES,
    SAMPLE_RATE,
    SEEN_CATEGORIES,
    UNSEEN_CATEGORIES,
)

SMALL = SynthConfig(seed=7, clips=5, size=96, aspect_ratios=(0.75, 0.5625), refavs_null_fraction=1.0,
                    refavs_todo_rows=2)
NOISE_WINDOW = EXAMPLE_SAMPLES + 240  # what one VGGish example reads: 96 hops + the last 400-sample window


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def truth(world) -> dict[str, dict]:
    record = json.loads((world / "world.json").read_text())
    return {(c["dataset"], c["uid"]): c for c in record["clips"]}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def read_wav(path: Path) -> np.ndarray:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 2, "PCM_16"), path
    data, _ = sf.read(str(path), dtype="int16")
    return data.astype(np.float64) / 32768


def slot_energies(window: np.ndarray) -> np.ndarray:
    """(N_SLOTS,) power of a (n, 2) window inside each category's spectral band."""
    mono = window.sum(axis=1) * np.hanning(len(window))
    power = np.abs(np.fft.rfft(mono)) ** 2
    freq = np.fft.rfftfreq(len(mono), 1 / SAMPLE_RATE)
    return np.array([power[(freq >= lo) & (freq <= hi)].sum() for lo, hi in map(slot_band, range(N_SLOTS))])


def core_colour(frame: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(3,) median RGB of `region` without its rim (the darker outline and JPEG edge ringing)."""
    core = region.copy()
    for axis in (0, 1):
        for shift in (1, -1, 2, -2):
            core &= np.roll(region, shift, axis=axis)
    return np.median(frame[core if core.any() else region].astype(float), axis=0)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------- AVSS

def test_avss_metadata_and_folders(world):
    root = world / "AVSBench"
    header, rows = read_csv(root / "metadata.csv")
    assert header == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    assert json.loads((root / "label2idx.json").read_text()) == palette.label2idx()
    assert sorted(p.name for p in root.iterdir()) == ["label2idx.json", "metadata.csv", "v1m", "v1s", "v2"]
    assert len({r["uid"] for r in rows}) == len(rows)
    for label in ("v1s", "v1m", "v2"):
        mine = [r for r in rows if r["label"] == label]
        assert [r["split"] for r in mine] == ["train"] * 3 + ["val", "test"]
        assert sorted(p.name for p in (root / label).iterdir()) == sorted(r["uid"] for r in mine)
    for r in rows:
        n = 10 if r["label"] == "v2" else 5
        folder = root / r["label"] / r["uid"]
        assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "frames", "labels_rgb", "labels_semantic"]
        assert sorted(p.name for p in (folder / "frames").iterdir()) == sorted(f"{t}.jpg" for t in range(n))
        labelled = [0] if (r["label"], r["split"]) == ("v1s", "train") else list(range(n))
        for kind in ("labels_rgb", "labels_semantic"):
            assert sorted(p.name for p in (folder / kind).iterdir()) == sorted(f"{t}.png" for t in labelled)
        assert read_wav(folder / "audio.wav").shape == (n * SAMPLE_RATE, 2)
        if r["label"] == "v1m":  # vid-like uid `<ytid>_<segment>`
            assert r["uid"] == r["vid"] and re.fullmatch(r"[\w-]{11}_\d", r["uid"])
        else:
            m = re.fullmatch(r"([\w-]{11})_(\d+)_(\d+)", r["uid"])
            assert m and m.group(1) == r["vid"]
            start, end = int(m.group(2)), int(m.group(3))
            assert end - start == n * 1000
            assert int(r["s_min"]) * 60 + int(r["s_sec"]) == start // 1000 and 0 <= int(r["s_sec"]) < 60


def test_avss_labels_are_palette_masks_of_the_sounding_objects(world, truth):
    root = world / "AVSBench"
    _, rows = read_csv(root / "metadata.csv")
    seen_classes = set()
    for r in rows:
        clip = truth[("avss", r["uid"])]
        folder = root / r["label"] / r["uid"]
        for png in sorted((folder / "labels_rgb").iterdir()):
            t = int(png.stem)
            rgb = np.asarray(Image.open(png))
            semantic = np.asarray(Image.open(folder / "labels_semantic" / png.name))
            frame = np.asarray(Image.open(folder / "frames" / f"{t}.jpg"))
            assert rgb.shape == frame.shape and semantic.shape == frame.shape[:2] and semantic.dtype == np.uint8
            labels, unmatched = palette.colours_to_labels(rgb)
            assert not unmatched.any()
            np.testing.assert_array_equal(labels, semantic)
            sounding = {o["class_id"] for o in clip["objects"] if o["on_screen"] and o["sounding"][t]}
            assert set(np.unique(semantic)) - {0} == sounding
            for o in clip["objects"]:
                if o["on_screen"] and o["sounding"][t]:
                    region = semantic == o["class_id"]
                    # The object is where the mask is: the masked pixels' median colour is nearer to the
                    # category's paint than to any other category's paint or to the background.
                    colour = core_colour(frame, region)
                    candidates = {c.name: np.asarray(c.colour, float) for c in CATALOG.values()}
                    candidates["background"] = np.median(frame[semantic == 0].astype(float), axis=0)
                    nearest = min(candidates, key=lambda name: np.linalg.norm(candidates[name] - colour))
                    assert nearest == o["category"], (r["uid"], t, o["category"], nearest)
                    assert region.sum() > 0.01 * region.size
                    seen_classes.add(o["class_id"])
        names = [o["category"] for o in clip["objects"] if o["on_screen"] and any(o["sounding"])]
        assert r["a_obj"] == ("_".join(names) if names else "off-the-screen")
    assert len(seen_classes) >= 4


def test_audio_examples_match_the_masks(world, truth):
    """Example t is near-silent exactly when nothing (on or off screen) sounds during frame t, and
    its energy sits in the spectral slots of exactly the sounding categories."""
    noise = SMALL.noise_rms
    checked = {"silent": 0, "sounding": 0, "offscreen": 0}
    for (dataset, uid), clip in truth.items():
        if dataset != "avss":
            continue
        audio = read_wav(world / "AVSBench" / clip["subset"] / uid / "audio.wav")
        for t in range(clip["n_frames"]):
            window = audio[t * EXAMPLE_SAMPLES: t * EXAMPLE_SAMPLES + NOISE_WINDOW]
            rms = np.sqrt(np.mean(window**2))
            heard = {CATALOG[o["category"]].slot for o in clip["objects"] if o["sounding"][t]}
            if not heard:
                assert rms < 1.5 * noise * np.sqrt(2), (uid, t, rms)
                checked["silent"] += 1
                continue
            assert rms > 10 * noise, (uid, t, rms)
            energies = slot_energies(window)
            loud = set(np.flatnonzero(energies > 1e-3 * energies.max()))
            assert loud == heard, (uid, t, loud, heard)
            checked["sounding"] += 1
            checked["offscreen"] += any(not o["on_screen"] and o["sounding"][t] for o in clip["objects"])
    assert checked["silent"] > 0 and checked["sounding"] > 0


def test_single_source_signatures_are_identifiable(world, truth):
    """In v1s every example's strongest slot is the one sounding category's, by a wide margin."""
    for (_, uid), clip in truth.items():
        if clip["subset"] != "v1s":
            continue
        (obj,) = [o for o in clip["objects"] if any(o["sounding"])]
        assert all(obj["sounding"]) and obj["on_screen"]
        audio = read_wav(world / "AVSBench" / "v1s" / uid / "audio.wav")
        for t in range(5):
            energies = slot_energies(audio[t * EXAMPLE_SAMPLES: t * EXAMPLE_SAMPLES + NOISE_WINDOW])
            assert int(np.argmax(energies)) == CATALOG[obj["category"]].slot
            second, first = np.sort(energies)[-2:]
            assert 10 * np.log10(first / second) > 20


def test_sounding_segments_follow_the_vggish_examples():
    """Frame t's state spans example t; a source that starts waits GUARD samples and fades in, so the
    last 25-ms window of the previous example (240 samples past its 0.96 s) stays silent."""
    n = 5 * SAMPLE_RATE
    bounds = segment_bounds(5, n, "examples")
    assert bounds.tolist() == [0, 15360, 30720, 46080, 61440, 80000]
    g = gate(np.array([True, False, True, True, False]), bounds, n)
    assert g[RAMP:15360 - RAMP].min() == 1.0 and g[15360:30720 + GUARD].max() == 0.0
    assert 0 < g[30720 + GUARD + 1] < 1 and g[30720 + GUARD + RAMP: 61440 - RAMP].min() == 1.0
    assert g[61440:].max() == 0.0
    per_second_bounds = segment_bounds(5, n, "seconds")
    assert per_second_bounds.tolist() == [0, 16000, 32000, 48000, 64000, 80000]


def test_stereo_panning_follows_position(world, truth):
    """A lone on-screen source is louder in the channel of its side of the picture."""
    checked = 0
    for (_, uid), clip in truth.items():
        if clip["subset"] != "v1s":
            continue
        (obj,) = [o for o in clip["objects"] if any(o["sounding"])]
        audio = read_wav(world / "AVSBench" / "v1s" / uid / "audio.wav")
        for t in range(5):
            x = obj["centres"][t][0] / clip["size"][0]
            window = audio[t * EXAMPLE_SAMPLES: (t + 1) * EXAMPLE_SAMPLES]
            left, right = np.sqrt(np.mean(window**2, axis=0))
            if abs(x - 0.5) > 0.15:
                assert (left > right) == (x < 0.5), (uid, t, x, left, right)
                checked += 1
    assert checked > 0


def test_world_statistics_do_not_reveal_the_source():
    """Plans only (no rendering): who sounds is independent of category and position, multi-source
    clips never sound all objects at once, and silent frames and off-screen sources occur."""
    cfg = SynthConfig(seed=3, clips=150)
    plans = plan_avss(cfg)
    for plan in plans["v1s"]:
        on = plan.sounding[: len(plan.on_screen)]
        assert (on.sum(axis=0) == 1).all() and (on.all(axis=1).sum() == 1)
    multi = plans["v1m"] + plans["v2"]
    per_category: dict[str, list[bool]] = {}
    leftmost, others = [], []
    silent = total = offscreen = 0
    for plan in multi:
        k = len(plan.on_screen)
        assert len({o.category.name for o in plan.objects}) == len(plan.objects)
        assert all(o.category.name in cfg.categories for o in plan.objects)
        for o in plan.on_screen:
            assert cfg.object_size[0] * cfg.size / 2 * 0.5 <= o.radius <= cfg.object_size[1] * cfg.size / 2
        offscreen += len(plan.objects) > k
        for t in range(plan.n_frames):
            on = plan.sounding[:k, t]
            assert on.sum() < k
            silent += not on.any()
            total += 1
            xs = [o.centres[t, 0] for o in plan.on_screen]
            for i, o in enumerate(plan.on_screen):
                per_category.setdefault(o.category.name, []).append(bool(on[i]))
                (leftmost if i == int(np.argmin(xs)) else others).append(bool(on[i]))
    rates = {name: np.mean(v) for name, v in per_category.items()}
    overall = np.mean([s for v in per_category.values() for s in v])
    assert max(abs(r - overall) for r in rates.values()) < 0.08, rates
    assert abs(np.mean(leftmost) - np.mean(others)) < 0.06
    assert overall < 0.5  # per-object prior below 1/2: a visual-only model's best pixel guess is "silent"
    assert 0.08 < silent / total < 0.3
    assert 0.1 < offscreen / len(multi) < 0.4


# ---------------------------------------------------------------------------------------------- Ref-AVS

def test_refavs_layout_and_expressions(world, truth):
    root = world / "REFAVS"
    header, rows = read_csv(root / "metadata.csv")
    assert header == ["vid", "uid", "split", "fid", "exp"]
    assert sorted(p.name for p in root.iterdir()) == ["gt_mask", "media", "metadata.csv"]
    assert {r["split"] for r in rows} == {"train", "val", "test_s", "test_u", "test_n", "TODO"}
    assert sum(r["split"] == "TODO" for r in rows) == SMALL.refavs_todo_rows
    assert len({r["uid"] for r in rows}) == len(rows)
    vids_by_split: dict[str, set[str]] = {}
    for r in rows:
        vids_by_split.setdefault(r["split"], set()).add(r["vid"])
        null = r["uid"].startswith("null_")
        folder = r["uid"].rsplit("_", 2)[0]
        if null:
            assert re.fullmatch(rf"null_[cm]-{re.escape(r['vid'])}_null_\d+", r["uid"]) and r["fid"] == "0"
            assert folder in (f"null_c-{r['vid']}", f"null_m-{r['vid']}")
        else:
            assert folder == r["vid"] and re.fullmatch(r"[\w-]{11}_\d+_\d+", r["vid"])
        media = root / "media" / folder
        assert sorted(p.name for p in (media / "frames").iterdir()) == sorted(f"{t}.jpg" for t in range(10))
        assert read_wav(media / "audio.wav").shape == (10 * SAMPLE_RATE, 2)
        masks_dir = root / "gt_mask" / folder / f"fid_{r['fid']}"
        assert sorted(p.name for p in masks_dir.iterdir()) == [f"0000{t}.png" for t in range(10)]
        masks = [np.asarray(Image.open(masks_dir / f"0000{t}.png")) for t in range(10)]
        frame = np.asarray(Image.open(media / "frames" / "0.jpg"))
        assert all(m.shape == frame.shape[:2] and set(np.unique(m)) <= {0, 255} for m in masks)
        clip = truth[("refavs", folder)]
        on_screen = [o for o in clip["objects"] if o["on_screen"]]
        for o in clip["objects"] if r["split"] != "TODO" else []:  # a side, never a category, colour or shape
            cat = CATALOG[o["category"]]
            assert cat.spoken not in r["exp"] and f" {cat.shape}" not in r["exp"], (r["uid"], r["exp"])
            assert cat.colour_name not in r["exp"].split(), (r["uid"], r["exp"])
        width = clip["size"][0]
        for o in on_screen if r["split"] != "TODO" else []:  # every object stays whole in its half of the frame
            sides = {(x - o["radius"] >= width / 2, x + o["radius"] > width / 2) for x, _ in o["centres"]}
            assert sides in ({(False, False)}, {(True, True)}), (r["uid"], o["category"])
        if null:
            assert not any(m.any() for m in masks)
            assert not any(any(o["sounding"]) for o in on_screen), r["uid"]  # nothing on screen sounds
        else:
            target = clip["objects"][int(r["fid"])]
            if r["split"] != "TODO":  # the expression names the half the referred object is in
                from data_specs.synth_plans import SIDES, named_side
                assert named_side(r["exp"]) == int(target["centres"][0][0] >= width / 2), (r["uid"], r["exp"])
                assert SIDES[named_side(r["exp"])] in r["exp"]
            assert target["on_screen"] and r["uid"] == f"{r['vid']}_{target['category']}_{r['uid'].rsplit('_', 1)[1]}"
            assert all(m.any() for m in masks)  # the referred object on every frame
            if r["split"] == "test_u":
                assert target["category"] in SMALL.unseen_categories
    assert vids_by_split["test_n"] <= vids_by_split["test_s"]
    for a, b in [("train", "val"), ("train", "test_s"), ("train", "test_u"), ("val", "test_s"), ("test_s", "test_u")]:
        assert not vids_by_split[a] & vids_by_split[b]
    unseen = set(SMALL.unseen_categories)
    for (dataset, uid), clip in truth.items():
        cats = {o["category"] for o in clip["objects"]}
        in_test_u = dataset == "refavs" and any(e["split"] == "test_u" for e in clip["expressions"])
        assert in_test_u or not cats & unseen, uid
        if in_test_u:
            assert cats & unseen


def test_refavs_null_folders(world, truth):
    root = world / "REFAVS"
    _, rows = read_csv(root / "metadata.csv")
    folders = {r["uid"].rsplit("_", 2)[0]: r for r in rows if r["uid"].startswith("null_")}
    assert {f.split("-", 1)[0] for f in folders} == {"null_c", "null_m"}
    assert {r["split"] for r in folders.values()} == {"train", "val", "test_n"}
    for folder, r in folders.items():
        frames = sorted((root / "media" / folder / "frames").iterdir())
        originals = sorted((root / "media" / r["vid"] / "frames").iterdir())
        assert [p.read_bytes() for p in frames] == [p.read_bytes() for p in originals]
        audio = read_wav(root / "media" / folder / "audio.wav")
        clip = truth[("refavs", folder)]
        present = {CATALOG[o["category"]].slot for o in clip["objects"] if o["on_screen"]}
        if folder.startswith("null_m-"):
            assert np.sqrt(np.mean(audio**2)) < 1.5 * SMALL.noise_rms * np.sqrt(2)
        else:  # only categories absent from the picture are heard
            energies = slot_energies(audio)
            loud = set(np.flatnonzero(energies > 1e-3 * energies.max()))
            assert loud and not loud & present


# -------------------------------------------------------------------------------------------- release 1

def test_release1_layout(tmp_path):
    cfg = SynthConfig(seed=1, clips=4)
    summary = generate_avsbench_v1(tmp_path, cfg, progress=False)
    assert summary.clips == {"avsbench-s4": {"train": 2, "val": 1, "test": 1},
                             "avsbench-ms3": {"train": 2, "val": 1, "test": 1}}
    s4 = tmp_path / "Single-source"
    with (s4 / "s4_meta_data.csv").open(newline="") as f:
        s4_rows = list(csv.reader(f))
    assert s4_rows[0] == ["name", "start", "category", "split"] and len(s4_rows) == 5
    s4_classes = {c.s4_class for c in CATALOG.values()}
    for name, start, category, split in s4_rows[1:]:
        assert category in s4_classes and 0 <= int(start) <= 5 and re.fullmatch(r"[\w-]{11}", name)
        where = f"{split}/{category}"
        frames = sorted((s4 / "s4_data" / "visual_frames" / where / name).iterdir())
        assert [p.name for p in frames] == [f"{name}_{k}.png" for k in range(1, 6)]
        masks = sorted((s4 / "s4_data" / "gt_masks" / where / name).iterdir())
        assert [p.name for p in masks] == [f"{name}_{k}.png" for k in (range(1, 2) if split == "train" else range(1, 6))]
        for p in frames + masks:
            assert Image.open(p).size == (224, 224)
        assert all(set(np.unique(np.asarray(Image.open(p)))) == {0, 255} for p in masks)
        assert read_wav(s4 / "s4_data" / "audio_wav" / where / f"{name}.wav").shape == (5 * SAMPLE_RATE, 2)
        assert (s4 / "s4_data" / "audio_log_mel" / where / f"{name}.pkl").read_bytes() == PKL_PLACEHOLDER
    ms3 = tmp_path / "Multi-sources"
    with (ms3 / "ms3_meta_data.csv").open(newline="") as f:
        ms3_rows = list(csv.reader(f))
    assert ms3_rows[0] == ["name", "split"] and len(ms3_rows) == 5
    for name, split in ms3_rows[1:]:
        assert re.fullmatch(r"[\w-]{11}_\d", name)
        frames = sorted((ms3 / "ms3_data" / "visual_frames" / name).iterdir())
        assert [p.name for p in frames] == [f"{name}.mp4_{k}.png" for k in range(1, 6)]
        masks = sorted((ms3 / "ms3_data" / "gt_masks" / split / name).iterdir())
        assert [p.name for p in masks] == [f"{name}_{k}.png" for k in range(1, 6)]
        assert read_wav(ms3 / "ms3_data" / "audio_wav" / split / f"{name}.wav").shape == (5 * SAMPLE_RATE, 2)
        assert (ms3 / "ms3_data" / "audio_log_mel" / split / f"{name}.pkl").is_file()
    # The placeholder is not a pickle: the opcode scanner rejects its very first byte.
    with pytest.raises(ValueError, match="opcode"):
        list(pickletools.genops(PKL_PLACEHOLDER))


# ------------------------------------------------------------------------------ determinism and reruns

def test_same_config_gives_identical_bytes(tmp_path, world):
    again = tmp_path / "again"
    generate_world(again, SMALL, progress=False)
    for name in ("AVSBench", "REFAVS"):
        first, second = tree_bytes(world / name), tree_bytes(again / name)
        assert first.keys() == second.keys()
        assert [k for k in first if first[k] != second[k]] == []
    assert (world / "world.json").read_bytes() == (again / "world.json").read_bytes()
    other = plan_refavs(SynthConfig(seed=8, clips=5))
    assert [p.uid for p in other] != [p.uid for p in plan_refavs(SMALL)]


def test_rerun_replaces_the_tree_and_never_touches_foreign_folders(tmp_path):
    out = tmp_path / "w"
    generate_world(out, SynthConfig(seed=2, clips=6, size=80), progress=False)
    summary = generate_world(out, SynthConfig(seed=2, clips=4, size=80), progress=False)
    fresh = tmp_path / "fresh"
    generate_world(fresh, SynthConfig(seed=2, clips=4, size=80), progress=False)
    assert tree_bytes(out / "AVSBench") == tree_bytes(fresh / "AVSBench")
    assert sorted(p.name for p in out.iterdir()) == [".lock", "AVSBench", "REFAVS", "world.json"]
    assert summary.clips["avss/v1s"] == {"train": 2, "val": 1, "test": 1}
    foreign = tmp_path / "foreign"
    (foreign / "AVSBench").mkdir(parents=True)
    (foreign / "AVSBench" / "keep.txt").write_text("real data")
    with pytest.raises(FileExistsError, match="not written by the synthetic world generator"):
        generate_world(foreign, SynthConfig(clips=4), progress=False)
    assert (foreign / "AVSBench" / "keep.txt").read_text() == "real data"
    assert [p.name for p in foreign.iterdir()] == ["AVSBench"]  # refused before anything was written


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="categories"):
        SynthConfig(categories=("guitar", "unicorn"))
    with pytest.raises(ValueError, match="overlap"):
        SynthConfig(unseen_categories=("guitar",))
    with pytest.raises(ValueError, match="categories"):
        SynthConfig(categories=("guitar", "dog", "piano", "violin"))


def test_unseen_categories_are_relatives_of_seen_ones():
    """Each unseen category (test_u) is its seen relative's shape and sound texture, a darker shade of
    its colour (every channel lower, the same hue: the direction in RGB nearest to the relative's) and
    the slot below: related, yet its own (its colour more than 60 RGB units from every other one)."""
    assert sorted(RELATIVES) == sorted(UNSEEN_CATEGORIES) and set(RELATIVES.values()) <= set(SEEN_CATEGORIES)
    looks = [(c.shape, c.colour) for c in CATALOG.values()]
    assert len(set(looks)) == len(looks) and len({c.slot for c in CATALOG.values()}) == len(CATALOG)
    for name, relative in RELATIVES.items():
        unseen, seen = CATALOG[name], CATALOG[relative]
        assert (unseen.shape, unseen.texture, unseen.slot) == (seen.shape, seen.texture, seen.slot - 1), name
        assert all(u < s for u, s in zip(unseen.colour, seen.colour, strict=True)), name  # darker

        def hue_cosine(other: str, colour=np.asarray(unseen.colour, float)) -> float:
            paint = np.asarray(CATALOG[other].colour, float)
            return float(colour @ paint / np.linalg.norm(colour) / np.linalg.norm(paint))

        assert max(SEEN_CATEGORIES, key=hue_cosine) == relative and hue_cosine(relative) > 0.99, name
        others = [c.colour for c in CATALOG.values() if c.name != name]
        assert min(np.linalg.norm(np.subtract(unseen.colour, colour)) for colour in others) > 60, name


def test_unseen_targets_look_and_sound_as_their_category(world, truth):
    """In test_u the referred (unseen) object's masked pixels are nearest to its own paint, and its
    slot carries energy exactly on the frames it sounds."""
    root = world / "REFAVS"
    _, rows = read_csv(root / "metadata.csv")
    checked = 0
    for r in (r for r in rows if r["split"] == "test_u"):
        clip = truth[("refavs", r["vid"])]
        target = clip["objects"][int(r["fid"])]
        category = CATALOG[target["category"]]
        audio = read_wav(root / "media" / r["vid"] / "audio.wav")
        for t in range(clip["n_frames"]):
            mask = np.asarray(Image.open(root / "gt_mask" / r["vid"] / f"fid_{r['fid']}" / f"0000{t}.png")) > 0
            colour = core_colour(np.asarray(Image.open(root / "media" / r["vid"] / "frames" / f"{t}.jpg")), mask)
            nearest = min(CATALOG, key=lambda c: np.linalg.norm(np.asarray(CATALOG[c].colour, float) - colour))
            assert nearest == category.name, (r["uid"], t, nearest)
            energies = slot_energies(audio[t * EXAMPLE_SAMPLES: t * EXAMPLE_SAMPLES + NOISE_WINDOW])
            others = [CATALOG[o["category"]].slot for o in clip["objects"] if o["sounding"][t]]
            loud = energies[category.slot] > 1e-3 * energies[others].max() if others else False
            assert loud == bool(target["sounding"][t]), (r["uid"], t)
        checked += 1
    assert checked >= 1


def test_refavs_needs_hearing_and_reading(world, truth):
    """Every non-null expression leaves an oracle that knows only the picture 4 candidate objects,
    one that also reads the text 2, one that also hears the audio 2, and only one with both: the
    chance-level J of the text-only and audio-only oracles is 0.5, of the visual-only one 0.25."""
    from data_specs.synth_plans import oracle_candidates, plan_refavs

    plans = [p for p in plan_refavs(SMALL) if p.split != "TODO"]
    counted = 0
    for plan in plans:
        for e in plan.expressions:
            if e.uid.split("_null_")[0].startswith("null_"):
                continue
            c = oracle_candidates(plan, e)
            assert {k: len(v) for k, v in c.items()} == {"visual": 4, "text": 2, "audio": 2, "audio+text": 1}, e
            assert c["audio+text"] == [e.fid]
            counted += 1
    assert counted >= 10



def test_a_second_generator_into_the_same_folder_stops_at_once(tmp_path):
    """Two `synth` into one --out: the second stops at once naming the folder (before: both replaced
    each other's trees and a world missing clip folders was published with exit status 0); the first
    publishes its whole world."""
    import subprocess
    import sys
    import time

    from auralsam2.config import PROJECT_ROOT

    out = tmp_path / "w"
    first = subprocess.Popen([sys.executable, "-m", "flows", "synth", "--out", str(out), "--clips", "8",
                              "--size", "96"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 120
    while not (out / ".AVSBench.partial").is_dir():  # the first one holds the lock and writes
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "flows", "synth", "--out", str(out), "--clips", "8",
                             "--size", "96"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {out} is being written by another synthetic world generator right now")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    import csv

    with open(out / "AVSBench" / "metadata.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all((out / "AVSBench" / r["label"] / r["uid"] / "audio.wav").is_file() for r in rows)
