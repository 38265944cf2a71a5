"""The published event protocol (schema version 1): one JSON object per websocket message.

Each event is a small dataclass; `to_dict()` gives its public face as listed
in the README's "Event protocol" table and `clients/events.schema.json`.
`critical` events (session start/end, committed transcript, cues, segments,
final decisions, errors) are never dropped for a slow subscriber.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

__all__ = [
    "SCHEMA_VERSION",
    "Event",
    "SessionStarted",
    "Transcript",
    "Frame",
    "Cue",
    "Segment",
    "Video",
    "Status",
    "Error",
    "SessionEnded",
]

SCHEMA_VERSION = 1


def _round(x: Any) -> Any:
    """Round floats to microseconds of media time so JSON stays short."""
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


@dataclass
class Event:
    """Base of all events: `type`, `session`, schema version `v`."""

    type: ClassVar[str] = "event"
    session: str

    @property
    def critical(self) -> bool:
        """True if a slow subscriber must still receive this event."""
        return True

    def to_dict(self) -> dict[str, Any]:
        body = {k: v for k, v in asdict(self).items() if v is not None}
        return _round({"v": SCHEMA_VERSION, "type": self.type, **body})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass
class SessionStarted(Event):
    type: ClassVar[str] = "session.started"
    profile: str = "lite"
    models: dict[str, Any] = field(default_factory=dict)
    analysis_hz: float = 10.0
    context: str | None = None


@dataclass
class Transcript(Event):
    """An ASR update. `final` marks newly committed words; otherwise the tentative tail."""

    type: ClassVar[str] = "transcript"
    t0: float = 0.0
    t1: float = 0.0
    text: str = ""
    words: list[dict[str, Any]] = field(default_factory=list)
    final: bool = False

    @property
    def critical(self) -> bool:
        return self.final


@dataclass
class Frame(Event):
    """One analysis tick: frame-level A/H probability at media time `t`."""

    type: ClassVar[str] = "frame"
    t: float = 0.0
    p: float = 0.0
    evidence: str = "text"  # "text": words; "media": face/voice only (full); "prior": neither
    modalities: dict[str, bool] = field(default_factory=dict)
    words: int = 0
    video_t: float | None = None  # media time of the video frame analysed by this tick
    asr_t: float | None = None  # media time of the newest ASR step whose words p includes
    lags: dict[str, float] = field(default_factory=dict)  # seconds per stage, see README

    @property
    def critical(self) -> bool:
        return False


@dataclass
class Cue(Event):
    type: ClassVar[str] = "cue"
    t0: float = 0.0
    t1: float = 0.0
    cue: str = ""
    modality: str = ""
    strength: float = 0.0
    detail: str | None = None


@dataclass
class Segment(Event):
    type: ClassVar[str] = "segment"
    t0: float = 0.0
    t1: float = 0.0
    peak: float = 0.0


@dataclass
class Video(Event):
    """Video-level (session-level) decision, running or final."""

    type: ClassVar[str] = "video"
    t: float = 0.0
    p: float = 0.0
    label: int = 0
    threshold: float = 0.5
    method: str = "last"
    evidence: str = "text"
    final: bool = False

    @property
    def critical(self) -> bool:
        return self.final


@dataclass
class Status(Event):
    type: ClassVar[str] = "status"
    t: float = 0.0
    lags: dict[str, float] = field(default_factory=dict)
    dropped_video_frames: int = 0
    received_video_frames: int = 0
    rtf: float | None = None
    asr_skipped: int = 0  # ASR hops a live session skipped to keep up (0: none)
    message: str | None = None

    @property
    def critical(self) -> bool:
        return False


@dataclass
class Error(Event):
    type: ClassVar[str] = "error"
    code: str = "error"
    message: str = ""


@dataclass
class SessionEnded(Event):
    type: ClassVar[str] = "session.ended"
    duration: float = 0.0
    reason: str = "ended"
    decision: dict[str, Any] | None = None
