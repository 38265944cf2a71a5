"""Media clocks: place every frame on the session timeline from its pts.

Live tracks carry RTP timestamps with random origins; each track's media
time is ``(pts - first_pts) * time_base``, so every track starts at 0 as the
streams of a file do (a publisher starts its tracks together; WebRTC gives no
common origin without RTCP sender reports). Keeping the live timeline equal to
the file's is what lets `ahstream analyze` reproduce a live session step for
step. Files use their container timestamps.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from fractions import Fraction

__all__ = ["SessionClock", "TrackClock"]


class SessionClock:
    """Wall-clock origin of a session and the wall time each media time arrived."""

    def __init__(self, wall: float | None = None) -> None:
        self.origin: float | None = wall
        self.last_arrival_wall: float | None = None
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=2048)

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def start(self) -> float:
        """Set the origin at the first media arrival (idempotent)."""
        if self.origin is None:
            self.origin = self.now()
        return self.origin

    def arrived(self, t: float, wall: float | None = None) -> None:
        """Record that media up to time ``t`` arrived at ``wall`` (monotonic s)."""
        wall = self.now() if wall is None else wall
        self.last_arrival_wall = wall
        if not self._arrivals or t > self._arrivals[-1][0]:
            self._arrivals.append((t, wall))

    def arrival_of(self, t: float) -> float | None:
        """Wall time at which media time ``t`` had first arrived (None if unknown)."""
        i = bisect.bisect_left(self._arrivals, t - 1e-9, key=lambda a: a[0])
        return self._arrivals[i][1] if i < len(self._arrivals) else None

    def lag(self, t: float) -> float | None:
        """Seconds since media time ``t`` arrived."""
        wall = self.arrival_of(t)
        return None if wall is None else self.now() - wall


class TrackClock:
    """Maps one track's pts to session media time."""

    def __init__(self, session: SessionClock, offset: float = 0.0) -> None:
        self._session = session
        self._pts0: int | None = None
        self._offset = offset

    def media_time(self, pts: int | None, time_base: Fraction | None) -> float | None:
        """Media time of a frame, or None if it has no timestamp."""
        if pts is None or time_base is None:
            return None
        if self._pts0 is None:
            self._pts0 = pts
            self._session.start()
        return float((pts - self._pts0) * time_base) + self._offset
