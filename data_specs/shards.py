"""WebDataset shards: one sample per Clip, original file bytes, a JSON meta record, a sidecar.

Sample members (`<key>.<field>`; WebDataset splits at the first dot, and keys never contain one):

    meta.json             the Clip record (all fields, expressions) and its findings
    frameTT.<ext>         original encoded frame bytes (jpg or png), TT = 00, 01, ...
    maskTT.png            ground-truth mask bytes for labelled frames (AVSS: the RGB palette mask)
    semTT.png             AVSS class-id mask bytes (labels_semantic)
    fidFF.maskTT.png      Ref-AVS: mask of object FF on frame TT
    audio.wav             original audio bytes

Each `<shard>.tar` has a sidecar `<shard>.json` with the sample count, keys, per-sample content
hashes and the tar's sha256; readers check it, because a tar truncated inside a header loses
samples silently. Tars are written deterministically (fixed member metadata) to a temporary name,
fsynced and renamed, so an interrupted run never leaves a partial shard under the final name and a
re-run writes byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from auralsam2.utils import stop
from auralsam2.utils.files import DamagedFileError, atomic_write_bytes, atomic_write_json, read_json
from auralsam2.utils.hashing import sha256_bytes, sha256_file
from data_specs.clip import Clip, Finding
from data_specs.common import FindingSink, StrictModeError, outside_root, partition_clips
from data_specs.validate import check_clip_bytes

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ("key", "dataset", "subset", "split", "uid", "category", "n_frames", "n_labelled_frames",
                    "n_expressions", "shard", "bytes", "content_hash")


class ShardIntegrityError(ValueError):
    """A shard does not match its sidecar (truncated, modified, or missing)."""


@dataclass
class ShardPlan:
    """The clips one shard will hold, and a hash of everything that determines its bytes."""

    name: str
    clips: list[Clip]
    findings: dict[str, list[Finding]]  # clip key -> findings from the metadata stage
    plan_hash: str = ""
    follow_symlinks: bool = False  # read files that are symlinks out of the raw tree (else: unsafe_path)


@dataclass
class ShardResult:
    name: str
    path: str
    n_samples: int
    sha256: str
    bytes: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    skipped: bool = False


def clip_files(clip: Clip) -> list[str]:
    files = [*clip.frame_paths, *[p for p in clip.mask_paths if p], *[p for p in clip.semantic_paths if p]]
    for expression in clip.expressions:
        files.extend(p for p in expression.mask_paths if p)
    if clip.audio_path:
        files.append(clip.audio_path)
    return list(dict.fromkeys(files))


def _stat_signature(clip: Clip) -> list[Any]:
    signature = []
    for rel in clip_files(clip):
        try:
            st = os.stat(clip.path(rel))
            signature.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            signature.append((rel, "missing"))
    return signature


def plan_shards(clips: list[Clip], findings: list[Finding], clips_per_shard: int = 64,
                follow_symlinks: bool = False) -> list[ShardPlan]:
    """Group clips by (dataset, subset, split), sorted by key, into shards of at most N clips.

    The grouping is deterministic for a given input, so re-running plans the same shards; the plan
    hash covers the clip records, their findings and every source file's size and mtime, so a re-run
    on unchanged input recognises finished shards without reading a byte of them.
    """
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
    by_clip: dict[str, list[Finding]] = {}
    for f in findings:
        by_clip.setdefault(f.clip_key, []).append(f)
    groups: dict[tuple[str, str, str], list[Clip]] = {}
    for clip in sorted(clips, key=lambda c: c.key):
        groups.setdefault((clip.dataset, clip.subset, clip.split.replace("+", "_")), []).append(clip)
    plans = []
    for (dataset, subset, split), members in sorted(groups.items()):
        for i in range(0, len(members), clips_per_shard):
            chunk = members[i:i + clips_per_shard]
            plan = ShardPlan(f"{dataset}-{subset}-{split}-{i // clips_per_shard:06d}", chunk,
                             {c.key: by_clip.get(c.key, []) for c in chunk}, follow_symlinks=follow_symlinks)
            # (following symlinks changes what is read: part of the hash, only when on, so the
            # plans of existing ingests keep their hashes)
            digest = hashlib.sha256(f"format={FORMAT_VERSION}{' follow' if follow_symlinks else ''}".encode())
            for clip in chunk:
                digest.update(json.dumps([clip.to_json(), [asdict(f) for f in plan.findings[clip.key]],
                                          _stat_signature(clip)], sort_keys=True, default=str).encode())
            plan.plan_hash = digest.hexdigest()
            plans.append(plan)
    return plans


def _members(clip: Clip, blobs: dict[str, bytes], findings: list[Finding]) -> list[tuple[str, bytes]]:
    meta = {"format": FORMAT_VERSION, "clip": clip.to_json(), "findings": [asdict(f) for f in findings]}
    members = [("meta.json", json.dumps(meta, sort_keys=True, indent=1).encode())]
    for t, rel in enumerate(clip.frame_paths):
        ext = Path(rel).suffix.lower().lstrip(".") or "jpg"
        members.append((f"frame{t:02d}.{ext}", blobs[rel]))
    for t, rel in enumerate(clip.mask_paths):
        if rel:
            members.append((f"mask{t:02d}.png", blobs[rel]))
    for t, rel in enumerate(clip.semantic_paths):
        if rel:
            members.append((f"sem{t:02d}.png", blobs[rel]))
    written: set[int] = set()
    for expression in clip.expressions:
        if expression.target_id in written:
            continue
        written.add(expression.target_id)
        for t, rel in enumerate(expression.mask_paths):
            if rel:
                members.append((f"fid{expression.target_id:02d}.mask{t:02d}.png", blobs[rel]))
    if clip.audio_path:
        members.append(("audio.wav", blobs[clip.audio_path]))
    return members


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o444, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def sidecar_path(tar_path: Path) -> Path:
    return tar_path.with_suffix(".json")


def write_shard(plan: ShardPlan, shards_dir: Path, strict: bool = False, palette_masks: bool = False) -> ShardResult:
    """Read, check and write one shard; skip it when a verified shard of the same plan exists."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    tar_path = shards_dir / f"{plan.name}.tar"
    existing = _finished(tar_path, plan.plan_hash)
    if existing is not None:
        return existing

    sink = FindingSink(plan.clips[0].dataset if plan.clips else "", strict)
    buffer = io.BytesIO()
    rows, quarantined, keys, hashes = [], [], [], []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for clip in plan.clips:
            stop.check()  # Ctrl-C / SIGTERM reach a shard in a worker thread
            before = len(sink.findings)
            blobs: dict[str, bytes] = {}
            for rel in clip_files(clip):
                if not plan.follow_symlinks and (problem := outside_root(Path(clip.root), clip.path(rel))):
                    sink.error(clip.key, rel, "unsafe_path", problem)
                    continue
                try:
                    blobs[rel] = clip.path(rel).read_bytes()
                except OSError as exc:
                    sink.error(clip.key, rel, "missing_file", f"cannot read: {exc}")
            if len(blobs) == len(clip_files(clip)):
                check_clip_bytes(clip, blobs, sink, palette_masks=palette_masks)
            new = sink.findings[before:]
            kept, _ = partition_clips([clip], new)
            if not kept:
                quarantined.append(clip.key)
                continue
            members = _members(clip, blobs, plan.findings.get(clip.key, []) + new)
            digest = hashlib.sha256()
            for suffix, data in members:
                _add(tar, f"{clip.key}.{suffix}", data)
                digest.update(suffix.encode() + b"\0" + hashlib.sha256(data).digest())
            size = sum(len(d) for _, d in members)
            keys.append(clip.key)
            hashes.append(digest.hexdigest())
            rows.append({
                "key": clip.key, "dataset": clip.dataset, "subset": clip.subset, "split": clip.split,
                "uid": clip.uid, "category": clip.category, "n_frames": clip.n_frames,
                "n_labelled_frames": len(clip.labelled_frames), "n_expressions": len(clip.expressions),
                "shard": f"shards/{tar_path.name}", "bytes": size, "content_hash": digest.hexdigest(),
            })
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(tar_path, data)
    sidecar = {
        "format": FORMAT_VERSION, "shard": tar_path.name, "plan_hash": plan.plan_hash, "n_samples": len(keys),
        "keys": keys, "content_hashes": hashes, "sha256": sha, "bytes": len(data), "rows": rows,
        "findings": [asdict(f) for f in sink.findings], "quarantined": quarantined,
    }
    atomic_write_json(sidecar_path(tar_path), sidecar)
    return ShardResult(plan.name, str(tar_path), len(keys), sha, len(data), rows, sink.findings, quarantined)


def _finished(tar_path: Path, plan_hash: str) -> ShardResult | None:
    """The recorded result of a shard already written for this plan, if its tar is intact."""
    side = sidecar_path(tar_path)
    if not (tar_path.is_file() and side.is_file()):
        return None
    try:
        record = read_sidecar(tar_path)
    except (OSError, ValueError):
        return None  # damaged: the shard is written again
    if record.get("plan_hash") != plan_hash or record.get("format") != FORMAT_VERSION:
        return None
    if tar_path.stat().st_size != record["bytes"] or sha256_file(tar_path) != record["sha256"]:
        return None
    try:  # its members too: a shard re-sealed around a hostile member is written again, not kept
        for _ in iter_shard(tar_path, verify=False):
            pass
    except ShardIntegrityError:
        return None
    return ShardResult(record["shard"].removesuffix(".tar"), str(tar_path), record["n_samples"], record["sha256"],
                       record["bytes"], record["rows"], [Finding(**f) for f in record["findings"]],
                       record["quarantined"], skipped=True)


def read_sidecar(tar_path: str | Path) -> dict[str, Any]:
    """A shard's sidecar record (keys, hashes, sha256 of the tar, manifest rows), its checksum verified."""
    side = sidecar_path(Path(tar_path))
    record = read_json(side, f"the sidecar of shard {Path(tar_path).name}",
                       "re-run `auralsam2 ingest` (it rewrites that shard; the others are reused)")
    if not isinstance(record, dict) or not {"keys", "sha256", "bytes", "rows"} <= set(record):
        raise DamagedFileError(f"{side}: not a shard sidecar (fields missing); re-run `auralsam2 ingest`")
    return record


def verify_shard(tar_path: str | Path) -> list[str]:
    """Problems with one shard against its sidecar (empty when intact)."""
    tar_path = Path(tar_path)
    side = sidecar_path(tar_path)
    if not tar_path.is_file():
        return [f"{tar_path}: missing"]
    if not side.is_file():
        return [f"{tar_path}: sidecar {side.name} missing"]
    try:
        record = read_sidecar(tar_path)
    except DamagedFileError as err:
        return [str(err)]
    problems = []
    if tar_path.stat().st_size != record["bytes"]:
        problems.append(f"{tar_path}: {tar_path.stat().st_size} bytes, sidecar says {record['bytes']}")
    elif sha256_file(tar_path) != record["sha256"]:
        problems.append(f"{tar_path}: sha256 differs from the sidecar")
    return problems


@dataclass
class ClipSample:
    """One sample read back from a shard: the Clip record and its raw bytes."""

    clip: Clip
    findings: list[Finding]
    frames: list[bytes]
    masks: dict[int, bytes]                      # frame -> mask bytes (labelled frames only)
    semantic: dict[int, bytes]
    object_masks: dict[int, dict[int, bytes]]    # Ref-AVS: fid -> frame -> mask bytes
    audio: bytes | None


def sample_from_dict(sample: dict[str, Any]) -> ClipSample:
    """Turn a raw WebDataset sample (field -> bytes) into a ClipSample."""
    meta = json.loads(sample["meta.json"])
    clip = Clip.from_json(meta["clip"])
    frames, masks, semantic, objects = {}, {}, {}, {}
    for name, data in sample.items():
        if name.startswith("__"):
            continue
        if name.startswith("frame"):
            frames[int(name[5:7])] = data
        elif name.startswith("mask"):
            masks[int(name[4:6])] = data
        elif name.startswith("sem"):
            semantic[int(name[3:5])] = data
        elif name.startswith("fid"):
            objects.setdefault(int(name[3:5]), {})[int(name.split(".")[1][4:6])] = data
    return ClipSample(clip, [Finding(**f) for f in meta["findings"]], [frames[t] for t in sorted(frames)],
                      masks, semantic, objects, sample.get("wav") or sample.get("audio.wav"))


# Caps on what one tar member may declare, checked before it is read: a clip's files are frames,
# masks and a few seconds of audio (a 1080p JPEG is ~1 MB, 10 s of 48 kHz stereo 2 MB).
MAX_META_BYTES = 1 << 20
MAX_MEDIA_BYTES = 64 << 20


def expected_members(clip: Clip) -> set[str]:
    """The member names (after `<key>.`) a clip's sample holds, as `write_shard` names them."""
    names = {"meta.json"}
    names |= {f"frame{t:02d}.{Path(rel).suffix.lower().lstrip('.') or 'jpg'}" for t, rel in enumerate(clip.frame_paths)}
    names |= {f"mask{t:02d}.png" for t, rel in enumerate(clip.mask_paths) if rel}
    names |= {f"sem{t:02d}.png" for t, rel in enumerate(clip.semantic_paths) if rel}
    names |= {f"fid{e.target_id:02d}.mask{t:02d}.png" for e in clip.expressions for t, rel in enumerate(e.mask_paths)
              if rel}
    if clip.audio_path:
        names.add("audio.wav")
    return names


def _checked_samples(tar_path: Path, expected_keys: list[str] | None) -> Iterator[dict[str, Any]]:
    """The samples of a shard as WebDataset groups them (`__key__` + one field per member), each member
    checked before it is read: a plain file named `<key>.<field>` of a key the sidecar lists, its
    `meta.json` first, every other field one its clip record expects, its size under the caps."""
    def bad(name: str, why: str) -> ShardIntegrityError:
        return ShardIntegrityError(f"{tar_path}: member {name[:120]!r} {why}; the shard was modified or is not "
                                   "ours: re-run `auralsam2 ingest` to rewrite it")

    allowed_keys = set(expected_keys) if expected_keys is not None else None
    try:
        tar = tarfile.open(tar_path, "r:")  # plain tar only: no decompression bomb
    except (tarfile.TarError, OSError) as err:
        raise ShardIntegrityError(f"{tar_path}: not a readable tar ({err}); re-run `auralsam2 ingest`") from None
    with tar:
        sample: dict[str, Any] = {}
        wanted: set[str] = set()
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, OSError) as err:
                raise ShardIntegrityError(f"{tar_path}: damaged tar ({err}); re-run `auralsam2 ingest`") from None
            if info is None:
                break
            tar.members.clear()  # tarfile keeps every header it read: a 100k-member tar would pile them up
            name = info.name
            if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise bad(name, "is not a plain file (a link, folder, device or sparse file)")
            key, dot, field_name = name.partition(".")
            if not dot or "/" in name or "\\" in name or key in ("", ".", ".."):
                raise bad(name, "is not named <key>.<field>")
            if allowed_keys is not None and key not in allowed_keys:
                raise bad(name, "belongs to no clip the shard's sidecar lists")
            if key != sample.get("__key__"):
                if sample:
                    yield sample
                if field_name != "meta.json":
                    raise bad(name, "comes before its clip's meta.json")
                sample, wanted = {"__key__": key}, {"meta.json"}
            if field_name not in wanted or field_name in sample:
                raise bad(name, "is not a file its clip holds (or is there twice)")
            cap = MAX_META_BYTES if field_name == "meta.json" else MAX_MEDIA_BYTES
            if info.size > cap:
                raise bad(name, f"declares {info.size:,} bytes, more than a clip's file holds (limit {cap:,})")
            data = tar.extractfile(info).read()
            if len(data) != info.size:
                raise bad(name, "is truncated")
            sample[field_name] = data
            if field_name == "meta.json":
                try:
                    wanted = expected_members(Clip.from_json(json.loads(data)["clip"]))
                except (ValueError, KeyError, TypeError) as err:
                    raise bad(name, f"is not a clip record ({type(err).__name__}: {err})") from None
        if sample:
            yield sample


def iter_shard(tar_path: str | Path, verify: bool = True) -> Iterator[ClipSample]:
    """Read a shard (WebDataset's layout: members `<key>.<field>`, grouped by key), checking it
    against its sidecar.

    With `verify`, the tar's sha256 is checked before the first sample; in any case every member is
    checked before it is read (`_checked_samples`), and the sample keys are compared with the
    sidecar's at the end, so a silently truncated tar raises instead of yielding fewer clips.
    """
    tar_path = Path(tar_path)
    if verify and (problems := verify_shard(tar_path)):
        raise ShardIntegrityError("; ".join(problems))
    expected = read_sidecar(tar_path)["keys"] if sidecar_path(tar_path).is_file() else None
    seen = []
    for sample in _checked_samples(tar_path, expected):
        seen.append(sample["__key__"])
        try:
            clip_sample = sample_from_dict(sample)
        except (ValueError, KeyError, TypeError) as err:
            raise ShardIntegrityError(f"{tar_path}: clip {sample['__key__']!r} cannot be read ({type(err).__name__}: "
                                      f"{err}); re-run `auralsam2 ingest` to rewrite the shard") from None
        yield clip_sample
    if expected is not None and seen != expected:
        raise ShardIntegrityError(
            f"{tar_path}: read {len(seen)} samples, sidecar lists {len(expected)}; the shard is truncated or "
            "modified: re-run ingest to rewrite it"
        )


__all__ = ["ClipSample", "ManifestError", "ShardIntegrityError", "ShardPlan", "ShardResult", "StrictModeError",
           "iter_shard", "plan_shards", "read_ingest_json", "read_ingest_report", "read_manifest", "read_sidecar",
           "sample_from_dict", "verify_shard", "write_shard"]


class ManifestError(DamagedFileError):
    """An ingest manifest that is damaged (fails the checksum ingest.json records) or unreadable."""


def read_ingest_json(folder: str | Path) -> dict[str, Any]:
    """The ingest folder's `ingest.json` (its summary), checksum verified; {} when there is none."""
    record = Path(folder) / "ingest.json"
    if not record.is_file():
        return {}
    return read_json(record, "the ingest summary", f"re-run `auralsam2 ingest` into {Path(folder)} "
                     "(finished shards are reused)")


def _read_checked_table(folder: Path, name: str, field: str) -> pa.Table:
    import pyarrow.parquet as pq

    path = folder / name
    fix = f"re-run `auralsam2 ingest` into {folder} (finished shards are reused)"
    if path.is_file() and not (folder / "ingest.json").is_file():
        raise ManifestError(f"{folder / 'ingest.json'}: missing, so {name} (whose sha256 it records) cannot be "
                            f"checked; {fix}")
    data = path.read_bytes()
    want = read_ingest_json(folder).get(field, "")
    if want and sha256_bytes(data) != want:
        raise ManifestError(f"{path}: fails its checksum (ingest.json records sha256 {want[:12]}..., the file has "
                            f"{sha256_bytes(data)[:12]}...): it is damaged; {fix}")
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        raise ManifestError(f"{path}: unreadable ({err}); {fix}") from None


def read_manifest(folder: str | Path) -> pa.Table:
    """The ingest folder's manifest, checked against the sha256 its ingest.json records (an ingest.json
    written before the checksum existed has none: read as it is). `ManifestError` names the file."""
    return _read_checked_table(Path(folder), "manifest.parquet", "manifest_sha256")


def read_ingest_report(folder: str | Path) -> pa.Table:
    """The ingest folder's findings table, checked like the manifest."""
    return _read_checked_table(Path(folder), "ingest_report.parquet", "report_sha256")
