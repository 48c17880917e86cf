"""Prefect flows (ingest, cache, train, evaluate, pipeline, ablate) and the `auralsam2` command line.

The flows are thin: each task calls a plain library function. Importing this package applies the
embedded defaults (Prefect and MLflow state under the data folder) before Prefect is imported.
"""

from flows._env import configure as _configure

_configure()
