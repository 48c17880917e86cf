"""The ephemeral Prefect server of one command, run so that it never outlives that command.

Prefect starts a local API server (`python -m uvicorn ...`) in a subprocess when a command runs a
flow without `PREFECT_API_URL`, and stops it at exit; a command killed with SIGKILL never gets to,
so the server would run on, orphaned. `flows._env.guard_ephemeral_server()` (applied when `flows` is imported)
starts that same server through this module instead, which watches its parent: when the parent
is gone (the process is re-parented), the server is terminated. The parent's pid comes as
`--parent-pid N` (the guard adds it): reading `os.getppid()` here, after the imports, would record
init instead when the command was killed while its server was still starting.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time

POLL_S = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly on SIGTERM
    time.sleep(10)
    os._exit(1)


if __name__ == "__main__":
    args = sys.argv[1:]
    parent = os.getppid()
    if args[:1] == ["--parent-pid"]:
        parent, args = int(args[1]), args[2:]
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    sys.argv = ["uvicorn", *args]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
