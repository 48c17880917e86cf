"""Building a cache folder: plan (fingerprint, claim the folder), shards, text file, finalize (index).

These are the plain-Python steps the Prefect flow (`flows/cache.py`) runs as tasks; `build_cache`
runs them in-process, one shard after the other, for scripts and tests that want no orchestrator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from auralsam2.utils.devices import resolve_device
from auralsam2.utils.files import (
    DamagedFileError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    is_temp,
    read_json,
)
from auralsam2.utils.hashing import sha256_file
from auralsam2.utils.locks import folder_lock
from auralsam2.utils.outputs import check_output_folder, claim_output_folder
from data_specs.shards import read_ingest_json, read_manifest, read_sidecar
from feature_cache.encoder import load_model, make_fingerprint
from feature_cache.schema import (
    CacheError,
    CacheSettings,
    StaleCacheError,
    fingerprint_differences,
    fingerprint_id,
    stale_message,
)
from feature_cache.text import ExpressionText, TextResult, build_text_file, text_file_path
from feature_cache.writer import ShardCacheResult, ShardJob, build_shard

CACHE_JSON = "cache.json"
INDEX = "index.parquet"
CLIPS = "clips.parquet"
MANIFEST = "manifest.parquet"
SUBDIRS = ("features", "audio", "text")

INDEX_SCHEMA = pa.schema([
    ("clip", pa.string()), ("frame", pa.int32()), ("view", pa.int32()), ("split", pa.string()),
    ("labelled", pa.bool_()), ("file", pa.string()), ("batch", pa.int32()), ("checksum", pa.string()),
])
CLIPS_SCHEMA = pa.schema([
    ("clip", pa.string()), ("dataset", pa.string()), ("subset", pa.string()), ("split", pa.string()),
    ("category", pa.string()), ("n_frames", pa.int32()), ("labelled_frames", pa.list_(pa.int32())),
    ("n_expressions", pa.int32()), ("views", pa.int32()), ("shard", pa.string()), ("features_file", pa.string()),
    ("audio_file", pa.string()), ("audio_batch", pa.int32()), ("record", pa.string()),
])


@dataclass
class CachePlan:
    """Everything a run needs, decided once in the driving process."""

    out: str
    ingest: str
    dataset: str
    settings: CacheSettings
    fingerprint: dict[str, Any]
    created: str
    jobs: list[ShardJob]
    expected: dict[str, int]  # clip key -> (frame, view) rows it must have


@dataclass
class CacheSummary:
    out: str
    dataset: str
    fingerprint_id: str
    shards: int
    shards_built: int
    shards_skipped: int
    clips: int
    rows: int
    frames_encoded: int
    seconds: float
    bytes_features: int
    bytes_audio: int
    bytes_text: int
    text_rows: int
    per_split: dict[str, int] = field(default_factory=dict)

    @property
    def frames_per_second(self) -> float:
        return self.frames_encoded / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        return [
            f"cache {self.dataset} -> {self.out} (fingerprint {self.fingerprint_id})",
            f"  shards: {self.shards} ({self.shards_built} built, {self.shards_skipped} already complete)",
            f"  clips: {self.clips}; (frame, view) records: {self.rows} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.per_split.items()))})",
            f"  encoded this run: {self.frames_encoded} frame-views in {self.seconds:.1f} s "
            f"({self.frames_per_second:.1f} frames/s)",
            f"  bytes: features {self.bytes_features / 1e6:.1f} MB, audio {self.bytes_audio / 1e6:.1f} MB, "
            f"text {self.bytes_text / 1e6:.2f} MB ({self.text_rows} expressions)",
        ]


def locate_ingest(path: str | os.PathLike) -> Path:
    """The ingest folder (holding manifest.parquet) given it or its shards/ subfolder."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path.parent):
        if (candidate / "manifest.parquet").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no manifest.parquet here or in its parent; --shards must be the --out "
                            "folder of `auralsam2 ingest`")


def created_now(created: str | None = None) -> str:
    """`created`, else $SOURCE_DATE_EPOCH (reproducible builds), else now; ISO 8601 UTC seconds."""
    if created:
        return created
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return stamp.replace(microsecond=0).isoformat()


def table_problem(root: Path, name: str, info: dict[str, Any] | None) -> str | None:
    """Why the cache table `name` (index, clips, manifest snapshot) does not match the sha256 its
    cache.json records; None when it matches (or the cache predates table checksums)."""
    want = ((info or {}).get("tables") or {}).get(name)
    path = Path(root) / name
    if not want or not path.is_file():
        return None
    got = sha256_file(path)
    if got == want:
        return None
    return (f"{path}: fails its checksum (cache.json records sha256 {want[:12]}..., the file has {got[:12]}...); "
            "it is damaged: re-run `auralsam2 cache` (finished shards are reused)")


def read_cache_json(out: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(out) / CACHE_JSON
    if not path.is_file():
        return None
    try:
        return read_json(path, "the cache record", "re-run the cache build (`auralsam2 cache` or `auralsam2 "
                         "run`): it writes the record again and reuses the shard files that verify")
    except DamagedFileError as err:
        raise CacheError(str(err)) from None


def _earlier_cache(folder: Path) -> bool:
    return (folder / CACHE_JSON).is_file()


def check_cache_folder(out: str | os.PathLike) -> Path:
    """The absolute cache folder `out`, when it is new, empty or a cache's (else `OutputFolderError`)."""
    return check_output_folder(out, "cache", written_before=_earlier_cache, follow_symlink=True)


def _wipe(out: Path) -> None:
    for name in SUBDIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (INDEX, CLIPS, MANIFEST, CACHE_JSON):
        (out / name).unlink(missing_ok=True)


def _remove_temporaries(out: Path) -> None:
    for folder in (out, *(out / s for s in SUBDIRS)):
        if folder.is_dir():
            for path in folder.iterdir():
                if is_temp(path):
                    path.unlink()  # left by an interrupted run


def _jobs(ingest: Path, manifest: pa.Table, dataset: str, settings: CacheSettings) -> list[ShardJob]:
    frames: dict[str, int] = {}
    for row in manifest.select(["shard", "n_frames", "split"]).to_pylist():
        frames[row["shard"]] = frames.get(row["shard"], 0) + row["n_frames"] * settings.views_for(row["split"])
    jobs = []
    for rel in sorted(frames):
        tar = ingest / rel
        sidecar = tar.with_suffix(".json")
        if not sidecar.is_file():
            raise FileNotFoundError(f"{sidecar}: the sidecar of shard {rel} (listed in {ingest / 'manifest.parquet'}) "
                                    "is missing; re-run `auralsam2 ingest`")
        record = read_sidecar(tar)
        jobs.append(ShardJob(tar.stem, str(tar), record["sha256"], dataset, frames[rel]))
    return jobs


def plan_cache(ingest: str | os.PathLike, out: str | os.PathLike, settings: CacheSettings, *,
               rebuild: bool = False, created: str | None = None) -> CachePlan:
    """Fingerprint the settings, claim (or resume, or refuse) the cache folder, list the shard jobs.

    An existing cache folder built with another fingerprint raises `StaleCacheError` naming the
    differing fields, unless `rebuild` (then its cache files are deleted first).
    """
    ingest_dir = locate_ingest(ingest)
    out_dir = check_cache_folder(out).resolve()
    manifest = read_manifest(ingest_dir)
    datasets = sorted(set(manifest.column("dataset").to_pylist()))
    dataset = read_ingest_json(ingest_dir).get("dataset") or (datasets[0] if datasets else "")
    if settings.checkpoint is not None:
        settings = settings.model_copy(update={"checkpoint": str(Path(settings.checkpoint).expanduser().resolve())})
    device = resolve_device(settings.device)
    fingerprint = make_fingerprint(settings, load_model(settings, "cpu"), device)

    try:
        previous = read_cache_json(out_dir)
    except CacheError as err:  # rewritten below; every shard file is checked against the fingerprint itself
        warnings.warn(f"{err}: writing it again (shard files that verify for these settings are reused)",
                      stacklevel=2)
        previous = None
    if previous is not None and previous.get("fingerprint") != fingerprint:
        diffs = fingerprint_differences(previous.get("fingerprint", {}), fingerprint)
        if not rebuild:
            raise StaleCacheError(stale_message(
                f"cache folder {out_dir}", diffs or ["fingerprint: differs"],
                "Pass --rebuild (rebuild=True) to delete and rebuild it, or choose another --out."))
        _wipe(out_dir)
    claim_output_folder(out_dir, "cache", written_before=_earlier_cache)
    _remove_temporaries(out_dir)
    created = created_now(created)
    expected = {row["key"]: row["n_frames"] * settings.views_for(row["split"])
                for row in manifest.select(["key", "n_frames", "split"]).to_pylist()}
    plan = CachePlan(str(out_dir), str(ingest_dir), dataset, settings, fingerprint, created,
                     _jobs(ingest_dir, manifest, dataset, settings), expected)
    _write_cache_json(plan, "building", {})
    return plan


def _write_cache_json(plan: CachePlan, status: str, extra: dict[str, Any]) -> None:
    record = {
        "status": status, "dataset": plan.dataset, "ingest": plan.ingest, "created": plan.created,
        "fingerprint": plan.fingerprint, "fingerprint_id": fingerprint_id(plan.fingerprint),
        "settings": plan.settings.model_dump(mode="json"), **extra,
    }
    atomic_write_json(Path(plan.out) / CACHE_JSON, record)


def build_text(plan: CachePlan, expressions: list[ExpressionText], *, recheck: bool = True) -> TextResult | None:
    """The dataset's text-embedding file, when it has expressions and a text encoder is configured.

    `expressions`: those of every shard (`ShardCacheResult.expressions`).
    """
    if not plan.settings.text_encoder or not expressions:
        return None
    path = text_file_path(Path(plan.out), plan.dataset)
    return build_text_file(path, expressions, plan.settings.text_encoder, plan.settings.dtype, plan.created,
                           compression=plan.settings.compression, device=resolve_device(plan.settings.device),
                           recheck=recheck)


def finalize_cache(plan: CachePlan, results: list[ShardCacheResult], text: TextResult | None,
                   seconds: float) -> CacheSummary:
    """Check completeness, write index/clips/manifest snapshot, drop stale files, mark complete."""
    out = Path(plan.out)
    results = sorted(results, key=lambda r: r.name)
    index_rows = [row for r in results for row in r.index_rows]
    clip_rows = [row for r in results for row in r.clip_rows]
    seen: dict[tuple[str, int, int], int] = {}
    rows_per_clip: dict[str, int] = {}
    for row in index_rows:
        key = (row["clip"], row["frame"], row["view"])
        if key in seen:
            raise CacheError(f"{out}: (clip, frame, view) {key} is cached twice ({row['file']} and another file); "
                             "the ingest has a clip in two shards: re-run `auralsam2 ingest`")
        seen[key] = 1
        rows_per_clip[row["clip"]] = rows_per_clip.get(row["clip"], 0) + 1
    wrong = {k: (rows_per_clip.get(k, 0), n) for k, n in plan.expected.items() if rows_per_clip.get(k, 0) != n}
    extra = sorted(set(rows_per_clip) - set(plan.expected))
    if wrong or extra:
        sample = ", ".join(f"{k}: {got} of {want}" for k, (got, want) in sorted(wrong.items())[:5])
        raise CacheError(f"{out}: the cache does not match the ingest manifest ({len(wrong)} clips with wrong row "
                         f"counts: {sample}; {len(extra)} clips not in the manifest); re-run the cache build")

    atomic_write_parquet(out / INDEX, pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA))
    atomic_write_parquet(out / CLIPS, pa.Table.from_pylist(clip_rows, schema=CLIPS_SCHEMA))
    atomic_write_bytes(out / MANIFEST, (Path(plan.ingest) / "manifest.parquet").read_bytes())
    tables = {name: sha256_file(out / name) for name in (INDEX, CLIPS, MANIFEST)}  # readers check these

    keep = {r.features for r in results} | {r.audio for r in results}
    if text is not None:
        keep.add(str(Path(text.path).relative_to(out)))
    for sub in SUBDIRS:
        folder = out / sub
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if str(path.relative_to(out)) not in keep:
                    path.unlink()  # a shard no longer in the ingest, or a previous text file

    per_split: dict[str, int] = {}
    for row in index_rows:
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
    size = lambda rel: (out / rel).stat().st_size  # noqa: E731
    summary = CacheSummary(
        out=str(out), dataset=plan.dataset, fingerprint_id=fingerprint_id(plan.fingerprint), shards=len(results),
        shards_built=sum(not r.skipped for r in results), shards_skipped=sum(r.skipped for r in results),
        clips=len(clip_rows), rows=len(index_rows), frames_encoded=sum(r.frames_encoded for r in results),
        seconds=seconds, bytes_features=sum(size(r.features) for r in results),
        bytes_audio=sum(size(r.audio) for r in results),
        bytes_text=Path(text.path).stat().st_size if text is not None else 0,
        text_rows=text.rows if text is not None else 0, per_split=per_split,
    )
    counts = {"shards": summary.shards, "clips": summary.clips, "rows": summary.rows, "per_split": per_split}
    text_entry = None if text is None else {"file": str(Path(text.path).relative_to(out)), "rows": text.rows,
                                            "fingerprint": text.fingerprint}
    _write_cache_json(plan, "complete", {"counts": counts, "text": text_entry, "tables": tables})
    return summary


def cache_is_current(ingest: str | os.PathLike, out: str | os.PathLike, settings: CacheSettings) -> bool:
    """True when `out` holds a complete cache for these settings built from this ingest's manifest.

    Cheap (reads cache.json and the two manifests, hashes the checkpoint file): for pipelines that
    skip the cache step when its output exists. It does not re-check checksums; `verify_cache` does.
    """
    from feature_cache.encoder import expected_fields

    out_dir = Path(out).expanduser().resolve()
    try:
        info = read_cache_json(out_dir)
        live = (locate_ingest(ingest) / "manifest.parquet").read_bytes()
    except (CacheError, FileNotFoundError):
        return False
    if info is None or info.get("status") != "complete" or not (out_dir / MANIFEST).is_file():
        return False
    if (out_dir / MANIFEST).read_bytes() != live:
        return False
    if settings.text_encoder and not text_is_current(info, settings.text_encoder):
        return False
    return not fingerprint_differences(info["fingerprint"], expected_fields(settings))


def cache_identity(info: dict[str, Any], manifest_sha256: str) -> str:
    """One id for everything a run trained on this cache depends on: the clips (the sha256 of the
    ingest manifest it was built from), the features' fingerprint (frozen SAM2, views, storage) and,
    when the cache holds one, the text file's (the encoder's files, tokenizer settings). The
    features' `fingerprint_id` alone changes with neither the data nor the text encoder."""
    text = (info.get("text") or {}).get("fingerprint")
    if text is not None:
        text = {k: v for k, v in text.items() if k != "text_encoder"}  # where the folder lies is no identity
    blob = json.dumps({"clips": manifest_sha256, "features": info["fingerprint_id"], "text": text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def text_is_current(info: dict[str, Any], text_encoder: str) -> bool:
    """True when cache.json `info` records a text file built from exactly this encoder's files."""
    from auralsam2.text import text_encoder_identity

    entry = info.get("text")
    return bool(entry) and entry["fingerprint"].get("files_sha256") == text_encoder_identity(text_encoder)


def build_cache(ingest: str | os.PathLike, out: str | os.PathLike, settings: CacheSettings, *,
                rebuild: bool = False, created: str | None = None, progress: bool = True,
                recheck: bool = True) -> CacheSummary:
    """Build (or resume) a cache in this process, shard after shard, without Prefect.

    Returns the summary; the flow `flows.cache.run_cache` does the same with one Prefect task per
    shard and optional Dask workers, and produces the same bytes.
    """
    threads = torch.get_num_threads()
    started = time.perf_counter()
    check_cache_folder(out)  # before the lock file is made there
    try:
        with folder_lock(Path(out).expanduser(), "feature-cache build"):
            return _build_locked(ingest, out, settings, rebuild, created, progress, recheck, started)
    finally:
        torch.set_num_threads(threads)


def _build_locked(ingest, out, settings: CacheSettings, rebuild: bool, created: str | None, progress: bool,
                  recheck: bool, started: float) -> CacheSummary:
    plan = plan_cache(ingest, out, settings, rebuild=rebuild, created=created)
    results = []
    with tqdm(total=sum(j.rows for j in plan.jobs), unit="frame", desc=f"cache {plan.dataset}",
              disable=not progress, leave=False) as bar:
        for job in plan.jobs:
            results.append(build_shard(job, plan.settings, plan.fingerprint, plan.out, plan.created, recheck=recheck))
            bar.update(job.rows)
    text = build_text(plan, [e for r in results for e in r.expressions], recheck=recheck)
    return finalize_cache(plan, results, text, time.perf_counter() - started)


__all__ = ["CACHE_JSON", "CLIPS", "INDEX", "MANIFEST", "CachePlan", "CacheSummary", "build_cache", "build_text",
           "cache_identity", "cache_is_current", "text_is_current",
           "created_now", "finalize_cache", "locate_ingest", "plan_cache", "read_cache_json"]
