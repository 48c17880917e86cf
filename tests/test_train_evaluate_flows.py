"""`auralsam2 train` then `auralsam2 evaluate` as real Prefect flows on the tiny synthetic world:
a real MLflow run (read back with the client), Parquet read back through `auralsam2 query`
(DuckDB), and a checkpoint in the released AuralSAM2 layout evaluated through the same command."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from auralsam2.paths import data_home
from dashboards.schema import CLIP_METRICS, FRAME_METRICS
from flows.cli import app
from tests.train_fixtures import TINY_MODEL, out_of_memory_injected, tiny_cache

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _query(sql: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_invoke(["query", "--csv", sql]))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI (3 epochs), evaluated through the CLI."""
    cache = tiny_cache("avss")
    sets = [f"data.cache={cache}", "experiment=flow_tests", "run_name=cli", *TINY_MODEL, "train.progress=false",
            "eval.progress=false", "train.threads=1", "train.epochs=3", "train.log_every_steps=2", "optim.lr=1e-3",
            "eval.overlays=1"]
    out = _invoke(["train", *[a for s in sets for a in ("--set", s)]])
    run_dir = data_home() / "runs" / "flow_tests" / "cli"
    summary = json.loads((run_dir / "result.json").read_text())
    assert "training finished after 18/18 steps" in out and summary["run_id"] in out
    evaluated = _invoke(["evaluate", str(run_dir / "best.ckpt")])
    return summary, run_dir, evaluated


def test_train_flow_logs_a_real_mlflow_run(trained):
    from flows.tracking import client

    summary, run_dir, _ = trained
    c = client()
    run = c.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "cli"
    assert c.get_experiment(run.info.experiment_id).name == "flow_tests"
    params = run.data.params
    assert params["optim.lr"] == "0.001" and params["model.fuser.dim"] == "32" and params["train.epochs"] == "3"
    assert params["cache.fingerprint.sam2_config"] == "tiny" and len(params["cache.fingerprint_id"]) == 16
    assert len(params["data.manifest_sha256"]) == 64 and params["git.commit"]
    # per-step metrics arrived batched, per-epoch ones too, and the loss went down
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/total")]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    epochs = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "epoch/train_total"), key=lambda m: m.step)]
    assert len(epochs) == 3 and epochs[-1] < epochs[0]
    assert c.get_metric_history(run.info.run_id, "select/J")
    # artifacts: resolved config, best checkpoint, curves, per-clip Parquet and overlays (after evaluate)
    names = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "checkpoints", "metrics", "overlays"} <= names
    assert [a.path for a in c.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.ckpt"]
    overlays = [a.path for a in c.list_artifacts(run.info.run_id, "overlays/test")]
    assert any("/best_1_" in p for p in overlays) and any("/worst_1_" in p for p in overlays)
    clip_parquet = [a.path for a in c.list_artifacts(run.info.run_id, "metrics/clip_metrics/test")]
    assert len(clip_parquet) == 3  # one per decoding
    assert {m for m in run.data.metrics} == set(c.get_run(run.info.run_id).data.metrics)
    test_metrics = c.get_run(run.info.run_id).data.metrics
    assert "test/test/avsbench_official/iou_select/J" in test_metrics
    assert "test/test/auralsam2_released/iou_occ_select/F" in test_metrics
    assert "test/test/avss_semantic_oracle_miou" in test_metrics


def test_evaluate_writes_parquet_that_duckdb_reads(trained):
    summary, _, output = trained
    run_id = summary["run_id"]
    assert "test: 3 items, avsbench_official iou_select" in output
    rows = _query(f"select protocol, decoding, count(*) as n, count(distinct clip_key) as clips, "
                  f"min(frame) as f0, max(frame) as f1 from frame_metrics where run_id = '{run_id}' group by all "
                  "order by all")
    assert len(rows) == 6  # 2 protocols x 3 decodings
    # 3 test clips, every frame labelled: v1s and v1m have 5 frames, v2 10
    assert all(r["n"] == "20" and r["clips"] == "3" and (r["f0"], r["f1"]) == ("0", "9") for r in rows)
    clips = _query(f"select * from clip_metrics where run_id = '{run_id}' and decoding = 'iou_select' "
                   "and protocol = 'avsbench_official' order by clip_key")
    assert list(clips[0]) == CLIP_METRICS.names
    assert {c["subset"] for c in clips} == {"v1s", "v1m", "v2"} and all(c["split"] == "test" for c in clips)
    assert all(c["is_null"] == "False" for c in clips)
    assert sorted(c["n_frames"] for c in clips) == ["10", "5", "5"]
    frames = _query(f"select * from frame_metrics where run_id = '{run_id}' limit 1")
    assert list(frames[0]) == FRAME_METRICS.names
    # the clip rows reproduce the logged headline J (AVSBench: mean over one-clip calls)
    from flows.tracking import client

    logged = client().get_run(run_id).data.metrics["test/test/avsbench_official/iou_select/J"]
    assert sum(float(c["J"]) for c in clips) / 3 == pytest.approx(logged)
    # re-evaluating replaces the split's rows instead of adding to them
    _invoke(["evaluate", str(data_home() / "runs" / "flow_tests" / "cli" / "best.ckpt"), "--no-tracking",
             "--run-id", run_id])
    again = _query(f"select count(*) as n from clip_metrics where run_id = '{run_id}'")
    assert again[0]["n"] == str(3 * 6)


def test_resume_continues_the_same_mlflow_run(trained):
    from flows.tracking import client

    cache = tiny_cache("avss")
    sets = [f"data.cache={cache}", "experiment=flow_tests", "run_name=resumed", *TINY_MODEL, "train.progress=false",
            "train.threads=1", "train.epochs=1", "train.log_every_steps=2", "train.stop_after_steps=4"]
    args = [a for s in sets for a in ("--set", s)]
    assert "training interrupted after 4/6 steps" in _invoke(["train", *args])
    run_dir = data_home() / "runs" / "flow_tests" / "resumed"
    first = json.loads((run_dir / "run.json").read_text())
    assert first["status"] == "KILLED" and client().get_run(first["run_id"]).info.status == "KILLED"
    out = _invoke(["train", str(run_dir / "config.yaml"), "--resume", "--set", "train.stop_after_steps=null"])
    assert "training finished after 6/6 steps" in out
    again = json.loads((run_dir / "run.json").read_text())
    assert again["run_id"] == first["run_id"] and again["status"] == "FINISHED"
    steps = [m.step for m in client().get_metric_history(first["run_id"], "train/total")]
    assert steps == [2, 4, 6]


def test_a_wrong_field_or_a_mismatching_cache_fails_with_its_name():
    result = runner.invoke(app, ["train", "--set", "optim.lrr=1"])
    assert result.exit_code == 1 and "unknown field 'optim.lrr'" in result.output
    cache = tiny_cache("avss")  # built with the tiny SAM2, asked for with Hiera-T
    result = runner.invoke(app, ["train", "--set", f"data.cache={cache}", "--set", "model.sam2.config=sam2_hiera_t"])
    assert result.exit_code == 1 and "sam2_config: cached 'tiny'" in result.output


def test_grid_rows_are_nested_mlflow_runs():
    from flows.tracking import client, parent_run
    from flows.train import run_train
    from tests.train_fixtures import tiny_config

    with parent_run("flow_tests", "grid") as parent:
        row = run_train(config=tiny_config("train.max_steps=1", "train.epochs=1", "run_name=grid-row",
                                           experiment="flow_tests"), parent_run_id=parent)
    c = client()
    assert c.get_run(row["run_id"]).data.tags["mlflow.parentRunId"] == parent
    assert c.get_run(parent).info.status == "FINISHED" and c.get_run(row["run_id"]).info.status == "FINISHED"


def test_train_and_evaluate_ran_as_prefect_flows(trained):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        for name, task_name in (("train", "train-run"), ("evaluate", "evaluate-split")):
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
            assert any(r.state is not None and r.state.is_completed() for r in runs), name
            tasks = client.read_task_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
            assert any(t.name.startswith(task_name) for t in tasks), task_name


def test_a_step_out_of_memory_names_the_resume_in_smaller_micro_steps(tmp_path):
    """Injected fault: a micro-step of 2 clips runs out of device memory in step 3. `auralsam2 train`
    prints one error line, no traceback, naming the resume command that splits the step's clips into
    smaller micro-steps; that command finishes the run in the same MLflow run (the new split
    tagged), with the weights of a run that never failed. A resume that changes how many clips a
    step sees is refused, naming the field."""
    import re
    import subprocess
    import sys

    from flows.tracking import client

    cache = tiny_cache("avss")
    sets = [f"data.cache={cache}", "experiment=flow_tests", *TINY_MODEL, "train.progress=false", "eval.progress=false",
            "train.threads=1", "train.epochs=2", "train.deterministic=true", "model.fuser.dropout=0",
            "train.clips_per_step=2", "train.checkpoint_every_steps=1", "optim.lr=1e-2", "optim.eps=1e-4"]
    args = [a for s in sets for a in ("--set", s)]
    _invoke(["train", *args, "--set", "run_name=whole", "--no-tracking"])

    failed = subprocess.run([sys.executable, "-m", "flows", "train", *args, "--set", "run_name=oom"],
                            capture_output=True, text=True, timeout=600,
                            env=out_of_memory_injected(tmp_path, "len(items) > 1 and len(calls) >= 3"))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    (error,) = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    run_dir = data_home() / "runs" / "flow_tests" / "oom"
    assert "error: out of memory on cpu in training step 3: a micro-step of 2 clips" in error
    assert error.endswith("(torch: CUDA out of memory. Tried to allocate 2.00 GiB (injected))")
    command = re.search(r"`auralsam2 (train \S+ --resume --set \S+ --set \S+)`", error)
    assert command.group(1) == (f"train {run_dir / 'config.yaml'} --resume --set train.clips_per_step=1 "
                                "--set train.accumulate_steps=2")
    assert f"or keep a fifth of the activations, for about a third more fuser compute and the same gradients: " \
           f"`auralsam2 train {run_dir / 'config.yaml'} --resume --set train.checkpoint_fuser_blocks=true`" in error
    # the failed MLflow run says why: the command line's error, as its tag
    failed_run = client().get_run(json.loads((run_dir / "run.json").read_text())["run_id"])
    assert failed_run.info.status == "FAILED"
    assert failed_run.data.tags["auralsam2.error"] == error.removeprefix("error: ")

    assert "training finished after 6/6 steps" in _invoke(command.group(1).split())
    whole, resumed = (torch.load(data_home() / "runs" / "flow_tests" / name / "last.ckpt", weights_only=True)
                      for name in ("whole", "oom"))
    assert resumed["progress"]["step"] == 6
    # the same weights up to float summation order (one clip per forward instead of two), which 4
    # Adam steps at lr 1e-2 carry on: |a - b| / |b| over all trainable weights (measured 3.1e-5)
    keys = sorted(k for k, v in whole["trainable"].items() if v.is_floating_point())
    a, b = (torch.cat([w["trainable"][k].flatten() for k in keys]) for w in (resumed, whole))
    assert float((a - b).norm() / b.norm()) < 1e-4
    info = json.loads((run_dir / "run.json").read_text())
    run = client().get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train.clips_per_step"] == "2"
    assert "auralsam2.error" not in run.data.tags  # the failure it finished after is history
    assert run.data.tags["resumed.train.clips_per_step"] == "1" and run.data.tags["resumed.train.accumulate_steps"] == "2"

    # checkpointing may change on a resume too (the same gradients); how many clips a step sees may not
    assert "training finished after 6/6 steps" in _invoke(["train", str(run_dir / "config.yaml"), "--resume", "--set",
                                                           "train.checkpoint_fuser_blocks=true"])
    refused = runner.invoke(app, ["train", str(run_dir / "config.yaml"), "--resume", "--set", "train.clips_per_step=3"])
    assert refused.exit_code == 1 and "differs from the run's" in refused.output
    assert "in train.clips_per_step;" in " ".join(refused.output.split())
