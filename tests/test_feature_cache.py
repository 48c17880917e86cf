"""Feature cache: format, reader, views and ground truth, on real shards of the synthetic world.

The cache is built with the real tiny SAM2 (random weights saved to a .pt checkpoint) through the
plain-Python `build_cache` (no Prefect here; the flow is tested in test_cache_flow.py). Shared
fixtures (`cache_env`) are session-scoped so the other cache test files reuse the same build.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image

from auralsam2.audio import waveform_to_examples
from auralsam2.backbone import (
    build_sam2_model,
    compact_layout,
    encode_frames,
    encode_frames_compact,
    expand_compact,
    preprocess_frames,
    preprocess_masks,
    save_sam2_checkpoint,
)
from auralsam2.text import TextEncoder
from data_specs.ingest import PALETTE_MASKS, finalize, prepare
from data_specs.shards import iter_shard, write_shard
from data_specs.synth import SynthConfig, generate_world
from feature_cache.build import build_cache
from feature_cache.files import ArrowFileWriter, open_cache_file
from feature_cache.groundtruth import decode_ground_truth, decode_png
from feature_cache.reader import CacheReader
from feature_cache.schema import UNKNOWN_CLASS, CacheSettings, column_tensor, file_metadata, tensor_column
from feature_cache.views import (
    ViewParams,
    render_frames,
    render_masks,
    transform_image,
    transform_mask,
    view_params,
)
from tests.train_fixtures import tiny_text_encoder_dir

WORLD = SynthConfig(seed=5, clips=4, size=96)
CREATED = "2026-01-01T00:00:00+00:00"


def ingest_plain(dataset: str, root: Path, out: Path, clips_per_shard: int = 4) -> Path:
    """Ingest without Prefect (the ingest flow is tested in test_ingest.py)."""
    plan = prepare(dataset, root, out, clips_per_shard=clips_per_shard)
    results = [write_shard(p, Path(plan.out) / "shards", palette_masks=dataset in PALETTE_MASKS) for p in plan.shards]
    finalize(plan, results)
    return out


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", name="cache_env")
def cache_env_fixture(tmp_path_factory) -> SimpleNamespace:
    """World -> ingest (avss, refavs) -> tiny SAM2 checkpoint -> caches with 2 views (Ref-AVS + text)."""
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on the shared 2-core machine
    base = tmp_path_factory.mktemp("feature-cache")
    generate_world(base / "world", WORLD, progress=False)
    avss = ingest_plain("avss", base / "world" / "AVSBench", base / "ingest-avss")
    refavs = ingest_plain("refavs", base / "world" / "REFAVS", base / "ingest-refavs")
    torch.manual_seed(3)
    checkpoint = save_sam2_checkpoint(build_sam2_model("tiny"), base / "tiny.pt")
    settings = CacheSettings(sam2_config="tiny", checkpoint=str(checkpoint), views=2)
    ref_settings = settings.model_copy(update={"text_encoder": str(tiny_text_encoder_dir())})
    build_cache(avss, base / "cache-avss", settings, created=CREATED, progress=False)
    build_cache(refavs, base / "cache-refavs", ref_settings, created=CREATED, progress=False)
    return SimpleNamespace(base=base, avss=avss, refavs=refavs, checkpoint=checkpoint, settings=settings,
                           ref_settings=ref_settings, avss_cache=base / "cache-avss",
                           refavs_cache=base / "cache-refavs")


@pytest.fixture(scope="module")
def model(cache_env):
    return build_sam2_model("tiny", cache_env.checkpoint)


def _sample(ingest: Path, shard_glob: str, index: int = 0):
    tar = sorted((ingest / "shards").glob(shard_glob))[0]
    return list(iter_shard(tar))[index]


def _frames(sample) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in sample.frames]


# ---------------------------------------------------------------- pyramids


def test_cached_pyramid_equals_direct_encoding(cache_env, model) -> None:
    reader = CacheReader(cache_env.avss_cache, expect=cache_env.settings)
    sample = _sample(cache_env.avss, "avss-v2-train-*.tar")
    key = sample.clip.key
    images = preprocess_frames(_frames(sample), model.image_size)
    cached = reader.clip(key, view=0).pyramid

    # Exactly what the compact bf16 form expands to, for every frame, also through .frame().
    compact = encode_frames_compact(model, images, dtype=torch.bfloat16)
    for got, want in zip(cached, expand_compact(model, compact), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    for t in (0, sample.clip.n_frames - 1):
        assert all(torch.equal(a[0], b[t]) for a, b in zip(reader.frame(key, t, 0), cached, strict=True))

    # And the fp32 encoding up to bf16 rounding: |x - bf16(x)| <= 2^-8 |x| per stored value; a level
    # stored as the Hiera stage passes through the 1x1 lateral conv W, so |dy| <= 2^-8 (|W| * |x|).
    direct = encode_frames(model, images)
    exact = encode_frames_compact(model, images, dtype=torch.float32)
    neck = model.image_encoder.neck
    for k, (lv, got, want) in enumerate(zip(compact_layout(model), cached, direct, strict=True)):
        x = exact.levels[k]
        if lv.form == "trunk":
            bound = F.conv2d(x.abs(), neck.convs[len(neck.convs) - 1 - k].conv.weight.abs()) * 2**-8
        else:
            bound = x.abs() * 2**-8
        assert got.shape == want.shape
        assert ((got - want).abs() <= bound * 1.01 + 1e-6).all(), f"level {k}"
        assert not torch.equal(got, want)  # it really is the rounded form


def _roundtrip(tmp_path: Path, x: torch.Tensor, dtype: str) -> tuple[torch.Tensor, pa.RecordBatch]:
    column = tensor_column(x[None], dtype)
    schema = pa.schema([pa.field("t", column.type)])
    path = tmp_path / f"{dtype}.arrow"
    with ArrowFileWriter(path, schema, file_metadata("test", {}, CREATED, 1, {}), rows=1) as writer:
        writer.write(pa.record_batch([column], schema=schema))
        writer.close()
    opened = open_cache_file(path)
    batch = opened.batch(0)
    return column_tensor(batch.column("t"), dtype)[0], batch


def test_bf16_and_fp16_bits_round_trip_exactly_and_zero_copy(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(-(2**15), 2**15, (4, 6, 5), dtype=torch.int32, generator=generator).to(torch.int16)
    specials = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x807F, 0x7F7F]  # ±0, ±inf, NaN payload, subnormals, max
    bits.view(-1)[: len(specials)] = torch.tensor([s - 65536 if s >= 32768 else s for s in specials], dtype=torch.int16)
    got, batch = _roundtrip(tmp_path, bits.view(torch.bfloat16), "bf16")
    assert got.dtype == torch.bfloat16 and got.shape == bits.shape
    assert torch.equal(got.view(torch.int16), bits)  # every word, NaN payloads included
    # Zero-copy: the tensor's memory is the memory-mapped Arrow buffer itself.
    assert got.data_ptr() == batch.column("t").storage.buffers()[-1].address

    halves = torch.randn(3, 7, generator=generator).half()
    halves.view(-1)[:3] = torch.tensor([float("inf"), -0.0, 6e-8], dtype=torch.float16)
    got16, _ = _roundtrip(tmp_path, halves, "fp16")
    assert got16.dtype == torch.float16 and torch.equal(got16.view(torch.int16), halves.view(torch.int16))


# ---------------------------------------------------------------- views


def _square_scene() -> tuple[Image.Image, np.ndarray]:
    frame = np.full((120, 160, 3), 128, dtype=np.uint8)
    mask = np.zeros((120, 160), dtype=np.uint8)
    frame[30:80, 30:95] = (230, 20, 20)  # an off-centre red object
    mask[30:80, 30:95] = 1
    return Image.fromarray(frame), mask


@pytest.mark.parametrize("params", [
    ViewParams(1, hflip=True), ViewParams(2, angle=25.0), ViewParams(3, shear_x=-20.0),
    ViewParams(4, hflip=True, angle=-18.0, shear_x=15.0), ViewParams(5, angle=10.0, grayscale=True),
])
def test_view_moves_the_mask_with_the_object(params: ViewParams) -> None:
    frame, mask = _square_scene()
    image = np.asarray(transform_image(frame, params)).astype(int)
    moved = transform_mask(mask, params) > 0
    if params.grayscale:
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        obj = image[..., 0] < 100  # the red object is darker than the gray background in luma
    else:
        obj = (image[..., 0] > 175) & (image[..., 1] < 75)
    iou = (obj & moved).sum() / (obj | moved).sum()
    assert iou > 0.9, iou
    assert abs(int(moved.sum()) - int(mask.sum())) < 0.1 * mask.sum()  # rotation/shear keep the area
    if not params.grayscale:
        assert not np.array_equal(moved, mask > 0)
    if params == ViewParams(1, hflip=True):
        assert np.array_equal(moved, np.fliplr(mask) > 0)


def test_views_are_seeded_and_view0_is_unaugmented() -> None:
    assert view_params("clip-a", 0, seed=7).identity
    drawn = [view_params("clip-a", v, seed=7) for v in range(1, 9)]
    assert drawn == [view_params("clip-a", v, seed=7) for v in range(1, 9)]
    assert drawn != [view_params("clip-a", v, seed=8) for v in range(1, 9)]
    assert drawn != [view_params("clip-b", v, seed=7) for v in range(1, 9)]
    assert all(-25 <= p.angle <= 25 and -20 <= p.shear_x <= 20 for p in drawn)
    assert any(p.hflip for p in drawn) and any(not p.hflip for p in drawn)


def test_stored_views_reproduce_from_their_seed(cache_env, model) -> None:
    reader = CacheReader(cache_env.avss_cache)
    sample = _sample(cache_env.avss, "avss-v1m-train-*.tar")
    key = sample.clip.key
    assert reader.views(key) == 2
    frames = _frames(sample)
    for view in (0, 1):
        clip = reader.clip(key, view)
        params = view_params(key, view, cache_env.settings.seed)
        assert clip.view_params == params and params.identity == (view == 0)
        images = render_frames(frames, params, model.image_size)
        if view == 0:
            assert torch.equal(images, preprocess_frames(frames, model.image_size))
        fresh = encode_frames_compact(model, images, dtype=torch.bfloat16)
        for t in range(sample.clip.n_frames):
            stored = reader.compact(key, t, view)
            assert all(torch.equal(a[0], b[t]) for a, b in zip(stored.levels, fresh.levels, strict=True))
        truth = decode_ground_truth(sample, "avss")
        ts = sorted(truth.labels)
        assert torch.equal(clip.labels[ts], render_masks([truth.labels[t] for t in ts], params, model.image_size))
    # The augmented view really differs, and its masks moved with it.
    v0, v1 = reader.clip(key, 0), reader.clip(key, 1)
    assert not torch.equal(v0.pyramid.s16, v1.pyramid.s16) and not torch.equal(v0.labels, v1.labels)
    # Evaluation splits keep only view 0.
    test_key = reader.keys("test")[0]
    assert reader.views(test_key) == 1
    with pytest.raises(KeyError, match="view 1"):
        reader.frame(test_key, 0, 1)


# ---------------------------------------------------------------- ground truth


def test_avss_labels_keep_classes_and_missing_differs_from_empty(cache_env, model) -> None:
    reader = CacheReader(cache_env.avss_cache)
    sample = _sample(cache_env.avss, "avss-v1s-train-*.tar")
    clip = reader.clip(sample.clip.key, 0)
    # v1s train: only frame 0 has ground truth; frames 1..4 have none (not an empty mask).
    assert clip.labelled.tolist() == [True, False, False, False, False]
    assert clip.has_label.tolist() == clip.labelled.tolist()
    assert clip.labels is not None and clip.labels.shape == (5, model.image_size, model.image_size)
    assert int(clip.labels[1:].sum()) == 0
    semantic = np.asarray(Image.open(io.BytesIO(sample.semantic[0])))
    rgb = np.asarray(Image.open(io.BytesIO(sample.masks[0])).convert("RGB"))
    want = preprocess_masks([semantic], model.image_size)[0]
    assert torch.equal(clip.labels[0], want) and UNKNOWN_CLASS not in clip.labels.unique().tolist()
    assert torch.equal(clip.masks[0], preprocess_masks([rgb.max(-1) > 0], model.image_size)[0])
    assert 0 < int(clip.masks[0].sum()) < clip.masks[0].numel()


def test_refavs_object_masks_expressions_text_and_log_mel(cache_env) -> None:
    reader = CacheReader(cache_env.refavs_cache, expect=cache_env.ref_settings)
    null_sample = _sample(cache_env.refavs, "refavs-refavs-test_n-*.tar")
    null_clip = reader.clip(null_sample.clip.key, 0)
    assert null_clip.labels is None and null_clip.masks is None
    assert null_clip.object_masks and all(bool(p.all()) for p in null_clip.object_present.values())
    assert all(int(m.sum()) == 0 for m in null_clip.object_masks.values())  # empty ground truth, present

    sample = _sample(cache_env.refavs, "refavs-refavs-train-*.tar")
    clip = reader.clip(sample.clip.key, 1)
    assert sorted(clip.object_masks) == sorted(sample.object_masks)
    for fid, by_frame in sample.object_masks.items():
        raw = [(np.asarray(Image.open(io.BytesIO(by_frame[t]))) > 0).astype(np.uint8) for t in sorted(by_frame)]
        want = render_masks(raw, clip.view_params, reader.model.image_size) > 0
        assert torch.equal(clip.object_masks[fid], want)

    encoder = TextEncoder.from_pretrained(tiny_text_encoder_dir())
    assert [e.uid for e in clip.expressions] == [e.uid for e in sample.clip.expressions]
    for e in clip.expressions:
        fresh = encoder([e.text])
        assert e.hidden.shape == (25, encoder.hidden_size) and e.hidden.dtype == torch.float32
        assert torch.equal(e.attention_mask, fresh.attention_mask[0])
        torch.testing.assert_close(e.hidden, fresh.hidden[0].bfloat16().float(), rtol=2**-7, atol=1e-5)

    wav, rate = sf.read(io.BytesIO(sample.audio), dtype="int16", always_2d=True)
    want = waveform_to_examples(wav, rate, sample.clip.n_frames)
    assert clip.log_mel.shape == (sample.clip.n_frames, 2, 96, 64) and torch.equal(clip.log_mel, want)


def test_cache_reads_back_through_decode_png(cache_env) -> None:
    """The stored ground truth is a plain PNG any tool can read."""
    reader = CacheReader(cache_env.avss_cache)
    key = reader.keys("val")[0]
    rel, batch = reader._locate(key, 0, 0)
    png = open_cache_file(cache_env.avss_cache / rel).batch(batch).column("gt_label")[0].as_py()
    assert decode_png(png).shape == (128, 128)
    assert Image.open(io.BytesIO(png)).format == "PNG"
