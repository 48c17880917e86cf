"""DuckDB views and canned queries over real Parquet files and a real MLflow store."""

from __future__ import annotations

import csv
import io

import pytest
from typer.testing import CliRunner

from dashboards.queries import CANNED, resolve
from dashboards.schema import write_table
from dashboards.views import connect
from flows.cli import app
from flows.runs_export import export_runs


def _frame_rows(run_id: str, clip: str, js: list[float], category: str, is_null: bool = False,
                pred_area: int = 10) -> list[dict]:
    return [dict(run_id=run_id, dataset="avss", subset="v1m", split="test", clip_key=clip, expression_uid="",
                 frame=t, protocol="avsbench_official", decoding="iou_select", prompts="none", method="auralsam2", J=j, F=j, pred_area=pred_area,
                 gt_area=20, pixels=100, object_score=0.5, category=category, is_null=is_null, labelled=True)
            for t, j in enumerate(js)]


def _clip_row(run_id: str, clip: str, j: float, category: str, is_null: bool = False) -> dict:
    return dict(run_id=run_id, dataset="avss", subset="v1m", split="test", clip_key=clip, expression_uid="",
                n_frames=2, protocol="avsbench_official", decoding="iou_select", prompts="none", method="auralsam2", J=j, F=j, pred_area=20, gt_area=40,
                pixels=200, object_score=0.5, category=category, is_null=is_null)


@pytest.fixture()
def home(tmp_path):
    write_table(_frame_rows("r1", "a", [0.2, 0.4], "dog") + _frame_rows("r1", "n", [1.0, 1.0], "", True, 25),
                "frame_metrics", "r1", tmp_path)
    write_table([_clip_row("r1", "a", 0.3, "dog"), _clip_row("r1", "b", 0.9, "guitar")], "clip_metrics", "r1", tmp_path)
    write_table([_clip_row("r2", "a", 0.5, "dog"), _clip_row("r2", "b", 0.7, "guitar")], "clip_metrics", "r2", tmp_path)
    return tmp_path


def test_views_and_canned_queries(home) -> None:
    con = connect(home)
    assert con.execute("select count(*) from frame_metrics").fetchone() == (4,)
    assert con.execute("select count(distinct run_id) from clip_metrics").fetchone() == (2,)
    sql, params = resolve("per_category_j", {"run_id": "r1"})
    got = {row[3]: row[5] for row in con.execute(sql, params).fetchall()}
    assert got == pytest.approx({"dog": 0.3, "guitar": 0.9})
    sql, params = resolve("worst_clips", {"limit": "1"})
    assert con.execute(sql, params).fetchall()[0][5] == "a"
    sql, params = resolve("compare_runs", {"a": "r1", "b": "r2"})
    row = con.execute(sql, params).fetchone()
    assert row[4] == pytest.approx(0.6) and row[5] == pytest.approx(0.6) and row[6] == pytest.approx(0.0)
    sql, params = resolve("null_set_s", {})
    (_, _, _, frames, ratio, sqrt_ratio), = con.execute(sql, params).fetchall()
    assert frames == 2 and ratio == pytest.approx(0.25) and sqrt_ratio == pytest.approx(0.5)


def test_missing_tables_are_empty_views(tmp_path) -> None:
    con = connect(tmp_path)
    for view in ("runs", "frame_metrics", "clip_metrics", "ablation_summary"):
        assert con.execute(f"select count(*) from {view}").fetchone() == (0,)
    assert "J_and_F" in [d[0] for d in con.execute("select * from ablation_summary").description]


def test_rows_must_match_the_schema(tmp_path) -> None:
    bad = _clip_row("r1", "a", 0.3, "dog")
    bad["Jaccard"] = bad.pop("J")
    with pytest.raises(ValueError, match="unknown columns \\['Jaccard'\\], missing \\['J'\\]"):
        write_table([bad], "clip_metrics", "r1", tmp_path)
    with pytest.raises(ValueError, match="needs --param"):
        resolve("compare_runs", {"a": "r1"})
    with pytest.raises(ValueError, match="no parameter"):
        resolve("worst_clips", {"nope": "1"})
    assert set(CANNED) >= {"per_category_j", "worst_clips", "null_set_s", "compare_runs"}


def _mlflow_store(home, monkeypatch, experiment: str) -> str:
    """A real MLflow SQLite store under `home`, the project's and mlflow's current one."""
    import mlflow

    uri = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    return uri


def test_runs_export_from_a_real_mlflow_store(home, monkeypatch) -> None:
    import mlflow

    uri = _mlflow_store(home, monkeypatch, "avss-demo")
    with mlflow.start_run(run_name="grid") as parent:
        with mlflow.start_run(run_name="full", nested=True) as child:
            mlflow.log_params({"fuser.fusion": "official"})
            mlflow.log_metric("val_J", 0.75)
    export_runs(home, uri)
    con = connect(home)
    rows = con.execute('select run_name, parent_run_id, "params.fuser.fusion", "metrics.val_J" from runs '
                       "order by run_name").fetchall()
    assert rows == [("full", parent.info.run_id, "official", 0.75), ("grid", "", None, None)]
    assert con.execute("select run_id from runs where run_name = 'full'").fetchone() == (child.info.run_id,)


def test_query_command_prints_table_and_csv(home, monkeypatch) -> None:
    monkeypatch.setenv("AURALSAM2_HOME", str(home))
    runner = CliRunner()
    result = runner.invoke(app, ["query", "--csv", "select clip_key, J from clip_metrics where run_id = 'r2' order by 1"])
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.output))) == [["clip_key", "J"], ["a", "0.5"], ["b", "0.7"]]
    result = runner.invoke(app, ["query", "worst_clips", "--param", "limit=2"])
    assert result.exit_code == 0 and "2 row(s)" in result.output
    result = runner.invoke(app, ["query", "select nope from clip_metrics"])
    assert result.exit_code == 1 and "nope" in result.output


def test_report_curves_hold_one_point_per_step_after_a_resume(home, monkeypatch) -> None:
    """A resumed run logs again the steps between its checkpoint and the kill; the curve shows each once."""
    import mlflow
    from mlflow.entities import Metric

    from flows.report import _curves

    uri = _mlflow_store(home, monkeypatch, "resumed")
    with mlflow.start_run(run_name="train") as run:
        first = [Metric("train/total", 1.0 / (s + 1), 1000 + s, s) for s in range(5)]
        again = [Metric("train/total", 1.0 / (s + 1), 2000 + s, s) for s in range(3, 7)]  # resumed from step 3
        mlflow.tracking.MlflowClient(uri).log_batch(run.info.run_id, metrics=first + again)
    curve = _curves(home)[run.info.run_id]["train/total"]
    assert [step for step, _ in curve] == list(range(7))
    assert curve == [(s, 1.0 / (s + 1)) for s in range(7)]


def test_a_killed_or_finished_run_is_found_by_a_key_holding_quotes(tmp_path, monkeypatch) -> None:
    """An ablation's key names its selection (`split='test'`); MLflow's filter grammar cannot quote
    such a value, so the re-run of a killed grid once started a second parent and left the first
    RUNNING (bench.kill_injection). Real SQLite store."""
    from flows import tracking as mlf

    _mlflow_store(tmp_path, monkeypatch, "keys")
    key = "ablate-paper-abc/full,visual_only/SummarySelection(split='test', subsets=[])"
    killed = mlf.continue_or_start_run("keys", "ablate-paper-abc", key)
    mlf.continue_or_start_run("keys", "other", key + "x")  # a different key: never picked
    assert mlf.unfinished_run("keys", mlf.KEY_TAG, key) == killed
    assert mlf.continue_or_start_run("keys", "ablate-paper-abc", key, reuse_finished=True) == killed
    mlf.end_run(killed)
    assert mlf.unfinished_run("keys", mlf.KEY_TAG, key) is None
    # finished: an ablation re-run rewrites the same parent; other work starts a new run
    assert mlf.continue_or_start_run("keys", "ablate-paper-abc", key, reuse_finished=True) == killed
    assert mlf.continue_or_start_run("keys", "ablate-paper-abc", key) != killed
