"""Kill -9 (or Ctrl-C, or SIGTERM) at seeded random moments of every stage, then a re-run: is
everything as if nothing happened?

For each stage (ingest, cache, train, evaluate, a two-row ablation grid, and the whole pipeline
`auralsam2 run`) a snapshot
of the data folder before the stage is made once with the real CLI (tiny SAM2, synthetic world),
and the stage is run to completion on a copy: the reference. Each *trial* copies the snapshot,
starts the stage's command, SIGKILLs the command's own process (not its children: whatever it
started must go by itself) at a moment drawn uniformly from 5-95 % of the reference's wall time,
then runs the stage's re-run command (`--resume` for training) to completion. The trial passes when:

* no process the killed command started is still alive 20 s later (the ephemeral Prefect server);
* for Ctrl-C (SIGINT to the command's process group, as a terminal sends it) and SIGTERM (to the
  command alone, as `kill` or a scheduler sends it): the command ends within `STOP_S` with exit
  status 130 / 143, one `interrupted` line and no traceback, nothing it started still alive, and its
  MLflow runs KILLED (none FAILED);
* the re-run exits 0 and its outputs equal the reference's (bytes of shards and cache files,
  training weights/optimizer/RNG and metric history, per-clip metrics rows);
* no MLflow run is left RUNNING, and no DuckDB view holds a duplicated row.

`python -m bench.kill_injection [--trials N] [--stages ingest,cache,...] [--signals KILL,INT,TERM] [--seed S]
[--json OUT]` (trial i of a stage sends the i-th signal of `--signals`, cycling);
`bench/bench_kills.py` records a seeded sweep for `make bench`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.fault_injection import EPOCH, TINY_MODEL, file_digest, prefect_server

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "cache", "train", "evaluate", "ablate", "pipeline")
ORPHAN_WAIT_S = 20.0
STOP_S = 10.0  # Ctrl-C / SIGTERM: the command's own exit, its children and server gone
SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "TERM": signal.SIGTERM}


def _env(trial: Path, api_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, "AURALSAM2_HOME": str(trial / "data"), "PREFECT_HOME": str(trial / "prefect"),
           "SOURCE_DATE_EPOCH": EPOCH, "OMP_NUM_THREADS": "1", "AURALSAM2_DEBUG": "0",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    # the timed and killed commands start their own ephemeral server, the path users take; only the
    # snapshots are built against one shared server (`api_url`), which saves each a server start
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _train_sets(ws: Path) -> list[str]:
    sets = [f"data.cache={ws / 'cache'}", "data.dataset=avss", "experiment=kills", "run_name=kills",
            "eval.splits=[test]", *TINY_MODEL, "train.epochs=4", "train.checkpoint_every_steps=1"]
    return [x for s in sets for x in ("--set", s)]


def _pipeline_config(ws: Path) -> Path:
    path = ws / "pipeline.yaml"
    path.write_text(f"""experiment: kills-pipeline
data:
  dataset: avss
  subsets: [v1m]
  ingest: {ws / 'p_ingest'}
  cache: {ws / 'p_cache'}
eval:
  splits: [test]
""")
    return path


def _ablate_args(ws: Path) -> list[str]:
    base = ws / "ablate.yaml"
    base.write_text(f"experiment: kills-ablate\ndata:\n  dataset: avss\n  cache: {ws / 'cache'}\n"
                    "eval:\n  splits: [test]\n")
    sets = [s for s in TINY_MODEL if not s.startswith("train.epochs")] + ["train.epochs=2"]
    return ["ablate", str(base), "--rows", "full,visual_only", "--split", "test",
            *[x for s in sets for x in ("--set", s)]]


def _pipeline_args(ws: Path) -> list[str]:
    sets = [s for s in TINY_MODEL if not s.startswith("train.epochs")] + ["train.epochs=2", "run_name=pipeline"]
    return ["run", str(_pipeline_config(ws)), "--raw", str(ws / "world" / "AVSBench"), "--subset", "v1m",
            *[x for s in sets for x in ("--set", s)]]


@dataclass(frozen=True)
class Stage:
    name: str
    command: Callable[[Path], list[str]]
    rerun: Callable[[Path], list[str]]
    outputs: Callable[[Path], str]  # digest of what the stage produced


def _tree(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_file() and path.name != ".lock" and not skip(path):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + file_digest(path))
    return digest.hexdigest()


def _run_digest(run_dir: Path) -> str:
    """A training run's outcome: weights, optimizer, scheduler, RNG and progress (last.ckpt), the best
    checkpoint's weights and what selected it, the metric history; not the MLflow run id."""
    from auralsam2.checkpoints import read_weights
    from auralsam2.utils.hashing import payload_sha256

    last = read_weights(run_dir / "last.ckpt")
    best = read_weights(run_dir / "best.ckpt")
    best["extra"] = {k: v for k, v in best.get("extra", {}).items() if k != "mlflow_run_id"}
    return payload_sha256({"last": last, "best": best, "history": (run_dir / "history.jsonl").read_text()})


def _metrics_rows(ws: Path) -> str:
    import pyarrow.parquet as pq

    rows = []
    for table in ("clip_metrics", "frame_metrics", "ablation_summary"):
        for path in sorted((ws / "data" / "metrics" / table).glob("*/*.parquet")):
            for row in pq.read_table(path).to_pylist():
                for key in ("run_id", "parent_run_id"):  # MLflow's ids differ between the reference and a trial
                    row.pop(key, None)
                rows.append(table + json.dumps(row, sort_keys=True, default=str))
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def _run_folder(ws: Path, experiment: str = "kills") -> Path:
    return next(p.parent for p in sorted((ws / "data" / "runs" / experiment).glob("*/run.json")))


STAGE_TABLE = {
    "ingest": Stage(
        "ingest",
        lambda ws: ["ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(ws / "world" / "AVSBench"),
                    "--out", str(ws / "ingest"), "--clips-per-shard", "1"],
        lambda ws: ["ingest", "--dataset", "avss", "--subset", "v1m", "--root", str(ws / "world" / "AVSBench"),
                    "--out", str(ws / "ingest"), "--clips-per-shard", "1"],
        lambda ws: _tree(ws / "ingest", lambda p: p.name == ".claim.json")),
    "cache": Stage(
        "cache",
        lambda ws: ["cache", "--shards", str(ws / "ingest"), "--out", str(ws / "cache"), "--sam2-config", "tiny"],
        lambda ws: ["cache", "--shards", str(ws / "ingest"), "--out", str(ws / "cache"), "--sam2-config", "tiny"],
        lambda ws: _tree(ws / "cache")),
    "train": Stage(
        "train", lambda ws: ["train", *_train_sets(ws)], lambda ws: ["train", "--resume", *_train_sets(ws)],
        lambda ws: _run_digest(_run_folder(ws))),
    "evaluate": Stage(
        "evaluate",
        lambda ws: ["evaluate", str(_run_folder(ws) / "best.ckpt"), "--split", "test"],
        lambda ws: ["evaluate", str(_run_folder(ws) / "best.ckpt"), "--split", "test"],
        _metrics_rows),
    "ablate": Stage("ablate", _ablate_args, _ablate_args, _metrics_rows),
    "pipeline": Stage("pipeline", _pipeline_args, _pipeline_args, _metrics_rows),
}
# the snapshot each stage starts from: the stages before it done
BEFORE = {"ingest": [], "cache": ["ingest"], "train": ["ingest", "cache"], "evaluate": ["ingest", "cache", "train"],
          "ablate": ["ingest", "cache"], "pipeline": []}


def _cli(args: list[str], ws: Path, timeout: float = 900, api_url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows", *args], env=_env(ws, api_url), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def snapshots(home: Path, stages: list[str]) -> dict[str, Path]:
    """Stage -> a folder holding the data before it, for the given stages (built once, in the trial
    folder's place, so the paths recorded inside are the trial's; only the steps they need are run)."""
    trial = home / "trial"
    out = {s: home / f"before-{s}" for s in stages}
    if all((p / ".complete").is_file() for p in out.values()):
        return out
    for target in out.values():
        shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(trial, ignore_errors=True)
    trial.mkdir(parents=True)
    # its database outside the trial folder: the snapshots never copy a live SQLite file
    with prefect_server(home, {**_env(trial), "PREFECT_HOME": str(home / "prefect-build")}) as url:
        _check(_cli(["synth", "--out", str(trial / "world"), "--clips", "4", "--size", "64"], trial), "synth")
        done: list[str] = []
        for step in ("ingest", "cache", "train", None):
            for stage, target in out.items():
                if BEFORE[stage] == done and not target.exists():
                    shutil.copytree(trial, target, symlinks=True)
            if step is None or all(p.exists() for p in out.values()):
                break
            _check(_cli(STAGE_TABLE[step].command(trial), trial, api_url=url), step)
            done.append(step)
    for target in out.values():
        (target / ".complete").write_text("ok\n")
    shutil.rmtree(trial, ignore_errors=True)
    return out


@dataclass
class KillTrial:
    stage: str
    at_s: float
    signal: str = "KILL"
    stop_s: float = 0.0
    verdict: str = ""
    detail: str = ""
    rerun_s: float = 0.0


def _descendants_alive(pgid: int) -> dict[int, str]:
    """Processes still in the killed command's process group (its children, grandchildren, ...), and
    the Prefect server it started (in a session of its own; it names the command by `--parent-pid`)."""
    alive = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        server = b"flows._prefect_server" in cmdline and b"--parent-pid" in cmdline and \
            cmdline[cmdline.index(b"--parent-pid") + 1] == str(pgid).encode()
        if (int(fields[2]) == pgid or server) and fields[0] != "Z":
            alive[int(proc.name)] = b" ".join(cmdline).decode(errors="replace")[:160]
    return alive


def _mlflow_problems(ws: Path) -> list[str]:
    db = ws / "data" / "mlflow" / "mlflow.db"
    if not db.is_file():
        db = next(iter(sorted((ws / "data").glob("**/mlflow.db"))), None)
    if db is None:
        return []
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        left = con.execute("select run_uuid, name, status from runs where status in ('RUNNING', 'FAILED')").fetchall()
    return [f"MLflow run {name} ({uuid}) left {status}" for uuid, name, status in left]


def _duplicate_rows(ws: Path) -> list[str]:
    from dashboards.views import connect

    problems = []
    con = connect(ws / "data")
    keys = {"clip_metrics": "run_id, split, clip_key, expression_uid, protocol, decoding, prompts, method",
            "frame_metrics": "run_id, split, clip_key, expression_uid, frame, protocol, decoding, prompts, method",
            "ablation_summary": "parent_run_id, row, dataset, split, protocol"}
    for view, key in keys.items():
        n, distinct = con.execute(f"select count(*), count(distinct ({key})) from {view}").fetchone()
        if n != distinct:
            problems.append(f"{view}: {n - distinct} duplicated rows")
    return problems


def _stop(proc: subprocess.Popen, name: str) -> float:
    """Send signal `name` as it arrives in practice; returns the seconds until the command exited."""
    started = time.monotonic()
    if name == "INT":
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        proc.send_signal(SIGNALS[name])  # the command only: what it started must end with it
    try:
        proc.wait(timeout=None if name == "KILL" else STOP_S * 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - started


def _stop_problems(proc: subprocess.Popen, name: str, stop_s: float, stderr: str) -> list[str]:
    """What a clean stop by Ctrl-C / SIGTERM must look like (`_stop` ended it)."""
    want = 128 + SIGNALS[name]
    if proc.returncode == 0 and "interrupted" not in stderr and "Traceback" not in stderr:
        return []  # its work was done: the signal came while it exited (the re-run checks the outputs)
    problems = []
    if stop_s > STOP_S:
        problems.append(f"took {stop_s:.1f} s to stop (limit {STOP_S:.0f} s)")
    if proc.returncode != want:
        problems.append(f"exit status {proc.returncode}, not {want}")
    if "interrupted" not in stderr:
        problems.append("no 'interrupted' line")
    if "Traceback" in stderr:
        problems.append("a traceback: " + stderr[stderr.index("Traceback"):][:600])
    return problems


def kill_trial(stage: Stage, snapshot: Path, trial_ws: Path, at_s: float, reference: str,
               signal_name: str = "KILL") -> KillTrial:
    result = KillTrial(stage.name, round(at_s, 2), signal_name)
    shutil.rmtree(trial_ws, ignore_errors=True)
    shutil.copytree(snapshot, trial_ws, symlinks=True)
    errors = trial_ws / "stderr.txt"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "flows", *stage.command(trial_ws)], env=_env(trial_ws),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        time.sleep(at_s)
        finished_first = proc.poll() is not None
        if not finished_first:
            result.stop_s = round(_stop(proc, signal_name), 2)
        proc.wait()
    wait_s = ORPHAN_WAIT_S if signal_name == "KILL" else STOP_S
    deadline = time.monotonic() + wait_s
    while (alive := _descendants_alive(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.25)
    if alive:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        result.verdict, result.detail = "orphan", "; ".join(alive.values())
        return result
    if signal_name != "KILL" and not finished_first:
        problems = _stop_problems(proc, signal_name, result.stop_s, errors.read_text(errors="replace"))
        problems += [p for p in _mlflow_problems(trial_ws) if "FAILED" in p]
        if problems:
            result.verdict, result.detail = "unclean_stop", "; ".join(problems)
            return result
    started = time.monotonic()
    done = _cli(stage.rerun(trial_ws), trial_ws)
    result.rerun_s = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        result.verdict, result.detail = "rerun_failed", (done.stdout + done.stderr)[-1500:]
        return result
    problems = _mlflow_problems(trial_ws) + _duplicate_rows(trial_ws)
    if stage.outputs(trial_ws) != reference:
        problems.insert(0, "outputs differ from the uninterrupted run")
    result.verdict = "ok" if not problems else "differs" if problems[0].startswith("outputs") else "state"
    result.detail = "; ".join(problems) + (" (finished before the kill)" if finished_first else "")
    return result


def sweep(home: Path, trials: int = 3, seed: int = 0, stages: list[str] | None = None,
          log: Callable[[str], None] = print, signals: tuple[str, ...] = ("KILL",)
          ) -> tuple[list[KillTrial], dict[str, float]]:
    home.mkdir(parents=True, exist_ok=True)
    stages = stages or list(STAGES)
    snaps = snapshots(home, stages)
    rng = random.Random(seed)
    trial_ws = home / "trial"
    results, reference_s = [], {}
    for name in stages:
        stage = STAGE_TABLE[name]
        shutil.rmtree(trial_ws, ignore_errors=True)
        shutil.copytree(snaps[name], trial_ws, symlinks=True)
        started = time.monotonic()
        _check(_cli(stage.command(trial_ws), trial_ws), f"{name} (reference)")
        reference_s[name] = time.monotonic() - started
        reference = stage.outputs(trial_ws)
        for i in range(trials):
            at = rng.uniform(0.05, 0.95) * reference_s[name]
            trial = kill_trial(stage, snaps[name], trial_ws, at, reference, signals[i % len(signals)])
            results.append(trial)
            log(f"[{name} {i + 1}/{trials}] SIG{trial.signal} at {trial.at_s:.1f} s of {reference_s[name]:.1f} s -> "
                f"{trial.verdict} (stopped in {trial.stop_s:.1f} s, re-run {trial.rerun_s:.1f} s)"
                f"{' ' + trial.detail[:300] if trial.detail else ''}")
    shutil.rmtree(trial_ws, ignore_errors=True)
    return results, reference_s


def markdown(results: list[KillTrial], reference_s: dict[str, float]) -> str:
    verdicts = ("ok", "differs", "state", "rerun_failed", "orphan", "unclean_stop")
    lines = ["| stage | signal | uninterrupted (s) | trials | longest stop (s) | " + " | ".join(verdicts) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(verdicts)]
    for stage, seconds in reference_s.items():
        for name in dict.fromkeys(r.signal for r in results if r.stage == stage):
            mine = [r for r in results if r.stage == stage and r.signal == name]
            counts = [str(sum(r.verdict == v for r in mine)) for v in verdicts]
            lines.append(f"| {stage} | SIG{name} | {seconds:.1f} | {len(mine)} | {max(r.stop_s for r in mine):.1f} | "
                         + " | ".join(counts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path)
    parser.add_argument("--trials", type=int, default=3, help="Kills per stage.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", help=f"Comma-separated, of {','.join(STAGES)} (default: all).")
    parser.add_argument("--signals", default="KILL", help="Comma-separated, of KILL, INT (Ctrl-C), TERM; trial i "
                        "of a stage sends the i-th, cycling (default: KILL).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    home = (args.home or Path(tempfile.mkdtemp(prefix="auralsam2-kills-"))).resolve()
    results, reference_s = sweep(home, args.trials, args.seed, args.stages.split(",") if args.stages else None,
                                 signals=tuple(args.signals.split(",")))
    print(markdown(results, reference_s))
    if args.json:
        args.json.write_text(json.dumps({"reference_s": reference_s, "trials": [asdict(r) for r in results]}, indent=1))
    return 0 if all(r.verdict == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
