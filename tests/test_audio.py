"""Audio path: the VGGish log-mel front end against an independent numpy implementation, VGGish."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF

from auralsam2.audio import (
    AudioEncoder,
    VGGish,
    VGGishConfig,
    mel_filterbank,
    min_samples_for_one_example,
    waveform_to_examples,
    waveform_to_examples_report,
)
from auralsam2.checkpoints import CheckpointError, load_vggish_weights

KEYS = Path(__file__).parent / "data" / "released_checkpoint_keys" / "auralfuser_avs.json"


# ---------------------------------------------------------------------------------------------
# An independent, deliberately plain numpy version of the AudioSet VGGish front end
# (mel_features.py / vggish_input.py semantics), float64 throughout.
# ---------------------------------------------------------------------------------------------


def np_mel_matrix() -> np.ndarray:
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    freqs = np.linspace(0.0, 8000.0, 257)
    bins_mel = mel(freqs)
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    out = np.zeros((257, 64))
    for band in range(64):
        lo, mid, hi = edges[band], edges[band + 1], edges[band + 2]
        for b in range(257):
            up = (bins_mel[b] - lo) / (mid - lo)
            down = (hi - bins_mel[b]) / (hi - mid)
            out[b, band] = max(0.0, min(up, down))
    out[0, :] = 0.0
    return out


def np_log_mel_examples(signal_16k: np.ndarray) -> np.ndarray:
    """1-D 16 kHz float64 signal -> (n_examples, 96, 64)."""
    n_frames = 1 + (len(signal_16k) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi / 400 * np.arange(400))
    spec = np.empty((n_frames, 257))
    for i in range(n_frames):
        frame = signal_16k[i * 160 : i * 160 + 400] * window
        spec[i] = np.abs(np.fft.rfft(frame, 512))
    log_mel = np.log(spec @ np_mel_matrix() + 0.01)
    n_ex = 1 + (n_frames - 96) // 96
    return np.stack([log_mel[k * 96 : k * 96 + 96] for k in range(n_ex)])


def to_16k(signal: np.ndarray, sr: int) -> np.ndarray:
    # Resampling is a named step of the spec (torchaudio), shared with the implementation under test.
    if sr == 16000:
        return signal
    return AF.resample(torch.from_numpy(signal), sr, 16000).numpy()


def make_signal(kind: str, sr: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    if kind == "tone":
        return 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
    if kind == "noise":
        return rng.normal(0, 0.3, t.shape)
    if kind == "quiet":
        return 1e-4 * np.sin(2 * np.pi * 1000 * t)
    raise ValueError(kind)


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
@pytest.mark.parametrize("kind", ["tone", "noise", "quiet"])
def test_log_mel_matches_numpy_reference_mono(sr, kind):
    rng = np.random.default_rng(0)
    x = make_signal(kind, sr, 5.0, rng)
    got = waveform_to_examples(x, sr, num_examples=5, channels=1)
    want = np_log_mel_examples(to_16k(x, sr))
    assert got.shape == (5, 1, 96, 64) and got.dtype == torch.float32
    assert want.shape == (5, 96, 64)
    assert np.abs(got[:, 0].numpy() - want).max() <= 1e-4


@pytest.mark.parametrize("sr", [16000, 44100, 48000])
def test_log_mel_matches_numpy_reference_stereo_int16(sr):
    rng = np.random.default_rng(1)
    left = make_signal("tone", sr, 5.0, rng)
    right = make_signal("noise", sr, 5.0, rng)
    pcm = (np.clip(np.stack([left, right], axis=1), -1, 1) * 32767).astype(np.int16)  # soundfile layout
    got = waveform_to_examples(pcm, sr, num_examples=5)
    assert got.shape == (5, 2, 96, 64)
    for ch in range(2):
        want = np_log_mel_examples(to_16k(pcm[:, ch].astype(np.float64) / 32768.0, sr))
        assert np.abs(got[:, ch].numpy() - want).max() <= 1e-4
    # torchaudio's (channels, samples) layout gives the same examples
    same = waveform_to_examples(torch.from_numpy(pcm.T.copy()), sr, 5, channels_first=True)
    assert torch.equal(same, got)


def test_frame_and_example_counts():
    # 5.00 s at 16 kHz -> 498 STFT frames -> 5 examples; 10 s -> 998 frames -> 10 examples.
    assert waveform_to_examples_report(np.zeros(80000), 16000, 5, channels=1).num_available == 5
    assert waveform_to_examples_report(np.zeros(160000), 16000, 10, channels=1).num_available == 10
    assert min_samples_for_one_example() == 15600
    assert waveform_to_examples_report(np.zeros(15600), 16000, 1, channels=1).num_available == 1
    with pytest.raises(ValueError, match="0.96 s"):
        waveform_to_examples(np.zeros(15599), 16000, 1, channels=1)


def test_short_audio_is_padded_by_repeating_the_last_example_and_reported():
    x = make_signal("noise", 16000, 3.0, np.random.default_rng(2))
    report = waveform_to_examples_report(x, 16000, num_examples=5, channels=1)
    assert (report.num_available, report.num_padded, report.num_dropped) == (3, 2, 0)
    ex = report.examples
    assert torch.equal(ex[3], ex[2]) and torch.equal(ex[4], ex[2])
    assert not torch.equal(ex[1], ex[2])
    long = waveform_to_examples_report(np.tile(x, 3), 16000, num_examples=5, channels=1)
    assert (long.num_available, long.num_padded, long.num_dropped) == (9, 0, 4)


def test_mono_for_stereo_duplicates_and_stereo_for_mono_averages():
    x = make_signal("tone", 16000, 2.0, np.random.default_rng(3))
    ex = waveform_to_examples(x, 16000, 2, channels=2)
    assert torch.equal(ex[:, 0], ex[:, 1])
    stereo = np.stack([x, 0.5 * x], axis=1)
    mono = waveform_to_examples(stereo, 16000, 2, channels=1)
    assert torch.allclose(mono, waveform_to_examples(0.75 * x, 16000, 2, channels=1), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        waveform_to_examples(np.zeros((16000, 3)), 16000, 1, channels=2)


def test_int16_is_scaled_by_1_over_32768():
    pcm = (make_signal("tone", 16000, 1.0, np.random.default_rng(4)) * 20000).astype(np.int16)
    a = waveform_to_examples(pcm, 16000, 1, channels=1)
    b = waveform_to_examples(pcm.astype(np.float64) / 32768.0, 16000, 1, channels=1)
    assert torch.equal(a, b)


def test_mel_filterbank_shape_and_dc_bin():
    m = mel_filterbank()
    assert m.shape == (257, 64)
    assert torch.all(m[0] == 0)
    assert np.abs(m.numpy() - np_mel_matrix()).max() < 1e-12
    # every band has a triangle peak below 1 (bin centres rarely hit a band centre exactly)
    assert torch.all(m.max(0).values > 0.3) and torch.all(m.max(0).values <= 1.0)


# ---------------------------------------------------------------------------------------------
# VGGish
# ---------------------------------------------------------------------------------------------


def official_vggish_keys() -> dict[str, list[int]]:
    entries = json.loads(KEYS.read_text())["keys"]
    return {e["key"][4:]: e["shape"] for e in entries if e["key"].startswith("vgg.")}


def test_default_vggish_has_the_official_layout():
    model = VGGish()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official_vggish_keys()
    assert sum(p.numel() for p in model.parameters()) == 72_141_184


def test_vggish_loads_a_state_dict_file_in_the_official_layout(tmp_path):
    # vggish-10086976.pth is a plain {features.*, embeddings.*} state dict; build one with the
    # exact names and shapes, random values, and load it from disk.
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.01 for k, shape in official_vggish_keys().items()}
    path = tmp_path / "vggish-10086976.pth"
    torch.save(sd, path)
    model = VGGish()
    report = load_vggish_weights(model, path)
    assert report.vggish_loaded == 18
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    bad = dict(sd)
    bad["embeddings.6.weight"] = bad.pop("embeddings.4.weight")
    with pytest.raises(CheckpointError, match=r"embeddings\.6\.weight"):
        load_vggish_weights(VGGish(), bad)


def test_vggish_forward_flattens_in_the_tf_order_and_ends_in_relu():
    torch.manual_seed(0)
    model = VGGish(VGGishConfig.tiny(embedding_dim=8)).eval()
    x = torch.randn(3, 1, 96, 64)
    seen = {}
    model.embeddings.register_forward_hook(lambda m, inp, out: seen.update(fc_in=inp[0]))
    out = model(x)
    fmap = model.features(x)  # (B, C, 6, 4)
    assert fmap.shape == (3, 16, 6, 4)
    torchvggish_order = fmap.transpose(1, 3).transpose(1, 2).contiguous().view(3, -1)
    assert torch.equal(seen["fc_in"], torchvggish_order)
    assert out.shape == (3, 8) and torch.all(out >= 0)


def test_audio_encoder_runs_each_channel_and_concatenates_left_right():
    torch.manual_seed(0)
    enc = AudioEncoder(VGGish(VGGishConfig.tiny(embedding_dim=16)), channels=2).eval()
    ex = torch.randn(5, 2, 96, 64)
    out = enc(ex)
    assert out.shape == (5, 32) and enc.output_dim == 32
    left, right = enc.vggish(ex[:, 0:1]), enc.vggish(ex[:, 1:2])
    assert torch.allclose(out, torch.cat([left, right], dim=-1), atol=1e-6)
    frozen = AudioEncoder(VGGish(VGGishConfig.tiny()), trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in enc.parameters())
