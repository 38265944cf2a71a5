"""The one record type every codebook cue detector returns (words, voice, face, cross-modal).

A `CueHit` maps one-to-one onto the ``cue`` websocket event (`stream.events.Cue`):
``t0``/``t1`` are media seconds, ``strength`` is in [0, 1], ``modality`` is one of
`MODALITIES` (the codebook's channels: words, voice, face, and cross-modal
inconsistency), ``detail`` is a short human-readable reason (e.g. the words that
matched). Plain dataclass, no dependencies, so every detector can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MODALITIES", "CueHit"]

# "text": ASR words; "voice": prosody/pauses; "face": face and head; "cross": inconsistency.
MODALITIES: tuple[str, ...] = ("text", "voice", "face", "cross")


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
