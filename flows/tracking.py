"""MLflow tracking for training and evaluation runs, and the figures logged with them.

Embedded default: an absolute SQLite store under the data folder (`auralsam2.paths.mlflow_tracking_uri`,
overridden by `MLFLOW_TRACKING_URI`), artifacts under `<data>/mlflow/artifacts/<experiment>` (not
MLflow's cwd-relative `./mlruns`). One experiment per dataset preset (`cfg.experiment`). Everything
goes through an explicit `MlflowClient` (no global active run), so runs can be logged from Prefect
task threads and nested (`parent_run_id`) for the ablation grid:

    with parent_run("avss_v1s_hiera_l", "ablation-grid") as parent:
        run_train(cfg_row, parent_run_id=parent)     # each row: a child run (tag mlflow.parentRunId)

A run carries: params = the flattened resolved config + the cache fingerprint fields + the ingest
manifest hash + the git commit; metrics per step (batched, `MlflowLogger`) and per epoch; tags
(selection split, DDP settings); artifacts: the resolved config YAML, best checkpoint, per-clip
Parquet, overlay PNGs of the best and worst clips (frame | gt | prediction), loss/metric curves PNG.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from auralsam2.config import PROJECT_ROOT, ExperimentConfig, flatten_config
from auralsam2.paths import data_home, mlflow_tracking_uri, sqlite_path, sqlite_uri
from auralsam2.utils.files import atomic_path
from auralsam2.utils.hashing import sha256_file
from flows.console import STORE_FIX, error_line

__all__ = [
    "MlflowLogger",
    "client",
    "curves_png",
    "end_run",
    "end_run_on",
    "reopen_run",
    "ensure_experiment",
    "git_commit",
    "log_artifact",
    "log_params",
    "overlay_png",
    "parent_run",
    "run_params",
    "start_run",
    "continue_or_start_run",
]

PARAM_BATCH = 100  # MLflow's limit of params per log_batch call
METRIC_BATCH = 1000




class StoreError(ValueError):
    """The MLflow store cannot be used as it is (damaged, foreign, another schema, read-only); the
    message names it and the fix."""


_VERIFIED: set[tuple[str, bool]] = set()  # (uri, for writing) checked by this process


def client(tracking_uri: str | None = None, *, write: bool = True):
    """An `MlflowClient` on the project's store (or `tracking_uri`). A local SQLite store is created
    when missing and checked once per process (`StoreError` naming it and the fix); `write=False`
    for commands that only read it (a read-only store serves them)."""
    from mlflow import MlflowClient

    uri = tracking_uri or mlflow_tracking_uri()
    db = sqlite_path(uri)
    if db is None or (uri, write) in _VERIFIED:
        return MlflowClient(tracking_uri=uri)
    if write and not db.exists():
        _create_sqlite_store(db)
    c = _open_sqlite_store(uri, db, write)
    _VERIFIED.add((uri, write))
    return c


def _open_sqlite_store(uri: str, db: Path, write: bool):
    """An `MlflowClient` on `db`, or `StoreError` unless it is an MLflow SQLite store of this MLflow's
    schema (and, for `write`, one SQLite may write: the file and a journal beside it)."""
    import logging

    from mlflow import MlflowClient

    try:
        with open(db, "rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        head = None  # a command that only reads: no store yet is no runs
    except OSError as err:
        raise StoreError(f"the MLflow store {db} cannot be read ({err.strerror}); {STORE_FIX}") from None
    if head is not None and head != b"SQLite format 3\x00":
        raise StoreError(f"the MLflow store {db} is not an SQLite database (damaged or another file); {STORE_FIX}")
    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # MLflow logs a store error with its traceback, then raises it
    try:
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 (sqlalchemy's, sqlite's and MLflow's errors: all mean "this store")
        older = re.search(r"out-of-date database schema \(found version (\w+), but expected (\w+)\)", str(err))
        if older:
            raise StoreError(f"the MLflow store {db} has an older schema ({older[1]}; this MLflow reads {older[2]}): "
                             f"back it up, then `mlflow db upgrade {shlex.quote(uri)}`; or point MLFLOW_TRACKING_URI "
                             "at another store") from None
        raise StoreError(f"the MLflow store {db} cannot be opened ({_first_line(err)}); {STORE_FIX}") from None
    finally:
        quiet.setLevel(level)
    if write and not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK)):
        raise StoreError(f"the MLflow store {db} is read-only; make it (and its folder) writable, or point "
                         "MLFLOW_TRACKING_URI at another store. Commands that only read it (`auralsam2 query`, "
                         "`auralsam2 report --out DIR`) work as it is")
    return c


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()  # sqlalchemy wraps the driver's error as `orig`
    return text.splitlines()[0] if text else type(err).__name__


def _create_sqlite_store(db: Path) -> None:
    """Create a new SQLite store whole or not at all: MLflow builds its schema in dozens of
    migrations, and a process killed among them leaves a database no later run can open. Built under
    a temporary name, then renamed into place (one process at a time)."""
    if db.is_file():
        return
    import fcntl

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from auralsam2.utils.files import temp_path

    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent / ".create.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process creating it: wait, then use its store
        if db.is_file():
            return
        tmp = temp_path(db)
        uri = sqlite_uri(tmp)
        try:
            store = SqlAlchemyStore(uri, (db.parent / "artifacts").as_uri())
            store.engine.dispose()
            SqlAlchemyStore._engine_map.pop(uri, None)
            os.replace(tmp, db)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)


def ensure_experiment(name: str, mlflow_client=None) -> str:
    """The experiment id of `name`, created with its artifacts under the data folder if new."""
    c = mlflow_client or client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = data_home() / "mlflow" / "artifacts" / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        return c.create_experiment(name, artifact_location=root.as_uri())
    except Exception:  # created concurrently by another process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def start_run(experiment: str, run_name: str, *, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None, description: str = "", mlflow_client=None) -> str:
    """Create a run (a child of `parent_run_id` when given) and return its id."""
    c = mlflow_client or client()
    all_tags = {"mlflow.source.name": "auralsam2", **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    if description:
        all_tags["mlflow.note.content"] = description
    run = c.create_run(ensure_experiment(experiment, c), tags=all_tags, run_name=run_name)
    return run.info.run_id


def unfinished_run(experiment: str, tag: str, value: str, mlflow_client=None) -> str | None:
    """The id of a RUNNING run of `experiment` tagged `tag = value` (one a killed process left behind
    before it could record the id anywhere else), else of a KILLED one (a command stopped by Ctrl-C or
    SIGTERM: its re-run continues it)."""
    return (_run_tagged(experiment, tag, value, "RUNNING", mlflow_client)
            or _run_tagged(experiment, tag, value, "KILLED", mlflow_client))


def _run_tagged(experiment: str, tag: str, value: str, status: str, mlflow_client=None) -> str | None:
    """The newest run of `experiment` with `status` whose tag `tag` equals `value`. The tag is
    compared here, not in the search filter: MLflow's filter grammar cannot quote a value holding a
    quote (an ablation key names its selection, `split='test'`), so such a run was never found."""
    c = mlflow_client or client()
    found = c.get_experiment_by_name(experiment)
    if found is None:
        return None
    token = None
    while True:
        page = c.search_runs([found.experiment_id], f"attributes.status = '{status}'", max_results=1000,
                             order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            if run.data.tags.get(tag) == value:
                return run.info.run_id
        token = page.token
        if not token:
            return None


KEY_TAG = "auralsam2.key"  # what a run is of (an ablation grid, an evaluation): a killed one is continued


def continue_or_start_run(experiment: str, run_name: str, key: str, *, tags: Mapping[str, str] | None = None,
                          reuse_finished: bool = False, mlflow_client=None) -> str:
    """The RUNNING run tagged with `key` (left by a killed process: the re-run continues it rather
    than leaving it RUNNING for ever beside a new one), else, with `reuse_finished`, the newest
    FINISHED one (a re-run of finished work rewrites its outputs in place instead of adding a
    second copy), else a new run tagged with it."""
    c = mlflow_client or client()
    run_id = unfinished_run(experiment, KEY_TAG, key, c)
    if run_id is not None:
        reopen_run(run_id, c)  # a KILLED one runs again
    if run_id is None and reuse_finished:
        run_id = _run_tagged(experiment, KEY_TAG, key, "FINISHED", c)
    if run_id is not None:
        return run_id
    return start_run(experiment, run_name, tags={**(tags or {}), KEY_TAG: key}, mlflow_client=c)


def stopped_status(exc: BaseException) -> str:
    """The MLflow status of a run that ends on `exc`: KILLED for Ctrl-C / SIGTERM (the re-run
    continues it), FAILED for an error."""
    from prefect.exceptions import TerminationSignal  # SIGTERM inside a Prefect flow

    from auralsam2.utils import stop

    return "KILLED" if isinstance(exc, KeyboardInterrupt | TerminationSignal) or stop.requested() else "FAILED"


ERROR_TAG = "auralsam2.error"


def end_run(run_id: str, status: str = "FINISHED", mlflow_client=None, error: BaseException | None = None) -> None:
    """End an MLflow run; a FAILED one is tagged (`auralsam2.error`) with the line the command line
    prints for `error`."""
    c = mlflow_client or client()
    if status == "FAILED" and error is not None:
        c.set_tag(run_id, ERROR_TAG, error_line(error)[:5000])  # MLflow's tag value limit
    c.set_terminated(run_id, status)


def reopen_run(run_id: str, mlflow_client=None) -> None:
    """RUNNING again (a re-run continues a KILLED or FAILED run), without the last failure's error tag."""
    c = mlflow_client or client()
    if ERROR_TAG in c.get_run(run_id).data.tags:
        c.delete_tag(run_id, ERROR_TAG)
    c.update_run(run_id, status="RUNNING")


def end_run_on(run_id: str, exc: BaseException, mlflow_client=None) -> str:
    """End a run that stops on `exc` (KILLED for a stop, FAILED with its error tag); its status."""
    status = stopped_status(exc)
    end_run(run_id, status, mlflow_client, error=exc)
    return status


@contextlib.contextmanager
def parent_run(experiment: str, run_name: str, *, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """A parent run for a grid of nested runs: yields its id; FINISHED on exit (FAILED on error,
    KILLED when stopped)."""
    run_id = start_run(experiment, run_name, tags={"auralsam2.kind": "grid", **(tags or {})})
    try:
        yield run_id
    except BaseException as exc:
        end_run_on(run_id, exc)
        raise
    end_run(run_id, "FINISHED")


def run_exists(run_id: str, mlflow_client=None) -> bool:
    try:
        (mlflow_client or client()).get_run(run_id)
    except Exception:
        return False
    return True


class MlflowLogger:
    """`auralsam2.engine.RunLogger` for MLflow: step metrics are buffered and sent with `log_batch`
    (one database round trip per `flush_every` values instead of one per value)."""

    def __init__(self, run_id: str, mlflow_client=None, flush_every: int = 200) -> None:
        self.run_id = run_id
        self.client = mlflow_client or client()
        self.flush_every = flush_every
        self._buffer: list[Any] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), now, int(step)) for key, value in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:METRIC_BATCH], self._buffer[METRIC_BATCH:]
            self.client.log_batch(self.run_id, metrics=chunk)


def git_commit() -> str:
    """`<sha>` of the project checkout (`+dirty` when it has uncommitted changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def run_params(cfg: ExperimentConfig, cache_info: Mapping[str, Any] | None = None,
               cache_root: Path | None = None) -> dict[str, str]:
    """Params of a run: the flattened config, the cache fingerprint (id + fields), the ingest
    manifest's sha256 (the data fingerprint) and the git commit."""
    params: dict[str, Any] = dict(flatten_config(cfg))
    if cache_info is not None:
        params["cache.fingerprint_id"] = cache_info.get("fingerprint_id", "")
        for key, value in flatten_config(cache_info.get("fingerprint", {}), "cache.fingerprint.").items():
            if not key.startswith("cache.fingerprint.views.recipe"):
                params[key] = value
    if cache_root is not None and (cache_root / "manifest.parquet").is_file():
        params["data.manifest_sha256"] = sha256_file(cache_root / "manifest.parquet")
    params["git.commit"] = git_commit()
    return {k: ("None" if v is None else str(v))[:6000] for k, v in params.items()}


# Params a resumed run may change (MLflow params are immutable: the first value stays logged, and
# a changed one is also tagged `resumed.<param>` with its latest value). The split of a step into
# micro-steps may change only with the same clips per step (`flows.train` checks it).
RESUME_MUTABLE = ("train.stop_after_steps", "train.progress", "eval.progress", "git.commit", "train.prefetch",
                  "train.clips_per_step", "train.accumulate_steps", "train.checkpoint_fuser_blocks")


def log_params(run_id: str, params: Mapping[str, str], mlflow_client=None) -> None:
    """Log params in batches; a param already logged with the same value (a resumed run) is skipped,
    one in `RESUME_MUTABLE` keeps its first value (its latest is tagged `resumed.<param>`), any
    other change is an error."""
    from mlflow.entities import Param, RunTag

    c = mlflow_client or client()
    existing = c.get_run(run_id).data.params
    changed = [RunTag(f"resumed.{k}", v) for k, v in params.items()
               if k in existing and k in RESUME_MUTABLE and existing[k] != v]
    if changed:
        c.log_batch(run_id, tags=changed)
    fresh = [Param(k, v) for k, v in params.items()
             if existing.get(k) != v and not (k in existing and k in RESUME_MUTABLE)]
    clash = [p.key for p in fresh if p.key in existing]
    if clash:
        raise ValueError(f"MLflow run {run_id}: params {clash[:5]} were logged with other values; a resumed run "
                         "must use its own config (the run folder's config.yaml)")
    for start in range(0, len(fresh), PARAM_BATCH):
        c.log_batch(run_id, params=fresh[start : start + PARAM_BATCH])


def log_artifact(run_id: str, path: str | Path, artifact_path: str | None = None, mlflow_client=None) -> None:
    (mlflow_client or client()).log_artifact(run_id, str(path), artifact_path)


# ------------------------------------------------------------------ figures


def read_history(path: Path) -> list[dict[str, float]]:
    """The engine's `history.jsonl` (one dict per logging event, with `step`)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_png(history: Sequence[Mapping[str, float]], out: Path, title: str = "") -> Path | None:
    """Loss curves (train total and its terms) and the selection metric over steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "train/total" in h]
    select = [h for h in history if "select/J" in h]
    if not train:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train/total", "train/seg", "train/audiocon"):
        points = [(h["step"], h[key]) for h in train if key in h]
        if points:
            axes[0].plot(*zip(*points, strict=True), label=key.split("/", 1)[1])
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss (window mean)")
    axes[0].legend()
    if select:
        steps = [h["step"] for h in select]
        axes[1].plot(steps, [h["select/J"] for h in select], marker="o", label="selection J")
        axes[1].plot(steps, [h.get("select/best_J", float("nan")) for h in select], linestyle="--", label="best J")
        axes[1].legend()
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("J")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return out


def overlay_png(frames, gt, pred, title: str = "") -> bytes:
    """One clip as a PNG grid: a row per frame, columns frame | GT (green) | prediction (red).

    `frames` (T, H, W, 3) uint8, `gt`/`pred` (T, H, W) bool, all at the same size.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    frames = np.asarray(frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    header = 14 if title else 0
    canvas = Image.new("RGB", (3 * w + 4, t * h + 2 * (t - 1) + header), (255, 255, 255))
    for i in range(t):
        base = frames[i].astype(np.float32)
        cells = [base]
        for mask, colour in ((np.asarray(gt[i], bool), (0, 220, 0)), (np.asarray(pred[i], bool), (230, 0, 0))):
            tinted = base.copy()
            tinted[mask] = 0.45 * tinted[mask] + 0.55 * np.asarray(colour, np.float32)
            cells.append(tinted)
        for j, cell in enumerate(cells):
            canvas.paste(Image.fromarray(cell.clip(0, 255).astype(np.uint8)), (j * (w + 2), header + i * (h + 2)))
    if title:
        ImageDraw.Draw(canvas).text((2, 1), title[:120], fill=(0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
