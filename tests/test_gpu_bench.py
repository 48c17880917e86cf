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
