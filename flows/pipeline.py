"""The whole pipeline as one Prefect flow: ingest -> cache -> train -> evaluate (-> ablate).

    auralsam2 run CONFIG [--raw RAW_DATASET_DIR] [--ablate GRID [--row-workers N]] [--set key=value ...]

With `--row-workers N` > 1 the grid runs right after the cache, N rows at a time, and the train step
reuses its `full` row (this config) instead of training it alone first.
    auralsam2 serve CONFIG --cron "0 3 * * *" [...]     # against a Prefect server

Each step is one Prefect task whose cache key is the hash of its inputs (Prefect's
`INPUTS + TASK_SOURCE` policy, results persisted under the data folder): the raw tree's
signature for ingest, the ingest manifest's sha256 and the cache settings for the cache, the
config hash and the cache fingerprint for training, the checkpoint's sha256 for evaluation. Tasks
return paths and hashes, never tensors. A step whose cached result points at outputs that no longer
exist (or no longer match) is re-run (`refresh_cache`), and every step is idempotent on its own
(finished shards, cache files and runs are recognised and reused), so re-running the pipeline
skips finished work and never duplicates it. I/O failures are retried.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from auralsam2.config import ExperimentConfig, config_from_mapping, config_to_yaml, load_config, resolve_path
from auralsam2.paths import data_home
from auralsam2.utils.hashing import sha256_file
from flows.ablate import EVALUATION_HEADLINE, SummarySelection, config_hash, finished_run
from flows.runners import retry_on_io

STEP_CACHE = INPUTS + TASK_SOURCE


def tree_signature(root: str | os.PathLike) -> str:
    """A cheap fingerprint of a raw dataset tree: every file's relative path, size and mtime."""
    root = Path(root)
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_settings(cfg: ExperimentConfig):
    """The feature-cache settings an experiment config implies."""
    from feature_cache.schema import CacheSettings

    checkpoint = cfg.model.sam2.checkpoint
    return CacheSettings(
        sam2_config=cfg.model.sam2.config,
        checkpoint=str(resolve_path(checkpoint)) if checkpoint else None,  # model files: cwd, then project root
        image_size=cfg.model.sam2.image_size,
        views=cfg.data.cache_views,
        text_encoder=cfg.model.text_encoder_source if cfg.data.dataset == "refavs" else None,
    )


# ------------------------------------------------------------------------------ steps


@task(name="ingest-step", cache_policy=STEP_CACHE, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_on_io)
def ingest_step(dataset: str, raw: str, out: str, subset: str, raw_signature: str,
                workers: int | None = None, dask_address: str | None = None) -> dict[str, Any]:
    """Raw tree -> shards + manifest (reuses finished shards). Returns the manifest path and sha256."""
    from flows.ingest import run_ingest

    summary = run_ingest(dataset, raw, out, subset=subset, workers=workers, dask_address=dask_address,
                         progress=False)
    manifest = Path(summary.manifest)
    return {"out": out, "manifest": str(manifest), "manifest_sha256": sha256_file(manifest),
            "clips_kept": summary.clips_kept, "clips_quarantined": summary.clips_quarantined}


@task(name="cache-step", cache_policy=STEP_CACHE, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_on_io)
def cache_step(ingest: str, manifest_sha256: str, out: str, settings_json: str,
               workers: int | None = None, dask_address: str | None = None) -> dict[str, Any]:
    """Shards -> Arrow feature cache (reuses verified shard files). Returns the cache fingerprint."""
    from feature_cache.schema import CacheSettings
    from flows.cache import run_cache

    settings = CacheSettings.model_validate_json(settings_json)
    run_cache(ingest, out, settings, workers=workers, dask_address=dask_address, progress=False)
    from feature_cache.build import cache_identity, read_cache_json

    info = read_cache_json(out) or {}
    identity = cache_identity(info, manifest_sha256) if info else sha256_file(Path(out) / "cache.json")
    return {"cache": out, "fingerprint": identity, "manifest_sha256": manifest_sha256}


@task(name="train-step", cache_policy=STEP_CACHE, persist_result=True)
def train_step(config_yaml: str, cache_fingerprint: str) -> dict[str, Any]:
    """Config + cache -> trained run (reuses a finished run of the same config). Returns the best
    checkpoint's path and sha256."""
    from flows.train import run_dir_for, train_or_continue

    cfg = config_from_mapping(yaml.safe_load(config_yaml), "pipeline config")
    summary = finished_run(cfg) or train_or_continue(cfg)
    best = summary["best_checkpoint"]
    return {"run_dir": str(run_dir_for(cfg)), "run_id": summary.get("run_id"), "best_checkpoint": best,
            "checkpoint_sha256": sha256_file(Path(best)), "cache_fingerprint": cache_fingerprint}


@task(name="evaluate-step", cache_policy=STEP_CACHE, persist_result=True)
def evaluate_step(checkpoint: str, checkpoint_sha256: str, config_yaml: str, run_id: str | None,
                  splits: list[str]) -> dict[str, Any]:
    """Checkpoint -> metrics Parquet + MLflow metrics for each split. Returns the headline numbers."""
    from flows.evaluate import evaluate_split

    cfg = config_from_mapping(yaml.safe_load(config_yaml), "pipeline config")
    run_id = run_id or f"local-{cfg.run_name}"
    results = {split: evaluate_split(checkpoint, cfg, split, run_id, tracking=True) for split in splits}
    return {"run_id": run_id, "checkpoint_sha256": checkpoint_sha256,
            "splits": {s: {k: r[k] for k in EVALUATION_HEADLINE} for s, r in results.items()}}


def _row_evaluation(ablation: dict[str, Any], trained: dict[str, Any], splits: list[str]) -> dict[str, Any] | None:
    """The grid's evaluation of the pipeline's own run, as the evaluate step reports it: the row that
    trained it (same MLflow run, same checkpoint) evaluated every split of `splits` with this config
    (`full` has no overrides), into the same run's Parquet and metrics. None when no row did."""
    for row in ablation["results"]:
        done = row.get("evaluated", {})
        if (row["run_id"] == trained["run_id"] and row["checkpoint"] == trained["best_checkpoint"]
                and set(splits) <= set(done)):
            return {"run_id": row["run_id"], "checkpoint_sha256": trained["checkpoint_sha256"],
                    "splits": {s: done[s] for s in splits}, "reused_from_row": row["row"]}
    return None


def _run(step, outputs_ok: bool, **kwargs):
    """Call a cached step; when its outputs are gone, refresh the cache entry instead of trusting it."""
    return (step if outputs_ok else step.with_options(refresh_cache=True))(**kwargs)


# ------------------------------------------------------------------------------ the flow


@flow(name="pipeline")
def pipeline_flow(config_yaml: str, raw: str | None = None, subset: str = "all", ablate_grid: str | None = None,
                  selection: dict[str, Any] | None = None, workers: int | None = None,
                  dask_address: str | None = None, row_workers: int = 1) -> dict[str, Any]:
    """Run (or skip, when up to date) every step for one experiment config. Parameters are plain JSON
    (a deployment's runs get them so): `selection` is a `SummarySelection`'s fields (`as_parameter`).
    A run that fails ends Failed with the line the command line would print as its state message."""
    from prefect.runtime import deployment
    from prefect.states import Failed

    from auralsam2.utils import stop
    from flows.console import error_line

    try:
        if deployment.id is not None:  # a scheduled or triggered run checks first, as `auralsam2 run` does
            from flows.ablate import row_configs
            from flows.preflight import preflight

            cfg = config_from_mapping(yaml.safe_load(config_yaml), "pipeline config")
            preflight(cfg, "serve", raw=raw, rows=row_configs(cfg, ablate_grid, None) if ablate_grid else ())
        return _pipeline(config_yaml, raw, subset, ablate_grid, selection, workers, dask_address, row_workers)
    except Exception as exc:
        if stop.requested():
            raise
        # the local caller gets `exc` raised as before; a deployment's run says why, in one line
        return Failed(message=" ".join(line.strip() for line in error_line(exc).splitlines()), data=exc)


def _pipeline(config_yaml: str, raw: str | None, subset: str, ablate_grid: str | None,
              selection: dict[str, Any] | None, workers: int | None, dask_address: str | None,
              row_workers: int) -> dict[str, Any]:
    from feature_cache.build import cache_is_current
    from flows.ablate import ablate_flow

    cfg = config_from_mapping(yaml.safe_load(config_yaml), "pipeline config")
    home = data_home()
    timings: dict[str, float] = {}
    ingest_dir = resolve_path(cfg.data.ingest, home)
    cache_dir = resolve_path(cfg.data.cache, home)

    t = time.perf_counter()
    if raw is not None:
        signature = tree_signature(raw)
        ingest = _run(ingest_step, (ingest_dir / "manifest.parquet").is_file(), dataset=cfg.data.dataset, raw=str(raw),
                      out=str(ingest_dir), subset=subset, raw_signature=signature, workers=workers,
                      dask_address=dask_address)
    else:
        if not (ingest_dir / "manifest.parquet").is_file():
            raise FileNotFoundError(f"{ingest_dir} has no manifest.parquet: give --raw RAW_DATASET_DIR to ingest it")
        ingest = {"out": str(ingest_dir), "manifest_sha256": sha256_file(ingest_dir / "manifest.parquet")}
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    settings = cache_settings(cfg)
    cached = _run(cache_step, cache_is_current(ingest_dir, cache_dir, settings), ingest=str(ingest_dir),
                  manifest_sha256=ingest["manifest_sha256"], out=str(cache_dir), settings_json=settings.model_dump_json(),
                  workers=workers, dask_address=dask_address)
    timings["cache"] = time.perf_counter() - t
    # named after the cache is built: the name's hash covers what the run trains on (`config_hash`)
    cfg = cfg.with_run_name(cfg.run_name or f"{cfg.experiment}-{config_hash(cfg)}")

    ablation = None
    # With parallel rows the grid goes first: its `full` row is this config, so it trains beside the
    # other rows and the train step below reuses it, instead of training alone on one core.
    ablate_first = bool(ablate_grid) and row_workers > 1

    def ablate() -> dict[str, Any]:
        t = time.perf_counter()
        out = ablate_flow(config_yaml=config_to_yaml(cfg.model_copy(update={"run_name": None})),
                          grid=ablate_grid, selection=selection, row_workers=row_workers)
        timings["ablate"] = time.perf_counter() - t
        return out

    if ablate_first:
        ablation = ablate()
    t = time.perf_counter()
    trained = _run(train_step, finished_run(cfg) is not None, config_yaml=config_to_yaml(cfg),
                   cache_fingerprint=cached["fingerprint"])
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    splits = list(cfg.eval.splits)
    # the grid's `full` row may have evaluated this very checkpoint already: not twice
    evaluated = _row_evaluation(ablation, trained, splits) if ablation else None
    if evaluated is None:
        metrics_dir = home / "metrics" / "clip_metrics" / f"run_id={trained['run_id'] or f'local-{cfg.run_name}'}"
        evaluated = _run(evaluate_step, metrics_dir.is_dir() and any(metrics_dir.glob("*.parquet")),
                         checkpoint=trained["best_checkpoint"], checkpoint_sha256=trained["checkpoint_sha256"],
                         config_yaml=config_to_yaml(cfg), run_id=trained["run_id"], splits=splits)
    timings["evaluate"] = time.perf_counter() - t

    if ablate_grid and not ablate_first:
        ablation = ablate()
    return {"experiment": cfg.experiment, "run_name": cfg.run_name, "ingest": ingest, "cache": cached,
            "train": trained, "evaluate": evaluated, "ablation": ablation, "timings": timings}


def run_pipeline(config_path: str | os.PathLike, overrides: Sequence[str] = (), *, raw: str | os.PathLike | None = None,
                 subset: str = "all", ablate_grid: str | None = None, selection: SummarySelection | None = None,
                 workers: int | None = None, dask_address: str | None = None, row_workers: int = 1) -> dict[str, Any]:
    from flows.ablate import row_configs
    from flows.preflight import preflight

    cfg = load_config(config_path, overrides)
    preflight(cfg, "run", raw=raw, rows=row_configs(cfg, ablate_grid, None) if ablate_grid else ())
    return pipeline_flow(config_yaml=config_to_yaml(cfg), raw=str(Path(raw).resolve()) if raw else None,
                         subset=subset, ablate_grid=ablate_grid,
                         selection=selection.as_parameter() if selection else None, workers=workers,
                         dask_address=dask_address, row_workers=row_workers)


def _check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ValueError(f'--cron {cron!r} is not a cron schedule: five fields, minute hour day-of-month month '
                         'day-of-week, e.g. "0 3 * * *" (every day at 03:00) or "*/30 * * * *"') from None


# what a firing does while the deployment's previous run still goes (Prefect's deployment concurrency
# limit of 1 and its collision strategy): "cancel" ends it Cancelled at once, "wait" queues it
OVERLAP_STRATEGIES = {"cancel": "CANCEL_NEW", "wait": "ENQUEUE"}


def serve_pipeline(config_path: str | os.PathLike, cron: str, overrides: Sequence[str] = (), *,
                   raw: str | os.PathLike | None = None, ablate_grid: str | None = None,
                   name: str | None = None, overlap: str = "cancel") -> None:
    """Register the pipeline as a scheduled deployment and serve it (blocks; needs a Prefect server:
    `prefect server start --host 127.0.0.1` and PREFECT_API_URL). One run of it at a time: a firing
    while the previous run goes is cancelled (`overlap="cancel"`) or waits for it (`"wait"`)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import PREFECT_API_URL

    if overlap not in OVERLAP_STRATEGIES:
        raise ValueError(f"--overlap {overlap!r}: choose one of {', '.join(OVERLAP_STRATEGIES)}")
    _check_cron(cron)
    if not PREFECT_API_URL.value():
        raise RuntimeError(
            "scheduling needs a Prefect server: run `prefect server start --host 127.0.0.1` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (the ephemeral API cannot run schedules)"
        )
    from flows.ablate import row_configs
    from flows.preflight import preflight

    cfg = load_config(config_path, overrides)
    preflight(cfg, "serve", raw=raw, rows=row_configs(cfg, ablate_grid, None) if ablate_grid else ())
    pipeline_flow.serve(
        name=name or f"{cfg.experiment}-pipeline",
        cron=cron,
        parameters={"config_yaml": config_to_yaml(cfg), "raw": str(Path(raw).resolve()) if raw else None,
                    "ablate_grid": ablate_grid},
        global_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy(OVERLAP_STRATEGIES[overlap])),
        pause_on_shutdown=False,
    )
