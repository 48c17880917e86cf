"""`auralsam2 report [--out DIR]`: the static HTML report of everything in the data folder.

Collects what `dashboards.report` cannot read itself: the runs table and training curves from the
MLflow store, the ingest summaries (`ingest.json`, findings in `ingest_report.parquet`) and the
feature caches' sizes; then renders `DIR/index.html` (default `<data>/report`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["collect_inputs", "refresh_runs", "run_report"]

CURVE_METRICS = ("train/total", "select/J")
# When a grid ran in another setting than the paper's (the synthetic world), the report shows the
# paper's number for the row in this setting, labelled as such: where Tables 3-5 ran (V1m, Hiera-L).
PAPER_REFERENCE = {"avss": ("avss_v1m_hiera_l/sam2_hiera_l", "V1m, Hiera-L"),
                   "refavs": ("refavs_hiera_l/sam2_hiera_l", "Ref-AVS, Hiera-L")}
MAX_CURVE_RUNS = 24  # the most recent training runs get a curve


def _mlflow_store(home: Path) -> bool:
    return os.environ.get("MLFLOW_TRACKING_URI") is not None or (home / "mlflow" / "mlflow.db").is_file()


def refresh_runs(home: Path) -> None:
    """Export MLflow's runs to `runs.parquet` when a store exists (never create an empty one to query).
    A data folder that cannot be written keeps its last export (a warning says so)."""
    if not _mlflow_store(home):
        return
    from dashboards.schema import metrics_dir
    from flows.runs_export import export_runs
    from flows.tracking import client

    client(write=False)  # a damaged or foreign store is one message
    folder = metrics_dir(home)
    writable = folder if folder.is_dir() else home
    if not os.access(writable, os.W_OK):
        print(f"warning: {writable} is read-only: the runs table was not refreshed from MLflow (its last export "
              "is used)", file=sys.stderr)
        return
    export_runs(home)


def _curves(home: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Per training run (newest first, at most MAX_CURVE_RUNS): the metric histories of CURVE_METRICS."""
    if not _mlflow_store(home):
        return {}
    from flows.tracking import client

    c = client(write=False)
    experiments = [e.experiment_id for e in c.search_experiments()]
    if not experiments:
        return {}
    runs = c.search_runs(experiments, filter_string="metrics.`train/total` >= 0", max_results=MAX_CURVE_RUNS,
                         order_by=["attributes.start_time DESC"])
    out = {}
    for run in runs:
        out[run.info.run_id] = {m: _one_point_per_step(c.get_metric_history(run.info.run_id, m)) for m in CURVE_METRICS}
    return out


def _one_point_per_step(history) -> list[tuple[int, float]]:
    """(step, value) sorted by step, the last value logged for each step: a resumed run logs again the
    steps between its checkpoint and the kill (the same values, as resume is exact)."""
    last = {h.step: h.value for h in sorted(history, key=lambda h: h.timestamp)}
    return sorted(last.items())


def _ingests(home: Path) -> list[dict[str, Any]]:
    from data_specs.shards import read_ingest_json, read_ingest_report

    out = []
    for summary in sorted((home / "ingest").glob("**/ingest.json")):
        info = read_ingest_json(summary.parent)
        findings: dict[str, int] = {}
        if (summary.parent / "ingest_report.parquet").is_file():
            for kind in read_ingest_report(summary.parent).column("kind").to_pylist():
                findings[kind] = findings.get(kind, 0) + 1
        out.append({"name": str(summary.parent.relative_to(home)), "dataset": info.get("dataset"),
                    "clips_kept": info.get("clips_kept"), "clips_quarantined": info.get("clips_quarantined"),
                    "shards": info.get("shards"), "bytes": info.get("bytes"), "findings": findings})
    return out


def _caches(home: Path) -> list[dict[str, Any]]:
    from feature_cache.build import read_cache_json
    from feature_cache.size import cache_size

    out = []
    for marker in sorted((home / "cache").glob("**/cache.json")):
        info = read_cache_json(marker.parent)
        if not info or info.get("status") != "complete":
            continue
        size = cache_size(marker.parent)
        out.append({"name": str(marker.parent.relative_to(home)), "dataset": info.get("dataset"),
                    "sam2_config": size.sam2_config, "image_size": size.image_size, "dtype": size.dtype,
                    "records": size.records, "bytes_per_record": size.bytes_per_record,
                    "features_bytes": size.features_bytes, "audio_bytes": size.audio_bytes,
                    "text_bytes": size.text_bytes})
    return out


def _paper_reference() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(dataset, row, split) -> the paper's {J, F, S, table} for that row in PAPER_REFERENCE's setting
    (split "*" for AVSBench, whose entries hold one test number)."""
    from flows.ablate import load_grid

    out = {}
    for row in load_grid("paper"):
        for dataset, (key, setting) in PAPER_REFERENCE.items():
            entry = row.paper.get(key)
            if not entry:
                continue
            per_split = {k: v for k, v in entry.items() if isinstance(v, dict)} or {"*": entry}
            for split, values in per_split.items():
                out[(dataset, row.name, split)] = {**values, "table": f"{values.get('table', row.table)} · {setting}"}
    return out


def collect_inputs(home: Path):
    """`dashboards.report.ReportInputs` for the data folder `home` (refreshes the runs table first)."""
    from dashboards.report import ReportInputs
    from flows.evaluate import paper_prompt_numbers

    refresh_runs(home)
    return ReportInputs(data_home=home, curves=_curves(home), ingests=_ingests(home), caches=_caches(home),
                        paper_prompts=paper_prompt_numbers(), paper_reference=_paper_reference())


def run_report(out: str | os.PathLike | None = None, home: Path | None = None) -> Path:
    """Write the report; returns the path of its index.html."""
    from auralsam2.paths import data_home
    from dashboards.report import check_report_folder, write_report

    home = home or data_home()
    out = Path(out) if out else home / "report"
    check_report_folder(out, home)  # before the inputs are collected: a refused folder costs nothing
    return write_report(collect_inputs(home), out)
