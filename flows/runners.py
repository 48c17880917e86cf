"""Task runners: threads on this machine by default, a Dask cluster when asked."""

from __future__ import annotations

from typing import Any


def task_runner(workers: int | None = None, dask_address: str | None = None) -> Any:
    """The Prefect task runner for shard-level tasks.

    - `dask_address` ("tcp://host:8786"): run tasks on an existing Dask cluster (prefect-dask).
    - `workers` N: a local Dask cluster of N single-threaded worker processes.
    - neither: Prefect's thread pool in this process.
    """
    if dask_address and workers:
        raise ValueError("give either --workers or --dask, not both")
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if workers:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=2)
