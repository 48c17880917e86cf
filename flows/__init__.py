"""Prefect flows (ingest, cache, train, evaluate, pipeline, ablate) and the `auralsam2` command line.

The flows are thin: each task calls a plain library function. Importing this package applies the
embedded defaults (Prefect and MLflow state under the data folder) before Prefect is imported.
"""

from flows._env import configure as _configure
from flows._env import guard_ephemeral_server as _guard_ephemeral_server

_configure()
_guard_ephemeral_server()  # a command killed with SIGKILL leaves no Prefect server behind
