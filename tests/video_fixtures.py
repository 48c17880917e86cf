"""Real video files for the `segment` tests, encoded with PyAV from synthetic clips or FFmpeg's
test sources (lavfi `testsrc`, `sine`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

# container suffix -> (video codec, pixel format, audio codec, audio sample format)
FORMATS = {
    "mkv": ("ffv1", "bgr0", "pcm_s16le", "s16"),  # lossless both ways: frames and samples as given
    "mp4": ("libx264", "yuv420p", "aac", "fltp"),
    "webm": ("libvpx-vp9", "yuv420p", "libopus", "flt"),
    "mov": ("libx264", "yuv420p", "aac", "fltp"),
}


def encode_video(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, repeat: int = 1) -> Path:
    """Write `frames` (H, W, 3) uint8, each shown `repeat` times at `fps`, with `audio` (n, channels)
    int16 (None: no sound), in the format of `path`'s suffix."""
    import av

    vcodec, pix_fmt, acodec, afmt = FORMATS[path.suffix.lstrip(".")]
    with av.open(str(path), mode="w") as out:
        video = out.add_stream(vcodec, rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = pix_fmt
        if vcodec == "libx264":
            video.options = {"crf": "18"}
        stream = None
        if audio is not None:
            layout = "stereo" if audio.shape[1] == 2 else "mono"
            rate = 48000 if acodec == "libopus" else sample_rate
            stream = out.add_stream(acodec, rate=rate, layout=layout)
        pts = 0
        for image in frames:
            for _ in range(repeat):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts, frame.time_base = pts, Fraction(1, fps)
                pts += 1
                out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if stream is not None:
            data = np.ascontiguousarray(audio.T if afmt != "s16" else audio.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(data, format="s16p" if afmt != "s16" else "s16",
                                               layout=stream.layout.name)
            frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
            resampler = av.AudioResampler(format=afmt, layout=stream.layout.name, rate=stream.rate)
            for piece in [*resampler.resample(frame), *resampler.resample(None)]:
                out.mux(stream.encode(piece))
            out.mux(stream.encode(None))
    return path


def lavfi_video(path: Path, seconds: float, size: str = "160x120", fps: int = 25, sound: bool = True) -> Path:
    """FFmpeg's `testsrc` pattern (and a 440 Hz `sine`), decoded from lavfi and encoded to `path`."""
    import av

    with av.open(f"testsrc=duration={seconds}:size={size}:rate={fps}", format="lavfi") as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    audio = None
    if sound:
        with av.open(f"sine=frequency=440:duration={seconds}:sample_rate=16000", format="lavfi") as src:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in src.decode(audio=0)])[:, None]
    return encode_video(path, frames, fps, audio)
