"""Challenge submissions: `video_id,p0,p1,pred` lines, no header, scored officially."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bah import read_split
from models.metrics import average_precision, f1_per_class

__all__ = ["SubmissionError", "Prediction", "read_submission", "score_submission"]


# Rounded probabilities (e.g. 3 decimals each) still pass.
SUM_TOLERANCE = 1e-3


class SubmissionError(ValueError):
    """A submission file that cannot be scored (bad line, missing or extra ids)."""


@dataclass(frozen=True)
class Prediction:
    """One submission line."""

    video_id: str
    p0: float
    p1: float
    pred: int


def _parse(line: str, where: str) -> Prediction:
    # Video ids may contain spaces but not commas (a split file's cannot: it splits on
    # the first comma), so a line has exactly four fields.
    parts = line.split(",")
    if len(parts) != 4:
        raise SubmissionError(
            f"{where}: expected 'video_id,p0,p1,pred' (4 fields), got {len(parts)} in {line[:80]!r}"
        )
    vid, p0s, p1s, preds = (s.strip() for s in parts)
    try:
        p0, p1 = float(p0s), float(p1s)
        pred_f = float(preds)
    except ValueError:
        raise SubmissionError(f"{where}: p0, p1 and pred must be numbers") from None
    for name, v, s in (("p0", p0, p0s), ("p1", p1, p1s)):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise SubmissionError(f"{where}: {name} must be a probability in [0, 1], got {s}")
    # p0 and p1 are the two class probabilities; a sum far from 1 means swapped or shifted
    # columns. (pred is not checked against p1: it may come from a tuned threshold.)
    if abs(p0 + p1 - 1.0) > SUM_TOLERANCE:
        raise SubmissionError(
            f"{where}: p0 + p1 must be 1 (within {SUM_TOLERANCE}), got {p0s} + {p1s}"
        )
    if pred_f not in (0.0, 1.0):
        raise SubmissionError(f"{where}: pred must be 0 or 1, got {preds}")
    if not vid:
        raise SubmissionError(f"{where}: empty video_id")
    return Prediction(vid, p0, p1, int(pred_f))


def read_submission(path: str | Path) -> dict[str, Prediction]:
    """Read a submission; raises SubmissionError with the line number on bad input."""
    out: dict[str, Prediction] = {}
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SubmissionError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:  # permissions, an I/O error, a directory
        raise SubmissionError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, line in enumerate(text.split("\n"), 1):  # as split files: "\n" ends a line
        if not line.strip():
            continue
        pred = _parse(line, f"{path}:{n}")
        if pred.video_id in out:
            raise SubmissionError(f"{path}:{n}: video_id {pred.video_id!r} appears twice")
        out[pred.video_id] = pred
    if not out:
        raise SubmissionError(f"{path}: no predictions")
    return out


def score_submission(predictions: str | Path, split_file: str | Path) -> dict[str, Any]:
    """Macro F1 (from `pred`) and AP (from `p1`) of a submission against a split file."""
    items = read_split(split_file)
    if not items:
        raise SubmissionError(f"{split_file}: no videos")
    preds = read_submission(predictions)
    ids = [it.video_id for it in items]
    missing = [v for v in ids if v not in preds]
    extra = sorted(set(preds) - set(ids))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} video ids missing (first: {missing[0]!r})")
        if extra:
            parts.append(f"{len(extra)} ids not in the split (first: {extra[0]!r})")
        raise SubmissionError("; ".join(parts))
    y = np.array([it.label for it in items])
    pred = np.array([preds[v].pred for v in ids])
    p1 = np.array([preds[v].p1 for v in ids], dtype=np.float64)
    f1 = f1_per_class(y, pred)
    return {
        "n": len(ids),
        "macro_f1": (f1[0] + f1[1]) / 2.0,
        "f1_pos": f1[1],
        "f1_neg": f1[0],
        "ap": average_precision(y, p1),
        "threshold": None,
    }
