"""`auralsam2 segment VIDEO --checkpoint CKPT --out DIR`: a trained model on a user's own video.

Writes DIR/overlay.mp4 (the sampled frames with the mask, the original sound), DIR/masks/NNNNNN.png
(one 0/255 mask per sampled frame, at the video's resolution) and DIR/summary.json (the video, the
model and settings, every frame's time, mask area and object score, and timings). The model runs on
the GPU when there is one. Plain Python (no Prefect flow: one video is one step).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import typer

from auralsam2.utils.files import atomic_write_bytes

__all__ = ["default_window", "load_segmenter", "run_segment", "segment_command"]


def default_window(cfg) -> int:
    """Frames per window: the clip length of the checkpoint's dataset (10 s clips for AVSBench v2
    and Ref-AVS, 5 s for v1s/v1m)."""
    if cfg.data.dataset == "refavs" or (cfg.data.subsets and set(cfg.data.subsets) == {"v2"}):
        return 10
    return 5


def load_segmenter(checkpoint: str | os.PathLike, device: str = "auto", config=None):
    """(model in eval on `device`, its experiment config, the cache storage dtype) for `checkpoint`."""
    from auralsam2.engine import build_model, load_fuser_weights
    from auralsam2.utils.devices import resolve_device
    from feature_cache.encoder import load_model
    from feature_cache.schema import DTYPES
    from flows.evaluate import checkpoint_config
    from flows.pipeline import cache_settings

    cfg, _ = checkpoint_config(checkpoint, config)
    settings = cache_settings(cfg)
    where = resolve_device(device)
    sam2 = load_model(settings, where)
    model = build_model(cfg.model.model_copy(update={"init_checkpoint": None}), sam2).to(where)
    load_fuser_weights(model, checkpoint)
    if cfg.model.fuser.uses_text:
        from feature_cache.text import load_text_encoder

        model.text_encoder = load_text_encoder(cfg.model.text_encoder_source, where)
    return model.eval(), cfg, DTYPES[settings.dtype]


def _text_hidden(model, text: str | None, dtype):
    """The expression's hidden states rounded to the cache's dtype, as the model saw them in training."""
    if text is None or model.text_encoder is None:
        return None
    return model.text_encoder([text]).hidden.to(dtype).float()


def _expected_frames(info, sampling: str) -> int | None:
    if not math.isfinite(info.duration):
        return None
    if sampling == "every_frame":
        return round(info.duration * info.fps)
    from auralsam2.video import FRAME_PHASE

    return max(0, math.ceil(info.duration - FRAME_PHASE))


def run_segment(video: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                text: str | None = None, points: list[tuple[float, float]] | None = None,
                box: tuple[float, float, float, float] | None = None, every_frame: bool = False,
                window: int | None = None, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Segment `video`; returns the summary that is also written to OUT/summary.json. OUT must be new,
    empty or an earlier `segment` output, which is replaced whole (no masks of another video stay)."""
    from auralsam2.utils.outputs import check_output_folder, owned_output_folder
    from auralsam2.video import SegmentSettings, VideoError, probe_video

    started = time.perf_counter()
    check_output_folder(out, "segment", written_before=_earlier_segment)  # before the model loads
    info = probe_video(video)
    model, cfg, storage = load_segmenter(checkpoint, device)
    if text is not None and not model.fuser.config.uses_text:
        raise VideoError(f"--text was given but {checkpoint} does not read (modalities="
                         f"{model.fuser.config.modalities!r}); it is an audio-visual checkpoint")
    settings = SegmentSettings(task=cfg.task, sampling="every_frame" if every_frame else "per_second",
                               window=window or default_window(cfg), cond_frame=cfg.eval.cond_frame,
                               decoding=cfg.eval.primary_decoding, precision=cfg.train.precision,
                               storage_dtype=storage, text=text, points=tuple(points or ()), box=box)
    with owned_output_folder(out, "segment", written_before=_earlier_segment) as stage:
        summary = _segment_into(stage, video, info, model, settings, progress)
        summary.update(checkpoint=str(Path(checkpoint).resolve()),
                       model={"dataset": cfg.data.dataset, "task": cfg.task, "sam2_config": cfg.model.sam2.config,
                              "modalities": cfg.model.fuser.modalities, "device": str(model.sam2.device)})
        summary["timings_s"]["total"] = round(time.perf_counter() - started, 4)
        atomic_write_bytes(stage / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _earlier_segment(folder: Path) -> bool:
    """Output of `segment` before output folders were marked: its summary, overlay and masks only."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    names = {p.name for p in folder.iterdir()}
    return isinstance(summary, dict) and {"video", "checkpoint", "frames"} <= set(summary) \
        and names <= {"summary.json", "overlay.mp4", "masks"}


def _segment_into(out: Path, video, info, model, settings, progress: bool) -> dict[str, Any]:
    """Write the masks and the overlay into `out` (the staging folder); the summary without the model."""
    from tqdm.auto import tqdm

    from auralsam2.video import OverlayWriter, segment_windows
    from auralsam2.video.encode import write_mask_png

    (out / "masks").mkdir()
    rate = info.fps if settings.sampling == "every_frame" else 1.0
    writer = OverlayWriter(out / "overlay.mp4", info.width, info.height, rate, video if info.has_audio else None)
    frames: list[dict[str, Any]] = []
    timings = {"image_encoder": 0.0, "fuser_and_decoder": 0.0, "windows": 0.0, "write": 0.0}
    padded = 0
    bar = tqdm(total=_expected_frames(info, settings.sampling), unit="frame", desc="segment", disable=not progress)
    try:
        hidden = _text_hidden(model, settings.text, settings.storage_dtype)
        run = settings if hidden is None else dataclasses.replace(settings, text=hidden)
        for result in segment_windows(model, str(video), run):
            t0 = time.perf_counter()
            for frame, mask, score in zip(result.frames, result.masks, result.object_scores.tolist(), strict=True):
                png = out / "masks" / f"{frame.index:06d}.png"
                write_mask_png(png, mask)
                writer.add(frame.rgb, mask)
                frames.append({"index": frame.index, "time": round(frame.time, 6), "mask": str(png.relative_to(out)),
                               "area": float(mask.mean()), "object_score": float(score),
                               "cond_frame": frame is result.frames[result.cond_frame]})
            for key in ("image_encoder", "fuser_and_decoder"):
                timings[key] += result.seconds[key]
            timings["windows"] += result.seconds["total"]
            timings["write"] += time.perf_counter() - t0
            padded += result.audio_padded
            bar.update(len(result.frames))
        overlay = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    model_s = timings["image_encoder"] + timings["fuser_and_decoder"]
    return {
        "video": info.to_json(), "settings": settings.to_json(), "n_frames": len(frames),
        "audio_examples_padded": padded, "overlay": str(overlay.relative_to(out)), "frames": frames,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "model_frames_per_s": round(len(frames) / max(model_s, 1e-9), 3),
    }


def _pair(text: str, option: str, n: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise typer.BadParameter(f"{option} takes {n} comma-separated numbers, got {text!r}")
    return values


def segment_command(
    video: Path = typer.Argument(..., help="The video (mp4/H.264/AAC, webm/VP9/Opus, mov, ... anything FFmpeg reads)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", dir_okay=False,
                                    help="A trained checkpoint (best.ckpt of a run; its config travels inside)."),
    out: Path = typer.Option(..., "--out", help="Output folder: overlay.mp4, masks/, summary.json. New, empty, or an "
                             "earlier segment output (replaced whole); a folder with other files is refused."),
    text: str = typer.Option(None, "--text", help="Referring expression (Ref-AVS checkpoints)."),
    points: list[str] = typer.Option([], "--points", help="A positive click X,Y on the first frame, in pixels "
                                     "(repeatable): a SAM2 prompt."),
    box: str = typer.Option(None, "--box", help="X0,Y0,X1,Y1 box on the first frame, in pixels: a SAM2 prompt."),
    every_frame: bool = typer.Option(False, "--every-frame", help="Segment every frame (default: one per second, "
                                     "as the datasets are sampled)."),
    window: int = typer.Option(None, min=1, help="Frames per window (default: the dataset's clip length)."),
    device: str = typer.Option("auto", help="auto (GPU when present), cpu, cuda, cuda:N."),
) -> None:
    """Segment the sounding (and, with --text, the referred) object in your own video."""
    from auralsam2.checkpoints import CheckpointError
    from auralsam2.config import ConfigError
    from auralsam2.video import VideoError
    from flows.console import fail

    clicks = [_pair(p, "--points", 2) for p in points]
    corners = _pair(box, "--box", 4) if box else None
    try:
        summary = run_segment(video, checkpoint, out, text=text, points=clicks, box=corners,
                              every_frame=every_frame, window=window, device=device)
    except (VideoError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    t = summary["timings_s"]
    typer.echo(f"{summary['n_frames']} frames of {video} segmented in {t['total']:.1f} s "
               f"({summary['model_frames_per_s']:.1f} frames/s in the model, {summary['model']['device']})")
    typer.echo(f"overlay {Path(out) / summary['overlay']}; masks {Path(out) / 'masks'}; summary {Path(out) / 'summary.json'}")
