"""The one record type every codebook cue detector returns (words, voice, face, cross-modal).

A `CueHit` maps one-to-one onto the ``cue`` websocket event (`stream.events.Cue`):
``t0``/``t1`` are media seconds, ``strength`` is in [0, 1], ``modality`` is one of
`MODALITIES` (the codebook's channels: words, voice, face, and cross-modal
inconsistency), ``detail`` is a short human-readable reason (e.g. the words that
matched). Plain dataclass, no dependencies, so every detector can import it.

`FrameInterval` is the detectors' shared measure of time covered by sampled frames: a frame
(or tick) at media time ``t`` covers ``(t - interval, t]``, as in `stream.aggregate.
SegmentTracker`, so an episode from its first to its last frame lasts
``t_last - t_first + interval`` (5 frames at 10 Hz: 0.5 s).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_FRAME_S", "MODALITIES", "CueHit", "FrameInterval"]

# "text": ASR words; "voice": prosody/pauses; "face": face and head; "cross": inconsistency.
MODALITIES: tuple[str, ...] = ("text", "voice", "face", "cross")

#: The interval of the default analysis rate (10 Hz), assumed until frames have been seen.
DEFAULT_FRAME_S = 0.1


@dataclass(frozen=True)
class CueHit:
    """One detected codebook cue over media times [t0, t1] with a strength in [0, 1]."""

    cue: str
    t0: float
    t1: float
    strength: float
    modality: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.t1 < self.t0:
            raise ValueError(f"CueHit {self.cue!r}: t1 {self.t1} < t0 {self.t0}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"CueHit {self.cue!r}: strength {self.strength} not in [0, 1]")

    def to_event(self) -> dict[str, object]:
        """The fields of a ``cue`` event: t0, t1, cue, modality, strength, detail.

        As `stream.events.Cue` and the README's "Event protocol" table.
        """
        return {
            "t0": round(self.t0, 3),
            "t1": round(self.t1, 3),
            "cue": self.cue,
            "modality": self.modality,
            "strength": round(self.strength, 3),
            "detail": self.detail,
        }


class FrameInterval:
    """Running interval between the frames (or ticks) a detector is fed, in media seconds.

    The analysed frames come at the session's analysis rate (lite: the newest frame of each
    tick, so a 15 fps camera gives alternating 0.067/0.133 s steps) or at the camera rate
    (full profile): an exponential mean over the last ~5 steps follows either. Steps longer
    than ``max_s`` are dropouts, not the frame rate, and are left out.
    """

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.s = DEFAULT_FRAME_S
        self._last: float | None = None

    def add(self, t: float) -> None:
        """Note a frame at media time ``t`` (in order)."""
        if self._last is not None and 0.0 < t - self._last <= self.max_s:
            self.s += 0.2 * (t - self._last - self.s)
        self._last = t

    def covered(self, t_first: float, t_last: float) -> float:
        """Media time covered by the frames from ``t_first`` to ``t_last``."""
        return t_last - t_first + self.s
