"""Video-level aggregation and A/H segments (stream/aggregate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.aggregate import METHODS, SegmentTracker, VideoAggregator


def _run(tracker: SegmentTracker, ps, hz=10.0, evidence=None):
    spans = []
    for k, p in enumerate(ps):
        ev = True if evidence is None else evidence[k]
        s = tracker.update(round((k + 1) / hz, 6), p, ev)
        if s is not None:
            spans.append(s)
    s = tracker.flush()
    if s is not None:
        spans.append(s)
    return spans


@pytest.mark.parametrize("method", METHODS)
def test_aggregator_matches_the_training_code(method):
    from models.train_tcn import aggregate

    rng = np.random.default_rng(0)
    p = rng.random(237)
    agg = VideoAggregator(0.5, method, 10.0)
    running = []
    for v in p:
        agg.add(float(v))
        running.append(agg.p)
    assert np.allclose(running, aggregate(p, method), rtol=0, atol=1e-12)


def test_aggregator_methods_by_hand():
    for method, want in (("last", 0.2), ("mean", 0.5), ("max_ma1s", 0.65)):
        agg = VideoAggregator(0.6, method, hz=2.0)
        assert agg.p is None and agg.label == 0
        for v in (0.5, 0.8, 0.5, 0.2):
            agg.add(v)
        assert agg.p == pytest.approx(want)
        assert agg.label == int(want >= 0.6)
    with pytest.raises(ValueError):
        VideoAggregator(0.5, "median")


def test_segment_with_hysteresis_does_not_flicker():
    tr = SegmentTracker(enter=0.6, exit=0.5, min_duration_s=0.5)
    # Rises above enter at tick 3, wobbles between exit and enter, drops at tick 12.
    ps = [0.1, 0.4, 0.65, 0.55, 0.62, 0.51, 0.58, 0.7, 0.9, 0.6, 0.52, 0.3, 0.2]
    spans = _run(tr, ps)
    assert len(spans) == 1
    s = spans[0]
    assert s.t0 == pytest.approx(0.2) and s.t1 == pytest.approx(1.1)
    assert s.peak == pytest.approx(0.9)
    # A single threshold at 0.6 would have split it.
    assert len(_run(SegmentTracker(0.6, 0.6, 0.0), ps)) == 3


def test_short_segments_are_dropped_and_open_ones_flushed():
    tr = SegmentTracker(enter=0.6, exit=0.5, min_duration_s=1.0)
    ps = [0.7] * 5 + [0.1] * 5 + [0.8] * 30
    spans = _run(tr, ps)
    assert len(spans) == 1  # the first lasts 0.5 s < 1 s
    assert spans[0].t0 == pytest.approx(1.0) and spans[0].t1 == pytest.approx(4.0)
    assert not tr.open


def test_segments_need_evidence():
    tr = SegmentTracker.around(0.6, margin=0.05, min_duration_s=0.0)
    assert tr.enter == pytest.approx(0.65) and tr.exit == pytest.approx(0.55)
    ps = [0.9] * 10
    evidence = [False] * 4 + [True] * 6
    spans = _run(tr, ps, evidence=evidence)
    assert len(spans) == 1 and spans[0].t0 == pytest.approx(0.4)
    with pytest.raises(ValueError):
        SegmentTracker(enter=0.4, exit=0.5)


@pytest.mark.parametrize("method", METHODS)
def test_a_frame_probability_that_is_not_a_number_is_refused(method):
    """A NaN stayed in the mean for good and vanished from the 1 s maximum; the training
    copy gave NaN. Both refuse it (the session skips such a tick, reported)."""
    from models.train_tcn import aggregate

    agg = VideoAggregator(0.5, method)
    agg.add(0.2)
    for bad in (math.nan, math.inf, -0.1, 1.5):
        with pytest.raises(ValueError):
            agg.add(bad)
        with pytest.raises(ValueError):
            aggregate(np.array([0.2, bad, 0.9]), method)
    agg.add(0.9)
    assert agg.frames == 2 and agg.p == pytest.approx(aggregate(np.array([0.2, 0.9]), method)[-1])
