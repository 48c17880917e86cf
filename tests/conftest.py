"""Test session setup: every output (data folder, Prefect home, MLflow store) goes to a temp folder.

The variables are set at import time, before any test module imports `flows` (which reads them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="auralsam2-tests-"))
os.environ["AURALSAM2_HOME"] = str(_SESSION_HOME / "data")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME
