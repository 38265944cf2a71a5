"""Ingest: decoded audio/video frames (from aiortc tracks or files) into a session.

`AudioIngest` resamples any audio frame to 16 kHz mono float32 with
`av.AudioResampler` (the one resampler of the project) and writes it on the
media timeline; `VideoIngest` hands frames to the session's latest-frame
slot. `drain_track` reads an aiortc track until it ends, always, so aiortc's
unbounded internal queues never grow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from stream.buffers import VideoFrame
from stream.clock import TrackClock

if TYPE_CHECKING:
    from stream.session import Session

__all__ = ["AudioIngest", "VideoIngest", "drain_track"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# A pts jump larger than this is treated as a gap (filled with silence) rather than jitter.
GAP_TOLERANCE_S = 0.1


class AudioIngest:
    """Resamples audio frames to 16 kHz mono and writes them to the session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._next_t: float | None = None  # media time right after the last input sample
        self.frames = 0

    def push(self, frame: av.AudioFrame, t: float | None) -> None:
        """Write one decoded audio frame that starts at media time ``t``."""
        self.frames += 1
        if t is None:
            t = self._next_t or 0.0
        if frame.samples == 0:
            return
        jump = None
        if self._next_t is not None and abs(t - self._next_t) > GAP_TOLERANCE_S:
            jump = t  # a real discontinuity: place these samples at their own time
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        if self._next_t is None:
            jump = t
        self._next_t = t + frame.samples / float(frame.sample_rate)
        frame.pts = None  # the resampler must not re-time frames; we place them ourselves
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        samples = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        self.session.push_audio(samples.astype(np.float32, copy=False), jump)


class VideoIngest:
    """Puts decoded video frames into the session's latest-frame slot."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.frames = 0

    def push(self, frame: av.VideoFrame, t: float | None) -> None:
        """Offer one decoded video frame at media time ``t`` (undecoded pixels stay lazy)."""
        self.frames += 1
        if t is None:
            return
        self.session.push_video(
            VideoFrame(t=t, image=frame, width=frame.width, height=frame.height)
        )


async def drain_track(track: Any, kind: str, session: Session) -> None:
    """Read an aiortc track to its end, feeding the session; never leaves frames queued."""
    from aiortc.mediastreams import MediaStreamError

    clock = TrackClock(session.clock)
    ingest: AudioIngest | VideoIngest = (
        AudioIngest(session) if kind == "audio" else VideoIngest(session)
    )
    session.add_track(kind)
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            try:
                ingest.push(frame, clock.media_time(frame.pts, frame.time_base))
            except Exception as exc:  # a corrupt frame must not end the session
                session.report_error("bad_media", f"{kind} frame rejected: {exc}")
    finally:
        session.track_ended(kind)
        log.info("session %s: %s track ended after %d frames", session.id, kind, ingest.frames)
