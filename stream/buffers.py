"""Bounded per-modality buffers keyed to media time.

`AudioRing` holds the last `span_s` seconds of 16 kHz mono float32 audio;
older samples are overwritten (drop policy: oldest first, counted).
`LatestFrameSlot` keeps the newest video frame per analysis interval for a
few intervals (drop policy: older frames are replaced, counted).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AudioRing", "LatestFrameSlot", "VideoFrame"]


class AudioRing:
    """Fixed-span ring of mono float32 samples placed on the media timeline.

    Sample ``i`` of the session sits at media time ``i / sample_rate``. Writes
    come from the event loop, reads from executor threads, hence the lock.
    """

    def __init__(self, sample_rate: int = 16000, span_s: float = 120.0) -> None:
        self.sample_rate = sample_rate
        self.capacity = int(round(span_s * sample_rate))
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._end = 0  # absolute index one past the newest sample
        self._lock = threading.Lock()
        self.overwritten = 0  # samples lost because readers fell behind the span
        self.gap_samples = 0  # silence inserted where media time jumped forward
        self.dropped_overlap = 0  # samples dropped because media time went backwards

    @property
    def end_index(self) -> int:
        return self._end

    @property
    def end_time(self) -> float:
        """Media time just after the newest sample."""
        return self._end / self.sample_rate

    @property
    def start_index(self) -> int:
        """Oldest absolute index still held."""
        return max(0, self._end - self.capacity)

    def write(self, samples: np.ndarray, t: float | None = None) -> int:
        """Append samples that start at media time ``t`` (default: right after the last).

        Forward jumps are filled with silence so the timeline stays true;
        samples before the current end are dropped. Returns samples written.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if t is not None:
            start = int(round(t * self.sample_rate))
            if start > self._end:
                gap = start - self._end
                self.gap_samples += gap
                self._append(np.zeros(min(gap, self.capacity), dtype=np.float32), gap)
            elif start < self._end:
                skip = min(self._end - start, x.size)
                self.dropped_overlap += skip
                x = x[skip:]
        if x.size:
            self._append(x, x.size)
        return int(x.size)

    def _append(self, x: np.ndarray, advance: int) -> None:
        with self._lock:
            # `advance` may exceed x.size for long silent gaps: only the tail is kept.
            new_end = self._end + advance
            lost = max(0, (new_end - self.capacity) - max(0, self._end - self.capacity))
            x = x[-self.capacity :]  # a write longer than the span: its newest part
            n = x.size
            pos = (new_end - n) % self.capacity
            first = min(n, self.capacity - pos)
            self._buf[pos : pos + first] = x[:first]
            if n > first:
                self._buf[: n - first] = x[first:]
            self._end = new_end
            self.overwritten += lost

    def read(self, i0: int, i1: int) -> np.ndarray:
        """Copy of samples [i0, i1) by absolute index; raises if no longer held."""
        with self._lock:
            if i0 < self.start_index or i1 > self._end or i0 > i1:
                raise IndexError(
                    f"samples [{i0}, {i1}) not in ring [{self.start_index}, {self._end})"
                )
            n = i1 - i0
            pos = i0 % self.capacity
            first = min(n, self.capacity - pos)
            out = np.empty(n, dtype=np.float32)
            out[:first] = self._buf[pos : pos + first]
            if n > first:
                out[first:] = self._buf[: n - first]
            return out

    def read_time(self, t0: float, t1: float) -> np.ndarray:
        """Copy of samples between media times ``t0`` and ``t1``, clipped to what is held."""
        i0 = max(self.start_index, int(round(t0 * self.sample_rate)))
        i1 = min(self._end, int(round(t1 * self.sample_rate)))
        return self.read(i0, max(i0, i1))


@dataclass
class VideoFrame:
    """A decoded video frame on the media timeline (RGB uint8, HxWx3)."""

    t: float
    image: Any  # np.ndarray (H, W, 3) uint8, or an av.VideoFrame decoded lazily
    width: int
    height: int


class LatestFrameSlot:
    """The newest video frame of each analysis interval, for the last few intervals.

    A tick at media time ``t`` analyses the newest frame at or before ``t``. One
    slot alone would let frames from ahead of the worker (an offline feeder, or
    a live worker a moment behind) evict the frame the tick needs, and the
    result would depend on timing; so one slot is kept per interval of
    ``interval_s`` (a newer frame in the same interval replaces the older one),
    for at most ``max_intervals`` intervals (the oldest goes first). A frame
    no newer than one already taken (its timestamp stepped back, within the ingest's
    jitter allowance) comes too late for the analysis, which goes forwards in media
    time: it is dropped. Every frame that is never analysed is counted in ``dropped``.
    """

    def __init__(self, interval_s: float = 0.1, max_intervals: int = 40) -> None:
        self.interval_s = interval_s
        self.max_intervals = max_intervals
        self._slots: deque[tuple[int, VideoFrame]] = deque()
        self._taken_t = -math.inf  # media time of the newest frame taken
        self.received = 0
        self.dropped = 0
        self.taken = 0

    def put(self, frame: VideoFrame) -> None:
        """Offer a frame; it replaces an older frame of the same interval."""
        self.received += 1
        # Interval k holds frames in ((k-1)*interval, k*interval]: exactly what the tick
        # at k*interval may analyse, so a later frame never evicts the one a tick needs.
        if frame.t <= self._taken_t + 1e-9:  # behind what was analysed already
            self.dropped += 1
            return
        key = math.ceil(frame.t / self.interval_s - 1e-6)
        if self._slots and self._slots[-1][0] >= key:
            if frame.t < self._slots[-1][1].t:  # out of order: older than what we hold
                self.dropped += 1
                return
            self._slots.pop()
            self.dropped += 1
        self._slots.append((key, frame))
        if len(self._slots) > self.max_intervals:
            self._slots.popleft()
            self.dropped += 1

    def take_until(self, t: float) -> VideoFrame | None:
        """Remove and return the newest frame at or before media time ``t``."""
        found: VideoFrame | None = None
        while self._slots and self._slots[0][1].t <= t + 1e-9:
            if found is not None:
                self.dropped += 1
            found = self._slots.popleft()[1]
        if found is not None:
            self.taken += 1
            self._taken_t = found.t
        return found

    def take_all_until(self, t: float) -> list[VideoFrame]:
        """Remove and return every frame held at or before media time ``t``, oldest first
        (for a consumer that analyses them all: none is counted as dropped)."""
        out: list[VideoFrame] = []
        while self._slots and self._slots[0][1].t <= t + 1e-9:
            out.append(self._slots.popleft()[1])
        self.taken += len(out)
        if out:
            self._taken_t = out[-1].t
        return out

    def count_dropped(self) -> None:
        """Count a frame refused before the slot (e.g. above the ingest fps limit)."""
        self.received += 1
        self.dropped += 1

    def __len__(self) -> int:
        return len(self._slots)
