"""Test session setup: every output (data folder, Prefect home, MLflow store) goes to a temp folder,
removed when the session passes (~180 MB each) and kept, with its path printed, when it fails or
with `AURALSAM2_KEEP_TEST_HOME=1`.

The variables are set at import time, before any test module imports `flows` (which reads them).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="auralsam2-tests-"))
_PASSED: list[bool] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _PASSED.append(exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED))


def _remove_session_home() -> None:
    # at interpreter exit, after Prefect's own exit handlers (registered later, run earlier) have
    # stopped the local server that writes into the folder
    if _PASSED == [True] and os.environ.get("AURALSAM2_KEEP_TEST_HOME") != "1":
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)
    else:
        print(f"\ntest outputs kept in {_SESSION_HOME}", file=sys.stderr)


atexit.register(_remove_session_home)
os.environ["AURALSAM2_HOME"] = str(_SESSION_HOME / "data")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

# the embedded Prefect defaults (`flows._env`) before any test module imports Prefect, which reads
# its settings once (as the command line does: `flows` first)
import flows  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny-tensor tests are dominated by OpenMP spin-waits with several threads on a loaded 2-core
    machine (measured ~50x slower); one thread keeps the suite fast and its numbers repeatable."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """A training run with `train.deterministic` (or `train.threads`) sets torch's process-wide
    switches; put them back after each test so no test runs under another's settings."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME
