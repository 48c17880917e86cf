"""The streaming evaluator: official call grouping and reductions, diagnostics, rows."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pyarrow as pa
import pytest
import torch

from auralsam2.evaluation import (
    AURALSAM2_RELEASED,
    AVSBENCH_OFFICIAL,
    REFAVS_OFFICIAL,
    StreamingEvaluator,
    fmeasure,
    foreground_ratio,
    jaccard,
    jaccard_from_masks,
    refavs_null_s,
    resize_for_protocol,
)

BIG = 20.0


def masks(*rows: str) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


def as_logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, torch.tensor(BIG), torch.tensor(-BIG))


FULL = masks("####", "####", "####", "####")
EMPTY = ~FULL
LEFT = masks("##..", "##..", "##..", "##..")
TOP = masks("####", "####", "....", "....")
AVS_AS_GIVEN = replace(AVSBENCH_OFFICIAL, name="avsbench_as_given", resolution=None)


def test_avs_one_clip_per_call_hand_computed():
    ev = StreamingEvaluator([AVS_AS_GIVEN], task="avs")
    # clip A: a perfect frame (J 1) and an empty prediction on a full GT (J 0)
    ev.add_clip("A", torch.stack([as_logits(LEFT), as_logits(EMPTY)]), torch.stack([LEFT, FULL]),
                object_scores=[2.0, -1.0], meta={"category": "dog"})  # fmt: skip
    # clip B: half overlap (J 1/3)
    ev.add_clip("B", as_logits(TOP)[None], LEFT[None], meta={"category": "cat"})
    res = ev.finish()["avsbench_as_given"]
    # F of A: mean curve = 18/23 at t = 0 (13/23 and 1), 1/2 above; F of B = 13/23
    assert res["J"] == pytest.approx((0.5 + 1 / 3) / 2)  # mean over clips, not frames
    assert res["F"] == pytest.approx((18 / 23 + 13 / 23) / 2)
    assert res["J&F"] == pytest.approx((res["J"] + res["F"]) / 2)
    assert (res["n_items"], res["n_frames"], res["n_calls"]) == (2, 3, 2)
    assert res["diag_J_frame_mean"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert res["diag_J_sum_inter_over_sum_union"] == pytest.approx((8 + 0 + 4) / (8 + 16 + 12))
    assert res["diag_F_one_threshold"] == pytest.approx((13 / 23 + 1 + 13 / 23) / 3)
    assert res["diag_F_best_threshold"] == 0.0

    rows = ev.pop_rows()
    assert [r["J"] for r in rows.frames] == pytest.approx([1.0, 0.0, 1 / 3])
    assert [r["F_best"] for r in rows.frames] == pytest.approx([1.0, 1.0, 13 / 23])
    assert [r["pred_area"] for r in rows.frames] == [8, 0, 8]
    assert [r["gt_area"] for r in rows.frames] == [8, 16, 8]
    assert [r["object_score"] for r in rows.frames] == [2.0, -1.0, None]
    assert [r["category"] for r in rows.frames] == ["dog", "dog", "cat"]
    assert [(r["key"], r["call"]) for r in rows.clips] == [("A", 0), ("B", 1)]
    assert [r["J"] for r in rows.clips] == pytest.approx([0.5, 1 / 3])
    assert [r["F"] for r in rows.clips] == pytest.approx([18 / 23, 13 / 23])
    assert rows.clips[0]["object_score_mean"] == pytest.approx(0.5)
    assert [r["n_items"] for r in rows.calls] == [1, 1]
    for table in (rows.frames, rows.clips, rows.calls):  # Parquet-ready: one type per column
        assert pa.Table.from_pylist(table).num_rows == len(table)
    assert ev.pop_rows().frames == []


def test_ref_groups_four_expressions_per_call_and_nulls_apart():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 6, 6, generator=g) * 3 for _ in range(5)]
    gts = [torch.rand(2, 6, 6, generator=g) > 0.6 for _ in range(5)]
    gts[4][:] = False  # the last (short) call has only empty GTs: its F is 0 and still averaged in
    nulls = [torch.randn(2, 6, 6, generator=g) * 3 for _ in range(3)]
    ref = replace(REFAVS_OFFICIAL, resolution=None)
    aural = replace(AURALSAM2_RELEASED, resolution=None)
    ev = StreamingEvaluator([ref, aural], task="ref")
    for i in range(5):
        ev.add_clip(f"e{i}", logits[i], gts[i], meta={"expression_uid": f"u{i}"})
        if i < 3:
            ev.add_clip(f"n{i}", nulls[i], None, null=True)  # interleaved; nulls form their own calls
    before = ev.result()
    res = ev.finish()
    assert before == res  # result() already counts the open partial calls

    call1, call2 = torch.cat(logits[:4]), logits[4]
    gt1, gt2 = torch.cat(gts[:4]), gts[4]
    official = res[ref.name]
    assert official["n_calls"] == 2
    assert official["J"] == pytest.approx(
        (float(jaccard(call1, gt1, 0.4).mean()) + float(jaccard(call2, gt2, 0.4).mean())) / 2
    )
    assert official["F"] == pytest.approx((fmeasure(call1, gt1) + 0.0) / 2)
    assert (
        official["S"]
        == official["S_refavs_sqrt_per_call"]
        == pytest.approx(refavs_null_s(torch.cat(nulls), batch_frames=8))
    )
    assert (official["n_null_items"], official["n_null_calls"]) == (3, 1)
    released = res[aural.name]
    released_j = [float(jaccard_from_masks(x > 0, y).mean()) for x, y in ((call1, gt1), (call2, gt2))]
    assert released["J"] == pytest.approx(sum(released_j) / 2)  # logits > 0, per call, then over calls
    assert (
        released["S"]
        == released["S_auralsam2_foreground_ratio"]
        == pytest.approx(foreground_ratio(torch.cat(nulls)))
    )
    assert released["F"] == pytest.approx(official["F"])  # F does not depend on the J threshold
    diag_all = fmeasure(torch.cat(logits), torch.cat(gts))  # batch-independent: one call over everything
    assert official["diag_F_one_threshold"] == pytest.approx(diag_all, abs=1e-6)

    rows = ev.pop_rows()
    null_rows = [r for r in rows.clips if r["null"] and r["protocol"] == ref.name]
    assert [r["J"] for r in null_rows] == [None] * 3 and all(r["gt_area"] is None for r in null_rows)
    assert [r["call"] for r in rows.clips if not r["null"] and r["protocol"] == ref.name] == [0, 0, 0, 0, 1]


def test_protocol_resolutions_are_applied_before_scoring():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 64, 64, generator=g) * 4
    gt = torch.zeros(2, 50, 50, dtype=torch.bool)
    gt[:, 10:30, 5:40] = True
    ev = StreamingEvaluator([AVSBENCH_OFFICIAL, AURALSAM2_RELEASED], task="avs")
    ev.add_clip("clip", logits, gt)
    res = ev.finish()
    for protocol in (AVSBENCH_OFFICIAL, AURALSAM2_RELEASED):
        lr, gr = resize_for_protocol(logits, gt, protocol)
        pred = protocol.binarize(lr)
        inter = (pred & gr).sum((1, 2)).float()
        union = (pred | gr).sum((1, 2)).float()
        assert res[protocol.name]["J"] == pytest.approx(float((inter / (union + 1e-7)).mean()))
        assert res[protocol.name]["F"] == pytest.approx(fmeasure(lr, gr), abs=1e-7)
    rows = ev.pop_rows()
    assert {r["pixels"] for r in rows.frames} == {224 * 224, 1024 * 1024}


def test_state_holds_sums_not_tensors_of_the_split():
    ev = StreamingEvaluator([AVS_AS_GIVEN], task="avs")
    for i in range(20):
        ev.add_clip(f"c{i}", torch.randn(3, 32, 32), torch.rand(3, 32, 32) > 0.5)
    for state in ev._states:
        for f in fields(state):
            value = getattr(state, f.name)
            if isinstance(value, torch.Tensor):
                assert value.numel() <= 255
        for call in (state.seg, state.null):
            for f in fields(call):
                value = getattr(call, f.name)
                assert not isinstance(value, torch.Tensor) or value.numel() <= 255


def test_evaluator_errors_name_the_clip_and_say_what_to_do():
    ev = StreamingEvaluator([AVS_AS_GIVEN], task="avs")
    ev.add_clip("k", torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"key='k'.*unique"):
        ev.add_clip("k", torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="task='ref'"):
        ev.add_clip("n", torch.zeros(1, 4, 4), None, null=True)
    with pytest.raises(ValueError, match="gt is required"):
        ev.add_clip("x", torch.zeros(1, 4, 4), None)
    with pytest.raises(ValueError, match="binarise"):
        ev.add_clip("y", torch.zeros(1, 4, 4), torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="clash"):
        ev.add_clip("z", torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), meta={"J": 1})
    with pytest.raises(ValueError, match="frame_indices"):
        ev.add_clip("w", torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), frame_indices=[0])
    with pytest.raises(ValueError, match="no grouping for task 'ref'"):
        StreamingEvaluator([AVSBENCH_OFFICIAL], task="ref")
    flat = ev.flat_result()
    assert flat["avsbench_as_given/J"] == 1.0 and not any(math.isnan(v) for v in flat.values())
