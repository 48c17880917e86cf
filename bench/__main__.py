"""`make bench` / `python -m bench [--quick] [NAME ...]`: run the benchmarks, then rebuild BENCHMARKS.md.

Each `bench/bench_<area>.py` exposes `main(quick=False, ...) -> dict`; those that accept `write=True`
record their own `bench/results/<area>.md`, the others get a table of the numbers they return.
Each runs in its own process (real-size SAM2 models take GBs; nothing leaks between benchmarks).
BENCHMARKS.md is the machine description followed by every `bench/results/*.md` (the benchmarks' own
first, then results recorded by hand from GPU runs: `bench/results/gpu.md`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = ["ingest", "sam2_backbone", "fuser", "metrics", "feature_cache", "train", "pipeline"]

RUNNER = """
import inspect, json, sys, importlib
name, quick, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
module = importlib.import_module("bench." + name)
kwargs = {"quick": quick}
if "write" in inspect.signature(module.main).parameters:
    kwargs["write"] = True
result = module.main(**kwargs)
with open(out, "w") as f:
    json.dump(result, f, default=str)
"""


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {platform.machine()}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def areas() -> list[str]:
    found = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return [a for a in ORDER if a in found] + [a for a in found if a not in ORDER]


def run(area: str, quick: bool) -> None:
    out = RESULTS / f".{area}.json"
    started = dt.datetime.now()
    subprocess.run([sys.executable, "-c", RUNNER, f"bench_{area}", "1" if quick else "0", str(out)], check=True)
    md = RESULTS / f"{area}.md"
    if not md.is_file() or dt.datetime.fromtimestamp(md.stat().st_mtime) < started:
        result = json.loads(out.read_text())
        rows = "\n".join(f"| {k} | {v} |" for k, v in result.items()) if isinstance(result, dict) else str(result)
        md.write_text(f"## {area}\n\nMeasured {started:%Y-%m-%d} on {machine()}.\n\n| measure | value |\n|---|---|\n{rows}\n")
    out.unlink(missing_ok=True)


def assemble(out: Path | None = None) -> None:
    """Write BENCHMARKS.md (or `out`) from the machine line and every `bench/results/*.md`."""
    parts = [
        "# Benchmarks\n",
        "Produced by `make bench` (`python -m bench`), which runs every `bench/bench_*.py` and collects their\n"
        "`bench/results/*.md` here. Timing targets live here, never in tests.\n",
        f"Last assembled {dt.date.today()} on: {machine()}.\n",
    ]
    names = areas()
    names += sorted(p.stem for p in RESULTS.glob("*.md") if p.stem not in names)  # e.g. gpu.md (device runs)
    for area in names:
        md = RESULTS / f"{area}.md"
        if md.is_file():
            parts.append(md.read_text().strip() + "\n")
    (out or HERE.parent / "BENCHMARKS.md").write_text("\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {areas()})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--assemble-only", action="store_true", help="only rebuild BENCHMARKS.md")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not args.assemble_only:
        for area in args.names or areas():
            print(f"== bench {area}", flush=True)
            run(area, args.quick)
    assemble()
    print(f"wrote {HERE.parent / 'BENCHMARKS.md'}")


if __name__ == "__main__":  # bench_kills / bench_faults import machine() from here
    main()
