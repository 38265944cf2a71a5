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
frames smaller than `MIN_VIDEO_SIDE` are refused.

Every audio frame goes at its timestamp (they count samples): lost packets,
which aiortc never retransmits for audio, leave silence, not a shorter
timeline. Timestamps that jump backwards, or forwards by more than
``max_gap_s`` while the track's frames did not arrive that much later (a
sender that restarted its clock), re-base the track so it continues right
after its newest frame (a bounded timeline, an `error` event with code
``pts_jump``); other forward jumps (a camera paused for a minute) are kept as
gaps. A file's frames have no arrival: its forward jumps are kept up to
`FILE_MAX_GAP_S` (an hour).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from stream.buffers import VideoFrame
from stream.clock import TrackClock
from stream.redaction import log_failure

if TYPE_CHECKING:
    from stream.record import SessionRecorder
    from stream.session import Session

__all__ = ["AudioIngest", "MediaLimits", "VideoIngest", "drain_track", "push_frame", "upright"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# An audio frame this close to where the previous one ended continues it (timestamp
# rounding, e.g. of a file's 1 ms time base).
AUDIO_SLACK_S = 0.001
# Up to this far off, it continues it too (timestamps from a capture clock jitter), unless
# it is off by whole frames: packets were lost. Further, it goes at its own time. Appending
# never drifts: the offset is measured from where the audio written so far ends.
AUDIO_JITTER_S = 0.03
# A file's frames have no arrival time to check a forward jump against: its container
# timestamps are the truth, gaps included (a camera or microphone off in a recorded call),
# up to this long. A longer jump is taken for a broken timestamp and re-based (kept, it
# would make ticks and frame events for all of it).
FILE_MAX_GAP_S = 3600.0
# A track stepping back less than this is jitter; further back, it is re-based.
BACKWARD_SLACK_S = 0.1
# A forward jump beyond ``max_gap_s`` is kept when the arrival clock agrees with it
# within the larger of these (a paused camera or microphone); otherwise it is re-based.
ARRIVAL_SLACK_S, ARRIVAL_SLACK_FRACTION = 1.0, 0.2
# A live frame's media time may exceed the wall time since the session's first media
# arrived (its media time 0) by at most this much, plus this fraction of that time (sender
# clocks drift by < 0.01 %). More is a sender whose clock runs fast, and the frame is
# re-based as a timestamp jump; else a camera stepping 9.9 s per frame makes 250 s of media
# (2,500 ticks) per second. The slack is a backlog's worth: when the first frames arrive
# late (a stalled receiver) and the rest of the backlog in a burst, those frames are ahead
# of the late origin by the length of the stall, and keep their times.
AHEAD_SLACK_S, AHEAD_DRIFT = 10.0, 0.01
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
    max_gap_s: float = 10.0  # larger forward pts jumps are re-based unless arrival agrees
    # (live tracks; a file's are kept up to FILE_MAX_GAP_S)


class _Timeline:
    """Keeps one track's media times monotonic, with gaps only where time really passed."""

    def __init__(self, session: Session, kind: str, max_gap_s: float) -> None:
        self.session = session
        self.kind = kind
        self.max_gap_s = max_gap_s
        self.offset = 0.0
        self.jumps = 0
        self._wall: float | None = None  # arrival of the track's previous frame

    def place(
        self,
        t: float,
        expected: float | None,
        resume: float | None = None,
        wall: float | None = None,
    ) -> float:
        """Session media time of a frame at track time ``t``.

        ``expected``: where the previous frame says this one is (None for the first);
        ``resume``: where a re-based frame goes (default ``expected``); ``wall``: the
        frame's arrival (monotonic s), None when unknown (a file).
        """
        t += self.offset
        elapsed = None if wall is None or self._wall is None else wall - self._wall
        if wall is not None:
            self._wall = wall
        if expected is None:
            return t
        jump = t - expected
        max_gap = self.max_gap_s if wall is not None else max(self.max_gap_s, FILE_MAX_GAP_S)
        plausible = -BACKWARD_SLACK_S <= jump <= max_gap or _arrival_agrees(jump, elapsed)
        if plausible and not self._runs_ahead(t, wall):
            return t
        target = expected if resume is None else resume
        if plausible and target >= t - 1e-6:
            return t  # ahead, but contiguous with the track: re-basing would not move it
        self.offset += target - t
        self.jumps += 1
        if self.jumps <= MAX_JUMP_REPORTS:
            way = "backwards" if jump < 0 else "forwards"
            self.session.report_error(
                "pts_jump",
                f"{self.kind} timestamps jumped {way} by {abs(jump):.3f} s; "
                "the track continues after its last frame",
            )
        return target

    def _runs_ahead(self, t: float, wall: float | None) -> bool:
        """Whether media time ``t`` of a live frame that arrived at ``wall`` is later than
        the wall time since the session's media began allows (`AHEAD_SLACK_S`)."""
        origin = self.session.clock.origin  # set by the session's first media (TrackClock)
        if wall is None or origin is None:
            return False
        passed = wall - origin
        return t > passed + AHEAD_SLACK_S + AHEAD_DRIFT * max(0.0, passed)


def _arrival_agrees(jump: float, elapsed: float | None) -> bool:
    """Whether a forward ``jump`` of the timestamps is about the ``elapsed`` arrival time:
    a paused sender resuming (a genuine gap), not a sender restarting its clock."""
    if elapsed is None or jump <= 0:
        return False
    return abs(jump - elapsed) <= max(ARRIVAL_SLACK_S, ARRIVAL_SLACK_FRACTION * elapsed)


def _continues(offset: float, frame: av.AudioFrame) -> bool:
    """Whether an audio frame ``offset`` s from where the audio so far ends continues it."""
    if abs(offset) <= AUDIO_SLACK_S:
        return True
    if abs(offset) > AUDIO_JITTER_S:
        return False
    duration = frame.samples / float(frame.sample_rate)
    frames = round(offset / duration)
    return not (frames >= 1 and abs(offset - frames * duration) <= AUDIO_SLACK_S)


def _resampler() -> av.AudioResampler:
    """To 16 kHz planar float, every channel kept (`AudioIngest` averages them)."""
    return av.AudioResampler(format="fltp", layout=None, rate=SAMPLE_RATE)


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
        self._resampler = _resampler()
        self._timeline = _Timeline(session, "audio", self.limits.max_gap_s)
        self._next_t: float | None = None  # media time right after the newest input sample
        self._shape: tuple[str, str, int] | None = None  # input format, layout, rate
        self.frames = 0

    def push(self, frame: av.AudioFrame, t: float | None, wall: float | None = None) -> None:
        """Write one decoded audio frame that starts at media time ``t`` (``wall``: its
        arrival, monotonic s, for a live track)."""
        self.frames += 1
        if frame.samples == 0:
            return
        if not MIN_SAMPLE_RATE <= (frame.sample_rate or 0) <= MAX_SAMPLE_RATE:
            # e.g. 1 Hz would make 960 samples 16 minutes of audio
            raise ValueError(f"unsupported sample rate {frame.sample_rate} Hz")
        previous = self._next_t
        if t is None:
            t = 0.0 if previous is None else previous
        else:
            t = self._timeline.place(t, previous, wall=wall)
        # Audio timestamps count samples, and aiortc never retransmits audio: a frame whole
        # frames after where the last one ended follows lost packets (or a pause) and goes
        # at its own time; appending it instead would put everything after it early.
        contiguous = previous is not None and _continues(t - previous, frame)
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if shape != self._shape or not contiguous:
            # One resampler per run of contiguous input of one format; the old one's last
            # samples (held for its filter) belong right after the previous frame.
            self._write(self._resampler.resample(None), None)
            self._resampler = _resampler()
            self._shape = shape
        end = (previous if contiguous else t) + frame.samples / float(frame.sample_rate)
        # The ring keeps its newest sample: a frame placed earlier only overlaps it.
        self._next_t = end if previous is None else max(previous, end)
        frame.pts = None  # the resampler must not re-time frames; we place them ourselves
        self._write(self._resampler.resample(frame), None if contiguous else t)

    def _write(self, frames: list[av.AudioFrame], t: float | None) -> None:
        if not frames:
            return
        # The channels' mean: libswresample's own downmix adds them at -3 dB each, +3 dB
        # for a voice in both (aiortc decodes every Opus call to stereo), clipping loud ones.
        samples = np.concatenate([f.to_ndarray().mean(axis=0) for f in frames])
        samples = samples.astype(np.float32, copy=False)
        # Non-finite samples are zeroed (an infinity is no loud sample), the rest clipped.
        samples = np.clip(np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
        self.session.push_audio(samples, t)
        if self.recorder is not None:
            self.recorder.audio(samples, t)


class VideoIngest:
    """Puts decoded video frames into the session's latest-frame slot, within the limits."""

    def __init__(self, session: Session, limits: MediaLimits | None = None) -> None:
        self.session = session
        self.limits = limits or MediaLimits()
        self._timeline = _Timeline(session, "video", self.limits.max_gap_s)
        # media time of the newest frame placed (tests/test_fuzz.py paces its feeder on it)
        self._last_t: float | None = None
        self._credit = 1.0  # frames allowed now by the fps limit (leaky bucket, media time)
        self._bucket_t: float | None = None  # media time the credit was last updated at
        self.frames = 0
        self.over_fps = 0  # dropped: above max_fps
        self.refused = 0  # dropped: too small to analyse
        self.scaled = 0  # scaled down: above max_width x max_height

    def push(self, frame: av.VideoFrame, t: float | None, wall: float | None = None) -> None:
        """Offer one decoded video frame at media time ``t`` (``wall``: its arrival,
        monotonic s, for a live track); undecoded pixels stay lazy."""
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
        # Jumps are measured from the newest frame itself: frames closer together than
        # 1 / max_fps are the fps limit's to drop, not a timestamp jump.
        newest = self._last_t
        resume = None if newest is None else newest + 1.0 / self.limits.max_fps
        t = self._timeline.place(t, newest, resume, wall)
        self._last_t = t if newest is None else max(t, newest)
        if self._bucket_t is not None:
            gained = max(0.0, t - self._bucket_t) * self.limits.max_fps
            self._credit = min(2.0, self._credit + gained)  # a little jitter is allowed
        self._bucket_t = t if self._bucket_t is None else max(t, self._bucket_t)
        if self._credit < 1.0:
            self.over_fps += 1
            self.session.slot.count_dropped()
            return
        self._credit -= 1.0
        scale = min(1.0, self.limits.max_width / width, self.limits.max_height / height)
        if scale < 1.0:
            # The analysis converts at this size (lazily, in the executor).
            self.scaled += 1
            width = max(2, int(width * scale) // 2 * 2)
            height = max(2, int(height * scale) // 2 * 2)
        self.session.push_video(VideoFrame(t=t, image=frame, width=width, height=height))


def upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """Pixels turned as a display rotation says: ``rotation`` degrees counterclockwise
    (PyAV's `VideoFrame.rotation`, FFmpeg's display matrix; multiples of 90 only)."""
    k = int(round(rotation / 90.0)) % 4
    return rgb if k == 0 else np.ascontiguousarray(np.rot90(rgb, k))


def push_frame(
    ingest: AudioIngest | VideoIngest,
    kind: str,
    frame: Any,
    t: float | None,
    wall: float | None = None,
) -> bool:
    """Push one decoded frame (live tracks and files alike); a frame the ingest refuses is
    an `error` event, never the end of the session. False: it was refused."""
    try:
        ingest.push(frame, t, wall)
    except Exception as exc:  # a corrupt frame must not end the session
        ingest.session.report_error("bad_media", f"{kind} frame rejected: {exc}")
        return False
    return True


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
                log_failure(
                    log, exc, "session %s: %s track failed", session.id, kind, level=logging.WARNING
                )
                session.report_error("bad_media", f"{kind} track failed: {type(exc).__name__}")
                break
            wall = session.clock.now()  # its arrival: what a gap in its timestamps is checked by
            try:
                t = clock.media_time(frame.pts, frame.time_base, wall)
            except Exception as exc:
                session.report_error("bad_media", f"{kind} frame rejected: {exc}")
                continue
            push_frame(ingest, kind, frame, t, wall)
    finally:
        session.track_ended(kind)
        extra = ""
        if isinstance(ingest, VideoIngest):
            extra = (
                f" ({ingest.over_fps} over max fps, {ingest.refused} refused, "
                f"{ingest.scaled} scaled down)"
            )
        log.info(
            "session %s: %s track (from %.2f s) ended after %d frames%s",
            session.id,
            kind,
            clock.start,
            ingest.frames,
            extra,
        )
