"""Training-step speed: from the feature cache vs with the SAM2 image encoder in the loop.

A step is what `auralsam2.engine.train` does per item: get the clip's pyramid (read + expand the
cached compact levels, or decode + preprocess the frames and run the frozen image encoder), run
AuralSAM2 (fuser -> SAM2 tracking with memory), the released loss (segmentation + AudioCon),
backward, AdamW step. Measured on this CPU:

* `tiny`: the test-only SAM2 at 128 px with the tiny fuser, 5-frame clips of the synthetic world,
  a real cache on disk (`CacheReader.clip`) vs the raw JPEGs -> `preprocess_frames` -> encoder;
* `demo`: the demo model (synth SAM2 config, hidden 128, random weights here) from a cache in
  memory, i.e. what `configs/demo.yaml` trains (steps/s sets the demo's step budget);
* `hiera_b+` (not in quick mode): SAM 2.0 Hiera-B+ at 1024^2, random weights, the released-size
  fuser, a 2-frame clip (a 5-frame step needs > 21 GiB on CPU, see bench/results/fuser.md), one
  timed step each way, the cached side expanding bf16 compact levels held in memory.

GPU numbers (and inference frames/s with audio prompts; paper: 16.4 FPS for Hiera-B+) come from
`bench/gpu_train_bench.py`. Run: `.venv/bin/python -m bench.bench_train` (`main(quick=True)`: tiny and
demo only).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from auralsam2.audio import AudioEncoder, VGGish, VGGishConfig
from auralsam2.backbone import (
    build_sam2_model,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    preprocess_frames,
)
from auralsam2.config import PROJECT_ROOT, OptimConfig
from auralsam2.engine import param_groups
from auralsam2.fuser import AuralFuser, FuserConfig
from auralsam2.losses import AudioConConfig
from auralsam2.model import AuralSAM2, clip_loss

RESULTS = Path(__file__).parent / "results" / "train.md"


def _model(sam2, fuser_cfg: FuserConfig, vggish: VGGishConfig) -> tuple[AuralSAM2, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = AuralSAM2(sam2, AuralFuser(fuser_cfg), AudioEncoder(VGGish(vggish), 2, trainable=True)).train()
    return model, torch.optim.AdamW(param_groups(model, OptimConfig()))


def _step(model: AuralSAM2, opt, pyramid, log_mel, masks, cond: int) -> float:
    out = model.forward_clip(pyramid, log_mel, cond_frame=cond)
    loss = clip_loss(out, masks, range(masks.shape[0]), AudioConConfig(mode="official"))["total"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _time(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _paired(a, b, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Alternate a and b so that the load of a shared machine hits both alike."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        ta += _time(a, 1, 0)
        tb += _time(b, 1, 0)
    return ta, tb


def bench_tiny(repeats: int) -> dict:
    """The tiny SAM2 on a real on-disk cache of the synthetic world vs the encoder on its JPEGs."""
    from feature_cache.dataset import CacheItems
    from feature_cache.reader import CacheReader
    from flows.evaluate import clip_frames
    from tests.train_fixtures import tiny_cache  # the tests' builders: the same tiny world

    cache = tiny_cache("avss", views=1)
    reader = CacheReader(cache)
    items = CacheItems(reader, "train", training=True, views="first")
    keys = [i for i in range(len(items)) if items.item(i).n_frames == 5]
    sam2 = reader.model
    model, opt = _model(sam2, FuserConfig.tiny(dropout=0.0), VGGishConfig.tiny(16))
    state = {"i": 0}

    def next_index() -> int:
        state["i"] += 1
        return keys[state["i"] % len(keys)]

    def from_cache() -> None:
        item = items.item(next_index())
        _step(model, opt, item.pyramid, item.log_mel, item.masks, 2)

    def with_encoder() -> None:
        item = items.item(next_index())  # masks and log-mel from the cache; pixels through the encoder
        frames = clip_frames(reader, item.clip_key, 128)
        with torch.no_grad():
            pyramid = encode_frames(sam2, preprocess_frames(frames, 128))
        _step(model, opt, pyramid, item.log_mel, item.masks, 2)

    cached, encoder = _paired(from_cache, with_encoder, repeats, 2)
    return {"name": "tiny (128 px, 5 frames, tiny fuser)", "cache_s": statistics.median(cached),
            "encoder_s": statistics.median(encoder), "repeats": repeats}


def bench_demo(repeats: int) -> dict:
    """One demo training step (synth SAM2 geometry, random weights; pyramid from memory)."""
    from auralsam2.config import load_config

    cfg = load_config(PROJECT_ROOT / "configs" / "demo.yaml")
    sam2 = build_sam2_model(PROJECT_ROOT / "auralsam2" / "configs" / "sam2_synth.yaml")
    model, opt = _model(sam2, cfg.model.fuser, cfg.model.vggish)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(5, 3, 128, 128, generator=g)
    with torch.no_grad():
        compact = encode_frames_compact(sam2, frames)
    log_mel = torch.randn(5, 2, 96, 64, generator=g)
    masks = torch.zeros(5, 128, 128, dtype=torch.bool)
    masks[:, 30:80, 40:90] = True
    times = _time(lambda: _step(model, opt, expand_compact(sam2, compact), log_mel, masks, 2), repeats, 2)
    return {"name": "demo model (synth SAM2 config, 128 px, 5 frames)", "cache_s": statistics.median(times),
            "encoder_s": float("nan"), "repeats": repeats}


def bench_hiera_b_plus(frames: int = 2) -> dict:
    """SAM 2.0 Hiera-B+ at 1024^2 with the released-size fuser and VGGish, one step each way."""
    sam2 = build_sam2_model("sam2_hiera_b+")
    model, opt = _model(sam2, FuserConfig(), VGGishConfig())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(frames, 3, 1024, 1024, generator=g)
    log_mel = torch.randn(frames, 2, 96, 64, generator=g)
    masks = torch.zeros(frames, 1024, 1024, dtype=torch.bool)
    masks[:, 300:700, 200:600] = True
    with torch.no_grad():
        compact = encode_frames_compact(sam2, images)
    compact = type(compact)(levels=tuple(x.to(torch.bfloat16) for x in compact.levels), forms=compact.forms)
    cached = _time(lambda: _step(model, opt, expand_compact(sam2, compact), log_mel, masks, frames // 2), 1, 0)

    def with_encoder() -> None:
        with torch.no_grad():
            pyramid = encode_frames(sam2, images)
        _step(model, opt, pyramid, log_mel, masks, frames // 2)

    encoder = _time(with_encoder, 1, 0)
    return {"name": f"Hiera-B+ 1024^2, released fuser, {frames}-frame clip", "cache_s": cached[0],
            "encoder_s": encoder[0], "repeats": 1}


def main(quick: bool = False, threads: int = 1) -> dict:
    """`threads`: torch CPU threads (1 by default: on this shared 2-core VM a second thread competing
    with other jobs makes every parallel region wait, and timings swing by x10)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    home = os.environ.get("AURALSAM2_HOME")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        os.environ["AURALSAM2_HOME"] = tmp  # the tiny world and cache are built in a scratch data folder
        try:
            rows = [bench_tiny(5 if quick else 10), bench_demo(3 if quick else 10)]
            if not quick:
                rows.append(bench_hiera_b_plus())
        finally:
            torch.set_num_threads(previous)
            if home is None:
                os.environ.pop("AURALSAM2_HOME", None)
            else:
                os.environ["AURALSAM2_HOME"] = home
    load = os.getloadavg()
    lines = [f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, {threads} threads, fp32, load average {load[0]:.1f}",
             "| setting | step from cache (s) | step with image encoder (s) | speed-up | steps/s from cache |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        speedup = r["encoder_s"] / r["cache_s"]
        lines.append(f"| {r['name']} (median of {r['repeats']}) | {r['cache_s']:.3f} | {r['encoder_s']:.3f} | "
                     f"{'x' + format(speedup, '.2f') if speedup == speedup else '-'} | {1 / r['cache_s']:.2f} |")
    print("\n".join(lines))
    return {"rows": rows, "load_average": load[0], "threads": threads}


if __name__ == "__main__":
    main()
