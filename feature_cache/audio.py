"""Log-mel examples per clip: computed once from the shard's WAV bytes, stored as Arrow.

There is no audio augmentation in the released training (only the int16 -> [-1, 1) scaling), so
the VGGish input is a pure function of the WAV and can be cached whether VGGish trains or not.
Example t covers [0.96 t, 0.96 t + 0.96) s and pairs with frame t; a clip gets one example per frame
(short audio repeats the last example, the released rule, and the `padded` column says which).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from auralsam2.audio import waveform_to_examples_report
from feature_cache.schema import audio_schema

CHANNELS = 2  # the released model hears stereo (mono is duplicated)


def clip_log_mel(audio: bytes, n_frames: int, *, where: str = "") -> tuple[np.ndarray, int]:
    """WAV bytes -> ((n_frames, 2, 96, 64) float32 log-mel examples, number of padded examples)."""
    import soundfile as sf

    try:
        waveform, sample_rate = sf.read(io.BytesIO(audio), dtype="int16", always_2d=True)
        report = waveform_to_examples_report(waveform, sample_rate, num_examples=n_frames, channels=CHANNELS)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"{where}: audio.wav cannot be turned into {n_frames} log-mel examples: {err}") from err
    return report.examples.numpy(), report.num_padded


def audio_batch(clip_key: str, examples: np.ndarray, padded: int) -> pa.RecordBatch:
    """One clip's examples as a record batch (one row per example)."""
    n = examples.shape[0]
    flags = [i >= n - padded for i in range(n)]
    return pa.record_batch([
        pa.array([clip_key] * n, pa.string()),
        pa.array(np.arange(n, dtype=np.int32)),
        pa.array(flags, pa.bool_()),
        pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(examples, dtype=np.float32)),
    ], schema=audio_schema(CHANNELS))
