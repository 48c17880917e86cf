"""Segment a user's video with a trained AuralSAM2: windows of frames + their sound -> masks.

A long video is cut into windows of `window` sampled frames (default: the clip length of the
checkpoint's dataset, 5 for AVSBench v1s/v1m, 10 for v2 and Ref-AVS); each window is segmented as one
clip, exactly as a dataset clip is: SAM2 features stored in the feature cache's dtype (so the masks
equal `evaluate`'s on the same frames), log-mel examples k = [start + 0.96 k, start + 0.96 k + 0.96)
from the window's first second (the released pairing), the released conditioning frame (0 for
AVSBench, the middle for Ref-AVS). Only one window is held at a time.

SAM2 prompts (`points`, `box`, in original-frame pixels) apply to the first frame of the video,
which then conditions the first window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from auralsam2.audio import min_samples_for_one_example, waveform_to_examples_report
from auralsam2.backbone import encode_frames_compact, preprocess_frames
from auralsam2.evaluation import cond_frame_for
from auralsam2.model import AuralSAM2
from auralsam2.utils.devices import autocast
from auralsam2.video.decode import AudioStream, SampledFrame, Sampling, VideoError, probe_video, sample_frames

__all__ = ["SegmentSettings", "WindowResult", "segment_windows"]

EXAMPLE_SECONDS = 0.96


@dataclass(frozen=True)
class SegmentSettings:
    """How to segment. `task`: "avs" or "ref" (the checkpoint's); `cond_frame`: eval rule (auto,
    first, middle); `storage_dtype`: the feature cache's dtype the model was trained on."""

    task: Literal["avs", "ref"] = "avs"
    sampling: Sampling = "per_second"
    window: int = 5
    cond_frame: str = "auto"
    decoding: str = "iou_select"
    precision: str = "auto"
    storage_dtype: torch.dtype = torch.bfloat16
    text: str | Tensor | None = None  # the expression, or its hidden states (L, H)
    points: Sequence[tuple[float, float]] = ()
    box: tuple[float, float, float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "sampling": self.sampling, "window": self.window, "cond_frame": self.cond_frame,
                "decoding": self.decoding, "precision": self.precision,
                "storage_dtype": str(self.storage_dtype).removeprefix("torch."), "text": self.text,
                "points": [list(p) for p in self.points], "box": None if self.box is None else list(self.box)}


@dataclass
class WindowResult:
    """One window: its frames, the model's logits at the model's input size (N, S, S) and at the
    frames' size as masks (N, H, W) bool, object scores (N,), timings (s) and audio padding."""

    frames: list[SampledFrame]
    logits: Tensor
    masks: np.ndarray
    object_scores: Tensor
    cond_frame: int
    seconds: dict[str, float] = field(default_factory=dict)
    audio_padded: int = 0


def _windows(frames: Iterator[SampledFrame], size: int) -> Iterator[list[SampledFrame]]:
    window: list[SampledFrame] = []
    for frame in frames:
        window.append(frame)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _log_mel(audio: AudioStream, frames: list[SampledFrame], sampling: Sampling, channels: int) -> tuple[Tensor, int]:
    """(N, channels, 96, 64) examples for the window's frames and how many were padded."""
    need = min_samples_for_one_example() / 16000
    if sampling == "per_second":
        # one stretch from the window's first second, cut into consecutive 0.96 s examples (released)
        pieces = [(audio.take(frames[0].audio_start, len(frames) * EXAMPLE_SECONDS + 0.02), len(frames))]
    else:
        pieces = [(audio.take(f.audio_start, need + 0.01), 1) for f in frames]
    out, padded = [], 0
    minimum = math.ceil(need * audio.sample_rate) + 1
    for samples, count in pieces:
        silent = len(samples) < minimum  # the sound has ended (or is shorter than one example)
        if silent:
            samples = np.concatenate([samples, np.zeros((minimum - len(samples), audio.channels), np.int16)])
        report = waveform_to_examples_report(samples, audio.sample_rate, num_examples=count, channels=channels)
        padded += count if silent else report.num_padded
        out.append(report.examples)
    return torch.cat(out), min(padded, len(frames))


@torch.no_grad()
def _predict(model: AuralSAM2, frames: list[SampledFrame], log_mel: Tensor | None, settings: SegmentSettings,
             first_window: bool) -> tuple[Tensor, Tensor, int, dict[str, float]]:
    device = model.sam2.device
    hw = frames[0].rgb.shape[:2]
    t0 = time.perf_counter()
    images = preprocess_frames([f.rgb for f in frames], model.image_size)
    with autocast(device, settings.precision):
        compact = encode_frames_compact(model.sam2, images.to(device), dtype=settings.storage_dtype,
                                        chunk_size=len(frames))
    t1 = time.perf_counter()
    prompted = first_window and (settings.points or settings.box is not None)
    cond = 0 if prompted else cond_frame_for(settings.task, len(frames), settings.cond_frame)
    clicks = None
    if prompted and settings.points:
        points = torch.tensor(settings.points, dtype=torch.float32)
        clicks = (points, torch.ones(len(points), dtype=torch.int32))
    box = torch.tensor(settings.box, dtype=torch.float32) if prompted and settings.box is not None else None
    with autocast(device, settings.precision):
        pred = model.predict_clip(compact, log_mel, settings.text, cond_frame=cond, mode=settings.decoding,
                                  clicks=clicks, box=box, orig_hw=hw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    return pred.logits.float(), pred.object_score_logits.float().reshape(-1), cond, {
        "image_encoder": t1 - t0, "fuser_and_decoder": t2 - t1}


def segment_windows(model: AuralSAM2, video: str, settings: SegmentSettings) -> Iterator[WindowResult]:
    """Decode `video`, segment it window by window and yield each `WindowResult` (masks at the
    video's resolution). Raises `VideoError` for a video that cannot be used."""
    info = probe_video(video)
    listens = model.fuser.config.uses_audio
    if listens and not info.has_audio:
        raise VideoError(f"{video}: has no sound; this checkpoint listens (modalities="
                         f"{model.fuser.config.modalities!r}): give a video with an audio track")
    if model.fuser.config.uses_text and (settings.text is None or isinstance(settings.text, str)
                                         and not settings.text.strip()):
        raise VideoError(f"this checkpoint reads (modalities={model.fuser.config.modalities!r}): give the "
                         "referring expression with --text")
    channels = model.audio_encoder.channels if listens and model.audio_encoder is not None else 2
    audio = AudioStream(video, channels) if listens else None
    try:
        frames = sample_frames(video, settings.sampling, info.duration, info.fps)
        any_window = False
        for i, window in enumerate(_windows(frames, settings.window)):
            any_window = True
            t0 = time.perf_counter()
            log_mel, padded = _log_mel(audio, window, settings.sampling, channels) if audio else (None, 0)
            logits, scores, cond, seconds = _predict(model, window, log_mel, settings, i == 0)
            h, w = window[0].rgb.shape[:2]
            full = F.interpolate(logits[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
            seconds["total"] = time.perf_counter() - t0
            yield WindowResult(window, logits.cpu(), (full > 0).cpu().numpy(), scores.cpu(), cond, seconds, padded)
        if not any_window:
            raise VideoError(f"{video}: {info.duration:.2f} s holds no frame to sample at 15/16 of a second; "
                             "use --every-frame for videos shorter than one second")
    finally:
        if audio is not None:
            audio.close()
