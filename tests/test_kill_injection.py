"""kill -9, Ctrl-C and SIGTERM at seeded random moments, then a re-run (issues 16, 33): outputs identical
to an uninterrupted run, exact training resume, no MLflow run left RUNNING (nor FAILED by a signal),
no duplicated rows, no process left behind; a signal stops the command within seconds, with one line
and exit status 130 / 143. The fast part stops training once per signal (its resume is the subtle
one); the slow sweeps every stage, several times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _sweep(home: Path, stages: str, trials: int, seed: int, signals: str = "KILL") -> list[dict]:
    out = home / "kills.json"
    done = subprocess.run([sys.executable, "-m", "bench.kill_injection", "--home", str(home), "--stages", stages,
                           "--trials", str(trials), "--seed", str(seed), "--signals", signals, "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=3000)
    assert out.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())["trials"]
    assert [r for r in results if r["verdict"] != "ok"] == [], done.stdout[-4000:]
    assert done.returncode == 0
    return results


def test_stopped_training_reruns_to_identical_results(tmp_path: Path) -> None:
    """Ctrl-C and SIGTERM during training: each stops within seconds with one line, exit 130 / 143, no
    traceback, its MLflow run KILLED; the re-run ends identical to an uninterrupted run. (kill -9 of
    every stage, training included, is the slow sweep below; the fast tests of kill -9 are
    test_cli_errors' orphaned server and test_engine_resume's resume.)"""
    results = _sweep(tmp_path, "train", trials=2, seed=0, signals="INT,TERM")
    assert [(r["stage"], r["signal"]) for r in results] == [("train", "INT"), ("train", "TERM")]


@pytest.mark.slow
def test_kills_anywhere_in_every_stage(tmp_path: Path) -> None:
    results = _sweep(tmp_path, "ingest,cache,train,evaluate,ablate,pipeline", trials=3, seed=1)
    assert len(results) == 18


@pytest.mark.slow
def test_ctrl_c_and_sigterm_anywhere_in_every_stage(tmp_path: Path) -> None:
    results = _sweep(tmp_path, "ingest,cache,train,evaluate,ablate,pipeline", trials=2, seed=3, signals="INT,TERM")
    assert len(results) == 12


def test_the_benchmarks_can_name_the_machine_without_running(monkeypatch):
    """bench_kills / bench_faults import `machine()` from bench/__main__.py to record their sweeps;
    importing it must not start `make bench` (it once re-ran itself and lost a 25-minute sweep)."""
    import importlib
    import sys

    monkeypatch.setattr(sys, "argv", ["python", "no-such-benchmark"])
    sys.modules.pop("bench.__main__", None)
    module = importlib.import_module("bench.__main__")
    assert "cores" in module.machine()
