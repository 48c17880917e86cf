"""Reading a user's video with PyAV (which bundles FFmpeg): probe, frame sampling, streamed audio.

Frame sampling follows the datasets the checkpoints were trained on. `per_second`: one frame per
second, the frame on screen at 15/16 of each second (AVSBench's `k % 16 == 15` of a 16 fps
decode; Ref-AVS is also 1 fps), i.e. the last frame whose timestamp is <= t + 15/16. `every_frame`:
every decoded frame. Times count from the container's start, as a player shows them (an MPEG-TS
segment's timestamps may start at 10 s; a phone video's picture may start after its sound).
Frames and audio are decoded as a stream (two demuxers, each advanced only as
far as needed), so memory is bounded by one window whatever the video's length.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Sampling = Literal["per_second", "every_frame"]
FRAME_PHASE = 15 / 16  # AVSBench keeps frame 15 of each second's 16
TIME_SLACK = 0.005  # containers round timestamps (Matroska to 1 ms): 0.938 s is frame 15 of a 16 fps video

__all__ = ["FRAME_PHASE", "AudioStream", "SampledFrame", "Sampling", "VideoError", "VideoInfo", "probe_video",
           "sample_frames"]


class VideoError(ValueError):
    """A video that cannot be segmented: missing, unreadable, no video stream, undecodable, no sound."""


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` found. Times count from the container's start (`start`: an MPEG-TS
    segment's streams may start at 10 s, an mp4's video after its sound), as a player shows them.
    `duration`: seconds from that start to the end of the video's last frame (or the container's
    duration); `audio_*` are None for a silent video."""

    path: str
    width: int
    height: int
    fps: float
    duration: float
    video_codec: str
    container: str
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    start: float = 0.0  # the container's start time (s): times here count from it, as a player's do

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its position among the sampled frames, its timestamp (s), the time its
    audio second starts (s), and the RGB pixels (H, W, 3) uint8."""

    index: int
    time: float
    audio_start: float
    rgb: np.ndarray


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise VideoError(f"{path}: not a readable video file ({reason})") from None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Check that `path` is a video whose first frame decodes; report its streams. `VideoError`
    names the file and what is wrong."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    with _open(path) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: its video stream ({codec}) cannot be decoded: {err}") from None
        if first is None:
            raise VideoError(f"{path}: its video stream ({codec}) holds no decodable frame")
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        origin = _timeline_origin(container)
        duration = _duration(container, stream, origin)
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=str(path), width=first.width, height=first.height, fps=rate, duration=duration,
            video_codec=codec, container=container.format.name,
            audio_codec=None if audio is None else audio.codec_context.name,
            sample_rate=None if audio is None else int(audio.codec_context.sample_rate),
            channels=None if audio is None else int(audio.codec_context.channels), start=origin,
        )


def _timeline_origin(container) -> float:
    """The time (s) a player starts from: the container's start, the earliest of its streams'."""
    return container.start_time / 1_000_000 if container.start_time is not None else 0.0


def _duration(container, stream, origin: float) -> float:
    """Seconds from `origin` to the end of the video stream."""
    if stream.duration is not None and stream.time_base is not None:
        begins = float(stream.start_time * stream.time_base) - origin if stream.start_time is not None else 0.0
        return begins + float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return math.nan  # unknown: sampling then runs to the last frame


def _frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(timestamp s from the container's start, RGB array) of every decoded frame, in presentation order."""
    import av

    with _open(path) as container:
        origin = _timeline_origin(container)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                yield (origin if frame.time is None else float(frame.time)) - origin, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise VideoError(f"{path}: decoding failed after some frames: {err}") from None


def sample_frames(path: str | os.PathLike, sampling: Sampling = "per_second", duration: float = math.nan,
                  fps: float = 25.0) -> Iterator[SampledFrame]:
    """The frames a model sees, streamed. `per_second`: second t gets the frame on screen at
    t + 15/16, for every t with t + 15/16 < `duration` (unknown duration: the last frame's
    timestamp + 1 / `fps`); `every_frame`: all frames, each with its audio starting at its timestamp."""
    path = Path(path)
    if sampling == "every_frame":
        for i, (time, rgb) in enumerate(_frames(path)):
            yield SampledFrame(i, time, time, rgb)
        return
    if sampling != "per_second":
        raise ValueError(f"sampling must be 'per_second' or 'every_frame', got {sampling!r}")
    second, previous = 0, None
    for time, rgb in _frames(path):
        while previous is not None and time > second + FRAME_PHASE + TIME_SLACK:
            yield SampledFrame(second, previous[0], float(second), previous[1])
            second += 1
        previous = (time, rgb)
    if previous is None:
        return
    end = duration if math.isfinite(duration) else previous[0] + 1.0 / fps
    while second + FRAME_PHASE < end:  # the last frame stays on screen until the video ends
        yield SampledFrame(second, previous[0], float(second), previous[1])
        second += 1


class AudioStream:
    """The video's sound as int16 samples `(n, channels)` at its own rate, read forward in pieces:
    `take(start, seconds)` returns [start, start + seconds) (short at the end of the sound) and
    forgets what lies before `start`; starts must not decrease."""

    def __init__(self, path: str | os.PathLike, channels: int | None = None) -> None:
        """`channels`: the most channels the listener takes; a surround track (5.1, 7.1, ...) is
        downmixed to it by FFmpeg's standard matrix, which knows which channel is which (front left
        to left, centre to both, ...). Mono and stereo are read as they are."""
        import av

        self.path = Path(path)
        self._container = _open(self.path)
        if not self._container.streams.audio:
            self._container.close()
            raise VideoError(f"{self.path}: has no sound; this checkpoint listens (modalities "
                             "include audio): give a video with an audio track")
        stream = self._container.streams.audio[0]
        self._timeline = _timeline_origin(self._container)
        self.sample_rate = int(stream.codec_context.sample_rate)
        self.channels = self.source_channels = int(stream.codec_context.channels)
        layout = stream.codec_context.layout.name
        if channels is not None and self.source_channels > max(channels, 2):
            layout, self.channels = ("stereo", 2) if channels >= 2 else ("mono", 1)
        self._resampler = av.AudioResampler(format="s16", layout=layout, rate=self.sample_rate)
        self._packets = self._container.decode(stream)
        self._buffer = np.zeros((0, self.channels), np.int16)
        self._buffer_start = 0  # sample index of _buffer[0]
        self._origin: float | None = None  # timestamp of sample 0
        self._done = False

    def _pull(self) -> bool:
        import av

        try:
            frame = next(self._packets)
        except StopIteration:
            self._done = True
            return False
        except av.error.FFmpegError as err:
            raise VideoError(f"{self.path}: the audio stream cannot be decoded: {err}") from None
        if self._origin is None:
            self._origin = self._timeline if frame.time is None else float(frame.time)
        for out in self._resampler.resample(frame):
            data = out.to_ndarray().reshape(-1, self.channels)  # packed s16: (1, n * channels)
            self._buffer = np.concatenate([self._buffer, data])
        return True

    def take(self, start: float, seconds: float) -> np.ndarray:
        """The samples of [start, start + seconds) on the container's timeline (as a player plays
        them): silence before the sound begins, short at its end."""
        while self._origin is None and not self._done:
            self._pull()
        sound_begins = self._timeline if self._origin is None else self._origin
        first = round((start + self._timeline - sound_begins) * self.sample_rate)
        count = round(seconds * self.sample_rate)
        silence = min(count, max(0, -first))
        first = max(0, first)
        last = first + count - silence
        if first < self._buffer_start:
            raise ValueError(f"AudioStream.take: start {start} s lies before what was already released")
        while self._buffer_start + len(self._buffer) < last and not self._done:
            self._pull()
        self._buffer = self._buffer[first - self._buffer_start:]
        self._buffer_start = first
        piece = self._buffer[: last - first].copy()
        if silence:
            piece = np.concatenate([np.zeros((silence, self.channels), np.int16), piece])
        return piece

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
