"""How every command reports a user error: one red `error:` line on stderr and exit status 1.

`run_cli(app)` (what the `auralsam2` entry point `flows.cli:main` calls) runs the command line and turns every error that is about the
user's input, files or machine (bad config, damaged or missing file, busy folder, full disk, ...)
into that one line; `--debug` (or AURALSAM2_DEBUG=1) shows the traceback instead. Anything else is
a bug and keeps its traceback. Without `--debug`, Prefect's own error logs (flow and task run
tracebacks) are silenced so they do not bury the message.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from pathlib import Path

import typer

__all__ = ["describe", "error_line", "fail", "is_user_error", "run_cli", "set_debug"]

# user errors of modules that import torch: (module, class)
LAZY_USER_ERRORS = (("auralsam2.engine.loop", "DeviceMemoryError"), ("flows.train", "TrainProcessError"))

# how to get past a damaged or unreadable MLflow store (also `flows.tracking.StoreError`'s fix)
STORE_FIX = ("restore it from a backup, move it aside (the next run makes a new, empty store there), or point "
             "MLFLOW_TRACKING_URI at another store")

_STATE = {"debug": os.environ.get("AURALSAM2_DEBUG", "") not in ("", "0")}


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def set_debug(debug: bool) -> None:
    _STATE["debug"] = _STATE["debug"] or debug
    if _STATE["debug"]:
        os.environ["AURALSAM2_DEBUG"] = "1"  # and in the processes a command starts (torchrun's ranks)
    if not _STATE["debug"]:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
            # and for Prefect's own logging set-up, which resets the levels when Prefect is first
            # imported (after this, in commands that import it lazily) and in worker processes
            os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_{name.upper().replace('.', '_')}_LEVEL", "CRITICAL")
        # MLflow logs a store error with its traceback before raising it (the error: line says it)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _disk_full(exc: BaseException) -> str | None:
    """The one line for a full disk anywhere in `exc`'s chain (our writers name the file; SQLite,
    under MLflow, says "database or disk is full" and names nothing), else None."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return (f"no space left on {_volume(e.filename)} while writing {e.filename or 'a file'}; free some "
                    "space and re-run (finished work is kept and reused)")
    if any("database or disk is full" in str(e) for e in _chain(exc)):
        from auralsam2.paths import mlflow_tracking_uri, sqlite_path

        uri = mlflow_tracking_uri()
        db = sqlite_path(uri)
        return (f"no space left on {_volume(db)} while writing the MLflow store {db or uri}; free some space "
                "and re-run (finished work is kept and reused)")
    return None


def _store_error(exc: BaseException) -> str | None:
    """The one line for an MLflow SQLite store that went bad under a running command (read-only,
    damaged), anywhere in `exc`'s chain, else None (errors at open are `flows.tracking.StoreError`)."""
    import sqlite3

    for e in _chain(exc):
        if isinstance(e, sqlite3.DatabaseError) or type(e).__module__.startswith("sqlalchemy"):
            from auralsam2.paths import mlflow_tracking_uri, sqlite_path
            uri = mlflow_tracking_uri()
            text = str(getattr(e, "orig", None) or e).strip().splitlines()
            return f"the MLflow store {sqlite_path(uri) or uri}: {text[0] if text else type(e).__name__}; {STORE_FIX}"
    return None


def is_user_error(exc: BaseException) -> bool:
    """Errors the user can act on (input, files, disk, config), as opposed to bugs."""
    from pydantic import ValidationError

    if _disk_full(exc) is not None or _store_error(exc) is not None:
        return True

    from auralsam2.utils.locks import FolderBusyError

    known: list[type[BaseException]] = [ValueError, OSError, ValidationError, FolderBusyError]
    for module, name in LAZY_USER_ERRORS:  # loaded wherever they were raised (not importing torch here)
        if module in sys.modules:
            known.append(getattr(sys.modules[module], name))
    try:
        from data_specs.common import StrictModeError
        from data_specs.shards import ShardIntegrityError
        from feature_cache.schema import CacheError

        known += [StrictModeError, ShardIntegrityError, CacheError]
    except ImportError:  # pragma: no cover
        pass
    try:
        import pyarrow as pa

        known.append(pa.ArrowException)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, tuple(known))


def _volume(path: str | None) -> str:
    if not path:
        return "the output volume"
    p = Path(path).resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return f"the volume mounted at {p}"


def describe(exc: BaseException) -> str:
    """One line for a user error."""
    from pydantic import ValidationError

    if (full := _disk_full(exc)) is not None:
        return full
    if (store := _store_error(exc)) is not None:
        return store
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()]
        return f"invalid {exc.title}: " + "; ".join(parts)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc).strip() or type(exc).__name__
    return text if len(text.splitlines()) < 40 else "\n".join(text.splitlines()[:40]) + "\n..."


def error_line(exc: BaseException) -> str:
    """What the command line says of `exc` after `error: `; for a bug, its type and first line (the
    message of a failed Prefect flow run and the `auralsam2.error` tag of a failed MLflow run)."""
    if is_user_error(exc):
        return describe(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


INTERRUPTED = "interrupted; run the same command again to resume (finished work is kept)"
INTERRUPTED_TRAIN = "interrupted; run the same command with --resume to continue from the last checkpoint"


def _on_signal(signum: int, frame) -> None:  # noqa: ARG001 (signal handler signature)
    """Ctrl-C and SIGTERM: ask every loop of this process to stop (`auralsam2.utils.stop`), stop this
    command's worker processes, and unwind the main thread as KeyboardInterrupt (a second signal
    while unwinding is ignored: the first one's clean-up must finish)."""
    from auralsam2.utils import stop

    if stop.requested():
        return
    _STATE["signal"] = signum
    stop.request()
    stop_workers(signal.SIGTERM)
    raise KeyboardInterrupt


def _on_unraisable(hook) -> None:
    """A stop that landed in code whose errors Python only prints (a garbage-collection callback,
    `__del__`) is lost there: our KeyboardInterrupt, or Prefect's TerminationSignal inside a flow run.
    Deliver it again a moment later (`_on_alarm`), in the main thread's own code."""
    from auralsam2.utils import stop

    exc = hook.exc_value
    if isinstance(exc, KeyboardInterrupt) and stop.requested():
        _STATE["lost"] = None
    elif type(exc).__name__ == "TerminationSignal":  # prefect.exceptions, not imported here
        _STATE["lost"] = getattr(exc, "signal", signal.SIGTERM)
    else:
        sys.__unraisablehook__(hook)
        return
    signal.setitimer(signal.ITIMER_REAL, 0.05)


def _on_alarm(signum: int, frame) -> None:  # noqa: ARG001 (signal handler signature)
    lost = _STATE.pop("lost", None)
    handler = signal.getsignal(lost) if lost else None
    if callable(handler):
        handler(lost, frame)  # Prefect's inside a flow run (raises its TerminationSignal), else ours
    raise KeyboardInterrupt


def stop_workers(signum: int) -> None:
    """Send `signum` to this process's descendants in its own session (worker processes, torchrun ranks),
    not to a server started in a session of its own (the local Prefect server: it must answer the
    command's last state updates, and is stopped by it at exit)."""
    import psutil

    session = os.getsid(0)
    for child in psutil.Process().children(recursive=True):
        try:
            if os.getsid(child.pid) == session:
                child.send_signal(signum)
        except (OSError, psutil.Error):
            pass


def _interrupted() -> None:
    command = sys.argv[1:2]
    line = (INTERRUPTED_TRAIN if command == ["train"] and "--resume" not in sys.argv
            else "stopped serving" if command == ["serve"] else INTERRUPTED)
    typer.secho("\n" + line, fg=typer.colors.RED, err=True)  # (a progress bar may hold the line)
    sys.exit(128 + _STATE.get("signal", signal.SIGINT))


def run_cli(app) -> None:
    """Run the command line `app`; a user error is one `error:` line and exit status 1; Ctrl-C or
    SIGTERM stop it cleanly with one line and exit status 130 / 143."""
    if "--debug" in sys.argv[1:]:
        sys.argv.remove("--debug")
        _STATE["debug"] = True
    set_debug(_STATE["debug"])
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.unraisablehook = _on_unraisable
    try:
        app()
    except (KeyboardInterrupt, SystemExit) as exc:
        # typer turns a KeyboardInterrupt into exit status 130, silently
        if isinstance(exc, SystemExit) and not (exc.code == 130 or _STATE.get("signal")):
            raise
        _interrupted()
    except Exception as exc:  # noqa: BLE001 (sorted below: user errors get a line, bugs their traceback)
        if _STATE.get("signal") and not _STATE["debug"]:
            _interrupted()  # what the stop broke on its way out (a worker pool, a lost connection)
        if _STATE["debug"] or not is_user_error(exc):
            raise
        typer.secho(f"error: {describe(exc)}", fg=typer.colors.RED, err=True)
        typer.secho("(run again with --debug for the traceback)", err=True)
        sys.exit(1)
    except BaseException as exc:
        if type(exc).__name__ != "TerminationSignal":  # Prefect's SIGTERM, out of a flow run
            raise
        _STATE.setdefault("signal", getattr(exc, "signal", signal.SIGTERM))
        _interrupted()
    finally:
        # the command is done: a signal now would only cut its exit short (Prefect stopping its
        # server), and at finalisation Python puts back the default handlers, which kill silently
        # (an ignored signal it leaves ignored)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
