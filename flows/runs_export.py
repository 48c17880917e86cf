"""Export the MLflow runs table to `<data>/metrics/runs.parquet` for the DuckDB `runs` view.

DuckDB cannot attach MLflow's SQLite store offline (the sqlite extension is a download), so the
runs are read through the MLflow client and written as Parquet: one row per run, with flattened
`params.*` and `metrics.*` columns.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from auralsam2.paths import mlflow_tracking_uri
from auralsam2.utils.files import atomic_write_parquet
from dashboards.schema import metrics_dir


def export_runs(data_home: str | Path, tracking_uri: str | None = None) -> Path:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri or mlflow_tracking_uri())
    frame = mlflow.search_runs(search_all_experiments=True, output_format="pandas")
    experiments = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    keep = [c for c in frame.columns if c.startswith(("params.", "metrics."))]
    rows = {
        "run_id": frame["run_id"].astype(str).tolist() if len(frame) else [],
        "experiment": [experiments.get(e, e) for e in frame["experiment_id"]] if len(frame) else [],
        "run_name": _col(frame, "tags.mlflow.runName"),
        "parent_run_id": _col(frame, "tags.mlflow.parentRunId"),
        "status": _col(frame, "status"),
    }
    table = pa.table({
        **{k: pa.array(v, pa.string()) for k, v in rows.items()},
        "start_time": pa.array(_times(frame, "start_time"), pa.timestamp("ms")),
        "end_time": pa.array(_times(frame, "end_time"), pa.timestamp("ms")),
        **{c: _values(frame[c].tolist(), c.startswith("metrics.")) for c in keep},
    })
    return atomic_write_parquet(metrics_dir(data_home) / "runs.parquet", table)


def _missing(v) -> bool:
    return v is None or v != v  # None or NaN (pandas fills absent params/metrics with NaN)


def _values(values: list, numeric: bool) -> pa.Array:
    if numeric:
        return pa.array([None if _missing(v) else float(v) for v in values], pa.float64())
    return pa.array([None if _missing(v) else str(v) for v in values], pa.string())


def _times(frame, name: str) -> list:
    if name not in frame.columns:
        return [None] * len(frame)
    return [None if _missing(v) else v.to_pydatetime().replace(tzinfo=None) for v in frame[name]]


def _col(frame, name: str) -> list[str]:
    if name not in frame.columns:
        return [""] * len(frame)
    return ["" if _missing(v) else str(v) for v in frame[name]]
