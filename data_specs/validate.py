"""Deep checks on a clip's file bytes: decodable frames and masks, sizes, palette, audio length.

These run where the bytes are read anyway (the shard writer), so every file is read once.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import soundfile as sf
from PIL import Image

from data_specs.clip import Clip
from data_specs.common import FindingSink
from data_specs.palette import colours_to_labels

VGGISH_SAMPLE_RATE = 16000
VGGISH_EXAMPLE_FRAMES = 96  # STFT frames per 0.96 s example
STFT_WINDOW, STFT_HOP = 400, 160


MAX_PIXELS = 7680 * 4320  # an 8K UHD frame; AVSBench and Ref-AVS frames are at most 1080p


def open_image(data: bytes) -> Image.Image:
    """An image's header (nothing decoded yet): `ValueError` when it is larger than any frame
    (`MAX_PIXELS`), before a single pixel is allocated (a small PNG can declare 9000x9000)."""
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{width}x{height} pixels, larger than any video frame (limit {MAX_PIXELS:,} pixels)")
    return img


def decode_image(data: bytes, full: bool = False) -> Image.Image:
    """Decode an image; raises on truncated or corrupt data, and before decoding when it is larger
    than a frame (`ValueError`).

    A JPEG is decoded at 1/8 scale unless `full` (DCT scaling: all entropy-coded data is still
    read, so truncation is caught, at a fraction of the cost). `.size` is the true size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = open_image(data)
        size = img.size
        if not full and img.format == "JPEG":
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        img.load()
    img.info["true_size"] = size
    return img


def vggish_examples(n_samples: int, sample_rate: int) -> int:
    """How many non-overlapping 0.96 s log-mel examples VGGish's front end makes of this audio."""
    n16 = int(round(n_samples * VGGISH_SAMPLE_RATE / sample_rate))
    if n16 < STFT_WINDOW:
        return 0
    n_stft = 1 + (n16 - STFT_WINDOW) // STFT_HOP
    return n_stft // VGGISH_EXAMPLE_FRAMES


def _why(data: bytes, exc: Exception) -> str:
    """The decoder's complaint, or plainly 'empty file' (decoders word a 0-byte file obscurely)."""
    return "empty file (0 bytes)" if not data else str(exc)


def check_clip_bytes(clip: Clip, blobs: dict[str, bytes], sink: FindingSink, palette_masks: bool) -> None:
    """Record every decoding problem of `clip` in `sink` (errors quarantine the clip)."""
    sizes: list[tuple[int, int] | None] = []
    for rel in clip.frame_paths:
        try:
            sizes.append(decode_image(blobs[rel]).info["true_size"])
        except Exception as exc:  # PIL raises many types for corrupt data
            sizes.append(None)
            sink.error(clip.key, rel, "unreadable_file", f"frame cannot be decoded: {_why(blobs[rel], exc)}")

    def check_mask(rel: str, t: int, expression_uid: str = "", palette: bool = False) -> Image.Image | None:
        severity = "error"
        frame_size = sizes[t] if t < len(sizes) else None
        try:
            header = Image.open(io.BytesIO(blobs[rel]))  # the size only: nothing is decoded yet
            if frame_size and header.size != frame_size:
                sink.add(clip.key, rel, "mask_size_mismatch", severity, f"mask is {header.size[0]}x{header.size[1]}, "
                         f"frame {t} is {frame_size[0]}x{frame_size[1]}", expression_uid)
                return None
            img = decode_image(blobs[rel], full=True)
        except Exception as exc:
            sink.add(clip.key, rel, "unreadable_file", severity, f"mask cannot be decoded: {_why(blobs[rel], exc)}", expression_uid)
            return None
        if palette:
            _, unmatched = colours_to_labels(np.asarray(img.convert("RGB")))
            if unmatched.any():
                colours = np.unique(np.asarray(img.convert("RGB"))[unmatched], axis=0)[:3].tolist()
                sink.warning(clip.key, rel, "unmatched_palette_colour",
                             f"{int(unmatched.sum())} pixels have colours outside the 71-class palette "
                             f"(e.g. {colours}); they count as foreground in binary masks and as "
                             "background in semantic labels")
        return img

    for t, rel in enumerate(clip.mask_paths):
        if rel:
            check_mask(rel, t, palette=palette_masks)
    for t, rel in enumerate(clip.semantic_paths):
        if rel:
            if (img := check_mask(rel, t)) is not None:
                _check_class_ids(clip, rel, img, sink)
    for expression in clip.expressions:
        for t, rel in enumerate(expression.mask_paths):
            if rel:
                check_mask(rel, t, expression_uid=expression.uid)

    if clip.audio_path:
        _check_audio(clip, blobs[clip.audio_path], sink)


SEMANTIC_CLASSES = 71  # AVSS: background + 70 categories (label2idx.json)
SEMANTIC_IGNORE = 255  # the ignore index a label map may hold


def _check_class_ids(clip: Clip, rel: str, img: Image.Image, sink: FindingSink) -> None:
    """A semantic label map (decoded by `check_mask`) holds class ids 0..70 (or the ignore index 255)."""
    labels = np.asarray(img)
    if labels.ndim != 2:
        return  # an RGB label map is checked against the palette instead
    bad = np.unique(labels[(labels >= SEMANTIC_CLASSES) & (labels != SEMANTIC_IGNORE)])
    if bad.size:
        sink.error(clip.key, rel, "unknown_class_id",
                   f"class ids {bad[:5].tolist()} are outside the {SEMANTIC_CLASSES} classes (0-{SEMANTIC_CLASSES - 1}, "
                   f"or {SEMANTIC_IGNORE} for ignore)")


def _check_audio(clip: Clip, data: bytes, sink: FindingSink) -> None:
    rel = clip.audio_path or ""
    try:
        info = sf.info(io.BytesIO(data))
        samples, _ = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    except Exception as exc:
        sink.error(clip.key, rel, "unreadable_file", f"audio cannot be decoded: {_why(data, exc)}")
        return
    if samples.shape[1] == 1:
        sink.warning(clip.key, rel, "mono_audio", "mono audio; the channel is duplicated to make stereo")
    elif samples.shape[1] > 2:
        sink.error(clip.key, rel, "unsupported_audio",
                   f"{samples.shape[1]} audio channels; the model hears stereo (or mono, duplicated): "
                   "downmix the file to stereo")
    if info.samplerate != 16_000:
        sink.warning(clip.key, rel, "resampled_audio",
                     f"{info.samplerate} Hz audio; resampled to VGGish's 16000 Hz for the log-mel features"
                     + (" (it holds nothing above 4 kHz)" if info.samplerate <= 8_000 else ""))
    examples = vggish_examples(samples.shape[0], info.samplerate)
    if examples == 0:
        sink.error(clip.key, rel, "short_audio",
                   f"{samples.shape[0] / info.samplerate:.3f} s of audio gives no 0.96 s example")
    elif examples < clip.n_frames:
        sink.warning(clip.key, rel, "short_audio",
                     f"{samples.shape[0] / info.samplerate:.3f} s of audio gives {examples} examples for "
                     f"{clip.n_frames} frames; the last example is repeated (released padding rule)")
