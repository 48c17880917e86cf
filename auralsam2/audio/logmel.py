"""The VGGish log-mel front end (paper Fig. 2, the "audio encoder" input).

The front end reproduces torchvggish's `vggish_input.waveform_to_examples` / `mel_features`
(the AudioSet VGGish recipe) per channel, as the released AuralSAM2 loaders call it:
16 kHz, 25 ms periodic-Hann frames every 10 ms (no centring, the 400-sample window zero-padded at
its end to 512), magnitude spectrum, 64 HTK-mel bands 125-7500 Hz (triangles in the mel domain, DC
bin weight 0), `log(mel + 0.01)`, framed into non-overlapping 96-frame (0.96 s) examples.
Example `t` pairs with video frame `t`.

Deviation from the release, stated where it matters: resampling uses torchaudio's windowed-sinc
resampler (`torchaudio.functional.resample`, default settings), not `resampy`; at 16 kHz input
nothing is resampled and the two agree exactly.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor

log = logging.getLogger(__name__)

# VGGish front-end constants (torchvggish `vggish_params`; AudioSet VGGish).
SAMPLE_RATE = 16_000
STFT_WINDOW = 400  # 0.025 s
STFT_HOP = 160  # 0.010 s
FFT_LENGTH = 512  # next power of two above the window
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames; examples do not overlap (hop 96)
MEL_BREAK_HZ = 700.0
MEL_HIGH_Q = 1127.0

__all__ = [
    "AudioExamples",
    "log_mel_spectrogram",
    "mel_filterbank",
    "min_samples_for_one_example",
    "waveform_to_examples",
    "waveform_to_examples_report",
]


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, as VGGish uses it: 1127 ln(1 + f / 700)."""
    return MEL_HIGH_Q * np.log1p(np.asarray(hz, dtype=np.float64) / MEL_BREAK_HZ)


def mel_filterbank(
    num_mel_bins: int = NUM_MEL_BINS,
    num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    lower_hz: float = MEL_MIN_HZ,
    upper_hz: float = MEL_MAX_HZ,
) -> Tensor:
    """The VGGish mel matrix `(num_spectrogram_bins, num_mel_bins)` in float64.

    Triangles are built in the mel domain over the linear-frequency bin centres (not on an FFT
    grid of mel points, as librosa/torchaudio do), and the DC bin gets weight 0; that is why the
    standard torchaudio `MelSpectrogram` cannot be used here.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= {lower_hz} < {upper_hz} <= {nyquist}")
    bins_mel = _hz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges = np.linspace(_hz_to_mel(lower_hz), _hz_to_mel(upper_hz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None]) / (centre - lower)[None]
    falling = (upper[None] - bins_mel[:, None]) / (upper - centre)[None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin never contributes
    return torch.from_numpy(weights)


_MEL_CACHE: dict[str, Tensor] = {}


def _periodic_hann(n: int) -> Tensor:
    """Periodic Hann window (the VGGish one: 0.5 - 0.5 cos(2 pi k / n), k < n), float64."""
    k = torch.arange(n, dtype=torch.float64)
    return 0.5 - 0.5 * torch.cos(2.0 * math.pi * k / n)


def log_mel_spectrogram(samples: Tensor) -> Tensor:
    """`(..., num_samples)` float 16 kHz audio -> `(..., num_frames, 64)` float64 log-mel.

    `num_frames = 1 + (num_samples - 400) // 160` (frames start at sample 0, no padding). The
    400-sample frame is windowed and zero-padded at its END to 512 before the FFT
    (`torch.stft(n_fft=512, win_length=400)` would centre the window instead and change values).
    """
    x = samples.to(torch.float64)
    if x.shape[-1] < STFT_WINDOW:
        raise ValueError(f"audio has {x.shape[-1]} samples; the log-mel needs at least {STFT_WINDOW}")
    frames = x.unfold(-1, STFT_WINDOW, STFT_HOP) * _periodic_hann(STFT_WINDOW).to(x.device)
    spectrum = torch.fft.rfft(frames, n=FFT_LENGTH).abs()
    key = str(x.device)
    if key not in _MEL_CACHE:
        _MEL_CACHE[key] = mel_filterbank().to(x.device)
    return torch.log(spectrum @ _MEL_CACHE[key] + LOG_OFFSET)


def min_samples_for_one_example() -> int:
    """Fewest 16 kHz samples that give one 96-frame example (15,600 = 0.975 s)."""
    return STFT_WINDOW + (EXAMPLE_FRAMES - 1) * STFT_HOP


class AudioExamples(NamedTuple):
    """Per-frame log-mel examples plus what padding/truncation was needed to get them.

    `examples`: `(num_examples, channels, 96, 64)` float32. `num_available`: examples the audio
    actually holds. `num_padded`: trailing examples that repeat the last real one (the released
    rule for short audio). `num_dropped`: real examples beyond `num_examples` that were cut.
    """

    examples: Tensor
    num_available: int
    num_padded: int
    num_dropped: int


def _as_channels_first(waveform: np.ndarray | Tensor, channels_first: bool) -> Tensor:
    """Any supported waveform -> float64 `(channels, samples)`; integer PCM scaled to [-1, 1)."""
    if isinstance(waveform, np.ndarray):
        if waveform.dtype == np.int16:
            data = torch.from_numpy(waveform.astype(np.float64) / 32768.0)
        elif waveform.dtype == np.int32:
            data = torch.from_numpy(waveform.astype(np.float64) / 2147483648.0)
        elif np.issubdtype(waveform.dtype, np.floating):
            data = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float64))
        else:
            raise TypeError(f"unsupported waveform dtype {waveform.dtype}; give int16, int32 or float")
    else:
        if waveform.dtype == torch.int16:
            data = waveform.to(torch.float64) / 32768.0
        elif waveform.dtype == torch.int32:
            data = waveform.to(torch.float64) / 2147483648.0
        elif waveform.is_floating_point():
            data = waveform.to(torch.float64)
        else:
            raise TypeError(f"unsupported waveform dtype {waveform.dtype}; give int16, int32 or float")
    if data.ndim == 1:
        return data[None]
    if data.ndim != 2:
        raise ValueError(f"waveform must be 1-D or 2-D, got shape {tuple(data.shape)}")
    return data if channels_first else data.T


def waveform_to_examples_report(
    waveform: np.ndarray | Tensor,
    sample_rate: int,
    num_examples: int,
    channels: int = 2,
    channels_first: bool = False,
) -> AudioExamples:
    """Waveform -> `AudioExamples` with `examples (num_examples, channels, 96, 64)` float32.

    `waveform`: `(samples,)` mono, or 2-D in soundfile's `(samples, channels)` layout (set
    `channels_first=True` for torchaudio's `(channels, samples)`). int16 is scaled by 1/32768
    (the released loader), int32 by 1/2^31, floats are used as given. Each channel is resampled to
    16 kHz and turned into log-mel examples independently. Mono input for a stereo model is
    duplicated (the Ref-AVS loader's rule); stereo input for a mono model is averaged (the VGGish
    rule). If the audio holds fewer than `num_examples` examples, the last one is repeated
    (released rule) and `num_padded` says how many; extra examples are dropped.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    data = _as_channels_first(waveform, channels_first)
    if data.shape[0] != channels:
        if data.shape[0] == 1:
            data = data.expand(channels, -1)
        elif channels == 1:
            data = data.mean(dim=0, keepdim=True)
        else:
            raise ValueError(
                f"waveform has {data.shape[0]} channels but the audio encoder expects {channels}; "
                "give mono or matching audio (check `channels_first` if the layout is transposed)"
            )
    if sample_rate != SAMPLE_RATE:
        data = AF.resample(data, int(sample_rate), SAMPLE_RATE)
    if data.shape[-1] < min_samples_for_one_example():
        raise ValueError(
            f"audio is {data.shape[-1] / SAMPLE_RATE:.3f} s long after resampling; one 0.96 s VGGish "
            f"example needs {min_samples_for_one_example()} samples at 16 kHz"
        )
    log_mel = log_mel_spectrogram(data)  # (C, frames, 64)
    available = (log_mel.shape[1] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1
    used = min(available, num_examples)
    examples = log_mel[:, : used * EXAMPLE_FRAMES].reshape(channels, used, EXAMPLE_FRAMES, NUM_MEL_BINS)
    examples = examples.permute(1, 0, 2, 3)
    padded = num_examples - used
    if padded:
        examples = torch.cat([examples, examples[-1:].expand(padded, -1, -1, -1)])
    return AudioExamples(examples.to(torch.float32).contiguous(), available, padded, max(0, available - used))


def waveform_to_examples(
    waveform: np.ndarray | Tensor,
    sample_rate: int,
    num_examples: int,
    channels: int = 2,
    channels_first: bool = False,
) -> Tensor:
    """Waveform -> `(num_examples, channels, 96, 64)` float32 log-mel examples.

    Same as `waveform_to_examples_report` (see there for the layout rules) but returns only the
    tensor; padding of short audio is logged at INFO. Pipelines that must record padding per
    clip call `waveform_to_examples_report`.
    """
    result = waveform_to_examples_report(waveform, sample_rate, num_examples, channels, channels_first)
    if result.num_padded:
        log.info(
            "audio holds %d example(s) for %d frames; repeated the last one %d time(s)",
            result.num_available,
            num_examples,
            result.num_padded,
        )
    return result.examples
