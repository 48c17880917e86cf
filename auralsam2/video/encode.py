"""Writing what `segment` found: an H.264/AAC overlay video with the original sound, mask PNGs.

The overlay shows the sampled frames at the sampling's rate (1 fps for per-second models: each
frame stays on screen for its second), the predicted mask tinted over them and outlined. The sound
is the source's, re-encoded to AAC and written as the video advances (interleaved, so memory stays
bounded for long videos).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from auralsam2.video.decode import VideoError

__all__ = ["FORMATS", "OverlayWriter", "overlay_frame", "write_frames_video", "write_mask_png"]

# container suffix -> (video codec, pixel format, audio codec, audio sample format) for `write_frames_video`
FORMATS = {
    "mkv": ("ffv1", "bgr0", "pcm_s16le", "s16"),  # lossless both ways: frames and samples as given
    "mp4": ("libx264", "yuv420p", "aac", "fltp"),
    "webm": ("libvpx-vp9", "yuv420p", "libopus", "flt"),
    "mov": ("libx264", "yuv420p", "aac", "fltp"),
    "ts": ("libx264", "yuv420p", "aac", "fltp"),  # MPEG-TS: a broadcast or HLS segment
}

TINT = np.array([255, 64, 32], np.float32)  # the mask colour
ALPHA = 0.5


def overlay_frame(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 frame with the boolean mask (H, W) tinted and its border drawn."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - ALPHA) * out[mask] + ALPHA * TINT
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = TINT
    return out.astype(np.uint8)


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """A boolean mask as an 8-bit PNG (0 / 255), written atomically."""
    import io

    from PIL import Image

    from auralsam2.utils.files import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


class OverlayWriter:
    """`add(rgb, mask, time)` frame by frame, then `close()`; writes `path` (mp4) through a temp
    file, so a killed run leaves no half video under the final name. `source`: the video whose
    sound is copied (None: a silent overlay). `rate`: frames per second of the overlay."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, rate: float,
                 source: str | os.PathLike | None) -> None:
        import av

        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self._width, self._height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        self._out = av.open(str(self._tmp), mode="w")
        self._rate = Fraction(rate).limit_denominator(1001)
        self._video = self._out.add_stream("libx264", rate=self._rate)
        self._video.width, self._video.height, self._video.pix_fmt = self._width, self._height, "yuv420p"
        self._video.options = {"crf": "20", "preset": "veryfast"}
        self._frames = 0
        self._audio_in = self._audio = None
        if source is not None:
            self._open_audio(Path(source))

    def _open_audio(self, source: Path) -> None:
        import av

        container = av.open(str(source))
        if not container.streams.audio:
            container.close()
            return
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        layout = "stereo" if stream.codec_context.channels >= 2 else "mono"
        self._audio = self._out.add_stream("aac", rate=rate, layout=layout)
        self._audio_in = container
        self._audio_frames = container.decode(stream)
        self._resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        self._audio_samples = 0
        self._audio_rate = rate
        # the overlay's time 0 is the source's start: a sound that begins later starts after silence
        self._timeline = container.start_time / 1_000_000 if container.start_time is not None else 0.0
        self._silence_first = True

    def _audio_until(self, seconds: float | None) -> None:
        """Encode the source's sound up to `seconds` (None: all of it)."""
        if self._audio is None:
            return
        while seconds is None or self._audio_samples < seconds * self._audio_rate:
            frame = next(self._audio_frames, None)
            if self._silence_first and frame is not None and frame.time is not None:
                self._silence_first = False
                self._audio_samples = max(0, round((float(frame.time) - self._timeline) * self._audio_rate))
                self._encode_silence(self._audio_samples)
            frames = self._resampler.resample(frame)  # None flushes the resampler
            for out in frames:
                out.pts = self._audio_samples
                out.time_base = Fraction(1, self._audio_rate)
                self._audio_samples += out.samples
                self._out.mux(self._audio.encode(out))
            if frame is None:
                self._out.mux(self._audio.encode(None))
                self._audio = None
                return

    def _encode_silence(self, samples: int) -> None:
        import av

        for start in range(0, samples, self._audio_rate):
            n = min(self._audio_rate, samples - start)
            channels = self._audio.codec_context.channels
            frame = av.AudioFrame.from_ndarray(np.zeros((channels, n), np.float32), format="fltp",
                                               layout=self._audio.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = self._audio_rate, start, Fraction(1, self._audio_rate)
            self._out.mux(self._audio.encode(frame))  # the encoder's own format: no resampling

    def add(self, rgb: np.ndarray, mask: np.ndarray) -> None:
        import av

        image = overlay_frame(rgb, mask)
        if image.shape[:2] != (self._height, self._width):
            image = np.pad(image, ((0, self._height - image.shape[0]), (0, self._width - image.shape[1]), (0, 0)),
                           mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = self._frames
        frame.time_base = 1 / self._rate
        self._frames += 1
        self._out.mux(self._video.encode(frame))
        self._audio_until(self._frames / float(self._rate))

    def close(self) -> Path:
        """Flush both streams and move the file into place; returns its path."""
        try:
            self._out.mux(self._video.encode(None))
            self._audio_until(None)
        except Exception as err:  # noqa: BLE001 (an encoder failure is a clear error about this file)
            self.abort()
            raise VideoError(f"{self.path}: writing the overlay video failed: {err}") from None
        self._out.close()
        if self._audio_in is not None:
            self._audio_in.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close everything and remove the temp file (on an error or an interrupt)."""
        for container in (self._out, self._audio_in):
            try:
                if container is not None:
                    container.close()
            except Exception:  # noqa: BLE001, S110 (already failing; the temp file goes either way)
                pass
        self._tmp.unlink(missing_ok=True)


def write_frames_video(path: str | os.PathLike, frames: list[np.ndarray], fps: int, audio: np.ndarray | None = None,
                       sample_rate: int = 16000, repeat: int = 1, video_start: float = 0.0,
                       audio_start: float = 0.0) -> Path:
    """Encode `frames` (H, W, 3) uint8, each shown `repeat` times at `fps`, with `audio` (n, channels)
    int16 (None: silent; channels 1, 2, 6 = 5.1 or 8 = 7.1 in FFmpeg's order: FL FR FC LFE BL BR ...), in the format of `path`'s suffix (see `FORMATS`; H.264 needs even sizes).
    Turns a dataset clip (1 fps frames + its WAV) into a video `segment` can read. `video_start`,
    `audio_start`: each stream's first timestamp (s), as broadcast segments and phone videos have."""
    import av

    path = Path(path)
    if path.suffix.lstrip(".") not in FORMATS:
        raise ValueError(f"{path}: write .mkv (lossless), .mp4, .webm, .mov or .ts")
    vcodec, pix_fmt, acodec, afmt = FORMATS[path.suffix.lstrip(".")]
    with av.open(str(path), mode="w") as out:
        video = out.add_stream(vcodec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = pix_fmt
        if vcodec == "libx264":
            video.options = {"crf": "18"}
        stream = None
        if audio is not None:
            layouts = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}
            if audio.shape[1] not in layouts:
                raise ValueError(f"audio has {audio.shape[1]} channels; write 1, 2, 6 (5.1) or 8 (7.1)")
            layout = layouts[audio.shape[1]]
            stream = out.add_stream(acodec, rate=48000 if acodec == "libopus" else sample_rate, layout=layout)
        pts = round(video_start * fps)
        for image in frames:
            for _ in range(repeat):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts, frame.time_base = pts, Fraction(1, fps)
                pts += 1
                out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if stream is not None:
            planar = afmt != "s16"
            data = np.ascontiguousarray(audio.T if planar else audio.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(data, format="s16p" if planar else "s16", layout=stream.layout.name)
            frame.sample_rate, frame.time_base = sample_rate, Fraction(1, sample_rate)
            frame.pts = round(audio_start * sample_rate)
            resampler = av.AudioResampler(format=afmt, layout=stream.layout.name, rate=stream.rate)
            for piece in [*resampler.resample(frame), *resampler.resample(None)]:
                out.mux(stream.encode(piece))
            out.mux(stream.encode(None))
    return path
