"""Tests of models.metrics against hand-computed cases and an independent re-implementation."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (
    AP_THRESHOLDS,
    average_precision,
    best_threshold,
    evaluate_scores,
    f1_per_class,
    macro_f1,
    pooled_threshold,
    precision_recall_points,
)

# ---------------------------------------------------------------- reference (written separately)


def ref_f1(y: list[int], pred: list[int], cls: int) -> float:
    """F1 of one class, counted with plain loops."""
    tp = sum(1 for a, b in zip(y, pred, strict=True) if a == cls and b == cls)
    fp = sum(1 for a, b in zip(y, pred, strict=True) if a != cls and b == cls)
    fn = sum(1 for a, b in zip(y, pred, strict=True) if a == cls and b != cls)
    if 2 * tp + fp + fn == 0:
        return 0.0
    return 2 * tp / (2 * tp + fp + fn)


def ref_ap(y: list[int], p: list[float]) -> float:
    """Official-style AP: loop over arange(0, 1, 0.001), then numpy's trapezoid rule."""
    precisions, recalls = [], []
    n_pos = sum(y)
    for t in np.arange(0, 1, 0.001):
        pred = [1 if s >= t else 0 for s in p]
        tp = sum(1 for a, b in zip(y, pred, strict=True) if a == 1 and b == 1)
        npred = sum(pred)
        precisions.append(tp / npred if npred else 0.0)
        recalls.append(tp / n_pos if n_pos else 0.0)
    # Recall goes down as the threshold goes up: integrate from the high-threshold end.
    return float(np.trapz(precisions[::-1], recalls[::-1]))


def ref_best_threshold(y: list[int], p: list[float]) -> tuple[float, float]:
    """Brute force over the grid; lower median of all maximizers."""
    grid = list(np.arange(0, 1, 0.001))
    vals = []
    for t in grid:
        pred = [1 if s >= t else 0 for s in p]
        vals.append((ref_f1(y, pred, 1) + ref_f1(y, pred, 0)) / 2)
    best = max(vals)
    idx = [i for i, v in enumerate(vals) if v >= best - 1e-12]
    i = idx[(len(idx) - 1) // 2]
    return float(grid[i]), vals[i]


# ---------------------------------------------------------------- hand-computed cases


def test_grid_is_the_official_one() -> None:
    assert AP_THRESHOLDS.shape == (1000,)
    assert AP_THRESHOLDS[0] == 0.0
    assert AP_THRESHOLDS[350] == 0.35000000000000003  # float steps included
    assert AP_THRESHOLDS[-1] < 1.0


def test_f1_hand_cases() -> None:
    # tp=1 fp=1 fn=1 tn=1: both F1 are 2/(2+1+1) = 0.5.
    assert f1_per_class([1, 1, 0, 0], [1, 0, 1, 0]) == {1: 0.5, 0: 0.5}
    assert macro_f1([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5
    # All predicted positive: F1(1) = 6/7, F1(0) = 0.
    f = f1_per_class([1, 1, 1, 0], [1, 1, 1, 1])
    assert f[1] == pytest.approx(6 / 7) and f[0] == 0.0
    assert macro_f1([1, 1, 1, 0], [1, 1, 1, 1]) == pytest.approx(3 / 7)
    # Class 1 absent and never predicted: its F1 is 0 (not 1), class 0 is perfect.
    assert macro_f1([0, 0, 0], [0, 0, 0]) == 0.5
    assert macro_f1([0, 1, 1, 0], [0, 1, 1, 0]) == 1.0


def test_ap_hand_case_differs_from_sklearn() -> None:
    # t <= 0.3: P=.5 R=1; 0.3 < t <= 0.8: P=1 R=1; t > 0.8: nothing predicted, P=0 R=0.
    # Area: (1 - 0) * (1 + 0) / 2 = 0.5 (sklearn's step-wise AP would say 1.0).
    assert average_precision([1, 0], [0.8, 0.3]) == pytest.approx(0.5, abs=1e-15)


def test_ap_hand_case_three_videos() -> None:
    # (R, P): t<=.4 (1, 2/3); .4<t<=.6 (1/2, 1/2); .6<t<=.9 (1/2, 1); t>.9 (0, 0).
    # Area = 1/2 * (2/3 + 1/2) / 2 + 0 + 1/2 * (1 + 0) / 2 = 7/24 + 6/24.
    assert average_precision([1, 1, 0], [0.9, 0.4, 0.6]) == pytest.approx(13 / 24, abs=1e-15)


def test_ap_threshold_float_steps_and_ge() -> None:
    # 0.35 < AP_THRESHOLDS[350], so a score of exactly 0.35 is negative from index 350 on.
    precision, recall = precision_recall_points([1, 0], [0.35, 0.0])
    assert recall[349] == 1.0 and recall[350] == 0.0
    # p >= t: a score equal to a grid value is positive at that threshold.
    precision, recall = precision_recall_points([1, 0], [0.5, 0.0])
    assert AP_THRESHOLDS[500] == 0.5 and recall[500] == 1.0 and recall[501] == 0.0
    # Nothing predicted positive: precision 0.
    assert precision[-1] == 0.0


def test_ap_edge_cases() -> None:
    # No positive video: recall is 0 everywhere, area 0.
    assert average_precision([0, 0], [0.2, 0.9]) == 0.0
    # Scores of 1.0 are positive at every threshold: constant (R=1, P=1/2), no area.
    assert average_precision([1, 0], [1.0, 1.0]) == 0.0


def test_best_threshold_hand_case() -> None:
    t, f = best_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8])
    assert f == 1.0
    assert 0.2 < t <= 0.7
    # Perfect on indices 201..700: the lower median of those 500 indices is 450.
    assert t == AP_THRESHOLDS[450]


def test_pooled_threshold_is_the_threshold_of_all_parts_together() -> None:
    rng = np.random.default_rng(3)
    y1, y2 = rng.integers(0, 2, 300), rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y1 + rng.uniform(0, 0.7, 300), 0, 0.999)
    p2 = np.clip(0.3 * y2 + rng.uniform(0, 0.7, 40), 0, 0.999)
    both = best_threshold(np.concatenate([y1, y2]), np.concatenate([p1, p2]))[0]
    assert pooled_threshold((y1, p1), (y2, p2)) == both
    # Hand case: the small set alone would put the threshold in (0.2, 0.3]; the larger
    # set, whose positives start at 0.4, moves it above 0.3.
    small = ([0, 1], [0.2, 0.3])
    large = ([0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.35, 0.4, 0.6, 0.8])
    assert 0.2 < best_threshold(*small)[0] <= 0.3
    t = pooled_threshold(small, large)
    assert 0.35 < t <= 0.4
    assert t == pooled_threshold(large, small)  # order does not matter


def test_evaluate_scores_keys() -> None:
    r = evaluate_scores([1, 1, 0], [0.9, 0.4, 0.6], threshold=0.5)
    assert set(r) == {"n", "macro_f1", "f1_pos", "f1_neg", "ap", "threshold"}
    assert r["n"] == 3
    assert r["f1_pos"] == pytest.approx(0.5)  # tp=1 fp=1 fn=1: 2/(2+1+1)
    assert r["f1_neg"] == pytest.approx(0.0)  # tn=0
    assert r["ap"] == pytest.approx(13 / 24)


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        macro_f1([0, 2], [0, 1])
    with pytest.raises(ValueError):
        average_precision([0, 1], [0.1])
    with pytest.raises(ValueError):
        average_precision([0, 1], [0.1, float("nan")])


# ---------------------------------------------------------------- against the re-implementation


@pytest.mark.parametrize("seed", range(8))
def test_against_reference_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    y = rng.integers(0, 2, size=n).tolist()
    kind = seed % 4
    if kind == 0:
        p = rng.random(n).tolist()
    elif kind == 1:  # scores on the grid (3 decimals): exercises p >= t at float steps
        p = np.round(rng.random(n), 3).tolist()
    elif kind == 2:  # heavy ties
        p = rng.choice([0.0, 0.25, 0.35, 0.5, 1.0], size=n).tolist()
    else:  # informative scores
        p = np.clip(np.array(y) * 0.3 + rng.random(n) * 0.7, 0, 1).tolist()
    pred = [int(s >= 0.5) for s in p]

    f = f1_per_class(y, pred)
    assert f[1] == pytest.approx(ref_f1(y, pred, 1), abs=1e-12)
    assert f[0] == pytest.approx(ref_f1(y, pred, 0), abs=1e-12)
    assert macro_f1(y, pred) == pytest.approx(
        (ref_f1(y, pred, 1) + ref_f1(y, pred, 0)) / 2, abs=1e-12
    )
    assert average_precision(y, p) == pytest.approx(ref_ap(y, p), abs=1e-12)
    t, m = best_threshold(y, p)
    rt, rm = ref_best_threshold(y, p)
    assert t == rt
    assert m == pytest.approx(rm, abs=1e-12)


def test_macro_f1_matches_sklearn() -> None:
    import sklearn.metrics as sk  # a project dependency: missing, the test must fail

    rng = np.random.default_rng(42)
    for _ in range(20):
        y = rng.integers(0, 2, size=30)
        pred = rng.integers(0, 2, size=30)
        expected = sk.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0)
        assert macro_f1(y, pred) == pytest.approx(expected, abs=1e-12)
