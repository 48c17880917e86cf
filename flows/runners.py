"""Task runners: threads on this machine by default, a Dask cluster when asked."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def workers_share_the_api(local_cluster: bool) -> Iterator[None]:
    """Point the workers of a local Dask cluster at this process's Prefect API.

    Worker processes inherit this process's environment but not its ephemeral Prefect server, so
    without PREFECT_API_URL each worker starts a temporary server of its own (10-15 s each, all on one
    SQLite file). When no API URL is configured, start (or reuse) this process's ephemeral server and
    export its URL for the workers the cluster is about to spawn. Workers of an existing cluster
    (--dask) must be started with PREFECT_API_URL set to a real server by whoever starts them.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if not local_cluster or PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def retry_on_io(task, task_run, state) -> bool:  # noqa: ARG001 (Prefect's retry_condition_fn signature)
    """Retry a task only when it failed with an I/O error (a full disk or a flaky mount is worth
    another try; a bad input or a bug is not)."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False
