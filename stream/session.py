"""One analysis session: buffers, incremental ASR, analysis ticks and events, on media time.

The same `Session` serves a live WebRTC call and a file (`ahstream analyze`):
inputs are placed on the media timeline, and a single worker runs the ASR
steps and analysis ticks at fixed media times (ASR every ``asr.hop_s``,
ticks every ``1 / analysis_hz``), in order, with all inference in an
executor. Because the schedule depends on media time only, a live run and an
offline run of the same media give the same transcript and decisions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np

from models.profile import Models
from stream.aggregate import SegmentTracker, VideoAggregator
from stream.analysis import Analyzer, join_words
from stream.asr import ASRUpdate, IncrementalASR
from stream.buffers import AudioRing, LatestFrameSlot, VideoFrame
from stream.clock import SessionClock
from stream.events import (
    Cue,
    Error,
    Event,
    Frame,
    Segment,
    SessionEnded,
    SessionStarted,
    Status,
    Transcript,
    Video,
)
from stream.publisher import Publisher
from stream.vad import VadTimeline

__all__ = ["Session"]

log = logging.getLogger(__name__)

MAX_ERROR_EVENTS = 20  # per session, so a stream of corrupt frames cannot flood subscribers


def _words_json(words: list[Any]) -> list[dict[str, Any]]:
    return [{"w": w.w.strip(), "t0": w.t0, "t1": w.t1} for w in words]


class Session:
    """A session's state and its media-time scheduled worker."""

    def __init__(
        self,
        session_id: str,
        models: Models,
        publisher: Publisher | None = None,
        *,
        analysis_hz: float = 10.0,
        context: str | None = None,
        video_every_s: float = 1.0,
        status_every_s: float = 5.0,
        executor: Executor | None = None,
    ) -> None:
        if not 1.0 <= analysis_hz <= 50.0:
            raise ValueError("analysis_hz must be between 1 and 50")
        self.id = session_id
        self.models = models
        self.publisher = publisher or Publisher(session_id)
        self.analysis_hz = analysis_hz
        self.context = context or None
        self.executor = executor
        self.clock = SessionClock()
        self.ring = AudioRing()
        self.vad = VadTimeline()
        self.asr = IncrementalASR(models.whisper, self.ring, self.vad)
        self.slot = LatestFrameSlot(interval_s=1.0 / analysis_hz)
        self.analyzer = Analyzer(models, self.context, self.ring, self.vad)
        self.aggregator = VideoAggregator(
            self.analyzer.threshold, self.analyzer.method, analysis_hz
        )
        self.segments = SegmentTracker.around(self.analyzer.threshold, hz=analysis_hz)
        self._video_every = video_every_s
        self._status_every = status_every_s
        self._tracks: dict[str, bool] = {}  # kind -> ended
        self._video_end = 0.0
        self._last_video_t: float | None = None
        self._last_face_t: float | None = None
        self._input_closed = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tentative: list[Any] = []
        self._new_committed: list[Any] = []  # committed since the last tick
        self._utterance_final = False
        self._evidence = "prior"
        self._errors = 0
        self._asr_compute = 0.0
        self.processed_t = 0.0
        self.decision: dict[str, Any] | None = None
        self.end_reason = "ended"
        self.wall_started = time.monotonic()

    # ---- inputs (event loop) -------------------------------------------------

    def add_track(self, kind: str) -> None:
        """Declare an incoming track ("audio" or "video")."""
        self._tracks[kind] = False
        self._wake.set()

    def track_ended(self, kind: str) -> None:
        """A track has no more frames; the session ends when all have ended."""
        self._tracks[kind] = True
        self._wake.set()
        if self._tracks and all(self._tracks.values()):
            self._input_closed = True

    def push_audio(self, samples: np.ndarray, t: float | None) -> None:
        """Append 16 kHz mono float32 samples starting at media time ``t`` (None: contiguous)."""
        i0 = self.ring.end_index
        written = self.ring.write(samples, t)
        gap = self.ring.end_index - i0 - written
        if gap > 0:
            self.vad.push(np.zeros(gap, dtype=np.float32))
        if written:
            self.vad.push(np.asarray(samples, dtype=np.float32)[-written:])
        self.clock.arrived(self.ring.end_time)
        self._wake.set()

    def push_video(self, frame: VideoFrame) -> None:
        """Offer a video frame (only the newest is kept)."""
        self.slot.put(frame)
        self._video_end = max(self._video_end, frame.t)
        self.clock.arrived(frame.t)
        self._wake.set()

    def report_error(self, code: str, message: str) -> None:
        """Publish an `error` event (bounded per session) without ending the session."""
        self._errors += 1
        log.warning("session %s: %s (%s)", self.id, code, message)
        if self._errors <= MAX_ERROR_EVENTS:
            self._publish(Error(self.id, code=code, message=message))

    # ---- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Publish `session.started` and start the worker."""
        self._publish(
            SessionStarted(
                self.id,
                profile=self.models.profile,
                models=self.models.describe(),
                analysis_hz=self.analysis_hz,
                context=self.context,
            )
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"session-{self.id}")

    async def finish(self, reason: str | None = None) -> None:
        """Close the input and wait until the final events are published."""
        if reason is not None and self.end_reason == "ended":
            self.end_reason = reason
        self._input_closed = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def wait_caught_up(self, max_ahead_s: float = 2.0) -> None:
        """Wait while the worker is more than ``max_ahead_s`` of media behind the input."""
        while (
            self._task is not None
            and not self._task.done()
            and self.media_end - self.processed_t > max_ahead_s
        ):
            self._progress.clear()
            await self._progress.wait()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    @property
    def media_end(self) -> float:
        """Newest media time received from any track."""
        return max(self.ring.end_time, self._video_end)

    # ---- worker --------------------------------------------------------------------

    def _reached(self, t: float) -> bool:
        ends = {"audio": self.ring.end_time, "video": self._video_end}
        active = [k for k, ended in self._tracks.items() if not ended]
        if active:
            return all(ends[k] >= t - 1e-9 for k in active)
        return any(ends[k] >= t - 1e-9 for k in self._tracks)

    async def _wait_media(self, t: float) -> bool:
        while not self._reached(t):
            if self._input_closed:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True

    async def _infer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run(self) -> None:
        hop_ms = int(round(self.asr.hop_s * 1000))
        tick_ms = int(round(1000 / self.analysis_hz))
        next_asr, next_tick = hop_ms, tick_ms
        last_tick = 0.0
        try:
            while True:
                t_ms = min(next_asr, next_tick)
                t = t_ms / 1000.0
                if not await self._wait_media(t):
                    break
                if t_ms == next_asr:
                    if "audio" in self._tracks and self.ring.end_time >= t - 1e-9:
                        started = time.perf_counter()
                        update = await self._infer(self.asr.step, t)
                        self._asr_compute += time.perf_counter() - started
                        self._on_asr(update)
                    next_asr += hop_ms
                if t_ms == next_tick:
                    await self._tick(t)
                    last_tick = t
                    next_tick += tick_ms
                self.processed_t = t
                self._progress.set()
            end = self.media_end
            if "audio" in self._tracks:
                self._on_asr(await self._infer(self.asr.flush, end))
            if end > last_tick + 1e-6 or self._new_committed:
                await self._tick(max(end, last_tick))
            self._publish_cues(await self._infer(self.analyzer.flush))
        except Exception as exc:  # one session's failure must not reach the others
            log.exception("session %s: worker failed", self.id)
            self.report_error("internal", f"analysis failed: {type(exc).__name__}: {exc}")
        finally:
            self._finalize()
            self._progress.set()

    def _on_asr(self, update: ASRUpdate | None) -> None:
        if update is None:
            return
        self._new_committed.extend(update.committed)
        self._utterance_final |= update.final
        if update.committed:
            self._publish_transcript(update.committed, final=True)
        if update.tentative != self._tentative or update.committed:
            self._tentative = list(update.tentative)
            if self._tentative:
                self._publish_transcript(self._tentative, final=False)

    def _publish_transcript(self, words: list[Any], final: bool) -> None:
        self._publish(
            Transcript(
                self.id,
                t0=words[0].t0,
                t1=words[-1].t1,
                text=join_words(words),
                words=_words_json(words),
                final=final,
            )
        )

    async def _tick(self, t: float) -> None:
        committed, self._new_committed = self._new_committed, []
        final, self._utterance_final = self._utterance_final, False
        frame = self.slot.take_until(t)
        if frame is not None:
            self._last_video_t = frame.t
        result = await self._infer(
            self.analyzer.tick, t, committed, final, list(self._tentative), frame
        )
        p, evidence = result.p, result.evidence
        self._evidence = evidence
        if result.face is not None:
            self._last_face_t = t
        self._publish_cues(result.cues)
        dt = 1.0 / self.analysis_hz
        has_audio = "audio" in self._tracks and self.ring.end_time >= t - dt
        lag = self.clock.lag(t)
        self._publish(
            Frame(
                self.id,
                t=t,
                p=p,
                evidence=evidence,
                modalities={
                    "audio": has_audio,
                    "speech": has_audio and self.vad.speech_fraction(t - dt, t) > 0,
                    "video": self._last_video_t is not None and t - self._last_video_t <= 1.0,
                    "face": self._last_face_t is not None and t - self._last_face_t <= 0.5,
                    "text": result.n_words > 0,
                },
                words=result.n_words,
                lags={} if lag is None else {"tick": lag},
            )
        )
        self.aggregator.add(p)
        self._publish_segment(self.segments.update(t, p, evidence == "text"))
        n = self.aggregator.frames
        per_video = max(1, int(round(self._video_every * self.analysis_hz)))
        if n % per_video == 0:
            self._publish(self._video_event(t, final=False))
        per_status = max(1, int(round(self._status_every * self.analysis_hz)))
        if n % per_status == 0:
            self._publish(
                Status(
                    self.id,
                    t=t,
                    lags={} if lag is None else {"tick": lag},
                    dropped_video_frames=self.slot.dropped,
                    received_video_frames=self.slot.received,
                    rtf=self._asr_compute / t if t > 0 else None,
                )
            )

    def _publish_segment(self, span: Any) -> None:
        if span is not None:
            self._publish(Segment(self.id, t0=span.t0, t1=span.t1, peak=span.peak))

    def _publish_cues(self, hits: list[Any]) -> None:
        for hit in hits:
            self._publish(Cue(self.id, **hit.to_event()))

    def _video_event(self, t: float, final: bool) -> Video:
        agg = self.aggregator
        return Video(
            self.id,
            t=t,
            p=agg.p if agg.p is not None else 0.0,
            label=agg.label,
            threshold=agg.threshold,
            method=agg.method,
            evidence=self._evidence,
            final=final,
        )

    def _finalize(self) -> None:
        end = self.media_end
        self._publish_segment(self.segments.flush())
        if self.aggregator.frames:
            video = self._video_event(end, final=True)
            self._publish(video)
            self.decision = {
                "p": video.p,
                "label": video.label,
                "threshold": video.threshold,
                "method": video.method,
            }
        self._publish(
            SessionEnded(self.id, duration=end, reason=self.end_reason, decision=self.decision)
        )

    def _publish(self, event: Event) -> None:
        self.publisher.publish(event)
