"""The cache flow: WebDataset shards -> frozen SAM2 (+ text encoder) -> Arrow feature cache.

One Prefect task per ingest shard (never per frame), run on Prefect's thread pool by default, or on
a Dask cluster through prefect-dask (`--workers N`: a local cluster of N single-threaded worker
processes; `--dask ADDRESS`: an existing scheduler). With GPUs, each Dask worker pins itself to one
GPU (worker name modulo the visible GPU count; a worker started with one visible GPU uses it).
Tasks pass paths and small index rows, never tensors. The work itself is `feature_cache` (plain
Python): `plan_cache` -> `build_shard` per shard -> `build_text` -> `finalize_cache`.

Determinism: on CPU every shard task runs torch with the same fixed thread count (`--threads`,
default 1), because some CPU kernels give slightly different sums with other thread counts; with
that, a cache built by local threads and one built by Dask workers are byte-identical (tested).

Importing this module is cheap (the `auralsam2` command line imports it for `--help`): Prefect and
torch are imported when the flow is first used (`cache_flow`, `cache_shard_task` are built lazily).
"""

from __future__ import annotations

import os
import time
import zlib
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from flows.console import fail

_PREFECT: dict[str, Any] = {}


# ------------------------------------------------------------------ tasks and flow (built lazily)


def worker_device(requested: str) -> str:
    """The device a shard task encodes on: `requested`, or for "auto" the GPU of this Dask worker."""
    import torch

    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return "cuda:0"
    index = name if isinstance(name, int) else int(name) if str(name).isdigit() else zlib.crc32(str(name).encode())
    return f"cuda:{index % count}"


def _cache_shard(job, settings, fingerprint, out, created, recheck):
    """One shard: encode and write its features and log-mel files (or skip them when complete)."""
    from feature_cache.writer import build_shard

    return build_shard(job, settings, fingerprint, out, created, device=worker_device(settings.device),
                       recheck=recheck)


def _cache_text(plan, expressions, recheck):
    """The dataset's text-embedding file (Ref-AVS), when a text encoder is configured."""
    from feature_cache.build import build_text

    return build_text(plan, expressions, recheck=recheck)


def _cache_flow(ingest: str, out: str, settings: dict[str, Any], rebuild: bool = False, created: str | None = None,
                recheck: bool = True, progress: bool = True):
    """`settings`: a `CacheSettings`'s fields as JSON (flow parameters are plain, as a deployment's are)."""
    from prefect.futures import as_completed
    from tqdm.auto import tqdm

    from feature_cache.build import finalize_cache, plan_cache
    from feature_cache.schema import CacheSettings

    settings = CacheSettings.model_validate(settings)

    started = time.perf_counter()
    plan = plan_cache(ingest, out, settings, rebuild=rebuild, created=created)
    shard_task, text_task = _PREFECT["cache_shard_task"], _PREFECT["cache_text_task"]
    futures = {shard_task.submit(job, plan.settings, plan.fingerprint, plan.out, plan.created, recheck): job
               for job in plan.jobs}
    results = []
    encoded = 0
    with tqdm(total=sum(j.rows for j in plan.jobs), unit="frame", desc=f"cache {plan.dataset}",
              disable=not progress, leave=False) as bar:
        for future in as_completed(list(futures)):
            result = future.result()
            results.append(result)
            encoded += result.frames_encoded
            bar.update(futures[future].rows)
            bar.set_postfix(shards=f"{len(results)}/{len(futures)}",
                            encoded_fps=f"{encoded / max(time.perf_counter() - started, 1e-9):.1f}")
    text = text_task.submit(plan, [e for r in results for e in r.expressions], recheck).result()
    return finalize_cache(plan, results, text, time.perf_counter() - started)


def _build_prefect() -> dict[str, Any]:
    if not _PREFECT:
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE

        from flows.runners import retry_on_io

        _PREFECT["cache_shard_task"] = task(name="cache-shard", retries=2, retry_delay_seconds=[1, 5],
                                            retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)(_cache_shard)
        _PREFECT["cache_text_task"] = task(name="cache-text", retries=2, retry_delay_seconds=[1, 5],
                                           retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)(_cache_text)
        _PREFECT["cache_flow"] = flow(name="cache")(_cache_flow)
    return _PREFECT


def __getattr__(name: str) -> Any:
    """`from flows.cache import cache_flow` (or `cache_shard_task`, `cache_text_task`) builds them on demand."""
    if name in ("cache_flow", "cache_shard_task", "cache_text_task"):
        return _build_prefect()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_cache(ingest: str | Path, out: str | Path, settings=None, *, workers: int | None = None,
              dask_address: str | None = None, rebuild: bool = False, created: str | None = None,
              recheck: bool = True, progress: bool = True, **settings_fields: Any):
    """Run the cache flow with the requested task runner; returns `feature_cache.build.CacheSummary`.

    `settings`: a `feature_cache.schema.CacheSettings`, or give its fields as keywords
    (`sam2_config="tiny", views=2, ...`). `rebuild`: rebuild a cache folder built with other
    settings instead of refusing it. `created`: the creation time written into the files (default
    now, or $SOURCE_DATE_EPOCH), pinned for reproducible builds.
    """
    import torch

    from feature_cache.schema import CacheSettings
    from flows.runners import task_runner, workers_share_the_api

    if settings is None:
        settings = CacheSettings(**settings_fields)
    elif settings_fields:
        settings = settings.model_copy(update=settings_fields)
    # Prefect creates its home without parents and its ephemeral server then cannot open its database
    # (it times out instead of failing): make sure the folder exists on a fresh data folder.
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    from auralsam2.utils.locks import folder_lock
    from feature_cache.build import check_cache_folder

    check_cache_folder(out)  # before the lock file is made there
    flow_ = _build_prefect()["cache_flow"]
    threads = torch.get_num_threads()
    try:
        with folder_lock(Path(out).expanduser(), "feature-cache build"), \
                workers_share_the_api(bool(workers) and not dask_address):
            return flow_.with_options(task_runner=task_runner(workers, dask_address))(
                ingest=str(ingest), out=str(out), settings=settings.model_dump(mode="json"), rebuild=rebuild,
                created=created,
                recheck=recheck, progress=progress)
    finally:
        torch.set_num_threads(threads)


def build_cache(*args: Any, **kwargs: Any):
    """The same build without Prefect, in this process (`feature_cache.build.build_cache`)."""
    from feature_cache.build import build_cache as build

    return build(*args, **kwargs)


# ------------------------------------------------------------------ command line


class StorageDtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"


class Codec(StrEnum):
    none = "none"
    lz4 = "lz4"
    zstd = "zstd"


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="Feature cache: build it (options below), `verify` it, or report its `size`.")


@app.callback(invoke_without_command=True)
def cache(
    ctx: typer.Context,
    shards: Path = typer.Option(None, "--shards", help="Ingest folder (the --out of `auralsam2 ingest`)."),
    out: Path = typer.Option(None, "--out", help="Cache folder to create or complete."),
    sam2_config: str = typer.Option(None, "--sam2-config", help="SAM2 config name or alias (tiny = tests)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="SAM2 .pt checkpoint (default: random weights)."),
    image_size: int = typer.Option(None, "--image-size", help="Model input size in px (default: the config's)."),
    dtype: StorageDtype = typer.Option(StorageDtype.bf16, "--dtype", help="Storage dtype of the pyramid."),
    views: int = typer.Option(1, "--views", min=1, help="Views per training clip (view 0 + K-1 augmentations)."),
    augment_splits: str = typer.Option("train", "--augment-splits", help="Comma-separated splits that get views."),
    seed: int = typer.Option(0, "--seed", help="Seed of the augmentations (and of random SAM2 weights)."),
    text_encoder: str = typer.Option(None, "--text-encoder", help="Text encoder dir or cached HF id (Ref-AVS)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Frames per encoder forward."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads per shard task."),
    compression: Codec = typer.Option(Codec.none, "--compression", help="Arrow buffer codec (none keeps zero-copy)."),
    workers: int = typer.Option(None, "--workers", help="Run shard tasks on a local Dask cluster of N workers."),
    dask: str = typer.Option(None, "--dask", help="Run shard tasks on an existing Dask scheduler (tcp://host:8786)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild a cache folder built with other settings."),
    quick_resume: bool = typer.Option(False, "--quick-resume",
                                      help="Skip finished shards after a metadata check (no checksum pass)."),
) -> None:
    """Build (or resume) a feature cache: one Prefect task per shard."""
    if ctx.invoked_subcommand is not None:
        return
    if shards is None or out is None or sam2_config is None:
        typer.echo(ctx.get_help())
        fail("`auralsam2 cache` needs --shards INGEST_DIR, --out CACHE_DIR and --sam2-config NAME "
              "(or a subcommand: verify, size)")
    from feature_cache.schema import CacheError, CacheSettings, StaleCacheError

    try:
        settings = CacheSettings(
            sam2_config=sam2_config, checkpoint=str(checkpoint) if checkpoint else None, image_size=image_size,
            dtype=dtype.value, views=views, augment_splits=tuple(s for s in augment_splits.split(",") if s),
            seed=seed, text_encoder=text_encoder, batch_size=batch_size, device=device, threads=threads,
            compression=compression.value)
        summary = run_cache(shards, out, settings, workers=workers, dask_address=dask, rebuild=rebuild,
                            recheck=not quick_resume)
    except (StaleCacheError, CacheError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo("\n".join(summary.lines()))


@app.command("verify")
def verify(
    cache_dir: Path = typer.Argument(..., help="The cache folder."),
    shards: Path = typer.Option(None, "--shards", help="Ingest folder to check against (default: the recorded one)."),
) -> None:
    """Re-check every checksum and the index against the manifest; exit 1 on any problem."""
    from feature_cache.verify import verify_cache

    report = verify_cache(cache_dir, shards)
    typer.echo("\n".join(report.lines()))
    if not report.ok:
        raise typer.Exit(1)


@app.command("size")
def size(
    cache_dir: Path = typer.Argument(None, help="A built cache folder (omit with --predict)."),
    predict: bool = typer.Option(False, "--predict", help="Predict the size of a cache before building it."),
    sam2_config: str = typer.Option("sam2_hiera_b+", "--sam2-config", help="SAM2 config (for --predict)."),
    image_size: int = typer.Option(None, "--image-size", help="Input size in px (default: the config's)."),
    dtype: StorageDtype = typer.Option(StorageDtype.bf16, "--dtype"),
    views: int = typer.Option(1, "--views", min=1, help="Views per training clip."),
    frames: int = typer.Option(None, "--frames", help="Number of frames (for --predict)."),
    dataset: str = typer.Option(None, "--dataset", help="Known dataset: v1s, v1m, v2, avss, refavs (s4, ms3)."),
) -> None:
    """Bytes per frame and per split of a cache, or (--predict) of one not yet built."""
    from feature_cache.schema import CacheError
    from feature_cache.size import cache_size, predict_size

    try:
        if predict or cache_dir is None:
            report = predict_size(sam2_config, image_size=image_size, dtype=dtype.value, frames=frames,
                                  dataset=dataset, views=views)
        else:
            report = cache_size(cache_dir)
    except (CacheError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo("\n".join(report.lines()))
