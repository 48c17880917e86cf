"""F-measure speed: the one-pass histogram curve vs the official 255-threshold loop.

Both compute the per-frame F-curves of 1000 frames of 224x224 (AVSBench's evaluation size) and
the per-call `Eval_Fmeasure` values for 5-frame calls (one AVSBench clip per call). The loop is
the official `_eval_pr` structure (per frame, per threshold: compare, count, divide), written here
and nowhere in the library; the tests use it as their oracle.

Run: `.venv/bin/python -m bench.bench_metrics [--quick] [--write]` (`--write` records the numbers
in bench/results/metrics.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch import Tensor

from auralsam2.evaluation import (
    AURALSAM2_RELEASED,
    AVSBENCH_OFFICIAL,
    StreamingEvaluator,
    fmeasure_curve,
    fmeasure_from_curves,
)

RESULTS = Path(__file__).parent / "results" / "metrics.md"


def loop_fmeasure_curve(logits: Tensor, gt: Tensor, n_thresholds: int = 255, beta2: float = 0.3) -> Tensor:
    """Reference (F, n) F-curves: the official per-frame, per-threshold loop, verbatim in structure.
    An all-zero curve for an empty-GT frame (what the official loop would compute if it ran)."""
    probs = torch.sigmoid(logits.float())
    gt = gt.float()
    thresholds = torch.linspace(0, 1 - 1e-10, n_thresholds)
    curves = torch.zeros(logits.shape[0], n_thresholds)
    for f in range(logits.shape[0]):
        prec, recall = torch.zeros(n_thresholds), torch.zeros(n_thresholds)
        for i in range(n_thresholds):
            y_temp = (probs[f] >= thresholds[i]).float()
            tp = (y_temp * gt[f]).sum()
            prec[i], recall[i] = tp / (y_temp.sum() + 1e-20), tp / (gt[f].sum() + 1e-20)
        f_score = (1 + beta2) * prec * recall / (beta2 * prec + recall)
        f_score[f_score != f_score] = 0
        curves[f] = f_score
    return curves


def loop_fmeasure(logits: Tensor, gt: Tensor, curves: Tensor | None = None) -> float:
    """Reference `Eval_Fmeasure` of one call: the official accumulation (skip empty GTs, running
    float32 mean of the curves, max; 0.0 when every GT is empty). `curves`: precomputed
    `loop_fmeasure_curve(logits, gt)`, to avoid running the loop twice."""
    curves = loop_fmeasure_curve(logits, gt) if curves is None else curves
    avg_f, img_num, score = 0.0, 0, torch.zeros(curves.shape[1])
    for f in range(gt.shape[0]):
        if torch.mean(gt[f].float()) == 0.0:
            continue
        avg_f = avg_f + curves[f]
        img_num += 1
        score = avg_f / img_num
    return score.max().item()


def make_frames(n_frames: int, size: int = 224, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Model-like logits (a soft blob around the object plus noise; some confident, some not) and
    gt masks (an ellipse; every 10th frame empty, as silent frames are)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    centre = torch.rand(n_frames, 2, generator=g) - 0.5
    radius = 0.2 + 0.4 * torch.rand(n_frames, 1, 1, generator=g)
    dist = ((xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2).sqrt() / radius
    gt = dist < 1
    gt[::10] = False
    scale = 2 + 10 * torch.rand(n_frames, 1, 1, generator=g)
    logits = scale * (1 - dist) + 1.5 * torch.randn(n_frames, size, size, generator=g)
    return logits, gt


def _best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _evaluator_seconds_per_clip(n_clips: int, threads: int) -> float:
    """StreamingEvaluator.add_clip on 10-frame clips of 1024x1024 logits and masks (SAM2's high-res
    output), scored under AVSBENCH_OFFICIAL (224) and AURALSAM2_RELEASED (1024) at once."""
    logits, gt = make_frames(10, size=1024, seed=1)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        evaluator = StreamingEvaluator([AVSBENCH_OFFICIAL, AURALSAM2_RELEASED], task="avs")
        start = time.perf_counter()
        for i in range(n_clips):
            evaluator.add_clip(f"clip{i}", logits, gt)
        return (time.perf_counter() - start) / n_clips
    finally:
        torch.set_num_threads(threads_before)


def main(quick: bool = False, write: bool = False, threads: int = 1) -> dict:
    """Times both on `threads` torch threads (1 by default: the 2 cores are shared with other jobs,
    and contended multi-threaded timings swing by 10x)."""
    load_start = round(os.getloadavg()[0], 2)
    n_frames = 50 if quick else 1000
    frames_per_call = 5
    logits, gt = make_frames(n_frames)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast_s, fast = _best_time(lambda: fmeasure_curve(logits, gt), repeats=5)
        loop_s, loop = _best_time(lambda: loop_fmeasure_curve(logits, gt), repeats=1)
    finally:
        torch.set_num_threads(threads_before)
    nonempty = gt.flatten(1).any(1)
    calls = [slice(s, s + frames_per_call) for s in range(0, n_frames, frames_per_call)]
    fast_calls = [fmeasure_from_curves(fast[c], nonempty[c]) for c in calls]
    loop_calls = [loop_fmeasure(logits[c], gt[c], curves=loop[c]) for c in calls]

    evaluator_s = _evaluator_seconds_per_clip(n_clips=2 if quick else 6, threads=threads)

    result = {
        "frames": n_frames,
        "size": logits.shape[-1],
        "torch_threads": threads,
        "fast_curve_s": round(fast_s, 4),
        "loop_curve_s": round(loop_s, 3),
        "speedup": round(loop_s / fast_s, 1),
        "max_abs_diff_curve": float((fast - loop).abs().max()),
        "max_abs_diff_call_F": max(abs(a - b) for a, b in zip(fast_calls, loop_calls, strict=True)),
        "curves_bitwise_equal": bool(torch.equal(fast, loop)),
        "evaluator_s_per_clip": round(evaluator_s, 3),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
    }
    print(
        f"F-measure curve, {n_frames} frames of {logits.shape[-1]}x{logits.shape[-1]}, {result['torch_threads']} torch threads"
    )
    for k, v in result.items():
        print(f"  {k:>22}: {v}")
    if write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Metrics benchmark: one-pass F-measure curve vs the official 255-threshold loop\n\n"
            f"Command: `.venv/bin/python -m bench.bench_metrics --write`. Machine: {platform.machine()} VM, "
            f"2 CPU cores shared with other jobs (noisy), no GPU; torch {torch.__version__}, "
            f"{result['torch_threads']} threads.\n\n"
            f"Input: {n_frames} frames of {result['size']}x{result['size']} synthetic logits and masks "
            "(every 10th GT empty); calls of 5 frames for the per-call F.\n\n"
            "| measure | value |\n|---|---|\n"
            f"| fast curve (best of 5) | {result['fast_curve_s']} s |\n"
            f"| official loop (1 run) | {result['loop_curve_s']} s |\n"
            f"| speed-up | **{result['speedup']}x** (target >= 20x) |\n"
            f"| max abs diff, curves | {result['max_abs_diff_curve']:.3g} (target <= 1e-6) |\n"
            f"| max abs diff, per-call F | {result['max_abs_diff_call_F']:.3g} |\n"
            f"| curves bitwise equal | {result['curves_bitwise_equal']} |\n"
            f"| StreamingEvaluator, one 10-frame 1024x1024 clip, 2 protocols | {result['evaluator_s_per_clip']} s |\n"
            f"\nLoad average (1 min) at start / end of the run: {result['load_start']} / {result['load_end']}. "
            "The speed-up is a ratio of two timings taken back to back in one process on the same thread; "
            "absolute times swing several-fold with the load of the shared cores, the ratio much less.\n"
        )
        print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--write", action="store_true", help=f"record the numbers in {RESULTS}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    main(quick=args.quick, write=args.write, threads=args.threads)
