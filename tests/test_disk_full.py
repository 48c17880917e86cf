"""A full disk (issue 16): the whole chain (`auralsam2 run`: ingest, cache, train, evaluate, MLflow,
metrics) with its data folder on a small tmpfs, sized to run out at different moments. Each time:
one `error:` line naming the volume, exit status 1, no temporary file left, nothing that looks
complete without being whole; after the volume grows, the same command completes with the results
of an uninterrupted run. Needs root (CI runs as root) to mount the tmpfs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fault_injection import EPOCH, TINY_MODEL
from bench.kill_injection import _duplicate_rows, _metrics_rows, _mlflow_problems

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096


def _can_mount(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


@contextlib.contextmanager
def tmpfs(where: Path, size: int) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _grow(where: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def _used(where: Path) -> int:
    st = os.statvfs(where)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _pipeline(ws: Path) -> subprocess.CompletedProcess:
    data = ws / "data"
    config = ws / "pipeline.yaml"
    config.write_text(f"experiment: diskfull\ndata:\n  dataset: avss\n  subsets: [v1m]\n  ingest: {data / 'ingest'}\n"
                      f"  cache: {data / 'cache'}\neval:\n  splits: [test]\n")
    sets = [s for s in TINY_MODEL if not s.startswith("train.epochs")] + ["train.epochs=2", "run_name=diskfull"]
    env = {**os.environ, "AURALSAM2_HOME": str(data), "PREFECT_HOME": str(ws / "prefect"),
           "SOURCE_DATE_EPOCH": EPOCH, "OMP_NUM_THREADS": "1", "AURALSAM2_DEBUG": "0"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    args = ["run", str(config), "--raw", str(ws.parent / "world" / "AVSBench"), "--subset", "v1m",
            *[x for s in sets for x in ("--set", s)]]
    return subprocess.run([sys.executable, "-m", "flows", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def _leftovers(data: Path) -> list[str]:
    """Temporary files (ours are `.<name>.tmp-<pid>`) and anything else named like one."""
    return [str(p.relative_to(data)) for p in data.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]


def _looks_complete_but_is_not(data: Path) -> list[str]:
    """Every artifact whose record says it is complete must read back whole."""
    from auralsam2.checkpoints import read_weights
    from data_specs.shards import read_manifest
    from feature_cache.verify import verify_cache

    problems = []
    for ingest_json in data.rglob("ingest.json"):
        try:
            read_manifest(ingest_json.parent)
        except Exception as err:  # noqa: BLE001
            problems.append(f"{ingest_json.parent}: {err}")
    for cache_json in data.rglob("cache.json"):
        if json.loads(cache_json.read_text()).get("status") == "complete":
            report = verify_cache(cache_json.parent)
            if not report.ok:
                problems.append(f"{cache_json.parent}: {report.corrupt + report.missing}")
    for run_json in data.rglob("run.json"):
        run = json.loads(run_json.read_text())
        for name in ("best.ckpt", "last.ckpt"):
            if run.get("status") == "FINISHED" or (run_json.parent / name).is_file():
                try:
                    read_weights(run_json.parent / name)
                except Exception as err:  # noqa: BLE001
                    problems.append(f"{run_json.parent / name}: {err}")
    return problems


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("diskfull")
    if not _can_mount(base / "probe"):
        pytest.skip("needs root and tmpfs mounts (CI runs as root)")
    from data_specs.synth import SynthConfig, generate_world

    generate_world(base / "world", SynthConfig(seed=0, clips=4, size=64), progress=False)
    ws = base / "reference"
    with tmpfs(ws / "data", 256 << 20) as data:
        done = _pipeline(ws)
        assert done.returncode == 0, done.stderr[-3000:]
        used = _used(data)
        digest = _metrics_rows(ws)
    return {"base": base, "used": used, "digest": digest}


def _full_then_freed(reference: dict, fraction: float) -> None:
    ws = reference["base"] / f"full-{fraction}"
    size = max(16 * PAGE, int(reference["used"] * fraction) // PAGE * PAGE)
    with tmpfs(ws / "data", size) as data:
        done = _pipeline(ws)
        assert done.returncode == 1, f"{fraction}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stderr[-3000:]
        assert "no space left on the volume mounted at " + str(data) in errors[0], errors[0]
        assert _leftovers(data) == []
        assert _looks_complete_but_is_not(data) == []
        _grow(data, 256 << 20)
        again = _pipeline(ws)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _leftovers(data) == []
        assert _metrics_rows(ws) == reference["digest"]
        assert _mlflow_problems(ws) == [] and _duplicate_rows(ws) == []


@pytest.mark.parametrize("fraction", [0.6])  # where MLflow's store filled up; the other fractions are slow
def test_a_full_disk_is_one_message_and_a_rerun_completes(reference, fraction: float) -> None:
    _full_then_freed(reference, fraction)


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.97])
def test_a_full_disk_anywhere_in_the_chain(reference, fraction: float) -> None:
    _full_then_freed(reference, fraction)
