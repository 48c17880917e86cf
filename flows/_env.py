"""Embedded defaults for the orchestration stack, set before Prefect is imported.

Everything lands under the data folder (`$AURALSAM2_HOME` or ./data): Prefect's home (its SQLite
database and result storage) and, by `auralsam2.paths.mlflow_tracking_uri`, the MLflow store. Any
variable already set in the environment wins, so pointing at a real Prefect server
(`PREFECT_API_URL`) or MLflow server (`MLFLOW_TRACKING_URI`) needs no code change.
"""

from __future__ import annotations

import os

from auralsam2.paths import data_home


def configure() -> None:
    home = data_home()
    # Prefect cannot create its home under a missing folder, and then only reports a timeout.
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
