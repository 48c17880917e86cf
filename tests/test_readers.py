"""Dataset readers on generated trees in the three real layouts (AVSS, Ref-AVS, AVSBench release 1)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import pytest

from data_specs.avsbench_v1 import read_ms3, read_s4
from data_specs.avss import read_avss
from data_specs.clip import make_key
from data_specs.common import frame_number, partition_clips
from data_specs.refavs import media_folder, read_refavs
from data_specs.synth import SynthConfig, generate_avsbench_v1, generate_world

CONFIG = SynthConfig(seed=3, clips=6, size=96)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, CONFIG, progress=False)
    generate_avsbench_v1(out / "AVSBench-object", CONFIG)
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_avss_reader_matches_metadata(world: Path) -> None:
    rows = _csv(world / "AVSBench" / "metadata.csv")
    result = read_avss(world / "AVSBench", subset="all")
    assert [f for f in result.findings if f.severity == "error"] == []
    assert result.rows_read == len(rows) == len(result.clips)
    by_key = {c.key: c for c in result.clips}
    for row in rows:
        clip = by_key[make_key(row["label"], row["uid"])]
        assert (clip.subset, clip.split, clip.uid, clip.category) == (row["label"], row["split"], row["uid"], row["a_obj"])
        expected_frames = 10 if row["label"] == "v2" else 5
        assert clip.n_frames == expected_frames
        # numeric frame order, 0-based
        assert [frame_number(p) for p in clip.frame_paths] == list(range(expected_frames))
        if row["label"] == "v1s" and row["split"] == "train":
            assert clip.labelled_frames == [0]
        else:
            assert clip.labelled_frames == list(range(expected_frames))
        assert all(clip.path(p).is_file() for p in clip.frame_paths + [clip.audio_path])


def test_avss_subset_selection(world: Path) -> None:
    rows = _csv(world / "AVSBench" / "metadata.csv")
    for subset in ("v1s", "v1m", "v2"):
        result = read_avss(world / "AVSBench", subset=subset)
        assert {c.subset for c in result.clips} == {subset}
        assert len(result.clips) == sum(r["label"] == subset for r in rows)
    with pytest.raises(ValueError, match="unknown AVSS subset"):
        read_avss(world / "AVSBench", subset="v3")


def test_refavs_reader_groups_expressions_by_media_folder(world: Path) -> None:
    root = world / "REFAVS"
    rows = _csv(root / "metadata.csv")
    result = read_refavs(root)
    todo = [r for r in rows if r["split"] == "TODO"]
    assert todo, "the synthetic world should exercise the TODO rows"
    assert result.rows_skipped == len(todo)
    assert sum(f.kind == "skipped_row" for f in result.findings) == len(todo)
    assert [f for f in result.findings if f.severity == "error"] == []
    real_rows = [r for r in rows if r["split"] != "TODO"]
    folders = {media_folder(r["vid"], r["uid"]) for r in real_rows}
    assert {c.uid for c in result.clips} == folders
    expressions = {e.uid: (c, e) for c in result.clips for e in c.expressions}
    assert set(expressions) == {r["uid"] for r in real_rows}
    nulls = [r for r in real_rows if r["uid"].startswith("null_")]
    assert nulls and all(expressions[r["uid"]][1].is_null for r in nulls)
    for r in nulls:  # null expressions resolve their own folder, not the vid
        clip, _ = expressions[r["uid"]]
        assert clip.uid == r["uid"].rsplit("_", 2)[0] != r["vid"]
    for clip in result.clips:
        assert clip.n_frames == 10 and clip.audio_path
        for e in clip.expressions:
            if not e.is_null:
                assert all(p and p.endswith(f"fid_{e.target_id}/{t:05d}.png") for t, p in enumerate(e.mask_paths))


def test_release1_readers_never_unpickle(world: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a reader tried to unpickle a dataset file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    s4 = read_s4(world / "AVSBench-object")
    ms3 = read_ms3(world / "AVSBench-object")
    for result, n_labelled_train in ((s4, 1), (ms3, 5)):
        assert result.clips and [f for f in result.findings if f.severity == "error"] == []
        for clip in result.clips:
            assert clip.n_frames == 5
            assert len(clip.labelled_frames) == (n_labelled_train if clip.split == "train" else 5)
            assert not any(p.endswith(".pkl") for p in clip.frame_paths + [clip.audio_path])
    assert any(Path(world / "AVSBench-object").rglob("*.pkl")), "the release-1 layout ships log-mel pickles"
    ms3_frame = read_ms3(world / "AVSBench-object").clips[0].frame_paths[0]
    assert ".mp4_" in ms3_frame


def test_partition_counts_add_up(world: Path) -> None:
    result = read_refavs(world / "REFAVS")
    kept, quarantined = partition_clips(result.clips, result.findings)
    assert len(kept) + len(quarantined) == len(result.clips)


def test_keys_are_webdataset_safe() -> None:
    assert make_key("v2", "_-apT0tfo6U_16000_26000") == "v2-_-apT0tfo6U_16000_26000"
    key = make_key("v1m", "odd.uid/with dots")
    assert "." not in key and "/" not in key and " " not in key
    assert key == "v1m-odd%2Euid%2Fwith%20dots"
