"""The audio path: the VGGish log-mel front end (`logmel`) and the VGGish network with the
per-channel audio encoder (`vggish`)."""

from auralsam2.audio.logmel import (
    EXAMPLE_FRAMES,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    AudioExamples,
    log_mel_spectrogram,
    mel_filterbank,
    min_samples_for_one_example,
    waveform_to_examples,
    waveform_to_examples_report,
)
from auralsam2.audio.vggish import AudioEncoder, VGGish, VGGishConfig

__all__ = [
    "EXAMPLE_FRAMES",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "AudioEncoder",
    "AudioExamples",
    "VGGish",
    "VGGishConfig",
    "log_mel_spectrogram",
    "mel_filterbank",
    "min_samples_for_one_example",
    "waveform_to_examples",
    "waveform_to_examples_report",
]
