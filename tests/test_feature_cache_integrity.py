"""Feature cache integrity: corruption detection, verify, resuming a crashed build, stale-cache guard, sizes.

Reuses the session-scoped cache built in test_feature_cache.py (`cache_env`); every test that
damages a cache works on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from auralsam2.backbone import build_sam2_model, save_sam2_checkpoint
from auralsam2.utils.files import atomic_write_json, read_json, temp_path
from auralsam2.utils.hashing import sha256_file
from feature_cache.build import build_cache, cache_is_current, plan_cache, read_cache_json
from feature_cache.files import open_cache_file
from feature_cache.reader import CacheReader
from feature_cache.schema import CacheSettings, CorruptCacheError, StaleCacheError
from feature_cache.size import cache_size, compact_bytes, predict_size
from feature_cache.verify import verify_cache
from feature_cache.writer import build_shard, features_path
from tests.test_feature_cache import CREATED, cache_env_fixture, tree_bytes  # noqa: F401  (session fixture)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite_index(cache: Path, table) -> None:
    """Replace the index and re-record its checksum: an index that is wrong but not damaged (an index
    edited without its checksum is damaged: `test_a_damaged_cache_table_is_reported_and_refused`)."""
    pq.write_table(table, cache / "index.parquet")
    info = read_json(cache / "cache.json", "cache record", "")
    info["tables"]["index.parquet"] = sha256_file(cache / "index.parquet")
    atomic_write_json(cache / "cache.json", info)


def _flip_tensor_byte(path: Path, batch_index: int) -> None:
    """Flip one byte in the middle of record batch `batch_index`'s level-0 tensor, in place."""
    batch = open_cache_file(path).reader.get_batch(batch_index)
    payload = bytes(batch.column("level0").storage.buffers()[-1])
    data = bytearray(path.read_bytes())
    offset = data.find(payload)
    assert offset > 0 and data.find(payload, offset + 1) < 0
    data[offset + len(payload) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


def test_corrupted_record_batch_is_detected_by_verify_reader_and_rebuilt(cache_env, tmp_path: Path) -> None:
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    assert verify_cache(cache).ok
    row = pq.read_table(cache / "index.parquet").to_pylist()[7]
    _flip_tensor_byte(cache / row["file"], row["batch"])

    report = verify_cache(cache)
    assert not report.ok and not report.missing and not report.extra and not report.stale
    assert len(report.corrupt) == 1
    assert f"record batch {row['batch']} fails its checksum" in report.corrupt[0] and row["file"] in report.corrupt[0]

    reader = CacheReader(cache)
    with pytest.raises(CorruptCacheError, match=f"record batch {row['batch']} fails its checksum"):
        reader.frame(row["clip"], row["frame"], row["view"])
    other = pq.read_table(cache / "index.parquet").to_pylist()[8]
    assert other["file"] == row["file"]
    reader.frame(other["clip"], other["frame"], other["view"])  # the rest of the file still reads

    # Re-running the build rebuilds exactly that shard (its file exists but does not verify).
    summary = build_cache(cache_env.avss, cache, cache_env.settings, created=CREATED, progress=False)
    assert summary.shards_built == 1 and summary.shards_skipped == summary.shards - 1
    assert verify_cache(cache).ok
    assert tree_bytes(cache) == tree_bytes(cache_env.avss_cache)


def test_crash_state_resumes_to_a_complete_identical_cache(cache_env, tmp_path: Path) -> None:
    """Leave exactly what a killed build leaves, then re-run: complete, verified, nothing twice."""
    out = tmp_path / "crashed"
    plan = plan_cache(cache_env.avss, out, cache_env.settings, created=CREATED)
    for job in plan.jobs[:3]:  # three shards finished before the crash ...
        build_shard(job, plan.settings, plan.fingerprint, plan.out, plan.created)
    # ... and the fourth was being written: a temporary file with the first part of its bytes.
    victim = features_path(out, plan.jobs[3].name)
    complete = features_path(cache_env.avss_cache, plan.jobs[3].name).read_bytes()
    temp_path(victim).write_bytes(complete[: len(complete) // 2])
    assert read_cache_json(out)["status"] == "building" and not (out / "index.parquet").exists()
    with pytest.raises(Exception, match="status 'building'"):
        CacheReader(out)
    assert not verify_cache(out).ok

    summary = build_cache(cache_env.avss, out, cache_env.settings, created=CREATED, progress=False)
    assert summary.shards_skipped == 3 and summary.shards_built == len(plan.jobs) - 3
    assert not temp_path(victim).exists()
    report = verify_cache(out)
    assert report.ok, report.lines()
    index = pq.read_table(out / "index.parquet").to_pylist()
    keys = [(r["clip"], r["frame"], r["view"]) for r in index]
    assert len(keys) == len(set(keys)) == sum(plan.expected.values())
    assert tree_bytes(out) == tree_bytes(cache_env.avss_cache)


def test_verify_reports_missing_and_extra_entries(cache_env, tmp_path: Path) -> None:
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    index = pq.read_table(cache / "index.parquet")
    rows = index.to_pylist()
    dropped = rows.pop(3)
    _rewrite_index(cache, index.from_pylist(rows, schema=index.schema))
    gone = sorted((cache / "features").glob("avss-v1m-val-*.arrow"))[0]
    gone.unlink()
    shutil.copy(cache / rows[0]["file"], cache / "features" / "stray.arrow")

    report = verify_cache(cache)
    assert not report.ok
    text = "\n".join(report.lines())
    assert f"record (clip {dropped['clip']}, frame {dropped['frame']}, view {dropped['view']}) not in the index" in text
    assert f"{dropped['file']} batch {dropped['batch']}: not referenced by the index" in text
    assert f"file features/{gone.name}: referenced by the index, not on disk" in text
    assert "file features/stray.arrow: not referenced by the index" in text
    assert not report.corrupt


@pytest.mark.parametrize("name", ["index.parquet", "clips.parquet", "manifest.parquet"])
def test_a_damaged_cache_table_is_reported_and_refused(cache_env, tmp_path: Path, name: str) -> None:
    """Every table the cache writes carries a checksum in cache.json; a flipped byte anywhere in it
    (here, in the middle, where a value lives) is reported by verify and refused by the reader."""
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    data = bytearray((cache / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (cache / name).write_bytes(bytes(data))
    report = verify_cache(cache, ingest=tmp_path / "no-live-ingest")
    assert any(name in p and "fails its checksum" in p for p in report.corrupt), report.lines()
    if name != "manifest.parquet":
        with pytest.raises(CorruptCacheError, match=f"{name}: fails its checksum"):
            CacheReader(cache).clip_row(pq.read_table(cache_env.avss_cache / "clips.parquet").column("clip")[0].as_py())


def test_a_damaged_ingest_manifest_is_never_trusted(cache_env, tmp_path: Path) -> None:
    """A flipped byte in the ingest's manifest.parquet (which could change a uid or a category and
    still parse) fails the checksum ingest.json records: cache verify reports it, a rebuild refuses it."""
    from data_specs.shards import ManifestError

    ingest = _copy(cache_env.avss, tmp_path / "ingest")
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    data = bytearray((ingest / "manifest.parquet").read_bytes())
    data[len(data) // 3] ^= 0x01
    (ingest / "manifest.parquet").write_bytes(bytes(data))
    report = verify_cache(cache, ingest=ingest)
    assert any("manifest.parquet: fails its checksum" in p for p in report.corrupt), report.lines()
    with pytest.raises(ManifestError, match="manifest.parquet: fails its checksum"):
        build_cache(ingest, tmp_path / "rebuilt", cache_env.settings, created=CREATED, progress=False)


def test_fingerprint_mismatch_is_refused_with_the_differing_fields(cache_env, tmp_path: Path) -> None:
    with pytest.raises(StaleCacheError) as err:
        CacheReader(cache_env.avss_cache, expect={"sam2_config": "tiny", "image_size": 256, "dtype": "fp16"})
    message = str(err.value)
    assert "image_size: cached 128, requested 256" in message and "dtype: cached 'bf16', requested 'fp16'" in message
    assert "sam2_config" not in message and str(cache_env.avss_cache) in message

    torch.manual_seed(11)
    other = build_sam2_model("tiny")
    other_ckpt = save_sam2_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(StaleCacheError, match="checkpoint: cached 'sha256:"):
        CacheReader(cache_env.avss_cache, expect=cache_env.settings.model_copy(update={"checkpoint": str(other_ckpt)}))
    with pytest.raises(StaleCacheError, match="image encoder weights differ"):
        CacheReader(cache_env.avss_cache, model=other)
    CacheReader(cache_env.avss_cache, expect=cache_env.settings, model=build_sam2_model("tiny", cache_env.checkpoint))

    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    before = tree_bytes(cache)
    with pytest.raises(StaleCacheError, match=r"views\.count: cached 2, requested 3.*--rebuild"):
        plan_cache(cache_env.avss, cache, cache_env.settings.model_copy(update={"views": 3}))
    assert tree_bytes(cache) == before  # refused without touching anything

    # A file of another build dropped into the folder is caught on open, naming the file.
    stranger = tmp_path / "stranger"
    build_cache(cache_env.refavs, stranger, cache_env.settings.model_copy(update={"views": 1}), created=CREATED,
                progress=False)
    row = pq.read_table(cache / "index.parquet").to_pylist()[0]
    shutil.copy(sorted((stranger / "features").glob("*.arrow"))[0], cache / row["file"])
    with pytest.raises(StaleCacheError, match=r"views\.count"):
        CacheReader(cache).frame(row["clip"], row["frame"], row["view"])
    assert any("built with other settings" in s for s in verify_cache(cache).stale)


def test_rebuild_replaces_a_stale_cache(cache_env, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    settings = CacheSettings(sam2_config="tiny", checkpoint=str(cache_env.checkpoint))
    build_cache(cache_env.refavs, out, settings, created=CREATED, progress=False)
    fp16 = settings.model_copy(update={"dtype": "fp16"})
    with pytest.raises(StaleCacheError, match="dtype: cached 'bf16', requested 'fp16'"):
        build_cache(cache_env.refavs, out, fp16, progress=False)
    summary = build_cache(cache_env.refavs, out, fp16, rebuild=True, progress=False)
    assert summary.shards_built == summary.shards
    reader = CacheReader(out, expect={"dtype": "fp16"})
    key = reader.keys()[0]
    assert reader.compact(key, 0).levels[0].dtype == torch.float16
    assert verify_cache(out).ok


def test_sizes_measured_and_predicted(cache_env) -> None:
    measured = cache_size(cache_env.avss_cache)
    index = pq.read_table(cache_env.avss_cache / "index.parquet")
    assert measured.records == index.num_rows == sum(v["records"] for v in measured.per_split.values())
    tiny_frame = (8 * 32 * 32 + 16 * 16 * 16 + 32 * 8 * 8) * 2  # trunk s4, trunk s8, fpn s16 at 128 px
    assert measured.compact_bytes_per_frame == tiny_frame
    assert tiny_frame < measured.bytes_per_record < tiny_frame + 4096
    assert measured.features_bytes == sum(p.stat().st_size for p in (cache_env.avss_cache / "features").iterdir())

    layout = json.loads((cache_env.avss_cache / "cache.json").read_text())["fingerprint"]["storage"]["layout"]
    assert compact_bytes(layout, 128) == tiny_frame
    predicted = predict_size("sam2_hiera_b+", image_size=1024, dataset="v1s", views=2)
    # Hiera-B+: trunk 112 ch at /4, trunk 224 ch at /8, FPN 256 ch at /16; raw pyramid 256 ch at all three.
    assert predicted.compact_bytes_per_frame == (112 * 256**2 + 224 * 128**2 + 256 * 64**2) * 2 == 24_117_248
    assert predicted.naive_bytes_per_frame == 256 * (256**2 + 128**2 + 64**2) * 2 == 44_040_192
    assert predicted.compact_bytes_per_frame / predicted.naive_bytes_per_frame <= 0.55
    assert predicted.records == {"train": 3452 * 5 * 2, "val": 740 * 5, "test": 740 * 5}


def test_cache_is_current_for_pipelines(cache_env, tmp_path: Path) -> None:
    assert cache_is_current(cache_env.avss, cache_env.avss_cache, cache_env.settings)
    assert not cache_is_current(cache_env.avss, cache_env.avss_cache, cache_env.settings.model_copy(update={"views": 1}))
    assert not cache_is_current(cache_env.refavs, cache_env.avss_cache, cache_env.settings)  # another ingest
    assert not cache_is_current(cache_env.avss, tmp_path / "nothing", cache_env.settings)


def test_verify_checks_labelled_frames_against_the_manifest(cache_env, tmp_path: Path) -> None:
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    index = pq.read_table(cache / "index.parquet")
    rows = index.to_pylist()
    row = next(r for r in rows if r["view"] == 0 and not r["labelled"])  # a v1s train frame without GT
    row["labelled"] = True
    _rewrite_index(cache, index.from_pylist(rows, schema=index.schema))
    report = verify_cache(cache)
    assert report.corrupt == [f"clip {row['clip']}: 2 labelled frames in the index, 1 in the manifest"]


@pytest.mark.parametrize("kind", ["features", "audio"])
def test_verify_never_reads_a_batch_whose_checksum_failed(cache_env, tmp_path: Path, kind: str) -> None:
    """A flipped byte in a batch's string offsets (the `clip` column) made `cache verify` segfault: the
    batch failed its checksum and was then read anyway. Now it is reported, and never read."""
    import subprocess
    import sys

    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    row = pq.read_table(cache / "index.parquet").to_pylist()[3]
    rel = row["file"] if kind == "features" else pq.read_table(cache / "clips.parquet").to_pylist()[0]["audio_file"]
    path = cache / rel
    opened = open_cache_file(path)
    batch = opened.reader.get_batch(row["batch"] if kind == "features" else 0)
    offsets = batch.column("clip").buffers()[1]
    at = offsets.address - opened.base_address + 4  # the end offset of the first string
    opened.close()
    data = bytearray(path.read_bytes())
    data[at + 3] ^= 0x7F  # the offset now points ~2 GB past the buffer
    path.write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "flows", "cache", "verify", str(cache)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "fails its checksum" in done.stdout + done.stderr and rel in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_damaged_footer_schema_is_refused(cache_env, tmp_path: Path) -> None:
    """The batch checksums cover the bytes, not how they are read or what they are said to be: a
    flipped byte in the footer's metadata (here what the file was built from) reads as valid Arrow,
    so the schema and metadata carry their own checksum."""
    cache = _copy(cache_env.avss_cache, tmp_path / "cache")
    path = sorted((cache / "features").glob("*.arrow"))[0]
    data = bytearray(path.read_bytes())
    at = data.rfind(b'"sha256"')  # inside the source record, in the footer's copy of the metadata
    assert at > len(data) // 2
    data[at + 1] ^= 0x20  # "sha256" -> "SHA256": still valid JSON, still a valid Arrow file
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="schema or metadata fails the checksum"):
        open_cache_file(path)
    report = verify_cache(cache)
    assert not report.ok and any(path.name in line and "schema or metadata" in line for line in report.corrupt)
