"""`auralsam2 cache verify`: re-check a whole cache folder against its index and the ingest manifest.

Checks, and how each problem is reported:

* missing: cache.json / index / clip table; (clip, frame, view) records the manifest implies but the
  index lacks; files the index names that are not on disk;
* extra: index records of clips or views the manifest does not imply; files on disk that nothing
  references; record batches no index row points at;
* corrupt: unreadable files, record batches whose CRC-32 differs from the one recorded in the file,
  index rows whose batch holds another (clip, frame, view) or whose checksum differs from the file's,
  duplicated index rows;
* stale: files built with another fingerprint, features built from a different version of the
  ingest shard, clips whose ingest content changed since the build, an unfinished build.

Every record batch is read once (memory-mapped) to check its checksum; nothing is loaded whole.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from auralsam2.utils.files import DamagedFileError, is_temp
from data_specs.shards import ManifestError, read_manifest, read_sidecar
from feature_cache.build import CLIPS, INDEX, MANIFEST, SUBDIRS, read_cache_json, table_problem
from feature_cache.files import Problem, verify_file
from feature_cache.schema import CacheError, CacheSettings

_SHOWN = 20


@dataclass
class VerifyReport:
    root: str
    files_checked: int = 0
    batches_checked: int = 0
    records: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupt or self.stale)

    def lines(self) -> list[str]:
        head = "OK" if self.ok else "PROBLEMS FOUND"
        out = [f"cache verify {self.root}: {head}",
               f"  checked {self.files_checked} files, {self.batches_checked} record batches, "
               f"{self.records} (clip, frame, view) records"]
        for name in ("missing", "extra", "corrupt", "stale"):
            items = getattr(self, name)
            if items:
                out.append(f"  {name}: {len(items)}")
                out += [f"    {item}" for item in items[:_SHOWN]]
                if len(items) > _SHOWN:
                    out.append(f"    ... and {len(items) - _SHOWN} more")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _manifest(root: Path, info: dict[str, Any], ingest: str | os.PathLike | None,
              report: VerifyReport) -> tuple[pa.Table | None, Path | None]:
    """The ingest manifest to check against (the live one when reachable, else the snapshot)."""
    ingest_dir = Path(ingest) if ingest is not None else Path(info.get("ingest", ""))
    live = ingest_dir / "manifest.parquet"
    snapshot = root / MANIFEST
    snapshot_problem = table_problem(root, MANIFEST, info) if snapshot.is_file() else None
    if snapshot_problem:
        report.corrupt.append(snapshot_problem)
    elif not snapshot.is_file() and (info.get("tables") or {}).get(MANIFEST):
        report.missing.append(f"{snapshot}: the manifest snapshot cache.json lists is missing; re-run "
                              "`auralsam2 cache` (finished shards are reused)")
    if live.is_file():
        try:
            table = read_manifest(ingest_dir)
        except ManifestError as err:
            report.corrupt.append(str(err))
            return None, None
        if snapshot.is_file() and not snapshot_problem:
            before = {r["key"]: r["content_hash"] for r in pq.read_table(snapshot).select(["key", "content_hash"])
                      .to_pylist()}
            for row in table.select(["key", "content_hash"]).to_pylist():
                if row["key"] in before and before[row["key"]] != row["content_hash"]:
                    report.stale.append(f"clip {row['key']}: its ingest content changed since the cache was built")
        return table, ingest_dir
    if snapshot.is_file() and not snapshot_problem:  # never read a table that failed its checksum
        report.notes.append(f"ingest manifest {live} not found; checked against the snapshot {snapshot}")
        return pq.read_table(snapshot), None
    if snapshot.is_file():
        return None, None
    if not (info.get("tables") or {}).get(MANIFEST):  # else reported above
        report.missing.append(f"{snapshot} (and the ingest manifest {live})")
    return None, None


def verify_cache(root: str | os.PathLike, ingest: str | os.PathLike | None = None) -> VerifyReport:
    """Check every checksum, the index and the files of a cache folder against the ingest manifest."""
    root = Path(root).expanduser().resolve()
    report = VerifyReport(str(root))
    try:
        info = read_cache_json(root)
    except CacheError as err:
        report.corrupt.append(str(err))
        return report
    if info is None:
        report.missing.append(f"{root / 'cache.json'}: not a feature cache, or its build never started")
        return report
    if info.get("status") != "complete":
        report.stale.append(f"{root}: build not finished (status {info.get('status')!r}); re-run `auralsam2 cache`")
    fingerprint = info["fingerprint"]
    settings = CacheSettings(**info["settings"])

    manifest, ingest_dir = _manifest(root, info, ingest, report)
    expected: set[tuple[str, int, int]] = set()
    shard_sha: dict[str, str] = {}
    if manifest is not None:
        for row in manifest.select(["key", "n_frames", "split", "shard"]).to_pylist():
            for v in range(settings.views_for(row["split"])):
                expected.update((row["key"], t, v) for t in range(row["n_frames"]))
            if ingest_dir is not None:
                sidecar = (ingest_dir / row["shard"]).with_suffix(".json")
                if sidecar.is_file() and Path(row["shard"]).stem not in shard_sha:
                    try:
                        shard_sha[Path(row["shard"]).stem] = read_sidecar(ingest_dir / row["shard"])["sha256"]
                    except DamagedFileError as err:
                        report.corrupt.append(str(err))

    damaged = [p for p in (table_problem(root, INDEX, info), table_problem(root, CLIPS, info)) if p]
    report.corrupt += damaged
    try:
        if damaged:
            raise OSError("see the checksum findings")
        index = pq.read_table(root / INDEX).to_pylist()
        clips = pq.read_table(root / CLIPS).to_pylist()
    except (OSError, pa.ArrowException) as err:
        report.missing.append(f"{root / INDEX} / {root / CLIPS}: unreadable or missing ({err})")
        index, clips = [], []
    report.records = len(index)

    keys = Counter((r["clip"], r["frame"], r["view"]) for r in index)
    report.corrupt += [f"index: (clip, frame, view) {k} listed {n} times" for k, n in sorted(keys.items()) if n > 1]
    if manifest is not None:
        absent = expected - set(keys)
        report.missing += [f"record (clip {c}, frame {f}, view {v}) not in the index" for c, f, v in sorted(absent)]
        report.extra += [f"record (clip {c}, frame {f}, view {v}) not implied by the manifest"
                         for c, f, v in sorted(set(keys) - expected)]
        labelled = Counter(r["clip"] for r in index if r["view"] == 0 and r["labelled"])
        indexed = {k[0] for k in keys} - {k[0] for k in absent}  # complete clips (others: reported missing)
        report.corrupt += [f"clip {row['key']}: {labelled.get(row['key'], 0)} labelled frames in the index, "
                           f"{row['n_labelled_frames']} in the manifest"
                           for row in manifest.select(["key", "n_labelled_frames"]).to_pylist()
                           if row["key"] in indexed and labelled.get(row["key"], 0) != row["n_labelled_frames"]]

    by_file: dict[str, list[dict[str, Any]]] = {}
    for row in index:
        by_file.setdefault(row["file"], []).append(row)
    audio_refs: dict[str, list[dict[str, Any]]] = {}
    for row in clips:
        audio_refs.setdefault(row["audio_file"], [])
        if row["audio_batch"] >= 0:
            audio_refs[row["audio_file"]].append(row)
    referenced = set(by_file) | set(audio_refs)
    text = info.get("text")
    if text:
        referenced.add(text["file"])

    on_disk = {str(p.relative_to(root)) for sub in SUBDIRS if (root / sub).is_dir()
               for p in (root / sub).iterdir() if p.is_file()}
    report.extra += [f"file {rel}: not referenced by the index (left from another build?)"
                     for rel in sorted(on_disk - referenced) if not is_temp(Path(rel))]
    report.stale += [f"file {rel}: temporary file of an interrupted build" for rel in sorted(on_disk)
                     if is_temp(Path(rel))]
    report.missing += [f"file {rel}: referenced by the index, not on disk" for rel in sorted(referenced - on_disk)]

    for rel in sorted(set(by_file) & on_disk):
        _check_features(root, rel, by_file[rel], fingerprint, shard_sha, report)
    for rel in sorted(set(audio_refs) & on_disk):
        _check_audio(root, rel, audio_refs[rel], fingerprint, report)
    if text and text["file"] in on_disk:
        problems, opened = verify_file(root / text["file"], kind="text", fingerprint=text["fingerprint"])
        report.files_checked += 1
        report.batches_checked += opened.num_batches if opened else 0
        _sort(problems, report)
        if opened is not None:
            # a batch whose checksum failed is reported above and never read (its offsets may point anywhere)
            uids = {u for i in sorted(opened.verified) for u in opened.reader.get_batch(i).column("uid").to_pylist()}
            wanted = {e["uid"] for row in clips for e in json.loads(row["record"]).get("expressions", [])}
            report.missing += [f"text embedding of expression {u}" for u in sorted(wanted - uids)]
            report.extra += [f"text embedding of expression {u}: no such expression" for u in sorted(uids - wanted)]
    return report


def _sort(problems: list[Problem], report: VerifyReport) -> None:
    for problem in problems:
        getattr(report, problem.kind).append(problem.message)


def _check_features(root: Path, rel: str, rows: list[dict[str, Any]], fingerprint: dict[str, Any],
                    shard_sha: dict[str, str], report: VerifyReport) -> None:
    stem = Path(rel).stem
    source = {"shard": stem, "sha256": shard_sha[stem]} if stem in shard_sha else {"shard": stem}
    problems, opened = verify_file(root / rel, kind="features", fingerprint=fingerprint, source=source)
    report.files_checked += 1
    _sort(problems, report)
    if opened is None:
        return
    report.batches_checked += opened.num_batches
    pointed = set()
    for row in rows:
        i = row["batch"]
        where = f"{rel} batch {i} (clip {row['clip']}, frame {row['frame']}, view {row['view']})"
        if not 0 <= i < opened.num_batches:
            report.missing.append(f"{where}: the file has only {opened.num_batches} record batches")
            continue
        pointed.add(i)
        if i not in opened.verified:  # its checksum failed (reported): reading it may crash the process
            continue
        try:
            batch = opened.reader.get_batch(i)
            held = (batch.column("clip")[0].as_py(), batch.column("frame")[0].as_py(), batch.column("view")[0].as_py())
        except (pa.ArrowException, OSError) as err:
            report.corrupt.append(f"{where}: unreadable ({err})")
            continue
        if held != (row["clip"], row["frame"], row["view"]):
            report.corrupt.append(f"{where}: the batch holds (clip {held[0]}, frame {held[1]}, view {held[2]})")
        if row["checksum"] != opened.checksums[i]:
            report.corrupt.append(f"{where}: index checksum {row['checksum']} differs from the file's "
                                  f"{opened.checksums[i]}")
    report.extra += [f"{rel} batch {i}: not referenced by the index" for i in range(opened.num_batches)
                     if i not in pointed]


def _check_audio(root: Path, rel: str, rows: list[dict[str, Any]], fingerprint: dict[str, Any],
                 report: VerifyReport) -> None:
    problems, opened = verify_file(root / rel, kind="audio", fingerprint=fingerprint)
    report.files_checked += 1
    _sort(problems, report)
    if opened is None:
        return
    report.batches_checked += opened.num_batches
    for row in rows:
        i = int(row["audio_batch"])
        if not 0 <= i < opened.num_batches:
            report.missing.append(f"{rel} batch {i} (log-mel of clip {row['clip']}): not in the file")
            continue
        if i not in opened.verified:  # its checksum failed (reported): never read a damaged batch
            continue
        held = opened.reader.get_batch(i).column("clip")[0].as_py()
        if held != row["clip"]:
            report.corrupt.append(f"{rel} batch {i}: log-mel of clip {held}, the clip table says {row['clip']}")
