"""`auralsam2 segment` on real video files: synthetic clips encoded into videos (masks equal
`evaluate`'s on the same frames), FFmpeg test sources in mp4/webm/mov, long videos in windows, SAM2
prompts, a Ref-AVS checkpoint with --text, and the clear errors for unusable videos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from tests.train_fixtures import tiny_config
from tests.video_fixtures import encode_video, lavfi_video


def _checkpoint(tmp: Path, dataset: str) -> tuple[Path, object]:
    """A fuser checkpoint (random weights drawn under a fixed seed) with its config inside."""
    from auralsam2.engine import build_model
    from auralsam2.engine.state import save_best
    from feature_cache.dataset import open_reader

    cfg = tiny_config(dataset=dataset)
    reader = open_reader(cfg)
    torch.manual_seed(3)
    model = build_model(cfg.model, reader.model)
    path = tmp / f"{dataset}.ckpt"
    save_best(path, model, cfg, 0, 0, math.nan, None, None)
    return path, cfg


@pytest.fixture(scope="module")
def avs(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("segment"), "avss")


def _invoke(*args: str) -> tuple[int, str]:
    from flows.cli import app

    result = CliRunner().invoke(app, ["segment", *args])
    return result.exit_code, result.output


def _clip_video(cfg, path: Path, repeat: int) -> tuple[object, Path]:
    """The first test clip of the tiny cache as a video: its raw frames (each shown `repeat` times
    at `repeat` fps, so one per second) and its WAV."""
    from feature_cache.dataset import eval_items, open_reader

    reader = open_reader(cfg)
    item = eval_items(cfg, reader, "test").item(0)
    record = reader.clip_record(item.clip_key)
    frames = [np.asarray(Image.open(record.path(p)).convert("RGB")) for p in record.frame_paths]
    audio, rate = sf.read(record.path(record.audio_path), dtype="int16", always_2d=True)
    return item, encode_video(path, frames, repeat, audio, rate, repeat=repeat)


def test_masks_equal_evaluate_on_the_same_frames(avs, tmp_path):
    """A lossless video of a test clip (16 fps: the sampler must pick frame 15 of each second) gives
    the logits `evaluate` computes from the feature cache, and PNG masks of them."""
    from auralsam2.evaluation import cond_frame_for, predict_item
    from flows.segment import load_segmenter, run_segment

    checkpoint, cfg = avs
    item, video = _clip_video(cfg, tmp_path / "clip.mkv", repeat=16)
    model, _, _ = load_segmenter(checkpoint, "cpu")
    expected, _ = predict_item(model, item, cond_frame_for("avs", item.n_frames), ["iou_select"])
    from auralsam2.video import SegmentSettings, segment_windows
    from feature_cache.schema import DTYPES

    windows = list(segment_windows(model, str(video), SegmentSettings(storage_dtype=DTYPES["bf16"])))
    assert [len(w.frames) for w in windows] == [item.n_frames]
    got = windows[0].logits
    # same numbers up to float summation order (the cache was built with another thread count)
    assert torch.allclose(got, expected["iou_select"].cpu(), rtol=0, atol=1e-5), (got - expected["iou_select"]).abs().max()

    summary = run_segment(video, checkpoint, tmp_path / "out", progress=False)
    assert summary["n_frames"] == item.n_frames
    h, w = windows[0].frames[0].rgb.shape[:2]
    want = (F.interpolate(expected["iou_select"][:, None].float(), size=(h, w), mode="bilinear",
                          align_corners=False)[:, 0] > 0).numpy()
    for t, frame in enumerate(summary["frames"]):
        png = np.asarray(Image.open(tmp_path / "out" / frame["mask"])) > 0
        assert png.shape == (h, w)
        assert np.array_equal(png, want[t]), t
        assert frame["time"] == pytest.approx(t + 15 / 16, abs=1e-3)  # Matroska: 1 ms timestamps
    assert want.any() and not want.all()  # the comparison is not between two empty masks


@pytest.mark.parametrize("suffix", ["mp4", "webm", "mov"])
def test_reads_each_container_and_writes_overlay_with_sound(avs, tmp_path, suffix):
    from auralsam2.video import probe_video

    video = lavfi_video(tmp_path / f"src.{suffix}", 3)
    code, output = _invoke(str(video), "--checkpoint", str(avs[0]), "--out", str(tmp_path / "out"))
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_frames"] == 3 and summary["video"]["audio_codec"]
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    overlay = probe_video(tmp_path / "out" / "overlay.mp4")
    assert (overlay.width, overlay.height, overlay.fps) == (160, 120, 1.0)
    assert overlay.audio_codec == "aac"
    import av

    with av.open(str(tmp_path / "out" / "overlay.mp4")) as container:  # one overlay frame per second
        assert sum(1 for _ in container.decode(video=0)) == 3
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_long_video_in_windows_and_every_frame(avs, tmp_path):
    from flows.segment import run_segment

    video = lavfi_video(tmp_path / "long.mp4", 12, fps=5)
    summary = run_segment(video, avs[0], tmp_path / "out", progress=False)
    assert summary["n_frames"] == 12
    assert [f["index"] for f in summary["frames"] if f["cond_frame"]] == [0, 5, 10]  # windows 5, 5, 2
    every = run_segment(video, avs[0], tmp_path / "every", every_frame=True, window=8, progress=False)
    assert every["n_frames"] == 60 and every["settings"]["sampling"] == "every_frame"
    assert [f["time"] for f in every["frames"][:3]] == pytest.approx([0.0, 0.2, 0.4])


def test_points_and_box_prompt_the_first_frame(avs, tmp_path):
    from flows.segment import run_segment

    video = lavfi_video(tmp_path / "src.mp4", 6)
    run_segment(video, avs[0], tmp_path / "plain", progress=False)
    prompted = run_segment(video, avs[0], tmp_path / "prompted", points=[(40, 30)], box=(20, 10, 100, 90),
                           progress=False)
    assert prompted["settings"]["box"] == [20, 10, 100, 90]
    first = [f["cond_frame"] for f in prompted["frames"]]
    assert first[0] and first[5]  # the prompted window is conditioned on frame 0
    a = np.asarray(Image.open(tmp_path / "plain" / "masks" / "000000.png"))
    b = np.asarray(Image.open(tmp_path / "prompted" / "masks" / "000000.png"))
    assert not np.array_equal(a, b)  # the prompt reached the decoder


def test_refavs_checkpoint_reads_the_expression(tmp_path):
    from flows.segment import run_segment

    checkpoint, _ = _checkpoint(tmp_path, "refavs")
    video = lavfi_video(tmp_path / "src.webm", 3)
    code, output = _invoke(str(video), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "none"))
    assert code == 1 and "--text" in output and "Traceback" not in output
    one = run_segment(video, checkpoint, tmp_path / "a", text="the sounding dog", progress=False)
    two = run_segment(video, checkpoint, tmp_path / "b", text="the silent red car on the left", progress=False)
    assert one["settings"]["text"] == "the sounding dog" and one["settings"]["window"] == 10
    assert [f["object_score"] for f in one["frames"]] != [f["object_score"] for f in two["frames"]]


def test_unusable_videos_get_one_clear_message(avs, tmp_path):
    silent = lavfi_video(tmp_path / "silent.mp4", 2, sound=False)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    whole = lavfi_video(tmp_path / "whole.mkv", 3)
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(whole.read_bytes()[:600])
    audio_only = tmp_path / "audio_only.mkv"
    import av

    with av.open(str(audio_only), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    cases = {silent: "has no sound", garbage: "not a readable video", truncated: str(truncated),
             audio_only: "no video stream", tmp_path / "missing.mp4": "no such file"}
    for video, needle in cases.items():
        code, output = _invoke(str(video), "--checkpoint", str(avs[0]), "--out", str(tmp_path / "o"))
        assert code == 1, (video, output)
        assert needle in output and "Traceback" not in output, (video, output)
        assert sum(line.startswith("error:") for line in output.splitlines()) == 1


def test_out_is_replaced_whole_and_a_users_folder_is_refused(avs, tmp_path):
    """A re-run into its own --out (a shorter video) leaves no mask of the longer one; a folder with the
    user's files, a symlink and the data folder are refused with one line and left untouched."""
    from auralsam2.paths import data_home
    from flows.segment import run_segment

    out = tmp_path / "out"
    run_segment(lavfi_video(tmp_path / "long.mp4", 6, fps=5), avs[0], out, progress=False)
    short = run_segment(lavfi_video(tmp_path / "short.mp4", 3, fps=5), avs[0], out, progress=False)
    on_disk = sorted(p.name for p in (out / "masks").iterdir())
    assert short["n_frames"] == 3 and on_disk == [Path(f["mask"]).name for f in short["frames"]]
    assert json.loads((out / "summary.json").read_text())["n_frames"] == 3

    video = str(tmp_path / "short.mp4")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text('{"my": "notes"}')
    link = tmp_path / "link"
    link.symlink_to(mine)
    for target in (mine, link, data_home()):
        before = sorted(p.name for p in Path(target).iterdir())
        code, output = _invoke(video, "--checkpoint", str(avs[0]), "--out", str(target))
        assert code == 1 and output.count("error:") == 1 and "nothing was changed" in output, output
        assert sorted(p.name for p in Path(target).iterdir()) == before
    assert (mine / "summary.json").read_text() == '{"my": "notes"}'


def test_a_checkpoint_naming_a_hostile_sam2_config_is_refused_before_it_runs(avs, tmp_path):
    """A checkpoint that passes the weights-only check but whose embedded config names a SAM2 YAML
    with a `_target_` outside SAM2's classes: refused by name, the payload never runs."""
    import yaml

    from auralsam2.checkpoints import read_weights
    from auralsam2.utils.files import atomic_torch_save

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(yaml.safe_dump({"model": {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}}))
    payload = read_weights(avs[0])
    config = yaml.safe_load(payload["extra"]["config_yaml"])
    config["model"]["sam2"]["config"] = str(evil)
    payload["extra"]["config_yaml"] = yaml.safe_dump(config)
    hostile = atomic_torch_save(payload, tmp_path / "hostile.ckpt")  # sealed again: it passes every check
    code, output = _invoke(str(lavfi_video(tmp_path / "v.mp4", 2, fps=5)), "--checkpoint", str(hostile), "--out",
                           str(tmp_path / "out"))
    assert code == 1 and "builtins.open" in output and "refused" in output, output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_surround_sound_is_downmixed_by_its_layout(avs, tmp_path):
    """A 5.1 track (front left 440 Hz, front right 880 Hz, the rest silent) reaches a stereo model as
    FFmpeg's standard downmix: left from front left, right from front right (not a refusal, not the
    average of six channels); `segment` runs on it end to end."""
    from auralsam2.video.decode import AudioStream

    rate, n_frames = 16000, 3
    t = np.arange(rate * n_frames) / rate
    surround = np.zeros((len(t), 6), np.int16)
    surround[:, 0] = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    surround[:, 1] = (8000 * np.sin(2 * np.pi * 880 * t)).astype(np.int16)
    frames = [np.full((64, 64, 3), 40 * k, np.uint8) for k in range(n_frames)]
    video = encode_video(tmp_path / "surround.mp4", frames, 1, surround, rate)

    with AudioStream(video, channels=2) as audio:
        assert (audio.source_channels, audio.channels) == (6, 2)
        stereo = audio.take(0.5, 2.0).astype(np.float64)

    def power_at(x: np.ndarray, hz: float) -> float:
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        return float(spectrum[round(hz * len(x) / rate)])

    left, right = stereo[:, 0], stereo[:, 1]
    assert power_at(left, 440) > 100 * power_at(left, 880)
    assert power_at(right, 880) > 100 * power_at(right, 440)

    code, output = _invoke(str(video), "--checkpoint", str(avs[0]), "--out", str(tmp_path / "out"))
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_frames"] == n_frames and summary["video"]["channels"] == 6


def _second_energy(path: Path, n_seconds: int) -> tuple[list[float], float]:
    """Mean |sample| of each second of `path`'s sound on its container's timeline, and its length (s)."""
    from auralsam2.video.decode import AudioStream

    with AudioStream(path) as audio:
        energy = [float(np.abs(audio.take(k, 1.0).astype(np.float64)).mean()) for k in range(n_seconds)]
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        length = sum(f.samples for f in container.decode(stream)) / stream.codec_context.sample_rate
    return energy, length


@pytest.mark.parametrize(("name", "video_start", "audio_start"), [
    ("broadcast.ts", 10.0, 10.0),  # an MPEG-TS segment whose timestamps start at 10 s
    ("late-video.mp4", 1.0, 0.0),  # a video that starts a second after its sound
    ("late-sound.mp4", 0.0, 1.0),  # sound that starts a second after the video
])
def test_times_count_from_the_containers_start(avs, tmp_path, name, video_start, audio_start):
    """Frame sampling and the sound are placed on the container's timeline, as a player plays them:
    one mask per second of the video (not per second since timestamp 0), each with its own second of
    sound, and an overlay as long as the video whose sound is where it was."""
    rate, n_frames = 16000, 5
    t = np.arange(rate * n_frames) / rate
    sound = np.zeros((len(t), 2), np.int16)
    burst = slice(3 * rate, 4 * rate)  # a tone in second 3 only
    sound[burst] = (8000 * np.sin(2 * np.pi * 440 * t[burst]))[:, None].astype(np.int16)
    frames = [np.full((64, 64, 3), 40 * k, np.uint8) for k in range(n_frames)][round(max(0, video_start - audio_start)):]
    sound_begins = round(max(0, audio_start - video_start))  # on the container's timeline
    video = encode_video(tmp_path / name, frames, 1, sound, rate, video_start=video_start, audio_start=audio_start)

    code, output = _invoke(str(video), "--checkpoint", str(avs[0]), "--out", str(tmp_path / "out"))
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_frames"] == n_frames
    assert all(k <= f["time"] < k + 1 or (k == 0 and f["time"] <= video_start - audio_start + 0.1)
               for k, f in enumerate(summary["frames"]))
    energy, _ = _second_energy(video, n_frames + sound_begins)
    assert int(np.argmax(energy)) == 3 + sound_begins

    overlay = tmp_path / "out" / "overlay.mp4"
    import av

    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == n_frames
    energy, length = _second_energy(overlay, n_frames + sound_begins)
    assert abs(length - (n_frames + sound_begins)) < 0.2, length  # silence first, then the whole sound
    burst = 3 + sound_begins
    assert int(np.argmax(energy)) == burst and energy[burst] > 5 * max(energy[:burst]), energy
