"""The synthetic demo end to end: wall time per step, the share spent in orchestration, and what
the model learnt (full vs visual-only J on the multi-source test split).

Runs `auralsam2 demo` in a fresh data folder (the same code path `make demo` takes). The
orchestration share is the pipeline's wall time minus the time spent inside the library calls the
Prefect tasks make (ingest shards, cache shards, training runs, evaluations, ablation summary),
measured by wrapping those calls; it therefore includes Prefect's ephemeral-server start, task and
flow bookkeeping, and the flow glue. Target: <= 5 % (issue 8), demo <= 5 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.md"


@contextlib.contextmanager
def _timed(targets: list[tuple[object, str]], totals: dict[str, float]) -> Iterator[None]:
    """Wrap `module.attr` callables so their wall time accumulates in `totals[attr]`."""
    saved = []
    for module, attr in targets:
        original = getattr(module, attr)

        def wrapper(*args, __original=original, __name=attr, **kwargs):
            t = time.perf_counter()
            try:
                return __original(*args, **kwargs)
            finally:
                totals[__name] = totals.get(__name, 0.0) + time.perf_counter() - t

        saved.append((module, attr, original))
        setattr(module, attr, wrapper)
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)


def main(quick: bool = False, write: bool = False) -> dict:
    home = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    previous = os.environ.get("AURALSAM2_HOME")
    os.environ["AURALSAM2_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    try:
        import data_specs.ingest as ingest_lib
        import data_specs.synth as synth_mod
        import feature_cache.build as cache_lib
        import feature_cache.writer as cache_writer
        import flows.ablate as ablate_mod
        import flows.evaluate as evaluate_mod
        import flows.ingest as ingest_flow_mod
        import flows.train as train_mod
        from flows.cli import demo

        totals: dict[str, float] = {}
        targets = [
            (synth_mod, "generate_world"), (ingest_lib, "prepare"), (ingest_flow_mod, "prepare"), (ingest_flow_mod, "write_shard"),
            (ingest_flow_mod, "finalize"), (cache_writer, "build_shard"), (cache_lib, "build_text"),
            (cache_lib, "plan_cache"), (cache_lib, "finalize_cache"), (train_mod, "train_run"), (evaluate_mod, "evaluate_split"),
            (ablate_mod, "summary_png"), (ablate_mod, "selection_metrics"),
        ]
        targets = [(m, a) for m, a in targets if hasattr(m, a)]
        started = time.perf_counter()
        with _timed(targets, totals):
            outcome = demo(clips=8 if quick else None, seed=0, grid="demo")
        total = time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop("AURALSAM2_HOME", None)
        else:
            os.environ["AURALSAM2_HOME"] = previous
        shutil.rmtree(home, ignore_errors=True)

    library = sum(totals.values())
    result = {"demo_wall_s": round(total, 1), "library_s": round(library, 1),
              "orchestration_and_glue_s": round(total - library, 1),
              "orchestration_share": round((total - library) / total, 3),
              **{f"in_{k}_s": round(v, 1) for k, v in sorted(totals.items())},
              **{f"step_{k}_s": round(v, 1) for k, v in outcome["timings"].items()},
              **{f"J_{row}": round(r["J"], 3) for row, r in outcome["rows"].items()},
              **{f"F_{row}": round(r["F"], 3) for row, r in outcome["rows"].items()}}
    print("demo pipeline benchmark")
    for k, v in result.items():
        print(f"  {k:>28}: {v}")
    return result


if __name__ == "__main__":
    main()
