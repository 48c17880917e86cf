"""Sounds of a clip plan: one signature per category, gated per frame, panned by position, mixed.

Signatures. The HTK-mel range 150-7000 Hz is cut into 11 equal slots (about 5.8 of the 64 VGGish
mel bands each); a category puts its energy in the central 60% of its slot only, so one source
lights one narrow stripe of the 96x64 log-mel example and a mixture lights one stripe per source.
Within its stripe each seen category has its own temporal texture (steady hum, syllables, plucks,
barks, chirps, drum hits ...), so the signature is also recognisable by its rhythm; an unseen
category shares the texture of the seen relative one slot above it (`synth_world.RELATIVES`).

Timing. Frame t's sounding state covers the segment of VGGish example t, [0.96t, 0.96(t+1)) s (the
last segment runs to the end of the clip), so the example paired with frame t hears exactly the
sources of frame t's mask. A VGGish example's last 25-ms window reaches 240 samples past its
0.96 s, so a source that starts sounding waits `GUARD` samples and fades in over `RAMP` samples;
a source that stops fades out inside its last segment. With `segment_alignment="seconds"` the
segments are the video seconds [t, t+1) s instead (closer to real video, less clean pairing).
"""

from __future__ import annotations

import io
import math
import zlib

import numpy as np
import soundfile as sf

from data_specs.synth_world import EXAMPLE_SAMPLES, SAMPLE_RATE, ClipPlan, SynthConfig

N_SLOTS = 11
MEL_LO_HZ, MEL_HI_HZ = 150.0, 7000.0
GUARD = 240  # samples: 400-sample STFT window minus the 160-sample hop
RAMP = 160  # samples (10 ms) raised-cosine fade in / out
TEXTURES = ("hum", "syllables", "pluck", "bark", "strike", "vibrato", "chirp", "hits")


def hz_to_mel(f: float) -> float:
    return 1127.0 * math.log1p(f / 700.0)


def mel_to_hz(m: float) -> float:
    return 700.0 * math.expm1(m / 1127.0)


def slot_band(slot: int) -> tuple[float, float]:
    """(low, high) Hz of the energy band of spectral slot `slot` (central 60% of the slot in mel)."""
    lo, hi = hz_to_mel(MEL_LO_HZ), hz_to_mel(MEL_HI_HZ)
    width = (hi - lo) / N_SLOTS
    centre = lo + (slot + 0.5) * width
    return mel_to_hz(centre - 0.3 * width), mel_to_hz(centre + 0.3 * width)


def source_waveform(texture: str, slot: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 signature of one category at unit RMS; band-limited to `slot_band(slot)`."""
    lo, hi = slot_band(slot)
    bw = hi - lo
    fc = math.sqrt(lo * hi) * (1 + rng.uniform(-0.03, 0.03))
    t = np.arange(n) / SAMPLE_RATE

    def tone(freq: float | np.ndarray) -> np.ndarray:
        phase = rng.uniform(0, 2 * math.pi)
        if np.ndim(freq) == 0:
            return np.sin(2 * math.pi * freq * t + phase)
        return np.sin(2 * math.pi * np.cumsum(freq) / SAMPLE_RATE + phase)

    def noise() -> np.ndarray:
        spec = np.fft.rfft(rng.normal(0, 1, n))
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec[(f < lo) | (f > hi)] = 0
        out = np.fft.irfft(spec, n)
        return out / (np.sqrt(np.mean(out**2)) + 1e-12)

    def events(rate: float, kernel: np.ndarray) -> np.ndarray:
        env = np.zeros(n)
        pos = rng.uniform(0, 1 / rate)
        while pos < n / SAMPLE_RATE:
            i = int(pos * SAMPLE_RATE)
            k = kernel[: n - i]
            env[i:i + len(k)] += k
            pos += rng.uniform(0.8, 1.2) / rate
        return env

    def decay(tau: float, length: float, attack: float = 0.005) -> np.ndarray:
        k = np.arange(int(length * SAMPLE_RATE)) / SAMPLE_RATE
        return np.exp(-k / tau) * np.minimum(1.0, k / attack)

    def burst(length: float) -> np.ndarray:
        return np.hanning(int(length * SAMPLE_RATE))

    if texture == "hum":
        x = (0.6 * noise() + 0.8 * tone(fc)) * (1 + 0.3 * np.sin(2 * math.pi * 1.5 * t))
    elif texture == "syllables":
        x = (tone(lo + 0.25 * bw) + tone(lo + 0.5 * bw) + tone(lo + 0.75 * bw)) * events(4.0, burst(0.18))
    elif texture == "pluck":
        x = (tone(fc) + 0.5 * tone(fc * 1.004)) * events(3.0, decay(0.12, 0.4))
    elif texture == "bark":
        x = (0.5 * noise() + tone(fc)) * events(3.0, burst(0.16))
    elif texture == "strike":
        x = (tone(lo + 0.35 * bw) + tone(lo + 0.65 * bw)) * events(2.0, decay(0.3, 0.6))
    elif texture == "vibrato":
        x = tone(fc * (1 + 0.015 * np.sin(2 * math.pi * 6.0 * t))) * (0.8 + 0.2 * np.sin(2 * math.pi * 0.5 * t))
    elif texture == "chirp":
        length = int(0.06 * SAMPLE_RATE)  # 60-ms upward sweeps across the band, about 6 per second
        sweep = lo + bw * np.linspace(0.05, 0.95, length)
        x = events(6.0, np.sin(2 * math.pi * np.cumsum(sweep) / SAMPLE_RATE) * np.hanning(length))
    elif texture == "hits":
        x = (0.7 * noise() + 0.3 * tone(fc)) * events(4.0, decay(0.04, 0.15, attack=0.002))
    else:
        raise ValueError(f"unknown sound texture {texture!r}; known: {TEXTURES}")
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def segment_bounds(n_frames: int, n_samples: int, alignment: str = "examples") -> np.ndarray:
    """(T+1,) sample boundaries of the frames' sounding segments (the last one runs to the end)."""
    step = EXAMPLE_SAMPLES if alignment == "examples" else SAMPLE_RATE
    return np.array([t * step for t in range(n_frames)] + [n_samples])


def gate(states: np.ndarray, bounds: np.ndarray, n: int) -> np.ndarray:
    """(n,) 0..1 envelope that is on during the segments where `states` (T,) is True.

    Each run of sounding segments starts `GUARD` samples late (except at the clip start) and fades
    in and out over `RAMP` samples inside the run, so no example hears a neighbour's onset.
    """
    g = np.zeros(n)
    t = 0
    while t < len(states):
        if not states[t]:
            t += 1
            continue
        end = t
        while end < len(states) and states[end]:
            end += 1
        a, b = int(bounds[t]) + (GUARD if t > 0 else 0), min(n, int(bounds[end]))
        r = min(RAMP, (b - a) // 2)
        env = np.ones(b - a)
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, r))
        env[:r], env[len(env) - r:] = fade, fade[::-1]
        g[a:b] = env
        t = end
    return g


def pan_angles(plan: ClipPlan, index: int) -> np.ndarray:
    """(T,) constant-power pan angle per frame: 0 = left, pi/2 = right.

    On-screen objects map their horizontal position into [0.1, 0.9] of the arc (never fully one
    side); off-screen sources are hard-panned to their side.
    """
    obj = plan.objects[index]
    x = obj.centres[:, 0] / plan.width
    if obj.on_screen:
        return (0.1 + 0.8 * np.clip(x, 0, 1)) * math.pi / 2
    return np.where(x < 0.5, 0.0, math.pi / 2)


def mix_clip(plan: ClipPlan, cfg: SynthConfig) -> np.ndarray:
    """(n, 2) int16 stereo mixture of the plan's sounding objects plus a low noise floor.

    n = n_frames seconds at 16 kHz exactly.
    """
    n = plan.n_frames * SAMPLE_RATE
    bounds = segment_bounds(plan.n_frames, n, cfg.segment_alignment)
    lengths = np.diff(bounds)
    out = np.zeros((n, 2))
    for i, obj in enumerate(plan.objects):
        if not plan.sounding[i].any():
            continue
        src = source_waveform(obj.category.texture, obj.category.slot, n, np.random.default_rng(obj.seed))
        amp = cfg.source_rms * 10 ** (obj.gain_db / 20)
        mono = src * gate(plan.sounding[i], bounds, n) * amp
        theta = pan_angles(plan, i)  # constant per segment: objects move only a few % per frame
        out[:, 0] += mono * np.repeat(np.cos(theta), lengths)
        out[:, 1] += mono * np.repeat(np.sin(theta), lengths)
    rng = np.random.default_rng([plan.render_seed, zlib.crc32(plan.uid.encode())])
    out += rng.standard_normal(out.shape, dtype=np.float32) * cfg.noise_rms
    peak = float(np.abs(out).max())
    if peak > 0.98:
        out *= 0.98 / peak
    return np.clip(np.rint(out * 32767), -32768, 32767).astype(np.int16)


def wav_bytes(pcm: np.ndarray) -> bytes:
    """16-bit PCM WAV bytes of (n, channels) int16 samples at 16 kHz."""
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()
