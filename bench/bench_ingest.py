"""Ingest throughput: clips/s and MB/s of ingest vs a raw sequential read of the same files.

Three numbers on the same generated AVSS tree (page cache warm for all, so this measures the
ingest's own work, not the disk):
- raw read: read every source file's bytes once, sequentially (the floor for any ingest);
- library ingest: read + decode-check + tar + sidecar, via `data_specs` with no orchestration;
- flow ingest: the same through the Prefect flow (one task per shard), excluding the one-time
  ephemeral-server start, which is measured separately by a warm-up flow run.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from data_specs.ingest import PALETTE_MASKS, finalize, prepare
from data_specs.shards import clip_files, write_shard
from data_specs.synth import SynthConfig, generate_world


def main(quick: bool = False) -> dict:
    import flows  # noqa: F401  (Prefect defaults under the data folder)
    from flows.ingest import run_ingest

    clips = 8 if quick else 40
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        world = work / "world"
        generate_world(world, SynthConfig(seed=1, clips=clips, size=160), progress=False)
        root = world / "AVSBench"
        plan = prepare("avss", root, work / "probe")
        files = [c.path(p) for s in plan.shards for c in s.clips for p in clip_files(c)]
        n_clips = sum(len(s.clips) for s in plan.shards)
        total = sum(f.stat().st_size for f in files)

        t = time.perf_counter()
        for f in files:
            f.read_bytes()
        raw_s = time.perf_counter() - t

        t = time.perf_counter()
        plan = prepare("avss", root, work / "lib")
        results = [write_shard(s, Path(plan.out) / "shards", palette_masks="avss" in PALETTE_MASKS) for s in plan.shards]
        finalize(plan, results)
        lib_s = time.perf_counter() - t

        run_ingest("avss", root, work / "warmup", progress=False)  # starts Prefect's ephemeral server
        t = time.perf_counter()
        run_ingest("avss", root, work / "flow", progress=False)
        flow_s = time.perf_counter() - t

        t = time.perf_counter()
        rerun = run_ingest("avss", root, work / "flow", progress=False)
        rerun_s = time.perf_counter() - t
        assert rerun.shards_skipped == rerun.shards
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = total / 1e6
    result = {
        "clips": n_clips, "files": len(files), "MB": round(mb, 2),
        "raw_read_s": round(raw_s, 3), "raw_MBps": round(mb / raw_s, 1), "raw_clips_per_s": round(n_clips / raw_s, 1),
        "library_ingest_s": round(lib_s, 3), "library_MBps": round(mb / lib_s, 1),
        "library_clips_per_s": round(n_clips / lib_s, 1),
        "flow_ingest_s": round(flow_s, 3), "flow_MBps": round(mb / flow_s, 1), "flow_clips_per_s": round(n_clips / flow_s, 1),
        "rerun_all_skipped_s": round(rerun_s, 3),
    }
    print("ingest benchmark (AVSS layout, synthetic world, warm page cache)")
    for k, v in result.items():
        print(f"  {k:>24}: {v}")
    return result


if __name__ == "__main__":
    main()
