"""Aggregation of frame-level A/H probabilities: video-level decision and A/H segments."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["METHODS", "VideoAggregator", "SegmentSpan", "SegmentTracker"]

METHODS = ("last", "mean", "max_ma1s")


class VideoAggregator:
    """Running video-level probability from frame probabilities in media-time order.

    Methods: ``last`` (the newest frame value: the model's estimate given
    everything heard so far), ``mean`` of all frames, and ``max_ma1s`` (the
    maximum of a 1 s moving average, as in the BAH paper). The method and its
    threshold come with the weights: the method chosen by a rule on
    cross-validation on train (kept only if not worse on val), the threshold tuned
    on out-of-fold train and val scores pooled (``models.metrics.pooled_threshold``);
    see the model card, "Decision rule and the candidates compared".
    """

    def __init__(self, threshold: float, method: str = "last", hz: float = 10.0) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown aggregation method {method!r}; choose from {METHODS}")
        self.threshold = threshold
        self.method = method
        self._win: deque[float] = deque(maxlen=max(1, int(round(hz))))
        self._n = 0
        self._sum = 0.0
        self._last: float | None = None
        self._max_ma: float | None = None

    def add(self, p: float) -> None:
        """Add the next frame probability (ValueError if it is not a number in [0, 1]:
        a NaN would stay in the mean for good, and vanish from the 1 s maximum)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"a frame probability must be in [0, 1], not {p}")
        self._n += 1
        self._sum += p
        self._last = p
        self._win.append(p)
        ma = sum(self._win) / len(self._win)
        self._max_ma = ma if self._max_ma is None else max(self._max_ma, ma)

    @property
    def frames(self) -> int:
        """Number of frame probabilities added."""
        return self._n

    @property
    def p(self) -> float | None:
        """Current video-level probability (None before the first frame)."""
        if self._n == 0:
            return None
        if self.method == "last":
            return self._last
        if self.method == "mean":
            return self._sum / self._n
        return self._max_ma

    @property
    def label(self) -> int:
        """1 if the current video-level probability reaches the threshold."""
        p = self.p
        return int(p is not None and p >= self.threshold)


@dataclass(frozen=True)
class SegmentSpan:
    """A closed A/H segment: media times of its first and last frame above exit, peak p."""

    t0: float
    t1: float
    peak: float


class SegmentTracker:
    """A/H segments from frame probabilities, with hysteresis and a minimum duration.

    A segment opens at the first frame with ``p >= enter`` and stays open while
    ``p >= exit`` (``exit <= enter``, so p hovering around one threshold does not
    flicker); it closes at the last frame before p falls below ``exit`` (or at
    the end of the session). Segments shorter than ``min_duration_s`` are
    dropped. A frame at tick time ``t`` covers ``(t - 1/hz, t]``, so a segment
    spans ``[t_first - 1/hz, t_last]``. BAH's annotated segments last 4.3 s on
    average (one frame to 24 s); the defaults below are design choices (no
    segment labels exist here to tune them): see the model card.
    """

    def __init__(
        self,
        enter: float,
        exit: float | None = None,
        min_duration_s: float = 1.0,
        hz: float = 10.0,
    ) -> None:
        exit = enter if exit is None else exit
        if exit > enter:
            raise ValueError(f"exit threshold {exit} above enter threshold {enter}")
        self.enter = enter
        self.exit = exit
        self.min_duration_s = min_duration_s
        self.dt = 1.0 / hz
        self._t0: float | None = None
        self._t1 = 0.0
        self._peak = 0.0

    @classmethod
    def around(cls, threshold: float, margin: float = 0.05, **kw: float) -> SegmentTracker:
        """Tracker with enter/exit ``margin`` above/below a decision threshold."""
        return cls(min(threshold + margin, 1.0), max(threshold - margin, 0.0), **kw)

    @property
    def open(self) -> bool:
        """True while a segment is open."""
        return self._t0 is not None

    def update(self, t: float, p: float, evidence: bool = True) -> SegmentSpan | None:
        """Add the frame probability at tick time ``t``; return a segment that just closed.

        ``evidence=False`` (the model has not heard enough words: p is its prior)
        counts as below ``exit``: a segment needs evidence, not just a prior.
        """
        if not evidence:
            p = float("-inf")
        if self._t0 is None:
            if p >= self.enter:
                self._t0, self._t1, self._peak = t - self.dt, t, p
            return None
        if p >= self.exit:
            self._t1 = t
            self._peak = max(self._peak, p)
            return None
        return self._close()

    def flush(self) -> SegmentSpan | None:
        """Close an open segment at the end of the session."""
        return self._close() if self._t0 is not None else None

    def _close(self) -> SegmentSpan | None:
        t0, t1, peak = self._t0, self._t1, self._peak
        self._t0 = None
        if t0 is None or t1 - t0 < self.min_duration_s - 1e-9:
            return None
        return SegmentSpan(max(t0, 0.0), t1, peak)
