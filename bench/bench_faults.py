"""The seeded fault-injection sweep (`bench.fault_injection`): every file kind the pipeline writes,
every fault, the real command that reads it; the verdicts counted (issue 16: 0 silent, 0 crash,
0 traceback). Recorded in bench/results/faults.md."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from bench.fault_injection import BAD, FAULTS, sweep

RESULTS = Path(__file__).resolve().parent / "results" / "faults.md"
SEED = 0


def main(quick: bool = False, write: bool = False) -> dict:
    per_kind = 2 if quick else 12
    home = Path(tempfile.mkdtemp(prefix="auralsam2-faults-"))
    try:
        result = sweep(home, per_kind=per_kind, seed=SEED, log=lambda line: None)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    totals = result.totals()
    by_fault = Counter((t.fault, t.verdict) for t in result.trials)
    if write:
        from bench.__main__ import machine

        fault_rows = "\n".join(f"| {f} | {sum(n for (g, _), n in by_fault.items() if g == f)} | "
                               + ", ".join(f"{v} {n}" for (g, v), n in sorted(by_fault.items()) if g == f) + " |"
                               for f in FAULTS)
        bad = "\n".join(f"- {t.kind} `{t.file}` {t.fault} ({t.detail}) -> {t.consumer}: **{t.verdict}**"
                        for t in result.bad()) or "none"
        RESULTS.write_text(
            f"## faults\n\nMeasured {dt.date.today()} on {machine()}: `python -m bench.fault_injection --per-kind "
            f"{per_kind} --seed {SEED}` ({len(result.trials)} trials, {result.seconds:.0f} s with the workspace "
            "build). One file of a workspace written by the real commands (tiny SAM2) is damaged per trial, "
            "then the real command that reads it runs; verdicts as in `bench/fault_injection.py`.\n\n"
            f"{result.markdown()}\n\nBy fault:\n\n| fault | trials | verdicts |\n|---|---:|---|\n{fault_rows}\n\n"
            f"Not acceptable: {bad}\n")
    return {"trials": len(result.trials), "seconds": round(result.seconds, 1),
            **{v: totals[v] for v in totals}, "not_acceptable": sum(totals[v] for v in BAD)}
