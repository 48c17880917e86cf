"""Ctrl-C and SIGTERM at seeded moments of every stage (`bench.kill_injection --signals INT,TERM`,
issue 33: every trial `ok`, each command stopped within seconds). Recorded in bench/results/signals.md."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from bench.kill_injection import STOP_S, markdown, sweep

RESULTS = Path(__file__).resolve().parent / "results" / "signals.md"
SEED = 3


def main(quick: bool = False, write: bool = False) -> dict:
    trials = 2 if quick else 4
    home = Path(tempfile.mkdtemp(prefix="auralsam2-signals-"))
    started = time.monotonic()
    try:
        results, reference_s = sweep(home, trials=trials, seed=SEED, log=lambda line: None, signals=("INT", "TERM"))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    seconds = time.monotonic() - started
    bad = [r for r in results if r.verdict != "ok"]
    longest = max(r.stop_s for r in results)
    if write:
        from bench.__main__ import machine

        lines = "\n".join(f"- {r.stage} SIG{r.signal} at {r.at_s} s: **{r.verdict}** {r.detail[:200]}"
                          for r in bad) or "none"
        RESULTS.write_text(
            f"## signals\n\nMeasured {dt.date.today()} on {machine()}: `python -m bench.kill_injection --signals "
            f"INT,TERM --trials {trials} --seed {SEED}` ({len(results)} trials, {seconds:.0f} s with the snapshots). "
            "Each trial sends Ctrl-C (SIGINT to the command's process group, as a terminal does) or SIGTERM (to the "
            "command alone) at a moment drawn uniformly from 5-95 % of the uninterrupted run's wall time; `ok` = the "
            f"command exits 130 / 143 within {STOP_S:.0f} s with one `interrupted` line and no traceback, nothing it "
            "started is left, its MLflow runs are KILLED (none FAILED or RUNNING), and the same command again "
            f"gives the uninterrupted run's outputs. Longest stop: {longest:.1f} s.\n\n"
            f"{markdown(results, reference_s)}\n\nNot ok: {lines}\n")
    return {"trials": len(results), "ok": len(results) - len(bad), "longest_stop_s": longest,
            "seconds": round(seconds, 1)}
