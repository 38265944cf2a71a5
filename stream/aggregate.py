"""Aggregation of frame-level A/H probabilities into a video-level decision."""

from __future__ import annotations

from collections import deque

__all__ = ["VideoAggregator"]

METHODS = ("last", "mean", "max_ma1s")


class VideoAggregator:
    """Running video-level probability from frame probabilities in media-time order.

    Methods: ``last`` (the newest frame value: for the text channel it is the
    model applied to the whole transcript so far, the quantity whose threshold
    was tuned on full answers), ``mean`` of all frames, and ``max_ma1s`` (the
    maximum of a 1 s moving average, as in the BAH paper).
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
        """Add the next frame probability."""
        self._n += 1
        self._sum += p
        self._last = p
        self._win.append(p)
        ma = sum(self._win) / len(self._win)
        self._max_ma = ma if self._max_ma is None else max(self._max_ma, ma)

    @property
    def frames(self) -> int:
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
        p = self.p
        return int(p is not None and p >= self.threshold)
