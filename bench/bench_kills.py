"""The seeded kill -9 sweep (`bench.kill_injection`): every stage killed at random moments, then re-run;
the verdicts counted (issue 16: every trial `ok`). Recorded in bench/results/kills.md."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from bench.kill_injection import markdown, sweep

RESULTS = Path(__file__).resolve().parent / "results" / "kills.md"
SEED = 0


def main(quick: bool = False, write: bool = False) -> dict:
    trials = 1 if quick else 4
    home = Path(tempfile.mkdtemp(prefix="auralsam2-kills-"))
    started = time.monotonic()
    try:
        results, reference_s = sweep(home, trials=trials, seed=SEED, log=lambda line: None)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    seconds = time.monotonic() - started
    bad = [r for r in results if r.verdict != "ok"]
    if write:
        from bench.__main__ import machine

        lines = "\n".join(f"- {r.stage} killed at {r.at_s} s: **{r.verdict}** {r.detail[:200]}" for r in bad) or "none"
        RESULTS.write_text(
            f"## kills\n\nMeasured {dt.date.today()} on {machine()}: `python -m bench.kill_injection --trials {trials} "
            f"--seed {SEED}` ({len(results)} kills, {seconds:.0f} s with the snapshots). Each trial SIGKILLs the "
            "command at a moment drawn uniformly from 5-95 % of the uninterrupted run's wall time, then runs the "
            "same command again (`train --resume`); `ok` = no process left behind, re-run exit 0, outputs equal "
            "to the uninterrupted run's, no MLflow run RUNNING, no duplicated row in any DuckDB view.\n\n"
            f"{markdown(results, reference_s)}\n\nNot ok: {lines}\n")
    return {"kills": len(results), "ok": len(results) - len(bad), "seconds": round(seconds, 1)}
