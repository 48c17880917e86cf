"""The ingest flow end to end: real Prefect flow runs, real tars read back with webdataset."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

from data_specs.clip import make_key
from data_specs.common import StrictModeError
from data_specs.ingest import prepare
from data_specs.refavs import media_folder
from data_specs.shards import ShardIntegrityError, iter_shard, verify_shard, write_shard
from data_specs.synth import SynthConfig, generate_world
from flows.ingest import run_ingest

CONFIG = SynthConfig(seed=5, clips=6, size=96)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, CONFIG, progress=False)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ingest_avss_roundtrip_and_rerun(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    summary = run_ingest("avss", world / "AVSBench", out, clips_per_shard=4, progress=False)
    rows = _rows(world / "AVSBench" / "metadata.csv")
    assert summary.clips_read == summary.clips_kept == len(rows)
    assert summary.clips_quarantined == 0 and summary.errors == 0

    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(manifest) == len(rows)
    assert {"key", "dataset", "subset", "split", "n_frames", "n_labelled_frames", "n_expressions", "shard",
            "bytes", "content_hash"} <= set(manifest[0])
    by_key = {r["key"]: r for r in manifest}
    for row in rows:
        entry = by_key[make_key(row["label"], row["uid"])]
        assert row["uid"] in entry["key"] and "." not in entry["key"]
        assert entry["n_labelled_frames"] == (1 if (row["label"], row["split"]) == ("v1s", "train") else entry["n_frames"])

    # Every shard reads back with webdataset and holds the source bytes unchanged.
    root = world / "AVSBench"
    seen = 0
    for tar in sorted((out / "shards").glob("*.tar")):
        assert verify_shard(tar) == []
        for sample in iter_shard(tar):
            seen += 1
            clip = sample.clip
            assert by_key[clip.key]["shard"] == f"shards/{tar.name}"
            assert sample.frames == [(root / p).read_bytes() for p in clip.frame_paths]
            assert sample.audio == (root / clip.audio_path).read_bytes()
            assert sample.masks == {t: (root / p).read_bytes() for t, p in enumerate(clip.mask_paths) if p}
            assert sample.semantic == {t: (root / p).read_bytes() for t, p in enumerate(clip.semantic_paths) if p}
    assert seen == len(rows)

    # Re-running on the same input changes nothing and skips every shard.
    before = _tree_bytes(out / "shards")
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = run_ingest("avss", world / "AVSBench", out, clips_per_shard=4, progress=False)
    assert again.shards_skipped == again.shards == summary.shards and again.shards_written == 0
    assert _tree_bytes(out / "shards") == before
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == mtimes


def test_ingest_refavs_expressions(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    summary = run_ingest("refavs", world / "REFAVS", out, progress=False)
    rows = [r for r in _rows(world / "REFAVS" / "metadata.csv") if r["split"] != "TODO"]
    folders = {media_folder(r["vid"], r["uid"]) for r in rows}
    assert summary.clips_kept == len(folders) and summary.expressions_kept == len(rows)
    assert summary.rows_skipped > 0 and summary.findings_by_kind.get("skipped_row") == summary.rows_skipped
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sum(r["n_expressions"] for r in manifest) == len(rows)
    samples = [s for tar in sorted((out / "shards").glob("*.tar")) for s in iter_shard(tar)]
    for sample in samples:
        for e in sample.clip.expressions:
            if not e.is_null:
                assert sorted(sample.object_masks[e.target_id]) == list(range(10))
    report = pq.read_table(out / "ingest_report.parquet").to_pylist()
    assert {r["kind"] for r in report} == {"skipped_row"}


def test_strict_mode_fails_on_first_error(world: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(world / "AVSBench", raw)
    rows = _rows(raw / "metadata.csv")
    rows[0]["split"] = "validation"
    _write_rows(raw / "metadata.csv", rows)
    with pytest.raises(StrictModeError, match="unknown_split"):
        prepare("avss", raw, tmp_path / "out", strict=True)


def _corrupt_avss(raw: Path) -> dict[tuple[str, str], str]:
    """Apply one fault of each kind; return the expected {(clip_key, kind): severity}."""
    rows = _rows(raw / "metadata.csv")

    def pick(label: str, split: str | None = None, skip: int = 0) -> dict[str, str]:
        matches = [r for r in rows if r["label"] == label and (split is None or r["split"] == split)]
        return matches[skip]

    def folder(row) -> Path:
        return raw / row["label"] / row["uid"]

    def key(row) -> str:
        return make_key(row["label"], row["uid"])

    expected: dict[tuple[str, str], str] = {}
    a, b, c, d = pick("v1m", skip=0), pick("v1m", skip=1), pick("v2", skip=0), pick("v2", skip=1)
    e, f, g, h = pick("v1s", "test"), pick("v1m", skip=2), pick("v2", skip=2), pick("v1s", "val")
    (folder(a) / "frames" / "2.jpg").unlink()
    expected[key(a), "missing_file"] = "error"
    data = (folder(b) / "frames" / "1.jpg").read_bytes()
    (folder(b) / "frames" / "1.jpg").write_bytes(data[: len(data) // 3])
    expected[key(b), "unreadable_file"] = "error"
    (folder(c) / "labels_rgb" / "3.png").unlink()
    expected[key(c), "missing_file"] = "error"
    mask = Image.open(folder(d) / "labels_rgb" / "0.png")
    mask.resize((mask.width // 2, mask.height // 2), Image.NEAREST).save(folder(d) / "labels_rgb" / "0.png")
    expected[key(d), "mask_size_mismatch"] = "error"
    sf.write(folder(e) / "audio.wav", np.zeros((32000, 2), np.int16), 16000, subtype="PCM_16")
    expected[key(e), "short_audio"] = "warning"
    wav, sr = sf.read(folder(f) / "audio.wav", dtype="int16")
    sf.write(folder(f) / "audio.wav", wav[:, 0], sr, subtype="PCM_16")
    expected[key(f), "mono_audio"] = "warning"
    rgb = np.array(Image.open(folder(g) / "labels_rgb" / "0.png").convert("RGB"))
    rgb[:4, :4] = (1, 2, 3)
    Image.fromarray(rgb).save(folder(g) / "labels_rgb" / "0.png")
    expected[key(g), "unmatched_palette_colour"] = "warning"
    (folder(h) / "audio.wav").write_bytes(b"not a wav file at all")
    expected[key(h), "unreadable_file"] = "error"

    i, j, k, m = pick("v2", skip=3), pick("v1s", "train", skip=0), pick("v1s", "train", skip=1), pick("v2", skip=4)
    shutil.rmtree(folder(i))
    expected[key(i), "missing_folder"] = "error"
    j["split"] = "validation"
    expected[key(j), "unknown_split"] = "error"
    k["label"] = "v3"
    expected[make_key("v3", k["uid"]), "unknown_label"] = "error"
    rows.append(dict(m))
    expected[make_key(m["label"], m["uid"]) + "~dup1", "duplicate_uid"] = "error"
    _write_rows(raw / "metadata.csv", rows)
    return expected


def test_corrupted_tree_findings_and_quarantine(world: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(world / "AVSBench", raw)
    expected = _corrupt_avss(raw)
    out = tmp_path / "ingest"
    summary = run_ingest("avss", raw, out, clips_per_shard=4, progress=False)
    report = pq.read_table(out / "ingest_report.parquet").to_pylist()
    assert {(r["clip_key"], r["kind"]): r["severity"] for r in report} == expected
    assert len(report) == len(expected)  # exactly one finding per fault
    for r in report:
        assert r["dataset"] == "avss" and r["message"] and (r["file"] or r["kind"] in ("unknown_label",))

    rows = _rows(raw / "metadata.csv")
    manifest_keys = {r["key"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    errors = {k for (k, _), sev in expected.items() if sev == "error"}
    warnings_ = {k for (k, _), sev in expected.items() if sev == "warning"}
    assert summary.clips_read == len(rows)
    assert summary.clips_quarantined == len(errors)
    assert summary.clips_kept == len(rows) - len(errors) == len(manifest_keys)
    assert not (manifest_keys & errors) and warnings_ <= manifest_keys
    # Warnings travel with the clip into its meta record.
    samples = {s.clip.key: s for tar in (out / "shards").glob("*.tar") for s in iter_shard(tar)}
    for (clip_key, kind), severity in expected.items():
        if severity == "warning":
            assert kind in {f.kind for f in samples[clip_key].findings}


def test_corrupted_refavs(world: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(world / "REFAVS", raw)
    rows = [r for r in _rows(raw / "metadata.csv") if r["split"] != "TODO"]
    plain = [r for r in rows if not r["uid"].startswith("null_")]
    gone = plain[0]["vid"]
    shutil.rmtree(raw / "media" / gone)
    # an expression whose object mask folder is missing, on a clip that keeps other expressions
    survivors = [r for r in plain if r["vid"] != gone]
    by_vid: dict[str, list[dict[str, str]]] = {}
    for r in survivors:
        by_vid.setdefault(r["vid"], []).append(r)
    vid, exprs = next((v, es) for v, es in by_vid.items() if len({e["fid"] for e in es}) > 1)
    victim = exprs[0]
    shutil.rmtree(raw / "gt_mask" / vid / f"fid_{victim['fid']}")
    dropped = [e for e in exprs if e["fid"] == victim["fid"]]
    # stray files in another clip's media folder and in its frames/: one warning, the clip kept
    cluttered = next(v for v in sorted(by_vid) if v not in (gone, vid))
    (raw / "media" / cluttered / "notes.txt").write_text("annotator's notes\n")
    (raw / "media" / cluttered / "frames" / "Thumbs.db").write_bytes(b"\0" * 16)

    out = tmp_path / "ingest"
    summary = run_ingest("refavs", raw, out, progress=False)
    report = [r for r in pq.read_table(out / "ingest_report.parquet").to_pylist() if r["kind"] != "skipped_row"]
    assert {(r["clip_key"], r["kind"], r["severity"], r["expression_uid"]) for r in report} == (
        {(make_key("refavs", gone), "missing_folder", "error", "")}
        | {(make_key("refavs", vid), "missing_folder", "error", e["uid"]) for e in dropped}
        | {(make_key("refavs", cluttered), "extra_file", "warning", "")}
    )
    extra = next(r for r in report if r["kind"] == "extra_file")
    assert extra["file"] == f"media/{cluttered}" and "2 file(s)" in extra["message"]
    assert "frames/Thumbs.db" in extra["message"] and "notes.txt" in extra["message"]
    lost = sum(1 for r in rows if media_folder(r["vid"], r["uid"]) == gone)
    assert summary.clips_quarantined == 1
    assert summary.expressions_kept == len(rows) - lost - len(dropped)
    manifest = {r["key"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert make_key("refavs", gone) not in manifest
    assert manifest[make_key("refavs", vid)]["n_expressions"] == len(exprs) - len(dropped)


def test_interrupted_ingest_resumes_to_identical_shards(world: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    run_ingest("avss", world / "AVSBench", clean, clips_per_shard=2, progress=False)
    reference = _tree_bytes(clean / "shards")

    # Leave behind exactly what a crash can: some finished shards, a half-written temp file, a tar
    # renamed before its sidecar was written, and a truncated tar next to its old sidecar.
    out = tmp_path / "resumed"
    plan = prepare("avss", world / "AVSBench", out, clips_per_shard=2)
    shards = out / "shards"
    for p in plan.shards[:3]:
        write_shard(p, shards, palette_masks=True)
    (shards / f".{plan.shards[3].name}.tar.tmp-99999").write_bytes(b"partial")
    write_shard(plan.shards[4], shards, palette_masks=True)
    (shards / f"{plan.shards[4].name}.json").unlink()
    write_shard(plan.shards[5], shards, palette_masks=True)
    tar5 = shards / f"{plan.shards[5].name}.tar"
    tar5.write_bytes(tar5.read_bytes()[:1024])
    with pytest.raises(ShardIntegrityError):
        list(iter_shard(tar5))

    summary = run_ingest("avss", world / "AVSBench", out, clips_per_shard=2, progress=False)
    assert summary.shards_skipped == 3 and summary.shards_written == len(plan.shards) - 3
    assert _tree_bytes(shards) == reference
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(clean / "manifest.parquet"))


def test_killed_ingest_process_resumes(world: Path, tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    run_ingest("avss", world / "AVSBench", clean, clips_per_shard=1, progress=False)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flows", "ingest", "--dataset", "avss", "--root", str(world / "AVSBench"),
           "--out", str(out), "--clips-per-shard", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if (out / "shards").is_dir() and any((out / "shards").glob("*.json")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_ingest("avss", world / "AVSBench", out, clips_per_shard=1, progress=False)
    assert _tree_bytes(out / "shards") == _tree_bytes(clean / "shards")
    assert pq.read_table(out / "manifest.parquet").equals(pq.read_table(clean / "manifest.parquet"))


def test_ingest_folder_refuses_a_second_dataset(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    run_ingest("refavs", world / "REFAVS", out, progress=False)
    with pytest.raises(ValueError, match="already holds an ingest of refavs"):
        prepare("avss", world / "AVSBench", out)
    assert json.loads((out / "ingest.json").read_text())["dataset"] == "refavs"


def test_wav_member_is_the_original_file(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "ingest"
    run_ingest("avss", world / "AVSBench", out, progress=False)
    sample = next(iter_shard(next((out / "shards").glob("*.tar"))))
    wav, sr = sf.read(io.BytesIO(sample.audio), dtype="int16", always_2d=True)
    assert sr == 16000 and wav.shape[1] == 2


def test_ingest_never_reads_outside_the_raw_root(world: Path, tmp_path: Path) -> None:
    """A uid holding a path ('../..', '../v1s/<uid>') or a clip folder symlinked out of the tree is a
    named finding; the clip is quarantined, nothing outside --root is read, every other clip is kept."""
    raw = tmp_path / "raw"
    shutil.copytree(world / "AVSBench", raw)
    outside = tmp_path / "elsewhere" / "clip"
    rows = _rows(raw / "metadata.csv")
    v1s = next(r for r in rows if r["label"] == "v1s")
    shutil.copytree(raw / "v1s" / v1s["uid"], outside)
    victim = next(r for r in rows if r["label"] == "v1m")
    shutil.rmtree(raw / "v1m" / victim["uid"])
    (raw / "v1m" / victim["uid"]).symlink_to(outside, target_is_directory=True)
    rows += [{**v1s, "uid": "../../elsewhere/clip"}, {**v1s, "label": "v1m", "uid": f"../v1s/{v1s['uid']}"}]
    _write_rows(raw / "metadata.csv", rows)

    plan = prepare("avss", raw, tmp_path / "out")
    unsafe = {f.clip_key: f.message for f in plan.read.findings if f.kind == "unsafe_path"}
    assert len(unsafe) == 3, unsafe
    assert any("outside the raw tree" in m for m in unsafe.values())
    assert all(p.startswith(str(raw.resolve())) for c in plan.read.clips for p in [c.root])
    kept = {c.uid for s in plan.shards for c in s.clips}
    assert "../../elsewhere/clip" not in kept and victim["uid"] not in kept
    assert len(kept) == len(rows) - 3


def test_bad_raw_data_becomes_named_findings_and_the_rest_is_ingested(world: Path, tmp_path: Path) -> None:
    """A 6-channel WAV and a semantic label map with class id 250 are findings (their clips are
    quarantined, every other clip is ingested); a header-only or non-UTF-8 metadata.csv is an error
    naming the file."""
    raw = tmp_path / "raw"
    shutil.copytree(world / "AVSBench", raw)
    rows = _rows(raw / "metadata.csv")
    v1s, v2 = next(r for r in rows if r["label"] == "v1s"), next(r for r in rows if r["label"] == "v2")
    wav = raw / "v1s" / v1s["uid"] / "audio.wav"
    audio, rate = sf.read(wav, dtype="int16", always_2d=True)
    sf.write(wav, np.repeat(audio[:, :1], 6, axis=1), rate, subtype="PCM_16")
    semantic = sorted((raw / "v2" / v2["uid"] / "labels_semantic").glob("*.png"))[0]
    labels = np.asarray(Image.open(semantic)).copy()
    labels[:4, :4] = 250
    Image.fromarray(labels).save(semantic)

    summary = run_ingest("avss", raw, tmp_path / "out", progress=False)
    report = pq.read_table(summary.report).to_pylist()
    kinds = {(r["clip_key"], r["kind"]) for r in report}
    assert (make_key("v1s", v1s["uid"]), "unsupported_audio") in kinds
    assert (make_key("v2", v2["uid"]), "unknown_class_id") in kinds
    assert summary.clips_quarantined == 2 and summary.clips_kept == len(rows) - 2

    header_only = tmp_path / "header_only"
    shutil.copytree(world / "AVSBench", header_only)
    (header_only / "metadata.csv").write_text((raw / "metadata.csv").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="metadata.csv: a header and no rows"):
        prepare("avss", header_only, tmp_path / "out2")
    latin = tmp_path / "latin"
    shutil.copytree(world / "AVSBench", latin)
    text = (latin / "metadata.csv").read_bytes().replace(b"\n", "\nCaf\u00e9,x,0,0,dog,train,v1s\n".encode("latin-1"), 1)
    (latin / "metadata.csv").write_bytes(text)
    with pytest.raises(ValueError, match=r"metadata.csv:2: not UTF-8 \(byte 0xe9"):
        prepare("avss", latin, tmp_path / "out3")


def found_message(report: list[dict], key: str, kind: str) -> str:
    return next(r["message"] for r in report if r["clip_key"] == key and r["kind"] == kind)


def test_the_rest_of_the_bad_data_catalogue(world: Path, tmp_path: Path) -> None:
    """Zero-byte and renumbered frames, missing, truncated, 8 kHz and 0.1 s audio, extra files and a
    frame symlinked out of the tree: each is a named finding on its clip (file and kind); every other
    clip is ingested byte-identically to a clean ingest; a missing column names the column;
    --follow-symlinks reads the symlinked frame."""
    raw = tmp_path / "raw"
    shutil.copytree(world / "AVSBench", raw)
    clean = run_ingest("avss", raw, tmp_path / "clean", progress=False)  # same root: same clip records
    clean_rows = {r["key"]: r for r in pq.read_table(clean.manifest).to_pylist()}
    rows = _rows(raw / "metadata.csv")
    pool = iter(rows)

    def clip() -> tuple[str, Path]:
        row = next(pool)
        return make_key(row["label"], row["uid"]), raw / row["label"] / row["uid"]

    expected: dict[tuple[str, str], tuple[str, str]] = {}  # (key, kind) -> (severity, file suffix)
    key, folder = clip()
    (folder / "frames" / "1.jpg").write_bytes(b"")
    expected[key, "unreadable_file"] = ("error", "frames/1.jpg")
    key, folder = clip()
    (folder / "frames" / "1.jpg").rename(folder / "frames" / "17.jpg")  # renumbered: a hole and a stray
    expected[key, "missing_file"] = ("error", "frames")
    renumbered = key
    key, folder = clip()
    (folder / "audio.wav").unlink()
    expected[key, "missing_file"] = ("error", "audio.wav")
    key, folder = clip()
    data = (folder / "audio.wav").read_bytes()
    (folder / "audio.wav").write_bytes(data[: len(data) // 2])  # the header still claims the full length
    expected[key, "short_audio"] = ("warning", "audio.wav")
    key, folder = clip()
    audio, rate = sf.read(folder / "audio.wav", dtype="int16", always_2d=True)
    sf.write(folder / "audio.wav", audio[::2], rate // 2, subtype="PCM_16")
    expected[key, "resampled_audio"] = ("warning", "audio.wav")
    key, folder = clip()
    sf.write(folder / "audio.wav", audio[: rate // 10], rate, subtype="PCM_16")
    expected[key, "short_audio"] = ("error", "audio.wav")
    key, folder = clip()
    (folder / "notes.txt").write_text("annotator's notes\n")
    expected[key, "extra_file"] = ("warning", folder.name)
    key, folder = clip()
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(folder / "frames" / "0.jpg", outside)
    (folder / "frames" / "0.jpg").unlink()
    (folder / "frames" / "0.jpg").symlink_to(outside)
    expected[key, "unsafe_path"] = ("error", "frames/0.jpg")
    symlinked = key

    summary = run_ingest("avss", raw, tmp_path / "out", progress=False)
    report = pq.read_table(summary.report).to_pylist()
    found = {(r["clip_key"], r["kind"]): (r["severity"], r["file"]) for r in report}
    assert set(found) == set(expected), (set(found) ^ set(expected))
    for k, (severity, suffix) in expected.items():
        assert found[k][0] == severity and found[k][1].endswith(suffix), (k, found[k])
    assert next(r for r in report if r["file"].endswith("frames/1.jpg") and r["kind"] == "unreadable_file")[
        "message"].endswith("empty file (0 bytes)")
    assert "[1] missing" in (m := found_message(report, renumbered, "missing_file")) and "17.jpg" in m

    errors = {k for (k, _), (sev, _) in expected.items() if sev == "error"}
    kept = {r["key"]: r for r in pq.read_table(summary.manifest).to_pylist()}
    assert set(kept) == set(clean_rows) - errors
    touched = {k for k, _ in expected}
    for k in set(kept) - touched:  # untouched clips: the same bytes as a clean ingest
        assert kept[k]["content_hash"] == clean_rows[k]["content_hash"], k

    followed = run_ingest("avss", raw, tmp_path / "followed", progress=False, follow_symlinks=True)
    followed_keys = {r["key"] for r in pq.read_table(followed.manifest).to_pylist()}
    assert symlinked in followed_keys
    assert not any(r["kind"] == "unsafe_path" for r in pq.read_table(followed.report).to_pylist())

    no_column = tmp_path / "no_column"
    shutil.copytree(world / "AVSBench", no_column)
    table = _rows(no_column / "metadata.csv")
    _write_rows(no_column / "metadata.csv", [{k: v for k, v in r.items() if k != "split"} for r in table])
    with pytest.raises(ValueError, match=r"metadata.csv.*split"):
        prepare("avss", no_column, tmp_path / "out4")
