"""Ingest: decoded audio/video frames (from aiortc tracks or files) into a session.

`AudioIngest` resamples any audio frame to 16 kHz mono float32 with
`av.AudioResampler` (the one resampler of the project) and writes it on the
media timeline; `VideoIngest` hands frames to the session's latest-frame
slot. `drain_track` reads an aiortc track until it ends, always, so aiortc's
unbounded internal queues never grow.

Bad input stops here, as an `error` event at most, never an exception in the
session: audio samples that are not finite are zeroed and clipped to [-1, 1];
video frames beyond `MediaLimits.max_fps` (of media time) are dropped and
counted with the session's dropped video frames; frames larger than
``max_width`` x ``max_height`` are scaled down (aspect kept) before analysis;
frames smaller than `MIN_VIDEO_SIDE` are refused. Timestamps that jump
backwards, or forwards by more than ``max_gap_s``, re-base the track so it
continues right after its last frame (a bounded timeline, an `error` event
with code ``pts_jump``); smaller forward jumps are kept as gaps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from stream.buffers import VideoFrame
from stream.clock import TrackClock

if TYPE_CHECKING:
    from stream.record import SessionRecorder
    from stream.session import Session

__all__ = ["AudioIngest", "MediaLimits", "VideoIngest", "drain_track"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# A pts jump larger than this is treated as a gap (filled with silence) rather than jitter.
GAP_TOLERANCE_S = 0.1
# Audio sample rates accepted (WebRTC uses 8-48 kHz; files up to 192 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000
# Video frames with a side shorter than this carry no face and are refused.
MIN_VIDEO_SIDE = 8
# `error` events per track for timestamp jumps (further jumps are only counted and logged).
MAX_JUMP_REPORTS = 3


@dataclass(frozen=True)
class MediaLimits:
    """Per-track input limits (see README, Configuration)."""

    max_width: int = 1920
    max_height: int = 1080
    max_fps: float = 60.0
    max_gap_s: float = 10.0  # larger forward pts jumps are re-based, not filled


class _Timeline:
    """Keeps one track's media times monotonic with bounded gaps (re-basing on jumps)."""

    def __init__(self, session: Session, kind: str, max_gap_s: float) -> None:
        self.session = session
        self.kind = kind
        self.max_gap_s = max_gap_s
        self.offset = 0.0
        self.jumps = 0

    def place(self, t: float, expected: float | None) -> float:
        """Session media time of a frame at track time ``t``, next expected at ``expected``."""
        t += self.offset
        if expected is None:
            return t
        jump = t - expected
        if jump < -GAP_TOLERANCE_S or jump > self.max_gap_s:
            self.offset -= jump
            self.jumps += 1
            if self.jumps <= MAX_JUMP_REPORTS:
                way = "backwards" if jump < 0 else "forwards"
                self.session.report_error(
                    "pts_jump",
                    f"{self.kind} timestamps jumped {way} by {abs(jump):.3f} s; "
                    "the track continues after its last frame",
                )
            return expected
        return t


class AudioIngest:
    """Resamples audio frames to 16 kHz mono and writes them to the session."""

    def __init__(
        self,
        session: Session,
        limits: MediaLimits | None = None,
        recorder: SessionRecorder | None = None,
    ) -> None:
        self.session = session
        self.limits = limits or MediaLimits()
        self.recorder = recorder
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._timeline = _Timeline(session, "audio", self.limits.max_gap_s)
        self._next_t: float | None = None  # media time right after the last input sample
        self._shape: tuple[str, str, int] | None = None  # input format, layout, rate
        self.frames = 0

    def push(self, frame: av.AudioFrame, t: float | None) -> None:
        """Write one decoded audio frame that starts at media time ``t``."""
        self.frames += 1
        if frame.samples == 0:
            return
        if not MIN_SAMPLE_RATE <= (frame.sample_rate or 0) <= MAX_SAMPLE_RATE:
            # e.g. 1 Hz would make 960 samples 16 minutes of audio
            raise ValueError(f"unsupported sample rate {frame.sample_rate} Hz")
        if t is None:
            t = self._next_t or 0.0
        else:
            t = self._timeline.place(t, self._next_t)
        jump = None
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._shape:  # a resampler takes one input format; a new one for a change
            self._shape = shape
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        if self._next_t is not None and abs(t - self._next_t) > GAP_TOLERANCE_S:
            jump = t  # a real discontinuity: place these samples at their own time
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        if self._next_t is None:
            jump = t
        self._next_t = t + frame.samples / float(frame.sample_rate)
        frame.pts = None  # the resampler must not re-time frames; we place them ourselves
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        samples = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        samples = np.clip(np.nan_to_num(samples.astype(np.float32, copy=False)), -1.0, 1.0)
        self.session.push_audio(samples, jump)
        if self.recorder is not None:
            self.recorder.audio(samples, jump)


class VideoIngest:
    """Puts decoded video frames into the session's latest-frame slot, within the limits."""

    def __init__(self, session: Session, limits: MediaLimits | None = None) -> None:
        self.session = session
        self.limits = limits or MediaLimits()
        self._timeline = _Timeline(session, "video", self.limits.max_gap_s)
        self._last_t: float | None = None
        self._credit = 1.0  # frames allowed now by the fps limit (leaky bucket, media time)
        self._bucket_t: float | None = None  # media time the credit was last updated at
        self.frames = 0
        self.over_fps = 0  # dropped: above max_fps
        self.refused = 0  # dropped: too small to analyse
        self.scaled = 0  # scaled down: above max_width x max_height

    def push(self, frame: av.VideoFrame, t: float | None) -> None:
        """Offer one decoded video frame at media time ``t`` (undecoded pixels stay lazy)."""
        self.frames += 1
        if t is None:
            return
        width, height = int(frame.width), int(frame.height)
        if width < MIN_VIDEO_SIDE or height < MIN_VIDEO_SIDE:
            self.refused += 1
            self.session.slot.count_dropped()
            if self.refused == 1:
                self.session.report_error(
                    "bad_media", f"video frames of {width}x{height} refused (too small)"
                )
            return
        expected = None if self._last_t is None else self._last_t + 1.0 / self.limits.max_fps
        t = self._timeline.place(t, expected)
        if self._bucket_t is not None:
            gained = max(0.0, t - self._bucket_t) * self.limits.max_fps
            self._credit = min(2.0, self._credit + gained)  # a little jitter is allowed
        self._bucket_t = t if self._bucket_t is None else max(t, self._bucket_t)
        if self._credit < 1.0:
            self.over_fps += 1
            self.session.slot.count_dropped()
            return
        self._credit -= 1.0
        self._last_t = max(t, self._last_t or 0.0)
        scale = min(1.0, self.limits.max_width / width, self.limits.max_height / height)
        if scale < 1.0:
            # The analysis converts at this size (lazily, in the executor).
            self.scaled += 1
            width = max(2, int(width * scale) // 2 * 2)
            height = max(2, int(height * scale) // 2 * 2)
        self.session.push_video(VideoFrame(t=t, image=frame, width=width, height=height))


async def drain_track(
    track: Any,
    kind: str,
    session: Session,
    limits: MediaLimits | None = None,
    recorder: SessionRecorder | None = None,
) -> None:
    """Read an aiortc track to its end, feeding the session; never leaves frames queued."""
    from aiortc.mediastreams import MediaStreamError

    clock = TrackClock(session.clock)
    ingest: AudioIngest | VideoIngest = (
        AudioIngest(session, limits, recorder) if kind == "audio" else VideoIngest(session, limits)
    )
    session.add_track(kind)
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            except Exception as exc:  # the transport or decoder failed: the track is over
                log.warning("session %s: %s track failed", session.id, kind, exc_info=True)
                session.report_error("bad_media", f"{kind} track failed: {type(exc).__name__}")
                break
            try:
                ingest.push(frame, clock.media_time(frame.pts, frame.time_base))
            except Exception as exc:  # a corrupt frame must not end the session
                session.report_error("bad_media", f"{kind} frame rejected: {exc}")
    finally:
        session.track_ended(kind)
        extra = ""
        if isinstance(ingest, VideoIngest):
            extra = (
                f" ({ingest.over_fps} over max fps, {ingest.refused} refused, "
                f"{ingest.scaled} scaled down)"
            )
        log.info(
            "session %s: %s track ended after %d frames%s", session.id, kind, ingest.frames, extra
        )
