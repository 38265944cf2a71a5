"""`ahstream evaluate`: replay BAH answers through the session's analysis path and score it.

Every transcript of a split file is replayed as a word stream on simulated
timing (`models.simulate`, seeded by the video id: reproducible and
independent of the file order), with no audio or video, through the same
`Analyzer` (text features, fusion TCN) and `VideoAggregator` a live session
uses, at the same 10 Hz tick schedule. The video decision is the
aggregator's value after the last tick, thresholded with the shipped
threshold; ``early`` gives the same decision when only 25/50/75 % of each
stream has been heard. Macro F1 and AP come from `models.metrics` (the
official BAH definitions).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bah import QUESTION_PROMPTS, BahItem, read_split
from models.metrics import evaluate_scores
from models.simulate import early_index, seed_for, simulate_stream
from stream.aggregate import VideoAggregator
from stream.analysis import Analyzer

__all__ = ["EARLY_FRACTIONS", "Replay", "load_eval_models", "replay_item", "evaluate_split"]

EARLY_FRACTIONS = (0.25, 0.5, 0.75)


@dataclass
class Replay:
    """One replayed answer: frame p per tick and the running video-level p."""

    video_id: str
    label: int
    p_frames: np.ndarray
    p_video: np.ndarray  # the aggregator's p after each tick
    threshold: float
    method: str
    source: str

    @property
    def p(self) -> float:
        """The final video-level probability."""
        return float(self.p_video[-1])

    def p_at(self, fraction: float) -> float:
        """The video-level probability after ``fraction`` of the stream."""
        return float(self.p_video[early_index(self.p_video.size, fraction)])


def load_eval_models() -> Any:
    """The models `evaluate` needs (text model and TCN; no ASR, no face)."""
    from models.profile import load_models

    return load_models(asr=False, face=False)


def replay_item(models: Any, item: BahItem, context: str | None = None, hz: float = 10.0) -> Replay:
    """Replay one answer through `Analyzer` + `VideoAggregator` on simulated word timing."""
    sim = simulate_stream(item.transcript, seed_for(item.video_id), hz)
    analyzer = Analyzer(models, context, ring=None, vad=None)
    agg = VideoAggregator(analyzer.threshold, analyzer.method, hz)
    frames, video = [], []
    for t, new, final in sim.batches():
        result = analyzer.tick(t, new, final, [], None)
        agg.add(result.p)
        frames.append(result.p)
        video.append(agg.p)
    analyzer.flush()
    return Replay(
        video_id=item.video_id,
        label=item.label,
        p_frames=np.asarray(frames),
        p_video=np.asarray(video, dtype=np.float64),
        threshold=agg.threshold,
        method=agg.method,
        source=analyzer.source,
    )


def evaluate_split(
    split_file: str | Path,
    context_from_question: bool = False,
    models: Any | None = None,
    progress: bool = True,
    fractions: Sequence[float] = EARLY_FRACTIONS,
) -> dict[str, Any]:
    """Replay a BAH split file and return the official metrics (see the module doc)."""
    items = read_split(split_file)
    if not items:
        raise ValueError(f"{split_file}: no videos")
    models = models if models is not None else load_eval_models()
    it: Any = items
    if progress:
        from tqdm import tqdm

        it = tqdm(items, desc="evaluate", unit="video", file=sys.stderr)
    replays = []
    for item in it:
        ctx = None
        if context_from_question and item.question is not None:
            ctx = QUESTION_PROMPTS[item.question]
        replays.append(replay_item(models, item, ctx))
    thresholds = {r.threshold for r in replays}
    y = np.array([r.label for r in replays])
    p = np.array([r.p for r in replays])
    # One threshold per condition; with context from the question every answer uses the
    # context threshold (ids without a question number fall back to the plain one).
    pred_thr = np.array([r.threshold for r in replays])
    out = _scores(y, p, pred_thr)
    out["early"] = {
        str(int(round(f * 100))): _scores(y, np.array([r.p_at(f) for r in replays]), pred_thr)
        for f in fractions
    }
    out["method"] = replays[0].method
    out["source"] = replays[0].source
    out["context"] = "question" if context_from_question else None
    if len(thresholds) > 1:
        out["thresholds"] = sorted(thresholds)
    return out


def _scores(y: np.ndarray, p: np.ndarray, thr: np.ndarray) -> dict[str, Any]:
    """`evaluate_scores` with a threshold per video (identical to it when all are equal)."""
    if np.all(thr == thr[0]):
        return evaluate_scores(y, p, float(thr[0]))
    # Mixed thresholds: decide per video, then score the decisions; AP stays threshold-free.
    from models.metrics import average_precision, f1_per_class

    f = f1_per_class(y, (p >= thr).astype(np.int64))
    return {
        "n": int(y.size),
        "macro_f1": (f[1] + f[0]) / 2.0,
        "f1_pos": f[1],
        "f1_neg": f[0],
        "ap": average_precision(y, p),
        "threshold": float(np.median(thr)),
    }
