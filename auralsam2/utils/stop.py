"""A stop request for this process: the command line sets it on Ctrl-C or SIGTERM, and the long loops
(training steps, evaluation items, cache shards, ingest clips) check it between units of work, so a
loop running in a worker thread stops too, not only the main thread the signal interrupts."""

from __future__ import annotations

import threading

__all__ = ["check", "request", "requested"]

_STOP = threading.Event()


def request() -> None:
    _STOP.set()


def requested() -> bool:
    return _STOP.is_set()


def check() -> None:
    """Raise KeyboardInterrupt when a stop was requested (between two units of work)."""
    if _STOP.is_set():
        raise KeyboardInterrupt
