"""The ingest flow: raw dataset tree -> checked Clip records -> WebDataset shards + manifest + report."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from tqdm.auto import tqdm

from data_specs.ingest import PALETTE_MASKS, IngestSummary, finalize, prepare
from data_specs.shards import ShardPlan, ShardResult, write_shard
from flows.runners import retry_on_io, task_runner, workers_share_the_api


@task(name="write-shard", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_io,
      cache_policy=NO_CACHE)
def write_shard_task(plan: ShardPlan, shards_dir: str, strict: bool, palette_masks: bool) -> ShardResult:
    """One shard: read its clips' bytes, check them, write tar + sidecar (or skip if complete)."""
    return write_shard(plan, Path(shards_dir), strict=strict, palette_masks=palette_masks)


@flow(name="ingest")
def ingest_flow(dataset: str, root: str, out: str, subset: str = "all", strict: bool = False,
                clips_per_shard: int = 64, progress: bool = True, force: bool = False,
                follow_symlinks: bool = False) -> IngestSummary:
    plan = prepare(dataset, root, out, subset=subset, strict=strict, clips_per_shard=clips_per_shard, force=force,
                   follow_symlinks=follow_symlinks)
    shards_dir = str(Path(plan.out) / "shards")
    futures = [write_shard_task.submit(p, shards_dir, strict, dataset in PALETTE_MASKS) for p in plan.shards]
    results: list[ShardResult] = []
    with tqdm(total=sum(len(p.clips) for p in plan.shards), unit="clip", desc=f"ingest {dataset}",
              disable=not progress, leave=False) as bar:
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            bar.update(result.n_samples + len(result.quarantined))
    return finalize(plan, results)


def run_ingest(dataset: str, root: str | Path, out: str | Path, subset: str = "all", strict: bool = False,
               clips_per_shard: int = 64, workers: int | None = None, dask_address: str | None = None,
               progress: bool = True, force: bool = False, follow_symlinks: bool = False) -> IngestSummary:
    """Run the ingest flow with the requested task runner (threads, local Dask, or a Dask cluster).
    The output folder is locked for the whole ingest; another raw root's ingest there is replaced
    only with `force`."""
    from auralsam2.utils.locks import folder_lock
    from data_specs.ingest import check_ingest_folder

    check_ingest_folder(out)  # before the lock file is made there
    runner = task_runner(workers, dask_address)
    with folder_lock(Path(out).expanduser(), "ingest"), workers_share_the_api(bool(workers) and not dask_address):
        return ingest_flow.with_options(task_runner=runner)(
            dataset=dataset, root=str(root), out=str(out), subset=subset, strict=strict,
            clips_per_shard=clips_per_shard, progress=progress, force=force, follow_symlinks=follow_symlinks,
        )
