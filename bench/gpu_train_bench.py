"""GPU benchmark (prepared for a lent GPU machine): AuralSAM2 with SAM 2.0 Hiera-B+ at 1024^2.

Measures, with random weights and the released-size fuser and VGGish, bf16 autocast around the
forward as released, one clip per step:

1. training steps/s FROM THE CACHE: the step starts from the bf16 compact levels on the GPU
   (what `CacheReader` hands over after reading), expands them with the frozen lateral convs, runs
   the fuser + SAM2 tracking with memory, the released loss (segmentation + official AudioCon),
   backward and AdamW;
2. the same step WITH THE IMAGE ENCODER in the loop (Hiera-B+ on the clip's frames each step);
3. inference frames/s with audio prompts (`predict_clip`, eval, no grad, bf16; encoder included,
   and from cached pyramids), the paper's 16.4 FPS setting for Hiera-B+.

    python -m bench.gpu_train_bench [--frames 5] [--steps 10] [--warmup 3] [--config sam2_hiera_b+]
    python -m bench.gpu_train_bench --config sam2_hiera_t --image-size 128 --frames 2 --steps 1   # CPU smoke run

Prints a Markdown table and a JSON line; writes both to $OUT/gpu_train_bench.{md,json} when $OUT
is set. Needs nothing but this repository (no weights, no data). Expect ~2-4 minutes on one H100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def run(config: str = "sam2_hiera_b+", frames: int = 5, steps: int = 10, warmup: int = 3,
        image_size: int | None = None) -> dict:
    from auralsam2.audio import AudioEncoder, VGGish
    from auralsam2.backbone import build_sam2_model, encode_frames, encode_frames_compact, expand_compact
    from auralsam2.config import OptimConfig
    from auralsam2.engine import param_groups
    from auralsam2.fuser import AuralFuser, FuserConfig
    from auralsam2.losses import AudioConConfig
    from auralsam2.model import AuralSAM2, clip_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    torch.manual_seed(0)
    from auralsam2.engine.runtime import use_cudnn_attention

    use_cudnn_attention(False)  # as training does (train.cudnn_attention: false)
    sam2 = build_sam2_model(config, device=device, image_size=image_size)
    size = int(sam2.image_size)
    model = AuralSAM2(sam2, AuralFuser(FuserConfig()).to(device), AudioEncoder(VGGish(), 2, trainable=False).to(device))
    opt = torch.optim.AdamW(param_groups(model, OptimConfig()), betas=(0.9, 0.999))
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(frames, 3, size, size, generator=g).to(device)
    log_mel = torch.randn(frames, 2, 96, 64, generator=g).to(device)
    masks = torch.zeros(frames, size, size, dtype=torch.bool, device=device)
    masks[:, size // 4 : size // 2, size // 5 : size // 2] = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else None

    def encode():
        with torch.no_grad(), (autocast() if autocast else torch.autocast("cpu", enabled=False)):
            return encode_frames(sam2, images)

    with torch.no_grad(), (autocast() if autocast else torch.autocast("cpu", enabled=False)):
        compact = encode_frames_compact(sam2, images)
    compact = type(compact)(levels=tuple(x.to(torch.bfloat16) for x in compact.levels), forms=compact.forms)

    def step(pyramid_fn):
        model.train()
        pyramid = pyramid_fn()
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out = model.forward_clip(pyramid, log_mel, cond_frame=frames // 2)
        loss = clip_loss(out, masks, range(frames), AudioConConfig(mode="official"))["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def from_cache():
        return expand_compact(sam2, compact, dtype=torch.float32)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_cache = _timed(lambda: step(from_cache), steps, warmup)
    peak_train = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    train_encoder = _timed(lambda: step(encode), steps, warmup)
    encoder_only = _timed(encode, steps, warmup)

    def infer(pyramid_fn):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            model.predict_clip(pyramid_fn(), log_mel, cond_frame=0, mode="iou_select")

    infer_full = _timed(lambda: infer(lambda: images), steps, warmup)  # frames -> encoder inside
    infer_cache = _timed(lambda: infer(from_cache), steps, warmup)
    med = statistics.median
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "config": config, "image_size": size, "frames_per_clip": frames,
        "steps_timed": steps, "warmup": warmup, "precision": "bf16 autocast" if bf16 else "fp32",
        "train_step_from_cache_s": med(train_cache), "train_step_with_encoder_s": med(train_encoder),
        "train_steps_per_s_from_cache": 1 / med(train_cache), "train_steps_per_s_with_encoder": 1 / med(train_encoder),
        "cache_speedup": med(train_encoder) / med(train_cache),
        "encoder_per_clip_s": med(encoder_only), "peak_train_memory_gib": peak_train,
        "inference_fps_with_encoder": frames / med(infer_full), "inference_fps_from_cache": frames / med(infer_cache),
        "paper_inference_fps": 16.4,
    }
    return result


def to_markdown(r: dict) -> str:
    return "\n".join([
        f"GPU training/inference benchmark: {r['device']}, torch {r['torch']}, {r['config']} at {r['image_size']}^2, "
        f"{r['frames_per_clip']}-frame clips, {r['precision']}, random weights, released-size fuser + VGGish; "
        f"median of {r['steps_timed']} after {r['warmup']} warm-up",
        "",
        "| measurement | value |",
        "|---|---:|",
        f"| training step from cache | {r['train_step_from_cache_s']:.3f} s ({r['train_steps_per_s_from_cache']:.2f} steps/s) |",
        f"| training step with image encoder | {r['train_step_with_encoder_s']:.3f} s "
        f"({r['train_steps_per_s_with_encoder']:.2f} steps/s) |",
        f"| cache speed-up | x{r['cache_speedup']:.2f} |",
        f"| image encoder per clip (no grad) | {r['encoder_per_clip_s']:.3f} s |",
        f"| peak training memory | {r['peak_train_memory_gib']:.1f} GiB |",
        f"| inference with audio prompts, encoder included | {r['inference_fps_with_encoder']:.1f} frames/s "
        f"(paper: {r['paper_inference_fps']} FPS) |",
        f"| inference from cached pyramids | {r['inference_fps_from_cache']:.1f} frames/s |",
    ])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sam2_hiera_b+")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the config's, 1024)")
    args = parser.parse_args(argv)
    result = run(args.config, args.frames, args.steps, args.warmup, args.image_size)
    text = to_markdown(result)
    print(text)
    print(json.dumps(result))
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_train_bench.md").write_text(text + "\n")
        (Path(out) / "gpu_train_bench.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
