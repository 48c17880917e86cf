"""Real video files for the `segment` tests: synthetic clips (`write_frames_video`) and FFmpeg's test
sources (lavfi `testsrc`, `sine`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auralsam2.video.encode import write_frames_video as encode_video

__all__ = ["encode_video", "lavfi_video"]


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
