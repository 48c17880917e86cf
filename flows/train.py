"""The train flow: experiment config -> `auralsam2.engine.train` on the feature cache -> MLflow run.

    run_train("configs/demo.yaml", ["optim.lr=3e-4"])      # a real Prefect flow: one task = one run
    auralsam2 train configs/demo.yaml --set optim.lr=3e-4 [--resume] [--nproc-per-node 2]

The run folder is `<data>/<runs_dir>/<experiment>/<run_name>/`: `config.yaml` (resolved),
`last.ckpt`, `best.ckpt`, `history.jsonl`, `curves.png`, `run.json` (MLflow run id, status).
`--resume` continues the run named by `run_name` (default: the latest unfinished run of the
experiment) from its `last.ckpt`, in the same MLflow run.

Multi-process: `nproc > 1` launches `torchrun --standalone --nproc-per-node N -m flows.train
--run-dir DIR` from the task (gloo on CPU, NCCL on GPU); rank 0 logs to the MLflow run the flow
created. The same entry point serves a hand-started `torchrun` on a cluster. A rank that stops on a
user error writes it to `error.rank<r>.txt` in the run folder, and the command prints that one line
(`TrainProcessError`) instead of every rank's and the launcher's tracebacks.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from auralsam2.config import (
    ExperimentConfig,
    config_from_mapping,
    config_to_yaml,
    flatten_config,
    load_config,
    resolve_path,
)
from auralsam2.paths import data_home
from auralsam2.utils.devices import resolve_device
from auralsam2.utils.files import atomic_write_json, atomic_write_text, read_json

__all__ = ["TrainProcessError", "latest_run_dir", "run_dir_for", "run_train", "train_flow", "train_run"]

RUN_JSON = "run.json"
RUN_DIR_TAG = "auralsam2.run_dir"  # MLflow tag: the run folder a training run writes


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """`<data>/<runs_dir>/<experiment>/<run_name>` (run_name must be set)."""
    if not cfg.run_name:
        raise ValueError("run_name is not set; call cfg.with_run_name() first")
    return resolve_path(cfg.runs_dir, data_home()) / cfg.experiment / cfg.run_name


def latest_run_dir(cfg: ExperimentConfig) -> Path | None:
    """The most recently modified run folder of the experiment with an unfinished `last.ckpt`."""
    root = resolve_path(cfg.runs_dir, data_home()) / cfg.experiment
    candidates = []
    for run in root.glob("*/last.ckpt") if root.is_dir() else []:
        info = _read_run_json(run.parent)
        if info.get("status") != "FINISHED":
            candidates.append(run.parent)
    return max(candidates, key=lambda p: (p / "last.ckpt").stat().st_mtime) if candidates else None


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_JSON
    return read_json(path, "the run record", f"delete {run_dir} and train again") if path.is_file() else {}


def _write_run_json(run_dir: Path, **fields: Any) -> None:
    info = {**_read_run_json(run_dir), **fields}
    atomic_write_json(run_dir / RUN_JSON, info)


def _resolve_run(cfg: ExperimentConfig, resume: bool) -> tuple[ExperimentConfig, Path]:
    if resume and not cfg.run_name:
        found = latest_run_dir(cfg)
        if found is None:
            raise FileNotFoundError(f"--resume: no unfinished run of experiment {cfg.experiment!r} under "
                                    f"{resolve_path(cfg.runs_dir, data_home()) / cfg.experiment}; set run_name")
        cfg = cfg.with_run_name(found.name)
    cfg = cfg.with_run_name()
    run_dir = run_dir_for(cfg)
    if resume and not run_dir.is_dir():
        # killed before it made its folder: the re-run (same command, --resume) trains from step 0
        print(f"--resume: {run_dir} does not exist yet (stopped before it started); training from step 0")
        return cfg, run_dir
    if resume:
        saved = run_dir / "config.yaml"
        differ = _resume_differences(load_config(saved), cfg) if saved.is_file() else []
        if differ:
            raise ValueError(f"--resume: the config differs from the run's {saved} in {', '.join(differ[:8])}"
                             f"{' ...' if len(differ) > 8 else ''}; resume with that file "
                             "(`auralsam2 train <run folder>/config.yaml --resume`)")
    elif (run_dir / "last.ckpt").is_file():
        raise FileExistsError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose "
                              "another run_name")
    return cfg, run_dir


def _resume_differences(saved: ExperimentConfig, cfg: ExperimentConfig) -> list[str]:
    """The dotted fields where `cfg` differs from a run's saved config in what a resume must keep.
    It may change the interruption hook, the progress bar, prefetching, and how a step's memory is
    spent: how its clips split into micro-steps (`clips_per_step` x `accumulate_steps` with the same
    product gives the same weights) and checkpointing the fuser's blocks (the same gradients), so a
    run out of GPU memory resumes in smaller micro-steps or with checkpoints."""
    def comparable(c: ExperimentConfig) -> dict[str, Any]:
        tc = c.train
        return flatten_config(c.model_copy(update={"train": tc.model_copy(update={
            "stop_after_steps": None, "progress": True, "prefetch": "auto", "checkpoint_fuser_blocks": False,
            "clips_per_step": tc.clips_per_step * tc.accumulate_steps, "accumulate_steps": 1})}))

    a, b = comparable(saved), comparable(cfg)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def _train_process(cfg: ExperimentConfig, run_dir: Path, resume: bool, run_id: str | None) -> dict[str, Any]:
    """One process of a run (the only one, or one torchrun rank): data, engine, tracker on rank 0."""
    from auralsam2.engine import train
    from feature_cache.dataset import open_reader, training_data
    from flows.tracking import MlflowLogger

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = str(resolve_device(cfg.train.device, local))
    reader = open_reader(cfg, device)
    data = training_data(cfg, reader)
    logger = MlflowLogger(run_id) if run_id and rank == 0 else None
    try:
        result = train(cfg, data, run_dir, resume=resume, logger=logger,
                       checkpoint_extra={"mlflow_run_id": run_id or "", "experiment": cfg.experiment,
                                         "run_name": cfg.run_name or ""})
    finally:
        if logger is not None:
            logger.flush()
    summary = {"run_dir": str(run_dir), "run_id": run_id, "steps": result.steps, "total_steps": result.total_steps,
               "interrupted": result.interrupted, "best_metric": result.best_metric, "best_step": result.best_step,
               "selection": result.selection,
               "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
               "last_checkpoint": str(result.last_checkpoint)}
    if rank == 0:
        atomic_write_json(run_dir / "result.json", summary, sort_keys=False)
    return summary


def train_or_continue(cfg: ExperimentConfig, **kwargs: Any) -> dict[str, Any]:
    """`train_run`, continuing the run folder when a stopped run of this config is in it (the re-run
    of a pipeline or grid that was killed, or ran out of disk, mid-training)."""
    run_dir = run_dir_for(cfg.with_run_name())
    return train_run(cfg, resume=(run_dir / "last.ckpt").is_file(), **kwargs)


def train_run(cfg: ExperimentConfig, *, resume: bool = False, parent_run_id: str | None = None,
              tracking: bool = True, nproc: int = 1) -> dict[str, Any]:
    """Train one run (plain Python; the flow's task calls this). Returns a summary dict with the
    run folder, MLflow run id, steps, best metric and checkpoint paths. The run folder is locked
    while it trains: a second training of the same folder fails at once with a clear message."""
    from auralsam2.utils.locks import folder_lock

    cfg, run_dir = _resolve_run(cfg, resume)
    with folder_lock(run_dir, "training run"):
        return _train_run_locked(cfg, run_dir, resume, parent_run_id, tracking, nproc)


def _train_run_locked(cfg: ExperimentConfig, run_dir: Path, resume: bool, parent_run_id: str | None,
                      tracking: bool, nproc: int) -> dict[str, Any]:
    from feature_cache.dataset import open_reader
    from flows import tracking as mlf

    previous = _read_run_json(run_dir)
    if resume and not (run_dir / "last.ckpt").is_file():
        # killed before its first checkpoint (or before its folder existed): it starts again from
        # step 0, in the same MLflow run
        print(f"--resume: {run_dir} has no last.ckpt yet (stopped before its first checkpoint); training from step 0")
        resume = False
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    # the MLflow run of this folder is continued by a resume, and by a restart of a run that never finished
    run_id = previous.get("run_id") if resume or previous.get("status") in ("RUNNING", "FAILED", "KILLED") else None
    if tracking:
        c = mlf.client()
        if run_id is None or not mlf.run_exists(run_id, c):
            # a process of this folder killed between creating its MLflow run and writing run.json
            run_id = mlf.unfinished_run(cfg.experiment, RUN_DIR_TAG, str(run_dir), c)
        if run_id is None:
            tags = {"auralsam2.kind": "train", "dataset": cfg.data.dataset, "selection_split": cfg.train.select_on,
                    RUN_DIR_TAG: str(run_dir)}
            run_id = mlf.start_run(cfg.experiment, cfg.run_name, parent_run_id=parent_run_id, tags=tags,
                                   description=cfg.description, mlflow_client=c)
        else:
            mlf.reopen_run(run_id, c)
        reader = open_reader(cfg, "cpu")
        mlf.log_params(run_id, mlf.run_params(cfg, reader.info, reader.root), c)
        mlf.log_artifact(run_id, run_dir / "config.yaml", None, c)
    _write_run_json(run_dir, run_id=run_id, status="RUNNING", experiment=cfg.experiment, run_name=cfg.run_name)
    try:
        if nproc > 1:
            summary = _launch_torchrun(run_dir, nproc, resume, run_id)
        else:
            summary = _train_process(cfg, run_dir, resume, run_id)
    except BaseException as exc:
        status = mlf.stopped_status(exc)
        _write_run_json(run_dir, status=status)
        if tracking and run_id:
            mlf.end_run(run_id, status, error=exc)
        raise
    status = "KILLED" if summary["interrupted"] else "FINISHED"
    _write_run_json(run_dir, status=status)
    if tracking and run_id:
        curves = mlf.curves_png(mlf.read_history(run_dir / "history.jsonl"), run_dir / "curves.png",
                                f"{cfg.experiment} / {cfg.run_name}")
        if curves is not None:
            mlf.log_artifact(run_id, curves, None, c)
        if summary["best_checkpoint"] and not summary["interrupted"]:
            mlf.log_artifact(run_id, summary["best_checkpoint"], "checkpoints", c)
        mlf.end_run(run_id, status, c)
    return summary


class TrainProcessError(RuntimeError):
    """A process of a torchrun-launched run stopped on a user error; the message is its own."""


def _launch_torchrun(run_dir: Path, nproc: int, resume: bool, run_id: str | None) -> dict[str, Any]:
    for stale in run_dir.glob("error.rank*.txt"):
        stale.unlink()
    cmd = [sys.executable, "-m", "flows._torchrun", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "flows.train", "--run-dir", str(run_dir), "--errors-to-files"]
    if resume:
        cmd.append("--resume")
    if run_id:
        cmd += ["--run-id", run_id]
    # torchrun sets 1 thread per process anyway when this is unset, and prints a banner saying so
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env)
    if done.returncode != 0:
        errors = sorted(run_dir.glob("error.rank*.txt"), key=lambda p: int(p.stem.removeprefix("error.rank")))
        if errors:  # the first rank that said why (the others were stopped by the launcher)
            rank = errors[0].stem.removeprefix("error.rank")
            raise TrainProcessError(f"rank {rank} of {nproc}: {errors[0].read_text().strip()}")
        raise subprocess.CalledProcessError(done.returncode, cmd)
    return read_json(run_dir / "result.json", "the run result", f"delete {run_dir} and train again")


# ------------------------------------------------------------------ Prefect


@task(name="train-run", cache_policy=NO_CACHE)
def train_task(config_yaml: str, resume: bool = False, parent_run_id: str | None = None, tracking: bool = True,
               nproc: int = 1) -> dict[str, Any]:
    """One training run (a run is one task: never a step or a clip)."""
    import yaml

    cfg = config_from_mapping(yaml.safe_load(config_yaml), "<train flow config>")
    return train_run(cfg, resume=resume, parent_run_id=parent_run_id, tracking=tracking, nproc=nproc)


@flow(name="train")
def train_flow(config_yaml: str, resume: bool = False, parent_run_id: str | None = None, tracking: bool = True,
               nproc: int = 1) -> dict[str, Any]:
    """Train one experiment config (resolved YAML text, so the Prefect UI shows exactly what ran)."""
    return train_task(config_yaml, resume, parent_run_id, tracking, nproc)


def run_train(config_path: str | os.PathLike | None = None, overrides: Sequence[str] = (), *,
              config: ExperimentConfig | None = None, resume: bool = False, parent_run_id: str | None = None,
              tracking: bool = True, nproc: int = 1) -> dict[str, Any]:
    """Load a config (file + `--set` overrides, or `config`) and run the train flow."""
    from feature_cache.dataset import open_reader
    from flows.preflight import preflight

    cfg = config if config is not None else load_config(config_path, overrides)
    preflight(cfg, "train", steps=("train", "evaluate"))
    open_reader(cfg, "cpu")  # fail fast, before the flow starts, on a mismatching cache
    return train_flow(config_yaml=config_to_yaml(cfg), resume=resume, parent_run_id=parent_run_id,
                      tracking=tracking, nproc=nproc)


def main(argv: Sequence[str] | None = None) -> None:
    """torchrun entry: every rank trains the run folder's config; rank 0 logs to `--run-id`."""
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=main.__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--errors-to-files", action="store_true",
                        help="write a user error to RUN_DIR/error.rank<r>.txt for the launching command to print")
    args = parser.parse_args(argv)
    try:
        _train_process(load_config(args.run_dir / "config.yaml"), args.run_dir, args.resume, args.run_id)
    except Exception as exc:
        from flows.console import describe, is_user_error

        if not args.errors_to_files or os.environ.get("AURALSAM2_DEBUG", "") not in ("", "0"):
            raise
        if is_user_error(exc):
            atomic_write_text(args.run_dir / f"error.rank{os.environ.get('RANK', '0')}.txt", describe(exc))
            sys.exit(1)
        if any(args.run_dir.glob("error.rank*.txt")):  # a peer stopped on a user error: this is its echo
            sys.exit(1)                                 # (its collective lost the connection)
        raise


if __name__ == "__main__":
    main()
