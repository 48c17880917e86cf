"""Every trial of the untrusted-input probe (`bench.untrusted_probe`, issue 33: every trial `ok`, or
`skipped` where the machine cannot set it up). Recorded in bench/results/untrusted.md."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from bench.fault_injection import prefect_server
from bench.untrusted_probe import build_workspace, markdown, run_trials

RESULTS = Path(__file__).resolve().parent / "results" / "untrusted.md"


def main(quick: bool = False, write: bool = False) -> dict:
    home = Path(tempfile.mkdtemp(prefix="auralsam2-probe-"))
    started = time.monotonic()
    try:
        with prefect_server(home) as url:
            ws = build_workspace(home / "workspace", url)
            ws.use()
            verdicts = run_trials(ws, home / "scratch", fast_only=quick, log=lambda line: None)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    seconds = time.monotonic() - started
    counts = {v: sum(x.verdict == v for x in verdicts) for v in ("ok", "failed", "skipped")}
    if write:
        from bench.__main__ import machine

        failed = "\n".join(f"- `{v.name}`: {v.detail[:300]}" for v in verdicts if v.verdict != "ok") or "none"
        RESULTS.write_text(
            f"## untrusted\n\nMeasured {dt.date.today()} on {machine()}: `python -m bench.untrusted_probe"
            f"{' --fast' if quick else ''}` ({len(verdicts)} trials, {seconds:.0f} s with the workspace). Each "
            "trial plants one hostile input or one ordinary mistake and runs the real command; `ok` = exit 1 with "
            "one `error:` line naming the thing (or success where the input is only odd), no traceback, nothing "
            "outside the command's own output touched, no payload run, memory and time bounded. Ctrl-C and "
            "SIGTERM: `signals.md`.\n\n"
            f"{markdown(verdicts)}\n\nNot ok: {failed}\n")
    return {"trials": len(verdicts), **counts, "seconds": round(seconds, 1)}
