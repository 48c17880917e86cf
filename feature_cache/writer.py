"""One ingest shard -> its features file and its audio file (the unit of work of the cache flow).

`build_shard` reads a WebDataset shard through `data_specs.shards.iter_shard`, renders every view
of every clip, runs the frozen SAM2 image encoder on batches of frames (whole (clip, view)s grouped
until they hold `settings.batch_size` frames; bf16 autocast on CUDA, fp32 on CPU), and writes one
record batch per (frame, view): the compact pyramid levels in the storage dtype, the view's ground truth at S x S, and the
view's parameters. While the encoder runs on one (clip, view), a background thread decodes and
renders the next one. A shard whose files exist and verify for this fingerprint and this input
shard is skipped and its index rows are read back from the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from auralsam2.backbone import compact_layout, encode_frames_compact
from auralsam2.utils import stop
from auralsam2.utils.devices import resolve_device
from data_specs.clip import Clip
from data_specs.shards import ClipSample, iter_shard
from data_specs.validate import open_image
from feature_cache.audio import audio_batch, clip_log_mel
from feature_cache.encoder import compute_mode, encoder_sha256, load_model
from feature_cache.files import ArrowFileWriter, CacheFile, verify_file
from feature_cache.groundtruth import decode_ground_truth, encode_png
from feature_cache.schema import (
    DTYPES,
    CacheError,
    CacheSettings,
    audio_schema,
    feature_schema,
    file_metadata,
    tensor_column,
)
from feature_cache.text import ExpressionText
from feature_cache.views import ViewParams, render_frames, render_masks, view_params


@dataclass(frozen=True)
class ShardJob:
    """One ingest shard to cache: its name, tar path, sha256 (from its sidecar) and dataset."""

    name: str
    tar: str
    sha256: str
    dataset: str
    rows: int = 0  # (frame, view) records it will hold, from the manifest (for progress)


@dataclass
class ShardCacheResult:
    """What a shard task returns (paths and small rows, never tensors)."""

    name: str
    features: str  # relative to the cache folder
    audio: str
    rows: int  # (frame, view) record batches in the features file
    frames_encoded: int  # (frame, view) pairs encoded by this run (0 when skipped)
    skipped: bool
    seconds: float
    index_rows: list[dict[str, Any]] = field(default_factory=list)
    clip_rows: list[dict[str, Any]] = field(default_factory=list)
    expressions: list[ExpressionText] = field(default_factory=list)


def features_path(out: Path, name: str) -> Path:
    return Path(out) / "features" / f"{name}.arrow"


def audio_path(out: Path, name: str) -> Path:
    return Path(out) / "audio" / f"{name}.arrow"


def shard_source(job: ShardJob) -> dict[str, Any]:
    return {"shard": job.name, "sha256": job.sha256}


@dataclass
class _PreparedView:
    sample: ClipSample
    params: ViewParams
    images: torch.Tensor  # (N, 3, S, S)
    label_pngs: dict[int, bytes]  # frame -> PNG of the label map (labelled frames only)
    object_pngs: dict[int, list[tuple[int, bytes]]]  # frame -> [(fid, PNG)]


def _prepare(sample: ClipSample, dataset: str, params: ViewParams, size: int) -> _PreparedView:
    frames = []
    try:
        for data in sample.frames:
            image = open_image(data)  # its size checked before it is decoded
            image.load()
            frames.append(image.convert("RGB"))
        truth = decode_ground_truth(sample, dataset)
    except (ValueError, OSError) as err:  # a shard re-sealed around a hostile image
        raise CacheError(f"clip {sample.clip.key}: an image in its shard cannot be used ({err}); re-run "
                         "`auralsam2 ingest` to rewrite the shard") from None
    images = render_frames(frames, params, size)
    label_pngs: dict[int, bytes] = {}
    if truth.labels:
        ts = sorted(truth.labels)
        maps = render_masks([truth.labels[t] for t in ts], params, size).numpy()
        label_pngs = {t: encode_png(m) for t, m in zip(ts, maps, strict=True)}
    object_pngs: dict[int, list[tuple[int, bytes]]] = {}
    for fid, by_frame in sorted(truth.objects.items()):
        ts = sorted(by_frame)
        maps = render_masks([by_frame[t] for t in ts], params, size).numpy()
        for t, m in zip(ts, maps, strict=True):
            object_pngs.setdefault(t, []).append((fid, encode_png(m)))
    return _PreparedView(sample, params, images, label_pngs, object_pngs)


def _views(samples: list[ClipSample], settings: CacheSettings, dataset: str, size: int) -> Iterator[_PreparedView]:
    """Every (clip, view) of the shard, prepared one step ahead in a background thread."""
    work = [(s, view_params(s.clip.key, v, settings.seed))
            for s in samples for v in range(settings.views_for(s.clip.split))]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-prepare") as pool:
        def submit(i: int):
            if i >= len(work):
                return None
            sample, params = work[i]
            return pool.submit(_prepare, sample, dataset, params, size)

        pending = submit(0)
        for i in range(len(work)):
            current = pending.result()
            pending = submit(i + 1)
            yield current


def _feature_batch(schema: pa.Schema, prepared: _PreparedView, t: int, levels: list[torch.Tensor],
                   dtype: str) -> pa.RecordBatch:
    clip = prepared.sample.clip
    objects = prepared.object_pngs.get(t, [])
    return pa.record_batch([
        pa.array([clip.key], pa.string()),
        pa.array([t], pa.int32()),
        pa.array([prepared.params.view], pa.int32()),
        *[tensor_column(level[t:t + 1], dtype) for level in levels],
        pa.array([t in clip.labelled_frames], pa.bool_()),
        pa.array([prepared.label_pngs.get(t)], pa.binary()),
        pa.array([[fid for fid, _ in objects]], pa.list_(pa.int32())),
        pa.array([[png for _, png in objects]], pa.list_(pa.binary())),
        pa.array([prepared.params.to_json()], pa.string()),
    ], schema=schema)


def _clip_row(clip: Clip, job: ShardJob, settings_views: int, audio_batch_index: int, out_rel: str,
              audio_rel: str) -> dict[str, Any]:
    return {
        "clip": clip.key, "dataset": clip.dataset, "subset": clip.subset, "split": clip.split,
        "category": clip.category, "n_frames": clip.n_frames, "labelled_frames": list(clip.labelled_frames),
        "n_expressions": len(clip.expressions), "views": settings_views, "shard": job.name,
        "features_file": out_rel, "audio_file": audio_rel, "audio_batch": audio_batch_index,
        "record": json.dumps(clip.to_json(), sort_keys=True),
    }


def _result_from_files(job: ShardJob, features: CacheFile, audio: CacheFile, out: Path,
                       started: float) -> ShardCacheResult:
    """Index and clip rows of an already complete shard, read from its files (small columns only)."""
    rel_f, rel_a = _rel(features.path, out), _rel(audio.path, out)
    records = [Clip.from_json(r) for r in features.source["clips"]]
    audio_batches = {}
    for i in range(audio.num_batches):
        audio_batches[audio.reader.get_batch(i).column("clip")[0].as_py()] = i
    splits = {c.key: c.split for c in records}
    index_rows = []
    for i in range(features.num_batches):
        batch = features.reader.get_batch(i)
        key = batch.column("clip")[0].as_py()
        index_rows.append({
            "clip": key, "frame": batch.column("frame")[0].as_py(), "view": batch.column("view")[0].as_py(),
            "split": splits[key], "labelled": batch.column("labelled")[0].as_py(), "file": rel_f, "batch": i,
            "checksum": features.checksums[i],
        })
    views = {}
    for row in index_rows:
        views[row["clip"]] = max(views.get(row["clip"], 0), row["view"] + 1)
    clip_rows = [_clip_row(c, job, views.get(c.key, 0), audio_batches.get(c.key, -1), rel_f, rel_a) for c in records]
    expressions = [ExpressionText(e.uid, c.key, e.text) for c in records for e in c.expressions]
    return ShardCacheResult(job.name, rel_f, rel_a, features.num_batches, 0, True, time.perf_counter() - started,
                            index_rows, clip_rows, expressions)


def _rel(path: Path, out: Path) -> str:
    return str(Path(path).relative_to(out))


def existing_shard(job: ShardJob, fingerprint: dict[str, Any], out: Path,
                   recheck: bool = True) -> tuple[CacheFile, CacheFile] | None:
    """The shard's files when both exist and verify for this fingerprint and input shard, else None."""
    f_path, a_path = features_path(out, job.name), audio_path(out, job.name)
    if not (f_path.is_file() and a_path.is_file()):
        return None
    opened = []
    for path, kind in ((f_path, "features"), (a_path, "audio")):
        problems, handle = verify_file(path, kind=kind, fingerprint=fingerprint, source=shard_source(job),
                                       checksums=recheck)
        if problems or handle is None:
            return None
        opened.append(handle)
    return opened[0], opened[1]


def build_shard(job: ShardJob, settings: CacheSettings, fingerprint: dict[str, Any], out: str | Path,
                created: str, *, device: str | torch.device | None = None, recheck: bool = True) -> ShardCacheResult:
    """Cache one shard (or skip it when its files already verify). Plain Python, no Prefect.

    `device`: where the encoder runs (default: `settings.device`); its type must match the
    fingerprint's (a CPU-built cache is not completed on a GPU, or the other way round).
    """
    started = time.perf_counter()
    out = Path(out)
    done = existing_shard(job, fingerprint, out, recheck)
    if done is not None:
        return _result_from_files(job, *done, out, started)

    device = resolve_device(str(device) if device is not None else settings.device)
    if compute_mode(device) != fingerprint["encode"]:
        raise CacheError(f"shard {job.name}: this cache is computed as {fingerprint['encode']}, but this worker "
                         f"would encode on {device} ({compute_mode(device)}); run it where that device exists "
                         "or rebuild the cache (--rebuild)")
    if device.type == "cpu":
        torch.set_num_threads(settings.threads)  # results depend on the thread count: keep it fixed
    model = load_model(settings, device)
    if encoder_sha256(model) != fingerprint["image_encoder_sha256"]:
        raise CacheError(f"shard {job.name}: this worker loaded a SAM2 image encoder whose weights differ from the "
                         "cache fingerprint's; give every worker the same --checkpoint file")
    size = int(model.image_size)
    shapes = level_shapes(model)
    dtype = settings.dtype

    samples = list(iter_shard(job.tar, verify=True))
    rows = sum(s.clip.n_frames * settings.views_for(s.clip.split) for s in samples)
    source = {**shard_source(job), "clips": [s.clip.to_json() for s in samples]}
    schema = feature_schema(dtype, shapes)
    f_path, a_path = features_path(out, job.name), audio_path(out, job.name)
    rel_f, rel_a = _rel(f_path, out), _rel(a_path, out)

    index_rows: list[dict[str, Any]] = []
    pending: list[_PreparedView] = []

    def encode_pending(writer: ArrowFileWriter) -> None:
        # Whole (clip, view)s are grouped until they hold >= batch_size frames, then run in one forward.
        images = torch.cat([p.images for p in pending])
        compact = encode_frames_compact(model, images, dtype=DTYPES[dtype], chunk_size=images.shape[0])
        levels = [level.cpu() for level in compact.levels]
        start = 0
        stop.check()  # between forwards: Ctrl-C / SIGTERM reach a shard in a worker thread
        for prepared in pending:
            clip = prepared.sample.clip
            mine = [level[start:start + clip.n_frames] for level in levels]
            start += clip.n_frames
            for t in range(clip.n_frames):
                writer.write(_feature_batch(schema, prepared, t, mine, dtype))
                index_rows.append({"clip": clip.key, "frame": t, "view": prepared.params.view, "split": clip.split,
                                   "labelled": t in clip.labelled_frames, "file": rel_f,
                                   "batch": len(index_rows), "checksum": ""})
        pending.clear()

    with ArrowFileWriter(f_path, schema, file_metadata("features", fingerprint, created, rows, source), rows,
                         settings.compression) as writer:
        for prepared in _views(samples, settings, job.dataset, size):
            pending.append(prepared)
            if sum(p.images.shape[0] for p in pending) >= settings.batch_size:
                encode_pending(writer)
        if pending:
            encode_pending(writer)
        checksums = writer.close()
    for row, checksum in zip(index_rows, checksums, strict=True):
        row["checksum"] = checksum

    audio_batches, audio_index = [], {}
    for s in samples:
        if s.audio:
            examples, padded = clip_log_mel(s.audio, s.clip.n_frames, where=f"shard {job.name}, clip {s.clip.key}")
            audio_index[s.clip.key] = len(audio_batches)
            audio_batches.append(audio_batch(s.clip.key, examples, padded))
    with ArrowFileWriter(a_path, audio_schema(), file_metadata("audio", fingerprint, created, len(audio_batches),
                                                               shard_source(job)),
                         len(audio_batches), settings.compression) as writer:
        for batch in audio_batches:
            writer.write(batch)
        writer.close()

    clip_rows = [_clip_row(s.clip, job, settings.views_for(s.clip.split), audio_index.get(s.clip.key, -1), rel_f, rel_a)
                 for s in samples]
    expressions = [ExpressionText(e.uid, s.clip.key, e.text) for s in samples for e in s.clip.expressions]
    return ShardCacheResult(job.name, rel_f, rel_a, rows, rows, False, time.perf_counter() - started,
                            index_rows, clip_rows, expressions)


def level_shapes(model: torch.nn.Module) -> list[tuple[int, int, int]]:
    """(C_k, H_k, W_k) of the stored compact levels of `model` at its input size."""
    size = int(model.image_size)
    return [(lv.channels, size // lv.stride, size // lv.stride) for lv in compact_layout(model)]


__all__ = ["ShardCacheResult", "ShardJob", "audio_path", "build_shard", "existing_shard", "features_path",
           "level_shapes", "shard_source"]
