"""Scheduled pipeline runs, as a user runs them: a real local Prefect server (`prefect server start`),
`auralsam2 serve` with a one-minute cron, the runs it fires (and `prefect deployment run`'s) reaching
COMPLETED with their outputs checked, a firing while a run goes cancelled by the deployment's
concurrency limit, a failed run saying why in one line, and `auralsam2 run` finding the scheduled
run's work as its own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auralsam2.config import PROJECT_ROOT
from data_specs.synth import SynthConfig, generate_world

DEMO_TINY = PROJECT_ROOT / "configs" / "demo_tiny.yaml"
EXPERIMENT = "scheduled_test"
# (an ingest and cache folder of their own: another test's world is another raw root)
TINY_RUN = ["train.max_steps=2", "train.epochs=1", "train.mask_prompt_warmup_epochs=1", "data.max_val_items=2",
            "eval.splits=[test]", "eval.decodings=[iou_select]", "eval.overlays=1", "data.ingest=ingest/scheduled",
            "data.cache=cache/scheduled", f"experiment={EXPERIMENT}"]
STEPS = ("ingest-step", "cache-step", "train-step", "evaluate-step")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, SynthConfig(seed=11, clips=4, size=96), progress=False)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 150) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout} s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops them
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Served:
    """A Prefect server and `auralsam2 serve` against it; `client()` talks to that server."""

    def __init__(self, tmp: Path, serve_args: list[str], name: str) -> None:
        port = _free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.name = f"pipeline/{name}"
        self.env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-server"), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "PREFECT_RUNNER_POLL_FREQUENCY": "2"}  # (default 10 s) the firings start sooner
        self.log = tmp / "serve.log"
        self.server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                        "--port", str(port)], env=self.env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
        self.serve = None
        _wait_healthy(self.api, self.server)
        with open(self.log, "w") as log:  # a file: a pipe would fill with the runs' progress bars
            self.serve = subprocess.Popen([sys.executable, "-m", "flows", "serve", str(DEMO_TINY), "--name", name,
                                           *serve_args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=PROJECT_ROOT)

    def close(self) -> None:
        _stop(self.serve)
        _stop(self.server)

    @contextlib.contextmanager
    def client(self) -> Iterator:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}), get_client(sync_client=True) as c:
            yield c

    def deployment(self, timeout: float = 150):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.serve.poll() is not None:
                raise RuntimeError(f"auralsam2 serve exited with {self.serve.returncode}: {self.tail()}")
            with contextlib.suppress(Exception), self.client() as c:
                return c.read_deployment_by_name(self.name)
            time.sleep(2)
        raise TimeoutError(f"deployment {self.name} not registered after {timeout} s: {self.tail()}")

    def runs(self, deployment_id) -> list:
        """The deployment's flow runs that have started or ended (not the ones scheduled ahead)."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with self.client() as c:
            runs = c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        return sorted((r for r in runs if r.state.name != "Scheduled"), key=lambda r: r.expected_start_time)

    def wait_final(self, run_ids: list, timeout: float = 300) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.client() as c:
                runs = [c.read_flow_run(i) for i in run_ids]
            if all(r.state.is_final() for r in runs):
                return runs
            if self.serve.poll() is not None:
                raise RuntimeError(f"auralsam2 serve exited with {self.serve.returncode}: {self.tail()}")
            time.sleep(2)
        raise TimeoutError(f"runs not final after {timeout} s: {[r.state for r in runs]}\n{self.tail()}")

    def trigger(self, deployment_id, **parameters):
        with self.client() as c:
            return c.create_flow_run_from_deployment(deployment_id, parameters=parameters or None)

    def step_states(self, run) -> dict[str, str]:
        """The pipeline steps of a flow run and the state each ended in (Completed, Cached, ...)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as c:
            tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        return {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks
                if t.flow_run_id == run.id and t.name.rsplit("-", 1)[0] in STEPS}

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.is_file() else ""


@pytest.fixture
def served(request, tmp_path: Path):
    made: list[Served] = []

    def start(serve_args: list[str], name: str) -> Served:
        made.append(Served(tmp_path, serve_args, name))
        return made[-1]

    yield start
    for s in made:
        s.close()


def _mlflow_runs(experiment: str = EXPERIMENT):
    import mlflow

    from auralsam2.paths import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.parametrize(("args", "error"), [
    (["--cron", "61 * * * *"], "error: --cron '61 * * * *' is not a cron schedule: five fields"),
    (["--cron", "0 3 * * *"], "error: scheduling needs a Prefect server: run `prefect server start --host 127.0.0.1`"),
])
def test_serve_says_what_is_wrong_before_registering(args: list[str], error: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "flows", "serve", str(DEMO_TINY), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=PROJECT_ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(error), line


def test_a_cron_fired_pipeline_run_completes_and_a_firing_during_a_run_is_cancelled(served, world: Path,
                                                                                     tmp_path: Path) -> None:
    from auralsam2.paths import data_home
    from dashboards.views import connect
    from flows.console import error_line
    from flows.pipeline import run_pipeline
    from flows.preflight import PreflightError

    raw = world / "AVSBench"
    s = served(["--cron", "* * * * *", "--raw", str(raw), *_sets(TINY_RUN)], "every-minute")
    deployment = s.deployment()
    assert [x.schedule.cron for x in deployment.schedules] == ["* * * * *"]
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"

    # the first firing of the schedule (at the next minute) runs the whole pipeline
    deadline = time.time() + 150
    while not (fired := s.runs(deployment.id)) and time.time() < deadline:
        time.sleep(2)
    assert fired, f"the schedule did not fire in 150 s: {s.tail()}"
    (first,) = s.wait_final([fired[0].id])
    assert first.state.type.value == "COMPLETED", (first.state.message, s.tail())
    assert first.auto_scheduled  # fired by the cron, not by us
    assert s.step_states(first) == dict.fromkeys(STEPS, "Completed")
    (trained,) = [r for r in _mlflow_runs() if r.data.tags.get("auralsam2.kind") == "train"]
    assert trained.info.status == "FINISHED"
    con = connect(data_home())
    clip_rows = con.execute("select count(*) from clip_metrics where run_id = ?", [trained.info.run_id]).fetchone()[0]
    assert clip_rows > 0
    ckpt = Path(data_home() / "runs" / EXPERIMENT / trained.info.run_name / "best.ckpt")
    mtime = ckpt.stat().st_mtime_ns
    metrics = {p: p.stat().st_mtime_ns for p in (data_home() / "metrics").rglob(f"run_id={trained.info.run_id}/*")}

    # two firings at once (no cron in between: paused): one runs, skipping every finished step;
    # the other is cancelled by the deployment's concurrency limit, never fails on a folder lock
    with s.client() as c:
        c.pause_deployment(deployment.id)
    pair = s.wait_final([s.trigger(deployment.id).id, s.trigger(deployment.id).id])
    states = sorted((r.state.type.value, r.state.message) for r in pair)
    assert states == [("CANCELLED", "Deployment concurrency limit reached."), ("COMPLETED", None)], s.tail()
    (done,) = [r for r in pair if r.state.type.value == "COMPLETED"]
    assert s.step_states(done) == dict.fromkeys(STEPS, "Cached")
    assert len(_mlflow_runs()) == 1 and ckpt.stat().st_mtime_ns == mtime

    # a run that fails says why in its state message, in one line: what `auralsam2 run` prints
    empty = tmp_path / "empty-raw"
    empty.mkdir()
    (failed,) = s.wait_final([s.trigger(deployment.id, raw=str(empty)).id])
    assert failed.state.type.value == "FAILED"
    with pytest.raises(PreflightError) as local:
        run_pipeline(DEMO_TINY, TINY_RUN, raw=empty)
    head, problems = error_line(local.value).split("\n", 1)
    assert failed.state.message == " ".join([head.replace("auralsam2 run", "auralsam2 serve"),
                                             *(p.strip() for p in problems.splitlines())])
    assert f"--raw: {empty}: no metadata.csv" in failed.state.message

    # `auralsam2 run` with the same config finds the scheduled run's work as its own
    again = run_pipeline(DEMO_TINY, TINY_RUN, raw=raw)
    assert again["run_name"] == trained.info.run_name and again["train"]["run_id"] == trained.info.run_id
    assert again["train"]["best_checkpoint"] == str(ckpt) and ckpt.stat().st_mtime_ns == mtime
    assert len(_mlflow_runs()) == 1
    assert metrics and {p: p.stat().st_mtime_ns for p in metrics} == metrics  # not evaluated again
    assert con.execute("select count(*) from clip_metrics where run_id = ?",
                       [trained.info.run_id]).fetchone()[0] == clip_rows


@pytest.mark.slow
def test_a_served_grid_reingests_a_changed_raw_tree_and_overlapping_firings_wait(served, world: Path,
                                                                                  tmp_path: Path) -> None:
    """`serve --ablate smoke --overlap wait`: a triggered run trains and evaluates the grid as
    `auralsam2 run --ablate` does; a touched raw tree is ingested again (and nothing trained again: the
    data did not change); a run without `--raw` uses the ingest as it is; two firings at once both
    complete, one after the other."""
    import shutil

    from auralsam2.paths import data_home
    from dashboards.views import connect
    from flows.pipeline import run_pipeline

    raw = tmp_path / "AVSBench"
    shutil.copytree(world / "AVSBench", raw)
    overrides = [*TINY_RUN[:-3], "data.ingest=ingest/scheduled_grid", "data.cache=cache/scheduled_grid",
                 "experiment=scheduled_grid_test"]
    s = served(["--cron", "0 3 * * *", "--raw", str(raw), "--ablate", "smoke", "--overlap", "wait",
                *_sets(overrides)], "grid")
    deployment = s.deployment()
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"

    def runs():
        return _mlflow_runs("scheduled_grid_test")

    (first,) = s.wait_final([s.trigger(deployment.id).id], timeout=600)
    assert first.state.type.value == "COMPLETED", (first.state.message, s.tail())
    assert s.step_states(first) == dict.fromkeys(STEPS, "Completed")
    (parent,) = [r for r in runs() if r.data.tags.get("auralsam2.kind") == "ablation"]
    assert parent.info.status == "FINISHED"
    summary = connect(data_home()).execute("select row from ablation_summary where parent_run_id = ? order by row",
                                           [parent.info.run_id]).fetchall()
    assert [r[0] for r in summary] == ["full", "visual_only"]
    n_runs = len(runs())

    # the raw tree changed (a file touched): ingested again; same clips, so nothing else is redone
    clip = next(p for p in sorted(raw.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg", ".wav"))
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    (touched,) = s.wait_final([s.trigger(deployment.id).id], timeout=600)
    assert touched.state.type.value == "COMPLETED", (touched.state.message, s.tail())
    states = s.step_states(touched)
    assert states["ingest-step"] == "Completed" and states["train-step"] == "Cached", states
    assert len(runs()) == n_runs

    # without --raw (a run's parameter set to null): the ingest is used as it is
    (no_raw,) = s.wait_final([s.trigger(deployment.id, raw=None).id], timeout=600)
    assert no_raw.state.type.value == "COMPLETED", (no_raw.state.message, s.tail())
    assert "ingest-step" not in s.step_states(no_raw)

    # two firings at once: the second waits for the first (--overlap wait), then runs
    pair = s.wait_final([s.trigger(deployment.id).id, s.trigger(deployment.id).id], timeout=600)
    assert [r.state.type.value for r in pair] == ["COMPLETED", "COMPLETED"], s.tail()
    a, b = sorted(pair, key=lambda r: r.start_time)
    assert a.end_time <= b.start_time
    with s.client() as c:
        history = [st.name for st in c.read_flow_run_states(b.id)]
    assert "AwaitingConcurrencySlot" in history, history
    assert len(runs()) == n_runs

    # `auralsam2 run --ablate smoke` finds all of it done
    again = run_pipeline(DEMO_TINY, overrides, raw=raw, ablate_grid="smoke")
    assert again["ablation"]["parent_run_id"] == parent.info.run_id and len(runs()) == n_runs
