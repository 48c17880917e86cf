"""The one-pass F-curve equals the official 255-threshold loop, including probabilities that sit
exactly on a threshold (the loop is the oracle in bench/bench_metrics.py, not in the library)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from auralsam2.evaluation import fmeasure, fmeasure_curve, fmeasure_histograms, fmeasure_thresholds, metrics
from bench.bench_metrics import loop_fmeasure, loop_fmeasure_curve


def _edge_logits() -> torch.Tensor:
    """float32 logits whose float32 sigmoid lands on, or one ulp beside, each threshold."""
    t = fmeasure_thresholds()
    found = [torch.tensor([-math.inf, -120.0, -100.0, 16.0, 16.5, 17.0, 17.5, 20.0, math.inf])]
    for k in range(1, 254):
        centre = torch.tensor([math.log(float(t[k]) / (1 - float(t[k])))], dtype=torch.float32)
        bits = centre.view(torch.int32) + torch.arange(-96, 97, dtype=torch.int32)
        candidates = bits.view(torch.float32)
        p = torch.sigmoid(candidates)
        lower = torch.nextafter(t[k : k + 1], torch.tensor([0.0]))
        upper = torch.nextafter(t[k : k + 1], torch.tensor([2.0]))
        found.append(candidates[(p >= lower) & (p <= upper)])
    return torch.cat(found)


EDGE_LOGITS = _edge_logits()


def test_edge_logits_really_hit_the_thresholds():
    p = torch.sigmoid(EDGE_LOGITS)
    on_threshold = torch.isin(p, fmeasure_thresholds()).sum()
    assert on_threshold > 200  # most thresholds are hit exactly by some float32 logit
    assert (p == 1.0).any() and (p == 0.0).any()


def test_fast_curve_is_bitwise_equal_to_the_loop_on_threshold_edges():
    n = EDGE_LOGITS.numel()
    side = math.ceil(math.sqrt(n))
    logits = torch.cat([EDGE_LOGITS, torch.zeros(side * side - n)]).view(1, side, side)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, side, side, generator=g) > 0.5
    assert torch.equal(fmeasure_curve(logits, gt), loop_fmeasure_curve(logits, gt))


def test_threshold_counts_match_brute_force_around_every_threshold():
    # Every float32 probability within 300 ulps of a threshold: the lookup tables must count exactly
    # the thresholds t with p >= t.
    t = fmeasure_thresholds()
    bits = (t.view(torch.int32)[:, None] + torch.arange(-300, 301, dtype=torch.int32)).reshape(-1)
    p = bits.view(torch.float32)
    p = p[(p >= 0) & (p <= 1)]
    tables = metrics._threshold_tables(255, "cpu")
    assert tables[1] is not None  # the table path, not the binary-search fallback
    got = metrics._passed_thresholds(p[None], tables)[0]
    brute = torch.stack([(p >= t[k]).to(torch.int32) for k in range(255)]).sum(0)
    assert torch.equal(got, brute)


def test_dense_threshold_lists_fall_back_to_the_exact_search():
    logits = torch.randn(2, 6, 6)
    gt = torch.rand(2, 6, 6) > 0.5
    tables = metrics._threshold_tables(4097, "cpu")
    assert tables[1] is None
    hist = fmeasure_histograms(logits, gt, n_thresholds=4097)
    t = fmeasure_thresholds(4097)
    p = torch.sigmoid(logits)
    assert int(hist[:, :, 1001:].sum()) == int((p >= t[1000]).sum())


frames = st.integers(1, 3).flatmap(
    lambda f: st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
        lambda hw: st.tuples(
            arrays(
                np.float32,
                (f, *hw),
                elements=st.one_of(
                    st.floats(-30, 30, width=32),
                    st.sampled_from(EDGE_LOGITS.tolist()),
                    st.sampled_from([0.0, 1e-9, -1e-9]),
                ),
            ),
            arrays(np.bool_, (f, *hw)),
        )
    )
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_fast_curve_equals_the_loop(case):
    logits, gt = (torch.from_numpy(a) for a in case)
    fast = fmeasure_curve(logits, gt)
    loop = loop_fmeasure_curve(logits, gt)
    assert float((fast - loop).abs().max()) <= 1e-6
    assert torch.equal(fast, loop)  # in fact identical: same counts, same float32 arithmetic
    assert abs(fmeasure(logits, gt) - loop_fmeasure(logits, gt, curves=loop)) <= 1e-6


def test_fast_curve_equals_the_loop_on_model_like_frames():
    from bench.bench_metrics import make_frames

    logits, gt = make_frames(12, size=48, seed=3)
    loop = loop_fmeasure_curve(logits, gt)
    assert torch.equal(fmeasure_curve(logits, gt), loop)
    for start in range(0, 12, 4):
        call = slice(start, start + 4)
        assert (
            abs(fmeasure(logits[call], gt[call]) - loop_fmeasure(logits[call], gt[call], curves=loop[call]))
            <= 1e-6
        )
