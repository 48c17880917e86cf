"""`auralsam2.evaluation`: DDP sharding by whole calls, schema rows, conditioning frames, the AVSS
oracle-class metric, and a streamed split evaluation on the tiny cache."""

from __future__ import annotations

import math

import pytest
import torch

from auralsam2.engine import build_model
from auralsam2.evaluation import (
    AVSSAccumulator,
    avss_oracle_semantic,
    cond_frame_for,
    evaluate_source,
    schema_rows,
    shard_indices,
)
from auralsam2.evaluation.evaluate import predict_items
from auralsam2.evaluation.streaming import StreamingEvaluator
from dashboards.schema import CLIP_METRICS, FRAME_METRICS, write_table
from feature_cache.dataset import eval_items, open_reader
from tests.train_fixtures import tiny_config


def test_shards_hold_whole_calls_and_cover_every_item_once():
    flags = [False] * 9 + [True] * 6
    # AVS protocols: one clip per call -> plain round-robin over clips
    avs = [shard_indices([False] * 5, "avs", ["avsbench_official", "auralsam2_released"], r, 2) for r in range(2)]
    assert avs == [[0, 2, 4], [1, 3]]
    # Ref-AVS: 4 expressions per call, segmentation and null streams chunked separately
    ref = [shard_indices(flags, "ref", ["refavs_official"], r, 2) for r in range(2)]
    assert ref[0] == [0, 1, 2, 3, 8, 9, 10, 11, 12] and ref[1] == [4, 5, 6, 7, 13, 14]
    assert sorted(ref[0] + ref[1]) == list(range(15))
    assert shard_indices(flags, "ref", ["refavs_official"], 0, 1) == list(range(15))


def test_conditioning_frame_per_protocol():
    assert cond_frame_for("avs", 5) == 0  # AVSBench evaluation: frame 0
    assert cond_frame_for("ref", 10) == 5  # Ref-AVS: the middle frame, train and test
    assert cond_frame_for("avs", 5, "middle") == 2 and cond_frame_for("ref", 10, "first") == 0


def test_schema_rows_match_the_dashboard_tables(tmp_path):
    ev = StreamingEvaluator(["auralsam2_released"], task="ref")
    logits = torch.full((2, 8, 8), -3.0)
    logits[:, :4] = 3.0
    gt = torch.zeros(2, 8, 8, dtype=torch.bool)
    gt[:, :4] = True
    meta = {"dataset": "refavs", "subset": "refavs", "split": "test_s", "clip_key": "c1", "category": "dog"}
    ev.add_clip("e1", logits, gt, torch.tensor([1.0, -1.0]), meta={**meta, "expression_uid": "e1"})
    ev.add_clip("n1", logits, None, null=True, meta={**meta, "expression_uid": "n1"})
    frames, clips = schema_rows(ev.pop_rows(), "iou_select", "run-1", labelled={"e1": {0, 1}, "n1": set()})
    assert all(list(r) == FRAME_METRICS.names for r in frames) and all(list(r) == CLIP_METRICS.names for r in clips)
    seg = [r for r in frames if r["expression_uid"] == "e1"]
    assert [r["J"] for r in seg] == [1.0, 1.0] and [r["object_score"] for r in seg] == [1.0, -1.0]
    null = [r for r in frames if r["is_null"]]
    assert all(math.isnan(r["J"]) and math.isnan(r["F"]) and not r["labelled"] for r in null)
    assert null[0]["pred_area"] == 1024 * 512 and null[0]["pixels"] == 1024 * 1024  # at the protocol's 1024 px
    write_table(frames, "frame_metrics", "run-1", tmp_path)
    write_table(clips, "clip_metrics", "run-1", tmp_path)


def test_oracle_class_semantic_metric():
    acc = AVSSAccumulator()
    labels = torch.zeros(2, 16, 16, dtype=torch.uint8)
    labels[0, :8] = 7
    labels[1, 8:] = 3
    logits = torch.where(labels > 0, 5.0, -5.0)
    avss_oracle_semantic(acc, logits, labels, [0, 1])
    result = acc.result().as_dict()
    assert result["avss_miou_present_classes"] == pytest.approx(1.0)  # background, 3 and 7 all perfect


def test_streamed_evaluation_of_a_split(tmp_path):
    cfg = tiny_config()
    reader = open_reader(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, reader.model)
    source = eval_items(cfg, reader, "test")
    got: list[tuple[str, int, int]] = []
    pixels: set[tuple[str, int]] = set()

    def sink(mode, frames, clips):
        got.append((mode, len(frames), len(clips)))
        pixels.update((r["protocol"], r["pixels"]) for r in frames)

    result = evaluate_source(model, source, "test", task="avs", protocols=["avsbench_official", "auralsam2_released"],
                             rows_sink=sink, run_id="r", avss_semantic=True, flush_every=2)
    # the official protocol at its 224 x 224; the released one at the model's own image_size, as its trainer
    assert model.image_size != 1024
    assert pixels == {("avsbench_official", 224 * 224), ("auralsam2_released", model.image_size**2)}
    assert result.n_items == 3 and set(result.metrics) == {"first", "iou_select", "iou_occ_select"}
    # rows were handed over in pieces (every 2 items and at the end), never the split at once
    assert [n for mode, _, n in got if mode == "first"] == [4, 2]  # 2 protocols x (2 clips, then 1)
    flat = result.flat("test/")
    assert "test/test/avsbench_official/iou_select/J_and_F" in flat and "test/test/avss_semantic_oracle_miou" in flat
    j = result.value("avsbench_official", "iou_select")
    assert 0.0 <= j <= 1.0


@pytest.mark.parametrize("dataset,split", [("avss", "test"), ("refavs", "test_s"), ("refavs", "test_n")])
def test_batched_evaluation_equals_one_clip_at_a_time(dataset, split):
    # with the Ref-AVS demo's joint mask prompt: each clip of a decoder batch brings its own prompt on every frame
    cfg = tiny_config("model.fuser.mask_prompt=true", "model.fuser.mask_prompt_text=joint", dataset=dataset)
    reader = open_reader(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, reader.model)
    source = eval_items(cfg, reader, split)
    # the logits themselves: a batch moves them only by float reordering (~1e-7)
    items = [source.item(i) for i in range(min(len(source), 4))]
    conds = [cond_frame_for(cfg.task, item.n_frames) for item in items]
    together = predict_items(model, items, conds)
    alone = [predict_items(model, [item], [cond])[0] for item, cond in zip(items, conds, strict=True)]
    for (logits_b, scores_b), (logits_a, scores_a) in zip(together, alone, strict=True):
        assert logits_b.keys() == logits_a.keys()
        for mode in logits_a:
            torch.testing.assert_close(logits_b[mode], logits_a[mode], rtol=0, atol=1e-4)
        torch.testing.assert_close(scores_b, scores_a, rtol=0, atol=1e-4)
    protocols = ["refavs_official", "auralsam2_released"] if dataset == "refavs" else ["avsbench_official"]
    runs = {}
    for batch in (1, 2, 4):
        rows: list = []
        result = evaluate_source(model, source, split, task=cfg.task, protocols=protocols, run_id="r", flush_every=2,
                                 rows_sink=lambda mode, f, c, rows=rows: rows.append((mode, f, c)),
                                 clips_per_batch=batch)
        runs[batch] = (result, rows)
    one, one_rows = runs[1]
    assert one.n_items == len(source) >= 2
    for batch in (2, 4):
        result, rows = runs[batch]
        assert result.n_items == one.n_items
        assert result.flat("x/").keys() == one.flat("x/").keys()
        for key, value in one.flat("x/").items():
            if "frames_per_s" not in key:
                assert result.flat("x/")[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
        # the same rows, flushed at the same items
        assert [(m, len(f), len(c)) for m, f, c in rows] == [(m, len(f), len(c)) for m, f, c in one_rows]
        for (_, frames_a, _), (_, frames_b, _) in zip(rows, one_rows, strict=True):
            for a, b in zip(frames_a, frames_b, strict=True):
                assert_same_row_up_to_flipped_pixels(a, b)


FLIPPED = 2  # pixels whose logit sits within float noise of a threshold may land on the other side


def assert_same_row_up_to_flipped_pixels(a: dict, b: dict) -> None:
    """Equal frame rows, except that up to FLIPPED pixels may have changed sides: pixel counts differ
    by at most that many, J and F by at most what that many pixels can move them."""
    assert a.keys() == b.keys()
    area = max(a["gt_area"], a["pred_area"], b["pred_area"], 1)
    for k in a:
        if k in ("pred_area", "gt_area", "pixels"):
            assert abs(a[k] - b[k]) <= (FLIPPED if k == "pred_area" else 0), k
        elif k in ("J", "F"):
            # J = I/U and F of the same counts: each flipped pixel moves I or U by one
            assert a[k] == pytest.approx(b[k], abs=max(1e-5, 3 * FLIPPED / area), nan_ok=True), k
        elif isinstance(a[k], int | float) and not isinstance(a[k], bool):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5, nan_ok=True), k
        else:
            assert a[k] == b[k], k
