"""Media clocks: place every frame on the session timeline from its pts.

Live tracks carry RTP timestamps with random origins; each track's media
time is ``(pts - first_pts) * time_base`` plus the track's start: 0 for
tracks whose first frames arrive together, as the streams of a file start
(a publisher starts its tracks together; WebRTC gives no common origin
without RTCP sender reports). Keeping the live timeline equal to the file's
is what lets `ahstream analyze` reproduce a live session step for step. A
track whose first frame arrives more than `START_SKEW_S` after the session's
first media (a video whose first decodable keyframe came late, a camera
opened late) starts at that arrival instead, so it is not shifted earlier
against the other track. Files use their container timestamps.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

__all__ = ["START_SKEW_S", "SessionClock", "TrackClock"]

# First frames of tracks arriving this close together started together: their receive
# paths differ by about this much (aiortc holds 4 audio packets, 80 ms, before the first
# goes out; a video frame waits for all its packets and a decode).
START_SKEW_S = 0.25


class SessionClock:
    """Wall-clock origin of a session and the wall time each media time arrived.

    ``now`` is the monotonic clock (seconds) arrivals are read from.
    """

    def __init__(self, wall: float | None = None, now: Callable[[], float] | None = None) -> None:
        self.origin: float | None = wall
        self.last_arrival_wall: float | None = None
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=2048)
        self.now: Callable[[], float] = time.monotonic if now is None else now

    def start(self, wall: float | None = None) -> float:
        """Set the origin at the first media arrival, at ``wall`` or now (idempotent)."""
        if self.origin is None:
            self.origin = self.now() if wall is None else wall
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
    """Maps one track's pts to session media time; ``start`` is its first frame's."""

    def __init__(self, session: SessionClock, offset: float = 0.0) -> None:
        self._session = session
        self._pts0: int | None = None
        self.start = offset

    def media_time(
        self, pts: int | None, time_base: Fraction | None, wall: float | None = None
    ) -> float | None:
        """Media time of a frame that arrived at ``wall`` (default now), or None if it
        has no timestamp."""
        if pts is None or time_base is None:
            return None
        if self._pts0 is None:
            self._pts0 = pts
            wall = self._session.now() if wall is None else wall
            late = wall - self._session.start(wall)
            if late > START_SKEW_S:
                self.start += late
        return float((pts - self._pts0) * time_base) + self.start
