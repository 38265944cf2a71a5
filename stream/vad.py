"""Speech/pause timeline from webrtcvad over 30 ms frames of 16 kHz audio."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import webrtcvad

__all__ = ["VadTimeline"]


SILENCE_DECODED_S = 2.0  # of a gap, decided by webrtcvad (its own state settles)
LOST_KEPT = 64  # spans of missing audio remembered (the newest; oldest dropped)


class VadTimeline:
    """Frame-level speech flags on the media timeline, with hangover smoothing.

    Raw webrtcvad decisions flicker inside words; a frame counts as speech if
    any raw decision within ``hangover_s`` before it was speech. Only the last
    ``span_s`` seconds of flags are kept (a ring: oldest overwritten), so a query
    costs what its window holds, not what the session has held. The spans filled
    by `push_silence` (audio that never arrived) are remembered too (the newest
    `LOST_KEPT`): silence there is lost audio, not the speaker's.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        frame_ms: int = 30,
        aggressiveness: int = 2,
        hangover_s: float = 0.15,
        span_s: float = 600.0,
    ) -> None:
        self.sample_rate = sample_rate
        self.frame_len = sample_rate * frame_ms // 1000
        self.frame_s = frame_ms / 1000.0
        self._vad = webrtcvad.Vad(aggressiveness)
        self._hang = max(0, int(round(hangover_s / self.frame_s)))
        self._pending = np.zeros(0, dtype=np.float32)
        self._flags = np.zeros(max(1, int(span_s / self.frame_s)), dtype=bool)
        self._raw_since_speech = 10**9  # frames since the last raw speech decision
        self._n = 0  # absolute number of frames decided
        self._last_speech = -1  # absolute index of the newest speech frame (-1: none)
        self._lost: deque[tuple[float, float]] = deque(maxlen=LOST_KEPT)
        self._lock = threading.Lock()

    @property
    def end_time(self) -> float:
        """Media time up to which speech/pause has been decided."""
        return self._n * self.frame_s

    @property
    def held(self) -> int:
        """Number of frames whose flags are held (at most the span's)."""
        return min(self._n, self._flags.size)

    def _extend(self, new: np.ndarray) -> None:
        """Append decided flags to the ring (under the lock)."""
        cap = self._flags.size
        speech = np.flatnonzero(new)
        if speech.size:
            self._last_speech = self._n + int(speech[-1])
        tail = new[-cap:]
        n0 = self._n + new.size - tail.size  # absolute index of tail[0]
        pos = (n0 + np.arange(tail.size)) % cap
        self._flags[pos] = tail
        self._n += new.size

    def push(self, samples: np.ndarray) -> None:
        """Feed the next contiguous samples (16 kHz mono float32 in [-1, 1])."""
        x = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n_frames = x.size // self.frame_len
        pcm = (np.clip(x[: n_frames * self.frame_len], -1.0, 1.0) * 32767).astype("<i2")
        new = np.zeros(n_frames, dtype=bool)
        for k in range(n_frames):
            chunk = pcm[k * self.frame_len : (k + 1) * self.frame_len].tobytes()
            if self._vad.is_speech(chunk, self.sample_rate):
                self._raw_since_speech = 0
            else:
                self._raw_since_speech += 1
            new[k] = self._raw_since_speech <= self._hang
        self._pending = x[n_frames * self.frame_len :]
        with self._lock:
            self._extend(new)

    def push_silence(self, n_samples: int) -> None:
        """Feed ``n_samples`` of digital silence standing for audio that never arrived (a
        gap in the input), in bounded memory; the span is remembered as lost (`lost`).

        The first ``SILENCE_DECODED_S`` are decided by webrtcvad like any input (it has
        state of its own that settles within them); the rest is counted as non-speech
        without being allocated, so an hour-long gap costs no more than a second."""
        if n_samples <= 0:
            return
        t0 = (self._n * self.frame_len + self._pending.size) / self.sample_rate
        with self._lock:
            self._lost.append((t0, t0 + n_samples / self.sample_rate))
        head = min(n_samples, int(SILENCE_DECODED_S * self.sample_rate))
        self.push(np.zeros(head, dtype=np.float32))
        n_samples -= head
        total = self._pending.size + n_samples
        n_frames = total // self.frame_len
        keep = min(n_frames, self._flags.size)
        start = self._raw_since_speech + 1 + (n_frames - keep)  # silent frames so far
        new = start + np.arange(keep) <= self._hang
        self._raw_since_speech += n_frames
        self._pending = np.zeros(total - n_frames * self.frame_len, dtype=np.float32)
        with self._lock:
            self._n += n_frames - keep  # frames that would be overwritten at once
            self._extend(new)

    def lost(self, t0: float, t1: float) -> float:
        """Seconds of (t0, t1) whose audio was missing (filled by `push_silence`)."""
        with self._lock:
            return sum(max(0.0, min(t1, g1) - max(t0, g0)) for g0, g1 in self._lost)

    def _index(self, t: float) -> int:
        return int(t / self.frame_s + 1e-9)

    def _span(self, t0: float, t1: float) -> tuple[int, np.ndarray]:
        """First absolute frame index and the held flags of [t0, t1) (under the lock)."""
        i0 = max(self._n - self.held, self._index(t0))
        i1 = max(i0, min(self._n, self._index(t1)))
        return i0, self._flags[np.arange(i0, i1) % self._flags.size]

    def flags(self, t0: float, t1: float) -> np.ndarray:
        """The held speech flags of the frames in [t0, t1)."""
        with self._lock:
            return self._span(t0, t1)[1]

    def speech_fraction(self, t0: float, t1: float) -> float:
        """Fraction of decided frames in [t0, t1) that are speech (0 if none held)."""
        flags = self.flags(t0, t1)
        return float(flags.mean()) if flags.size else 0.0

    def last_speech_end(self, t: float) -> float | None:
        """End time of the last speech frame at or before ``t`` (None if none held)."""
        with self._lock:
            i1 = min(self._n, self._index(t))
            first = self._n - self.held
            if self._last_speech < i1:
                i = self._last_speech
            else:
                i0, flags = self._span(first * self.frame_s, i1 * self.frame_s)
                hits = np.flatnonzero(flags)
                i = i0 + int(hits[-1]) if hits.size else -1
        return (i + 1) * self.frame_s if i >= first else None

    def segments(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """Speech segments (start, end) overlapping [t0, t1)."""
        with self._lock:
            i0, flags = self._span(t0, t1)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
        return [
            ((i0 + int(a)) * self.frame_s, (i0 + int(b)) * self.frame_s)
            for a, b in zip(edges[::2], edges[1::2], strict=True)
        ]
