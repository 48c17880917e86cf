"""The side-by-side training benchmark (issue 15) in its CPU smoke mode: both loops run through the
real modules (JPEG DataLoader + encoder; cached levels, StepReader, TrainingStep, compile_model),
FLOPs are counted and the table is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_in_smoke_mode(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.gpu_train_bench", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_train_bench.json").read_text())
    (row,) = result["rows"]
    assert row["clips_per_step"] == 2 and row["ours_compiled"] == "fuser"
    for loop in ("released", "ours"):
        assert row[f"{loop}_train_frames_per_s"] > 0 and row[f"{loop}_flops_per_step"] > 0
    # (b) counts the fuser + tracking of 2 clips; (a) one clip plus the image encoder
    assert row["ours_flops_per_step"] != row["released_flops_per_step"]
    assert row["inference_single_frames_per_s"] > 0 and row["inference_batched_frames_per_s"] > 0
    table = (tmp_path / "gpu_train_bench.md").read_text()
    assert "(a) released-style" in table and "(b) ours" in table and "MFU against n/a (CPU)" in table


def test_the_benchmark_halves_clips_on_out_of_memory_and_keeps_other_backbones(monkeypatch):
    """Injected faults: (b)'s forward runs out of device memory above one clip per step, and the
    second backbone does not exist. The run measures (b) at the clips that fit, says which did not,
    records the failed backbone with its error, and reports after each backbone (a run cut short
    keeps what it measured)."""
    import torch

    from auralsam2.engine.loop import TrainingStep
    from bench import gpu_train_bench as bench

    forward = TrainingStep.forward
    tried: list[int] = []

    def out_of_memory_above_one_clip(self, items, generator):
        tried.append(len(items))
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(self, items, generator)

    monkeypatch.setattr(TrainingStep, "forward", out_of_memory_above_one_clip)
    reports: list[int] = []
    result = bench.run(["tiny", "no_such_sam2_config"], frames=2, clips=2, steps=1, warmup=0, image_size=128,
                       compile_mode="off", workers=0, smoke=True, report=lambda r: reports.append(len(r["rows"])))
    ok, failed = result["rows"]
    assert tried[0] == 2 and set(tried[1:]) == {1}
    assert ok["clips_per_step"] == 1 and ok["clips_out_of_memory"] == [2] and ok["ours_train_frames_per_s"] > 0
    assert ok["inference_clips"] == 2  # inference keeps the asked batch: no backward, far less memory
    assert failed["config"] == "no_such_sam2_config" and "error" in failed and "ours_train_step_s" not in failed
    assert reports == [1, 2]
    table = bench.to_markdown(result)
    assert "ran out of device memory at 2 clips per step; measured at 1" in table
    assert "no_such_sam2_config: FAILED" in table


def test_activation_memory_counts_what_backward_keeps_by_module():
    """The sizing tool of `train.clips_per_step`: the tensors a clip keeps for backward, once each,
    charged to the modules that saved them; more frames keep more, and the fuser's blocks are
    among the modules charged."""
    from bench.activation_memory import by_part, saved_for_backward

    two, four = (saved_for_backward("tiny", frames, 128, smoke=True) for frames in (2, 4))
    assert 1.5 * two["total_bytes"] < four["total_bytes"] == sum(four["by_module"].values())
    parts = by_part(four["by_module"])
    assert parts["fuser.f_blocks"] > 0 and parts["sam2.sam_mask_decoder"] > 0 and parts["audio_encoder.vggish"] > 0


def test_busy_time_counts_concurrent_kernels_once():
    """The GPU's busy time per step (and the pipeline bench's library time) is the union of the
    intervals: kernels on several streams, calls in parallel threads, count once."""
    from bench.bench_pipeline import covered

    assert covered([]) == 0
    assert covered([(0, 2), (1, 3), (5, 6), (5.5, 5.7), (10, 10)]) == 4
    assert covered([(5, 6), (0, 10)]) == 10
