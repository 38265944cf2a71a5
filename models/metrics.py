"""The BAH dataset's official video-level metrics, defined here (also in the model card).

- Macro F1 is the mean of the F1 of class 1 (A/H) and the F1 of class 0 (no A/H).
  The F1 of a class that is neither present nor predicted (tp + fp + fn == 0) is 0.
- Average precision (AP) of the positive class is *not* scikit-learn's
  ``average_precision_score``. It is the trapezoid area under the (recall,
  precision) points obtained at the 1000 thresholds ``numpy.arange(0, 1, 0.001)``
  exactly (float steps included: the 351st is 0.35000000000000003), where a
  score ``p >= threshold`` counts as positive, precision is 0 where nothing is
  predicted positive, and recall is 0 when there is no positive video. The
  points are taken in threshold order (recall never increases along it), so
  AP = sum_i (r_i - r_{i+1}) * (P_i + P_{i+1}) / 2 over consecutive thresholds,
  i.e. ``-numpy.trapz(precision, recall)``. No extra end points are added:
  the curve starts at the recall of threshold 0.999 and ends at the recall of
  threshold 0 (1.0 when all scores are >= 0).

Scores are compared as float64. Labels must be 0/1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "AP_THRESHOLDS",
    "f1_per_class",
    "macro_f1",
    "average_precision",
    "precision_recall_points",
    "best_threshold",
    "pooled_threshold",
    "evaluate_scores",
]

# Exactly the official grid: 1000 thresholds, float steps included.
AP_THRESHOLDS: np.ndarray = np.arange(0, 1, 0.001)

ArrayLike = Sequence[float] | np.ndarray


def _labels(y: ArrayLike) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return arr.astype(np.int64)


def _scores(p: ArrayLike, n: int) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"scores must be 1-D of length {n}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("scores must be finite")
    return arr


def _f1(tp: np.ndarray | int, fp: np.ndarray | int, fn: np.ndarray | int) -> np.ndarray:
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, den, out=np.zeros_like(den), where=den > 0)


def f1_per_class(y: ArrayLike, pred: ArrayLike) -> dict[int, float]:
    """Return ``{1: F1 of A/H, 0: F1 of no-A/H}`` for 0/1 labels and 0/1 predictions."""
    yt = _labels(y)
    yp = _labels(pred)
    if yt.shape != yp.shape:
        raise ValueError(f"labels and predictions differ in length: {yt.shape} vs {yp.shape}")
    tp = int(np.sum((yt == 1) & (yp == 1)))
    fp = int(np.sum((yt == 0) & (yp == 1)))
    fn = int(np.sum((yt == 1) & (yp == 0)))
    tn = int(np.sum((yt == 0) & (yp == 0)))
    # For class 0 the roles swap: its true positives are tn, its false positives are fn.
    return {1: float(_f1(tp, fp, fn)), 0: float(_f1(tn, fn, fp))}


def macro_f1(y: ArrayLike, pred: ArrayLike) -> float:
    """Return the mean of the F1 of class 1 and the F1 of class 0."""
    f = f1_per_class(y, pred)
    return (f[1] + f[0]) / 2.0


def _counts_at(
    y: np.ndarray, p: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Return (tp, fp, n_pos, n_neg) at each threshold, where ``p >= t`` is positive."""
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    # Number of scores >= t is len - (number of scores < t) = len - searchsorted(left).
    tp = pos.size - np.searchsorted(pos, thresholds, side="left")
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")
    return tp.astype(np.int64), fp.astype(np.int64), int(pos.size), int(neg.size)


def precision_recall_points(
    y: ArrayLike, p: ArrayLike, thresholds: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (precision, recall) at each threshold (default: the official AP grid)."""
    yt = _labels(y)
    ps = _scores(p, yt.shape[0])
    thr = AP_THRESHOLDS if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    tp, fp, n_pos, _ = _counts_at(yt, ps, thr)
    predicted = tp + fp
    precision = np.divide(
        tp, predicted, out=np.zeros(thr.shape, dtype=np.float64), where=predicted > 0
    )
    recall = tp / n_pos if n_pos > 0 else np.zeros(thr.shape, dtype=np.float64)
    return precision, recall.astype(np.float64)


def average_precision(y: ArrayLike, p: ArrayLike) -> float:
    """Return the official BAH AP: trapezoid area under (recall, precision) on arange(0,1,.001)."""
    precision, recall = precision_recall_points(y, p)
    # Threshold order: recall is non-increasing, so each step adds a non-negative area.
    area = (recall[:-1] - recall[1:]) * (precision[:-1] + precision[1:]) / 2.0
    return float(np.sum(area))


def best_threshold(
    y: ArrayLike, p: ArrayLike, grid: np.ndarray | None = None
) -> tuple[float, float]:
    """Return (threshold, macro F1) maximizing macro F1 of ``p >= threshold`` over a grid.

    The default grid is the official AP grid ``numpy.arange(0, 1, 0.001)``.
    Tie rule: among the grid thresholds whose macro F1 is within 1e-12 of the
    maximum, the lower median (in grid order) is returned, so the choice sits
    inside a plateau rather than on its edge and is deterministic.
    """
    yt = _labels(y)
    ps = _scores(p, yt.shape[0])
    thr = AP_THRESHOLDS if grid is None else np.asarray(grid, dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0:
        raise ValueError("grid must be a non-empty 1-D array")
    tp, fp, n_pos, n_neg = _counts_at(yt, ps, thr)
    fn = n_pos - tp
    tn = n_neg - fp
    scores = (_f1(tp, fp, fn) + _f1(tn, fn, fp)) / 2.0
    best = float(scores.max())
    idx = np.flatnonzero(scores >= best - 1e-12)
    pick = int(idx[(idx.size - 1) // 2])
    return float(thr[pick]), float(scores[pick])


def pooled_threshold(*parts: tuple[np.ndarray, np.ndarray]) -> float:
    """The macro-F1 threshold of several (labels, probabilities) sets pooled.

    Training pools the out-of-fold train probabilities (616 BAH answers) with val's
    (110): a threshold tuned on 110 answers is noisy. In a simulation on the text
    model's out-of-fold train probabilities (3 seeds x 400 splits), a threshold tuned
    on 110 answers gave macro F1 0.703 on 110 other answers, one tuned on 506 answers
    0.714 (the best threshold for those 110 themselves: 0.743; `python -m
    models.train_text --threshold-study`).
    """
    y = np.concatenate([np.asarray(a, dtype=np.int64) for a, _ in parts])
    p = np.concatenate([np.asarray(b, dtype=np.float64) for _, b in parts])
    return best_threshold(y, p)[0]


def evaluate_scores(y: ArrayLike, p: ArrayLike, threshold: float) -> dict[str, float | int]:
    """Return ``{"n", "macro_f1", "f1_pos", "f1_neg", "ap", "threshold"}`` for scores p."""
    yt = _labels(y)
    ps = _scores(p, yt.shape[0])
    pred = (ps >= threshold).astype(np.int64)
    f = f1_per_class(yt, pred)
    return {
        "n": int(yt.shape[0]),
        "macro_f1": (f[1] + f[0]) / 2.0,
        "f1_pos": f[1],
        "f1_neg": f[0],
        "ap": average_precision(yt, ps),
        "threshold": float(threshold),
    }
