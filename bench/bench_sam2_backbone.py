"""Frozen SAM2 backbone benchmark: why the feature cache pays off.

Measures, for Hiera-B+ (SAM 2.0 config, the released family) at 1024² with random weights on CPU:

1. image-encoder time per frame (`encode_frames`, fp32, no autocast on CPU);
2. compact cache bytes per frame (`encode_frames_compact`, bf16) vs the naive three-level 16-bit
   pyramid (42 MiB);
3. one 5-frame tracked clip forward+backward (memory attention + encoder, prompted decoder, loss on
   the 3 high-res masks of every frame) from cached pyramids (compact bf16 -> `expand_compact`) vs
   the same step including the image encoder. The prompts are leaf tensors standing in for the
   AuralFuser output, so the fuser's own cost is excluded from both sides.

Plus the tiny test config's 5-frame clip forward+backward (the unit-test workload).
Run: `.venv/bin/python -m bench.bench_sam2_backbone` (`main(quick=True)`: 512², 2 frames, 1 repetition).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from auralsam2.backbone import (
    DecoderPrompts,
    build_sam2_model,
    compact_bytes_per_frame,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    track_clip,
)

NAIVE_BYTES_1024 = 256 * (256**2 + 128**2 + 64**2) * 2  # three 256-ch levels in fp16/bf16: 42 MiB


def _timed(fn, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _clip_step(model, pyramid, prompts_seed: int = 0) -> None:
    """Forward + backward of one tracked clip with stand-in fuser prompts (leaf tensors)."""
    n = pyramid.s16.shape[0]
    c, hw = model.hidden_dim, model.sam_image_embedding_size**2
    gen = torch.Generator().manual_seed(prompts_seed)
    dense = [(0.1 * torch.randn(n, hw, c, generator=gen)).requires_grad_() for _ in range(3)]
    sparse = [torch.randn(n, c, generator=gen).requires_grad_() for _ in range(3)]
    outs = track_clip(model, pyramid, DecoderPrompts(dense, sparse), cond_frame=n // 2)
    target = torch.zeros_like(outs[0].high_res_masks)
    target[..., : target.shape[-2] // 2, :] = 1
    loss = sum(F.binary_cross_entropy_with_logits(o.high_res_masks, target) for o in outs)
    loss.backward()
    assert sparse[0].grad is not None


def _bench_tiny(reps: int) -> list[float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_sam2_model("tiny")
        pyramid = encode_frames(model, torch.randn(5, 3, 128, 128))
        _clip_step(model, pyramid)  # warm-up
        return _timed(lambda: _clip_step(model, pyramid), reps)
    finally:
        torch.set_num_threads(threads)


def main(quick: bool = False) -> dict:
    torch.set_num_threads(2)
    size = 512 if quick else 1024
    frames = 2 if quick else 5
    reps = 1 if quick else 2
    load_before = os.getloadavg()

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_sam2_model("sam2_hiera_b+", image_size=size)
    build_s = time.perf_counter() - t0
    images = torch.randn(frames, 3, size, size)

    warm = encode_frames(model, images[:1])  # warm-up (first-call allocations)
    naive_per_frame = sum(x.numel() for x in warm) * 2
    # The cache-writing workload: all frames in one batched call, timed once, per frame.
    start = time.perf_counter()
    compact = encode_frames_compact(model, images)
    enc_times = [(time.perf_counter() - start) / frames]
    if not quick:
        start = time.perf_counter()
        encode_frames(model, images[:1])
        enc_times.append(time.perf_counter() - start)
    compact_per_frame = compact.nbytes // frames

    def cached_step():
        _clip_step(model, expand_compact(model, compact))

    def full_step():
        _clip_step(model, encode_frames(model, images))

    cached_step()  # warm-up
    cached_times = _timed(cached_step, reps)
    full_times = _timed(full_step, 1)
    tiny_times = _bench_tiny(5 if quick else 10)
    load_after = os.getloadavg()

    result = {
        "config": "configs/sam2/sam2_hiera_b+.yaml (random weights)",
        "image_size": size,
        "clip_frames": frames,
        "threads": torch.get_num_threads(),
        "build_s": build_s,
        "encoder_s_per_frame_median": statistics.median(enc_times),
        "encoder_s_per_frame_all": enc_times,
        "compact_bytes_per_frame": compact_per_frame,
        "compact_bytes_per_frame_formula": compact_bytes_per_frame(model),
        "naive_bytes_per_frame": naive_per_frame,
        "compact_forms": compact.forms,
        "clip_step_cached_s_median": statistics.median(cached_times),
        "clip_step_cached_s_all": cached_times,
        "clip_step_with_encoder_s": full_times[0],
        "speedup_cached": full_times[0] / statistics.median(cached_times),
        "tiny_clip_step_s_median": statistics.median(tiny_times),
        "tiny_clip_step_s_all": tiny_times,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if size == 1024:
        assert naive_per_frame == NAIVE_BYTES_1024
    mib = 1 / 2**20
    print(f"SAM2 backbone bench: {result['config']}, {size}², {frames}-frame clip, {result['threads']} threads")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (shared 2-core VM)")
    print(f"  build: {build_s:.2f} s")
    print(f"  image encoder per frame: median {result['encoder_s_per_frame_median']:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in enc_times)}; the first is a {frames}-frame batch / {frames})")
    print(f"  compact bf16 per frame: {compact_per_frame * mib:.1f} MiB {compact.forms} vs naive 16-bit pyramid "
          f"{naive_per_frame * mib:.1f} MiB ({compact_per_frame / naive_per_frame:.1%})")
    print(f"  clip fwd+bwd from cache: median {result['clip_step_cached_s_median']:.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in cached_times)})")
    print(f"  clip fwd+bwd incl. image encoder: {full_times[0]:.2f} s  -> cache speed-up x{result['speedup_cached']:.2f}")
    print(f"  tiny config, 5-frame clip fwd+bwd (1 thread): median {result['tiny_clip_step_s_median'] * 1000:.0f} ms "
          f"(min {min(tiny_times) * 1000:.0f}, max {max(tiny_times) * 1000:.0f})")
    return result


if __name__ == "__main__":
    main()
