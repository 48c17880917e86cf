"""Training and inference speed, side by side in one run on one device (issue 15).

For each SAM2 backbone (default Hiera-B+ and Hiera-L at 1024^2; random weights, the released-size
fuser and VGGish, bf16 autocast on a GPU), two training loops over the same synthetic clips:

(a) **released-style**: a `DataLoader` (worker processes) decodes each frame's JPEG and resizes it
    to S x S; every step runs the image encoder on the clip, then fuser + SAM2 tracking with memory,
    the released loss (segmentation + official AudioCon), backward and AdamW (foreach); one clip per
    step, eager;
(b) **ours**: the step starts from cached bf16 compact levels in pinned host memory (what the feature
    cache's memory-mapped files hand over), read for the next step in the background (`StepReader`:
    pinned, side-stream copies, the lateral convs on the GPU), `clips_per_step` clips per step in one
    forward (`TrainingStep` / `forward_clips`: frame t of every clip one decoder batch),
    `torch.compile` of the per-frame modules (`compile_model`), fused AdamW.

Reported per backbone: training frames/s of each and their ratio, FLOPs per step (counted once with
`torch.utils.flop_counter.FlopCounterMode`) and model FLOPs utilisation = FLOPs / step time / the
device's bf16 dense peak (the peak used is printed; `--peak-tflops` overrides the table), the time
the loop waited for data, the share of the time the GPU ran kernels (its idle time per step is
the rest: launch gaps, host work, waiting for data; profiled over 2 more steps), peak memory, the
graphs compiled while timed, and inference frames/s with the fuser, single-stream (one clip at a
time) and batched (`predict_items`, `--clips` at once), from cached levels.

    python -m bench.gpu_train_bench                       # a GPU: Hiera-B+ and Hiera-L, ~3-6 min on an H100
    python -m bench.gpu_train_bench --configs sam2_hiera_b+ --clips 8 --compile all
    python -m bench.gpu_train_bench --smoke               # CPU: tiny SAM2 at 128 px, seconds (the tests run it)

Prints a Markdown table and a JSON line; writes both to $OUT/gpu_train_bench.{md,json} when $OUT
is set. Needs nothing but this repository (no weights, no data).
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

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "RTX 4090": 165.2, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "n/a (CPU)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # longest names first where they overlap (H100 PCIe)
        if key in name:
            return value, f"{value:g} TFLOP/s ({key} bf16 dense)"
    return None, f"unknown for {name!r}: pass --peak-tflops"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return times


def _device_busy(fn, device: torch.device, steps: int = 2) -> float:
    """The share of `steps` calls' wall time the GPU ran kernels (1 - its idle time), from the
    profiler's kernel intervals; NaN off CUDA or when the profiler fails (CUPTI missing): a
    measurement of its own that must not cost the others. CUPTI's overhead makes it a lower bound."""
    if device.type != "cuda":
        return float("nan")
    try:
        from torch.profiler import ProfilerActivity, profile

        from bench.bench_pipeline import covered

        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            started = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            wall_us = (time.perf_counter() - started) * 1e6
        kernels = [(e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
        return covered(kernels) / wall_us  # concurrent kernels (streams) count once
    except Exception as exc:  # noqa: BLE001
        print(f"device busy time not measured: {type(exc).__name__}: {exc}", file=sys.stderr)
        return float("nan")


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


class JpegClips(torch.utils.data.Dataset):
    """The released loader's work per clip: decode each frame's JPEG, resize to S x S, normalise."""

    def __init__(self, jpegs: list[list[torch.Tensor]], size: int, log_mel: torch.Tensor, masks: torch.Tensor) -> None:
        self.jpegs, self.size, self.log_mel, self.masks = jpegs, size, log_mel, masks

    def __len__(self) -> int:
        return 1 << 30  # sampled round-robin for as many steps as asked

    def __getitem__(self, index: int):
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2.functional import normalize, resize

        frames = [resize(decode_jpeg(data), [self.size, self.size], antialias=True)
                  for data in self.jpegs[index % len(self.jpegs)]]
        images = normalize(torch.stack(frames).float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        return images, self.log_mel, self.masks


class CachedClips:
    """An `ItemSource` over compact bf16 levels in (pinned) host memory: its items are expanded on the
    device with SAM2's frozen lateral convs, as `CacheReader` does after its memory-mapped reads."""

    def __init__(self, sam2, compact: list, log_mel: torch.Tensor, masks: torch.Tensor, frames: int) -> None:
        self.sam2, self.compact, self.log_mel, self.masks, self.frames = sam2, compact, log_mel, masks, frames

    def __len__(self) -> int:
        return len(self.compact)

    def item(self, index: int, epoch: int = 0):
        from auralsam2.backbone import CompactPyramid, expand_compact
        from auralsam2.items import ClipItem

        device = self.sam2.device
        compact = self.compact[index]
        on_device = CompactPyramid(tuple(x.to(device, non_blocking=True) for x in compact.levels), compact.forms)
        pyramid = tuple(expand_compact(self.sam2, on_device))
        return ClipItem(key=f"clip{index}", clip_key=f"clip{index}", dataset="avss", subset="v1m", split="train",
                        category="", pyramid=pyramid, log_mel=self.log_mel, text=None, masks=self.masks,
                        labelled=torch.ones(self.frames, dtype=torch.bool), supervised=list(range(self.frames)))


def trainable_model(sam2, smoke: bool):
    """A fresh `AuralSAM2` over `sam2` (seeded): the released-size fuser and VGGish, or with `smoke`
    the tiny ones the tiny SAM2 carries."""
    from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
    from auralsam2.fuser import AuralFuser, FuserConfig
    from auralsam2.model import AuralSAM2

    torch.manual_seed(0)
    fuser = AuralFuser(FuserConfig.tiny(dim=int(sam2.hidden_dim)) if smoke else FuserConfig())
    vggish = VGGish(VGGishConfig.tiny() if smoke else None)
    return AuralSAM2(sam2, fuser, AudioEncoder(vggish, 2, trainable=True)).to(sam2.device)


def run_backbone(config: str, *, frames: int, clips: int, steps: int, warmup: int, image_size: int | None,
                 compile_mode: str, workers: int, device: torch.device, smoke: bool,
                 checkpoint_fuser_blocks: bool = False) -> dict:
    from torchvision.io import encode_jpeg

    from auralsam2.backbone import build_sam2_model, encode_frames, encode_frames_compact
    from auralsam2.config import OptimConfig
    from auralsam2.engine import make_optimizer
    from auralsam2.engine.runtime import use_cudnn_attention
    from auralsam2.evaluation.evaluate import predict_item, predict_items
    from auralsam2.losses import AudioConConfig
    from auralsam2.model import clip_loss

    bf16 = device.type == "cuda"
    use_cudnn_attention(False)  # as training does (train.cudnn_attention: false)
    torch.manual_seed(0)
    sam2 = build_sam2_model(config, device=device, image_size=image_size)
    size = int(sam2.image_size)

    def fresh_model():  # (a) and (b) each start from the same fresh weights
        return trainable_model(sam2, smoke)

    g = torch.Generator().manual_seed(0)
    pool = max(clips, 2)
    log_mel = torch.randn(frames, 2, 96, 64, generator=g)
    masks = torch.zeros(frames, size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 5 : size // 2] = True
    source_hw = (64, 64) if smoke else (480, 640)  # released AVSBench frames are 224-720 px; resized to S
    jpegs = [[encode_jpeg(torch.randint(0, 256, (3, *source_hw), dtype=torch.uint8, generator=g), quality=90)
              for _ in range(frames)] for _ in range(pool)]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else (
        lambda: torch.autocast("cpu", enabled=False))
    loss_cfg = AudioConConfig(mode="official")
    result: dict = {"config": config, "image_size": size, "frames_per_clip": frames, "clips_per_step": clips,
                    "compile": compile_mode, "checkpoint_fuser_blocks": checkpoint_fuser_blocks}

    # ---- (a) released-style: JPEG decode + resize in a DataLoader, the encoder every step, 1 clip, eager
    model = fresh_model().train()
    opt = torch.optim.AdamW(make_optimizer(model, OptimConfig(), 10**6)[0].param_groups, foreach=True)
    loader = iter(torch.utils.data.DataLoader(JpegClips(jpegs, size, log_mel, masks), batch_size=None,
                                              num_workers=workers, pin_memory=bf16,
                                              persistent_workers=workers > 0))
    waited = [0.0]

    def released_step() -> None:
        started = time.perf_counter()
        images, mel, gt = next(loader)
        waited[0] += time.perf_counter() - started
        images, mel, gt = (x.to(device, non_blocking=True) for x in (images, mel, gt))
        with torch.no_grad(), autocast():
            pyramid = encode_frames(sam2, images)
        with autocast():
            out = model.forward_clip(pyramid, mel, cond_frame=frames // 2)
        loss = clip_loss(out, gt, range(frames), loss_cfg)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    released_flops = _flops(released_step)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waited[0] = 0.0
    times_a = _timed(released_step, steps, warmup, device)
    wait_a = waited[0] / (steps + warmup)
    peak_a = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    busy_a = _device_busy(released_step, device)
    model = opt = loader = None  # free (a)'s model, optimizer state and loader workers before (b)

    # ---- (b) ours: cached compact levels, prefetched; N clips per step, compiled, fused AdamW.
    # N halves on a CUDA out-of-memory (one 5-frame clip at 1024^2 peaked at 12.9 GiB in bf16 on
    # an H100: BENCHMARKS.md), so one run still measures what fits; the N measured is reported.
    compact = []
    for clip in jpegs:
        images, _, _ = JpegClips([clip], size, log_mel, masks)[0]
        with torch.no_grad(), autocast():
            levels = encode_frames_compact(sam2, images.to(device))
        stored = tuple(x.to(torch.bfloat16).cpu() for x in levels.levels)
        compact.append(type(levels)(tuple(x.pin_memory() for x in stored) if bf16 else stored, levels.forms))
    source = CachedClips(sam2, compact, log_mel, masks, frames)
    too_many: list[int] = []
    n = clips
    while True:
        try:
            ours = _our_loop(fresh_model, source, n, loss_cfg.mode, compile_mode, bf16, steps, warmup, device,
                             checkpoint_fuser_blocks)
            break
        except torch.OutOfMemoryError:
            if n == 1:
                raise
        too_many.append(n)  # here, outside the handler, the failed attempt's tensors can be freed
        n //= 2
        _free(device)
    model = ours.pop("model")
    result.update(ours)
    result["clips_per_step"], result["clips_out_of_memory"] = n, too_many

    # ---- inference with the fuser, from cached levels: one clip at a time, and N clips per forward
    items = [source.item(i) for i in range(len(source))][:clips]
    single = _timed(lambda: [predict_item(model, item, 0, ["iou_select"]) for item in items], steps, 1, device)
    batched = _timed(lambda: predict_items(model, items, [0] * len(items), ["iou_select"]), steps, 1, device)

    med = statistics.median
    frames_a = frames / med(times_a)
    result.update({
        "released_train_step_s": med(times_a), "released_train_frames_per_s": frames_a,
        "released_flops_per_step": released_flops, "released_data_wait_s_per_step": wait_a,
        "released_peak_memory_gib": peak_a, "released_device_busy": busy_a, "speedup": result["ours_train_frames_per_s"] / frames_a,
        "inference_clips": len(items),
        "inference_single_frames_per_s": frames * len(items) / med(single),
        "inference_batched_frames_per_s": frames * len(items) / med(batched),
    })
    return result


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _our_loop(fresh_model, source: CachedClips, clips: int, audiocon_mode: str, compile_mode: str, bf16: bool,
              steps: int, warmup: int, device: torch.device, checkpoint_fuser_blocks: bool) -> dict:
    """(b): `clips` clips per step from `source`; its timings, FLOPs, data wait, peak memory and
    the graphs compiled while timed (0: no step recompiles), and the trained `model`."""
    from torch._dynamo.utils import counters

    from auralsam2.config import OptimConfig, load_config
    from auralsam2.engine import DataOrder, StepReader, TrainingStep, compile_model, make_optimizer
    from auralsam2.engine.runtime import Runtime

    model = fresh_model().train()
    model.fuser.checkpoint_blocks = checkpoint_fuser_blocks  # as train.checkpoint_fuser_blocks does
    opt = make_optimizer(model, OptimConfig(), 10**6)[0]  # fused on a GPU
    cfg = load_config(None, [f"loss.audiocon.mode={audiocon_mode}", f"train.clips_per_step={clips}"])
    step_module = TrainingStep(model, cfg, Runtime(0, 1, device, bf16, False))
    reader = StepReader(source, DataOrder(len(source), seed=0, items_per_step=clips), device, prefetch=True)
    generator = torch.Generator().manual_seed(0)
    counter = [0]

    def our_step() -> None:
        step = counter[0]
        counter[0] += 1
        items = reader.take(step, step + 1)
        opt.zero_grad(set_to_none=True)
        terms = step_module(items, generator)
        (terms["total"].sum() / len(items)).backward()
        opt.step()

    # two backbones and a retry after running out of memory compile the same code again: past the
    # default limit (8 graphs per function) dynamo would silently run the rest eagerly
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    try:
        flops = _flops(our_step)  # eager: the counter sees every op (compiled graphs hide theirs)
        compiled = compile_model(model, compile_mode, "inductor" if bf16 else "aot_eager")
        for _ in range(max(warmup, 2)):  # compile (each shape bucket once) before timing
            our_step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reader.wait_s = 0.0
        graphs = counters["stats"]["unique_graphs"]
        times = _timed(our_step, steps, 0, device)
        graphs = counters["stats"]["unique_graphs"] - graphs
        busy = _device_busy(our_step, device)
    finally:
        reader.close()
    frames = source.frames * clips
    return {"ours_train_step_s": statistics.median(times), "ours_train_frames_per_s": frames / statistics.median(times),
            "ours_flops_per_step": flops, "ours_data_wait_s_per_step": reader.wait_s / steps,
            "ours_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else
            float("nan"), "ours_compiled": ",".join(compiled) or "off", "ours_graphs_compiled_while_timed": graphs,
            "ours_device_busy": busy,
            "model": model}


def run(configs: list[str], *, frames: int = 5, clips: int = 8, steps: int = 8, warmup: int = 3,
        image_size: int | None = None, compile_mode: str = "all", workers: int = 4, peak: float | None = None,
        smoke: bool = False, checkpoint_fuser_blocks: bool = False, report=None) -> dict:
    """Each backbone in turn; `report(result)` after each one (so a run cut short keeps what it
    measured). A backbone that fails is recorded with its error and the next one still runs."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    peak_value, peak_text = peak_tflops(device, peak)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
              "peak": peak_text, "steps_timed": steps, "warmup": warmup, "rows": []}
    for config in configs:
        try:
            row = run_backbone(config, frames=frames, clips=clips, steps=steps, warmup=warmup, image_size=image_size,
                               compile_mode=compile_mode, workers=workers, device=device, smoke=smoke,
                               checkpoint_fuser_blocks=checkpoint_fuser_blocks)
        except Exception as exc:  # noqa: BLE001 - one backbone's failure must not lose the others' numbers
            import traceback

            traceback.print_exc()
            row = {"config": config, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        else:
            for loop in ("released", "ours"):
                flops_per_s = row[f"{loop}_flops_per_step"] / row[f"{loop}_train_step_s"]
                row[f"{loop}_tflops_per_s"] = flops_per_s / 1e12
                row[f"{loop}_mfu"] = flops_per_s / (peak_value * 1e12) if peak_value else float("nan")
        _free(device)
        result["rows"].append(row)
        if report is not None:
            report(result)
    return result


def to_markdown(r: dict) -> str:
    lines = [f"Training and inference, {r['device']}, torch {r['torch']}, {r['precision']}, random weights; "
             f"median of {r['steps_timed']} steps after {r['warmup']} warm-up; MFU against {r['peak']}.", "",
             "| backbone | loop | clips/step | train frames/s | step s | GFLOP/step | TFLOP/s | MFU | data wait s/step "
             "| GPU busy | peak GiB | graphs compiled while timed |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [row for row in r["rows"] if "error" not in row]
    for row in rows:
        name = f"{row['config']} {row['image_size']}^2, {row['frames_per_clip']} frames"
        for loop, label, n, graphs in (
                ("released", "(a) released-style", 1, "eager"),
                ("ours", f"(b) ours, compile {row['compile']}"
                         f"{', blocks checkpointed' if row['checkpoint_fuser_blocks'] else ''}", row["clips_per_step"],
                 row["ours_graphs_compiled_while_timed"])):
            lines.append(f"| {name} | {label} | {n} | {row[f'{loop}_train_frames_per_s']:.1f} | "
                         f"{row[f'{loop}_train_step_s']:.3f} | {row[f'{loop}_flops_per_step'] / 1e9:.1f} | "
                         f"{row[f'{loop}_tflops_per_s']:.2f} | {row[f'{loop}_mfu']:.1%} | "
                         f"{row[f'{loop}_data_wait_s_per_step']:.3f} | {row[f'{loop}_device_busy']:.0%} | "
                         f"{row[f'{loop}_peak_memory_gib']:.1f} | {graphs} |")
    lines += ["", "| backbone | training speed-up (b)/(a) | inference frames/s, single-stream | batched |",
              "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['config']} | x{row['speedup']:.2f} | {row['inference_single_frames_per_s']:.1f} | "
                     f"{row['inference_batched_frames_per_s']:.1f} ({row['inference_clips']} clips) |")
    for row in rows:
        if row["clips_out_of_memory"]:
            lines.append(f"\n{row['config']}: (b) ran out of device memory at "
                         f"{', '.join(map(str, row['clips_out_of_memory']))} clips per step; measured at "
                         f"{row['clips_per_step']}.")
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"\n{row['config']}: FAILED, {row['error']}")
    return "\n".join(lines)


def _write(result: dict) -> None:
    """The table and the JSON to $OUT (when set), replaced whole each time."""
    out = os.environ.get("OUT")
    if not out:
        return
    from auralsam2.utils.files import atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "gpu_train_bench.md", to_markdown(result) + "\n")
    atomic_write_text(Path(out) / "gpu_train_bench.json", json.dumps(result, indent=1, default=str))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="sam2_hiera_b+,sam2_hiera_l", help="comma-separated SAM2 configs")
    parser.add_argument("--frames", type=int, default=5, help="frames per clip")
    parser.add_argument("--clips", type=int, default=8, help="clips per step of (b), and per inference batch")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the config's, 1024)")
    parser.add_argument("--compile", dest="compile_mode", default="all", choices=["off", "fuser", "all"])
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of (a)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak")
    parser.add_argument("--checkpoint-fuser-blocks", action="store_true",
                        help="(b) recomputes the fuser's visual blocks in backward (train.checkpoint_fuser_blocks)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke run: tiny SAM2 at 128 px, 2 frames, 2 clips, 1 step, no workers")
    args = parser.parse_args(argv)
    if args.smoke:
        result = run(["tiny"], frames=2, clips=2, steps=1, warmup=0, image_size=128, compile_mode="fuser",
                     workers=0, smoke=True, report=_write)
    else:
        result = run(args.configs.split(","), frames=args.frames, clips=args.clips, steps=args.steps,
                     warmup=args.warmup, image_size=args.image_size, compile_mode=args.compile_mode,
                     workers=args.workers, peak=args.peak_tflops, checkpoint_fuser_blocks=args.checkpoint_fuser_blocks,
                     report=_write)
    print(to_markdown(result))
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    sys.exit(1 if any("error" in row for row in main(sys.argv[1:])["rows"]) else 0)
