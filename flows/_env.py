"""Embedded defaults for the orchestration stack, set before Prefect is imported.

Everything lands under the data folder (`$AURALSAM2_HOME` or ./data): Prefect's home (its SQLite
database), the pipeline steps' cached results (also when PREFECT_HOME points elsewhere) and, by `auralsam2.paths.mlflow_tracking_uri`, the MLflow store. Any
variable already set in the environment wins, so pointing at a real Prefect server
(`PREFECT_API_URL`) or MLflow server (`MLFLOW_TRACKING_URI`) needs no code change.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

from auralsam2.paths import data_home, sqlite_uri


def configure() -> None:
    home = data_home()
    # Prefect cannot create its home under a missing folder, and then only reports a timeout.
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect builds its database URL from the home path unquoted (a `?` or `%41` in it names another file)
    prefect_db = Path(os.environ["PREFECT_HOME"]).expanduser() / "prefect.db"
    os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", sqlite_uri(prefect_db, "sqlite+aiosqlite"))
    # the pipeline steps' cached results point at outputs in the data folder: they live there too, so
    # a scheduled run (its server's PREFECT_HOME) and `auralsam2 run` skip each other's finished steps
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(home / "prefect" / "storage"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


# ------------------------------------------------------------------ the ephemeral Prefect server
# Prefect starts a local API server (`python -m uvicorn ...`) in a subprocess when a command runs a
# flow without PREFECT_API_URL, and stops it at exit; a command killed with SIGKILL never gets to.
# The guard below starts that same server through `flows._prefect_server`, which ends with its parent.

SERVER_MODULE = "prefect.server.api.server"


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches Prefect's server module when something imports it (importing it up front costs ~1 s,
    which commands that run no flow should not pay)."""

    def find_spec(self, name, path, target=None):
        if name != SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:  # pragma: no cover
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


def guard_ephemeral_server() -> None:
    """Make Prefect's ephemeral server (`SubprocessASGIServer`) start through `flows._prefect_server`, now if
    Prefect's server module is loaded, else when it is."""
    if SERVER_MODULE in sys.modules:
        _patch(sys.modules[SERVER_MODULE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _patch(server) -> None:
    cls = server.SubprocessASGIServer
    if getattr(cls, "_auralsam2_guarded", False):
        return
    original = cls._run_uvicorn_command

    def run_guarded(self):
        _check_prefect_home()
        popen = server.subprocess.Popen

        def guarded_popen(args, *rest, **kwargs):
            if list(args[1:3]) == ["-m", "uvicorn"]:
                # the parent's pid goes along: the server reads its own parent only after its imports,
                # by which time a killed command's server has been re-parented already
                args = [args[0], "-m", "flows._prefect_server", "--parent-pid", str(os.getpid()), *args[3:]]
                # its own session: a Ctrl-C at the terminal reaches the command, not its server, which
                # must answer the command's last state updates (Prefect stops it at the command's exit)
                kwargs["start_new_session"] = True
            return popen(args, *rest, **kwargs)

        # only this call's Popen is redirected (the module attribute is restored at once)
        server.subprocess = _SubprocessProxy(server.subprocess, guarded_popen)
        try:
            return original(self)
        finally:
            server.subprocess = server.subprocess.module

    cls._run_uvicorn_command = run_guarded
    cls._auralsam2_guarded = True


def _check_prefect_home() -> None:
    """Fail in a second, not after minutes of retries, when the server's database cannot be written."""
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    existing = next(p for p in (home, *home.parents) if p.exists())
    db = home / "prefect.db"
    if not os.access(existing, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise PermissionError(f"{db if db.exists() else home}: Prefect's home (its local server's database) is not "
                              "writable; make it writable, set PREFECT_HOME to a writable folder, or PREFECT_API_URL "
                              "to a running Prefect server")


class _SubprocessProxy:
    """The `subprocess` module with another `Popen` (seen by Prefect's server module only)."""

    def __init__(self, module, popen):
        self.module = module
        self.Popen = popen

    def __getattr__(self, name):
        return getattr(self.module, name)


