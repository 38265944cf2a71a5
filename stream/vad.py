"""Speech/pause timeline from webrtcvad over 30 ms frames of 16 kHz audio."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import webrtcvad

__all__ = ["VadTimeline"]


SILENCE_DECODED_S = 2.0  # of a gap, decided by webrtcvad (its own state settles)


class VadTimeline:
    """Frame-level speech flags on the media timeline, with hangover smoothing.

    Raw webrtcvad decisions flicker inside words; a frame counts as speech if
    any raw decision within ``hangover_s`` before it was speech. Only the last
    ``span_s`` seconds of flags are kept (bounded, oldest dropped).
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
        self._flags: deque[bool] = deque(maxlen=int(span_s / self.frame_s))
        self._raw_since_speech = 10**9  # frames since the last raw speech decision
        self._n = 0  # absolute number of frames decided
        self._lock = threading.Lock()

    @property
    def end_time(self) -> float:
        """Media time up to which speech/pause has been decided."""
        return self._n * self.frame_s

    def push(self, samples: np.ndarray) -> None:
        """Feed the next contiguous samples (16 kHz mono float32 in [-1, 1])."""
        x = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n_frames = x.size // self.frame_len
        pcm = (np.clip(x[: n_frames * self.frame_len], -1.0, 1.0) * 32767).astype("<i2")
        new: list[bool] = []
        for k in range(n_frames):
            chunk = pcm[k * self.frame_len : (k + 1) * self.frame_len].tobytes()
            if self._vad.is_speech(chunk, self.sample_rate):
                self._raw_since_speech = 0
            else:
                self._raw_since_speech += 1
            new.append(self._raw_since_speech <= self._hang)
        self._pending = x[n_frames * self.frame_len :]
        with self._lock:
            self._flags.extend(new)
            self._n += n_frames

    def push_silence(self, n_samples: int) -> None:
        """Feed ``n_samples`` of digital silence (a gap in the input) in bounded memory.

        The first ``SILENCE_DECODED_S`` are decided by webrtcvad like any input (it has
        state of its own that settles within them); the rest is counted as non-speech
        without being allocated, so an hour-long gap costs no more than a second."""
        if n_samples <= 0:
            return
        head = min(n_samples, int(SILENCE_DECODED_S * self.sample_rate))
        self.push(np.zeros(head, dtype=np.float32))
        n_samples -= head
        total = self._pending.size + n_samples
        n_frames = total // self.frame_len
        keep = min(n_frames, self._flags.maxlen or n_frames)
        start = self._raw_since_speech + 1 + (n_frames - keep)  # silent frames so far
        new = [start + k <= self._hang for k in range(keep)]
        self._raw_since_speech += n_frames
        self._pending = np.zeros(total - n_frames * self.frame_len, dtype=np.float32)
        with self._lock:
            self._flags.extend(new)
            self._n += n_frames

    def _index(self, t: float) -> int:
        return int(t / self.frame_s + 1e-9)

    def speech_fraction(self, t0: float, t1: float) -> float:
        """Fraction of decided frames in [t0, t1) that are speech (0 if none held)."""
        with self._lock:
            first = self._n - len(self._flags)
            i0 = max(first, self._index(t0))
            i1 = min(self._n, self._index(t1))
            if i1 <= i0:
                return 0.0
            flags = list(self._flags)[i0 - first : i1 - first]
        return float(sum(flags)) / len(flags)

    def last_speech_end(self, t: float) -> float | None:
        """End time of the last speech frame at or before ``t`` (None if none held)."""
        with self._lock:
            first = self._n - len(self._flags)
            i = min(self._n, self._index(t)) - 1
            while i >= first:
                if self._flags[i - first]:
                    return (i + 1) * self.frame_s
                i -= 1
        return None

    def segments(self, t0: float, t1: float) -> list[tuple[float, float]]:
        """Speech segments (start, end) overlapping [t0, t1)."""
        with self._lock:
            first = self._n - len(self._flags)
            i0 = max(first, self._index(t0))
            i1 = min(self._n, self._index(t1))
            flags = list(self._flags)[i0 - first : max(i0, i1) - first]
        out: list[tuple[float, float]] = []
        start: int | None = None
        for k, f in enumerate(flags):
            if f and start is None:
                start = k
            elif not f and start is not None:
                out.append(((i0 + start) * self.frame_s, (i0 + k) * self.frame_s))
                start = None
        if start is not None:
            out.append(((i0 + start) * self.frame_s, (i0 + len(flags)) * self.frame_s))
        return out
