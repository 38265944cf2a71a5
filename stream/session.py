"""One analysis session: buffers, incremental ASR, analysis ticks and events, on media time.

The same `Session` serves a live WebRTC call and a file (`ahstream analyze`):
inputs are placed on the media timeline and two workers run on a fixed
media-time schedule, all inference in an executor:

- the **ASR worker** steps the incremental ASR every ``asr.hop_s`` once the
  audio has reached that time, and publishes transcript events at once;
- the **tick worker** runs an analysis tick every ``1 / analysis_hz`` once the
  video has reached the tick (the newest frame at or before it, see
  `video_ready`) and the audio has reached ``t - audio_delay_s``. A tick uses the
  words of the ASR steps at or before ``t - text_delay_s`` and the voice up to
  ``t - audio_delay_s``.

So a frame event never waits for a Whisper decode: its latency is the face
and text models on one frame. A file session (``live=False``) makes a tick
wait for the ASR step it needs, so `analyze` is exact: a live run whose ASR
keeps up with ``text_delay_s`` gives the same transcript and decisions as
the offline run of the same media. A live session never waits for the ASR: a
tick uses the ASR steps finished by then, and an ASR worker that has fallen
more than a hop behind skips to the newest audio (counted in
``status.asr_skipped``) rather than lag without bound. An ASR step that fails
is reported (an ``internal`` error) and skipped; the ticks, the final events
and the cleanup always run (see `_asr_step`). So is a failed analysis tick: a
frame whose face analysis fails is left out and the tick goes on, a tick that
fails otherwise is skipped; only ticks that keep failing end the session (see
`_analyse`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from typing import Any

import numpy as np

from models.profile import Models
from stream.aggregate import SegmentTracker, VideoAggregator
from stream.analysis import Analyzer, CueFlushError, TickResult, join_words
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
from stream.redaction import log_failure
from stream.vad import VadTimeline

__all__ = ["Session"]

log = logging.getLogger(__name__)

MAX_ERROR_EVENTS = 20  # per session, so a stream of corrupt frames cannot flood subscribers
TEXT_DELAY_S = 0.8  # a tick at t uses the words of ASR steps at or before t - this
FILE_AHEAD_S = 6.0  # a file is decoded this far ahead of the ticks (ASR and ticks overlap)
TRACK_STALL_S = 2.0  # a track this far behind the other stops holding the ticks back
AUDIO_START_SLACK_S = 0.05  # audio this late is still "from the start" (codec priming)
AUDIO_GAPS_KEPT = 64  # forward jumps of the audio's timestamps remembered (oldest dropped)
AUDIO_DELAY_S = 0.3  # a tick at t uses audio up to t - this (WebRTC audio arrives ~0.1 s late)
ASR_MAX_FAILURES = 3  # ASR steps failing in a row before the ASR stops for the session
# Ticks failing in a row before their video analysis stops (the failures were the frames')
# or the session ends (the ticks failed without video too). A second of ticks at 10 Hz, as
# the ASR's limit spans about a second of hops: a hiccup passes, a broken model does not.
TICK_MAX_FAILURES = 10
# A live tick this long after its media arrived: the status event says the session is
# behind. The analysis rate itself stays: the TCN and the aggregation are trained at it.
BEHIND_S = 1.0


def _words_json(words: list[Any]) -> list[dict[str, Any]]:
    return [{"w": w.w.strip(), "t0": w.t0, "t1": w.t1} for w in words]


def _failed_in(exc: BaseException) -> str:
    """Where ``exc`` was raised: the module and function of its innermost frame."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unknown"
    return f"{tb.tb_frame.f_globals.get('__name__', '?')}.{tb.tb_frame.f_code.co_name}"


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
        asr_executor: Executor | None = None,
        live: bool = False,
        text_delay_s: float = TEXT_DELAY_S,
        audio_delay_s: float = AUDIO_DELAY_S,
        asr_hop_s: float | None = None,
        asr_skip: bool = True,
    ) -> None:
        if not 1.0 <= analysis_hz <= 50.0:
            raise ValueError("analysis_hz must be between 1 and 50")
        if asr_hop_s is not None and not 0.1 <= asr_hop_s <= 5.0:
            raise ValueError("asr_hop_s must be between 0.1 and 5")
        self.id = session_id
        self.models = models
        self.publisher = publisher or Publisher(session_id)
        self.analysis_hz = analysis_hz
        self.context = context or None
        self.executor = executor
        self.asr_executor = asr_executor if asr_executor is not None else executor
        self.live = live
        # A live session whose ASR falls more than a hop behind skips to the newest audio
        # (False: it decodes every hop however late, e.g. to measure the words exactly).
        self.asr_skip = asr_skip
        self.text_delay_s = text_delay_s
        self.audio_delay_s = audio_delay_s
        self.clock = SessionClock()
        self.ring = AudioRing()
        self.vad = VadTimeline()
        hop = {} if asr_hop_s is None else {"hop_s": asr_hop_s}
        self.asr = IncrementalASR(models.whisper, self.ring, self.vad, **hop)
        # Frames waiting for their tick: a live tick runs as its frame arrives (4 s is
        # slack for a slow moment); a file is fed ahead of the ticks (see FILE_AHEAD_S).
        ahead = 4.0 if live else FILE_AHEAD_S + 2.0
        # The lite model analyses the newest frame of each tick; the full profile's face
        # clips take every frame, at most `Models.frame_hz` per second.
        per_s = max(analysis_hz, getattr(models, "frame_hz", None) or analysis_hz)
        self.slot = LatestFrameSlot(interval_s=1.0 / per_s, max_intervals=int(ahead * per_s))
        self.analyzer = Analyzer(models, self.context, self.ring, self.vad)
        self.aggregator = VideoAggregator(
            self.analyzer.threshold, self.analyzer.method, analysis_hz
        )
        self.segments = SegmentTracker.around(self.analyzer.segment_threshold, hz=analysis_hz)
        self._video_every = video_every_s
        self._status_every = status_every_s
        self._tracks: dict[str, bool] = {}  # kind -> ended
        self._video_end = 0.0
        # Where the audio is: its first sample (None: none yet) and the newest forward jumps
        # of its timestamps (filled with silence in the ring), so that a tick's "audio"
        # modality says whether audio covered its time, whenever the tick runs.
        self._audio_start: float | None = None
        self._audio_gaps: deque[tuple[float, float]] = deque(maxlen=AUDIO_GAPS_KEPT)
        self._last_video_t: float | None = None
        self._last_face_t: float | None = None
        self._input_closed = False
        self._feeder_waits = False  # a file feeder waits for the ticks (wait_caught_up)
        self._wake_asr = asyncio.Event()
        self._wake_tick = asyncio.Event()
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._asr_task: asyncio.Task[None] | None = None
        self._warming: asyncio.Future[None] | None = None  # the face graph made ahead
        self._asr_updates: deque[tuple[float, ASRUpdate]] = deque()  # not yet seen by a tick
        self._asr_done_t = 0.0  # media time of the newest finished ASR step
        self._asr_finished = False
        self._asr_used_t: float | None = None  # newest ASR step the ticks have taken words from
        self.asr_skipped = 0  # ASR hops a live session skipped to catch up
        self._asr_failures = 0  # ASR steps failed in a row (ASR_MAX_FAILURES: ASR stops)
        self._asr_stopped = False  # the ASR stopped after failures: no more words
        # Analysis ticks failed in a row: "video" (the tick went on without its frame) and
        # "tick" (skipped); see `_analyse`.
        self._tick_failures = {"video": 0, "tick": 0}
        self._analyse_video = True  # False once video analysis stopped after failures
        self._analysis_stopped = False  # ticks kept failing: the session ends
        self._tentative: list[Any] = []  # the ASR's current tentative tail (published)
        self._tick_tentative: list[Any] = []  # the tail the ticks see (as of ASR step asr_t)
        self._expects_face = getattr(models, "expression", None) is not None
        self._frame_period = 0.0  # running estimate of the video frame interval
        self._frame_arrivals: deque[tuple[float, float]] = deque(maxlen=128)  # (t, wall)
        self._evidence = "prior"
        self._errors = 0
        self._asr_compute = 0.0
        self.processed_t = 0.0
        self.decision: dict[str, Any] | None = None
        self.end_reason = "ended"
        self.wall_started = time.monotonic()

    # ---- inputs (event loop) -------------------------------------------------

    def _notify(self) -> None:
        self._wake_asr.set()
        self._wake_tick.set()

    def add_track(self, kind: str) -> None:
        """Declare an incoming track ("audio" or "video")."""
        self._tracks[kind] = False
        if kind == "video" and self._expects_face:
            # Have the face graph ready before the first frame (it takes ~1 s to build).
            self._warming = asyncio.get_running_loop().run_in_executor(
                self.executor, self._warm_face
            )
            self._expects_face = False
        self._notify()

    def _warm_face(self) -> None:
        try:
            self.analyzer.warm_face()
        except Exception as exc:  # the first tick with a frame retries and reports it
            log_failure(log, exc, "session %s: face analyzer not ready", self.id)

    def track_ended(self, kind: str) -> None:
        """A track has no more frames; the session ends when all have ended."""
        self._tracks[kind] = True
        if self._tracks and all(self._tracks.values()):
            self._input_closed = True
        self._notify()

    def push_audio(self, samples: np.ndarray, t: float | None) -> None:
        """Append 16 kHz mono float32 samples starting at media time ``t`` (None: contiguous)."""
        i0 = self.ring.end_index
        written = self.ring.write(samples, t)
        gap = self.ring.end_index - i0 - written
        if gap > 0:
            self.vad.push_silence(gap)
            rate = self.ring.sample_rate
            if self._audio_start is not None:
                self._audio_gaps.append((i0 / rate, (i0 + gap) / rate))
        if written and self._audio_start is None:
            self._audio_start = (self.ring.end_index - written) / self.ring.sample_rate
        if written:
            self.vad.push(np.asarray(samples, dtype=np.float32)[-written:])
        self.clock.arrived(self.ring.end_time)
        self._notify()

    def push_video(self, frame: VideoFrame) -> None:
        """Offer a video frame (only the newest of each analysis interval is kept)."""
        if frame.t > self._video_end and self.slot.received:
            step = min(frame.t - self._video_end, 1.0)
            self._frame_period += 0.1 * (step - self._frame_period)
        self.slot.put(frame)
        self._video_end = max(self._video_end, frame.t)
        self.clock.arrived(frame.t)
        self._frame_arrivals.append((frame.t, time.monotonic()))
        self._notify()

    def report_error(self, code: str, message: str) -> None:
        """Publish an `error` event (bounded per session) without ending the session."""
        self._errors += 1
        if self._errors <= MAX_ERROR_EVENTS:
            log.warning("session %s: %s (%s)", self.id, code, message)
            self._publish(Error(self.id, code=code, message=message))
        elif self._errors % 1000 == 0:  # a stream of corrupt frames must not flood the log
            log.warning("session %s: %d errors so far (%s)", self.id, self._errors, code)

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

    def note_end_reason(self, reason: str) -> None:
        """The reason `session.ended` will carry (the first one given wins)."""
        if self.end_reason == "ended":
            self.end_reason = reason

    async def finish(self, reason: str | None = None) -> None:
        """Close the input and wait until the final events are published."""
        if reason is not None:
            self.note_end_reason(reason)
        self._input_closed = True
        self._notify()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def wait_caught_up(self, max_ahead_s: float = FILE_AHEAD_S) -> None:
        """Wait while the worker is more than ``max_ahead_s`` of media behind the input."""
        try:
            while (
                self._task is not None
                and not self._task.done()
                and self.media_end - self.processed_t > max_ahead_s
            ):
                if not self._feeder_waits:
                    self._feeder_waits = True
                    self._notify()  # ticks held for a stalled audio track may go on now
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._feeder_waits = False

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    @property
    def media_end(self) -> float:
        """Newest media time received from any track."""
        return max(self.ring.end_time, self._video_end)

    # ---- workers -------------------------------------------------------------------

    def video_ready(self, t: float) -> bool:
        """Whether the tick at ``t`` has its video frame: no newer frame at or before ``t``
        is still to come. True once a frame at or after ``t`` arrived, or when the next
        frame is due at least a tenth of a frame interval after ``t`` (the newest frame is
        within 0.9 intervals, at most 0.1 s, of ``t``); a live tick then need not wait a
        whole frame interval for the next frame. A frame that comes earlier than its
        interval says (timestamp jitter) goes to the next tick instead."""
        tolerance = min(0.9 * self._frame_period, 0.1)
        return self._video_end >= t - tolerance - 1e-9

    @property
    def _audio_lag(self) -> float:
        """How far behind a tick its audio may be: ``audio_delay_s`` when there is video
        (so frames need not wait for audio, which WebRTC delivers later), else 0."""
        return self.audio_delay_s if "video" in self._tracks else 0.0

    def _audio_covers(self, t0: float, t1: float) -> bool:
        """Whether audio arrived for some of media times [t0, t1]: not before the first
        sample, nor inside a timestamp gap, nor past the newest sample. The same answer
        whether the tick runs before or after the audio after it arrives."""
        start = self._audio_start
        if "audio" not in self._tracks or start is None or self.ring.end_time < t0:
            return False
        if max(t1, 0.0) < start - AUDIO_START_SLACK_S:
            return False  # before a late first sample (the first ticks' t1 may be < 0)
        return not any(g0 <= t0 + 1e-9 and t1 <= g1 + 1e-9 for g0, g1 in self._audio_gaps)

    def _tick_ready(self, t: float) -> bool:
        # A track gates the ticks while it has not ended and is not stalled: more than
        # TRACK_STALL_S of media behind the other one (a file whose video ends before its
        # audio, a camera that stops sending without ending its track).
        ends = {"audio": self.ring.end_time, "video": self._video_end}
        newest = self.media_end
        active = [
            k
            for k, ended in self._tracks.items()
            if not ended and ends[k] >= newest - TRACK_STALL_S
        ]
        ready = {
            # A file's audio track holds the first ticks until its first sample is in (its
            # "audio" modality depends on it), unless it stalled (starts much later).
            "audio": lambda: (
                self.ring.end_time >= t - self._audio_lag - 1e-9
                and (self.live or self._audio_start is not None)
            ),
            "video": lambda: self.video_ready(t),
        }
        if active:
            if not all(ready[k]() for k in active):
                return False
        elif not any(ready[k]() for k in self._tracks):
            return False
        if self._input_closed and t > self.media_end + 1e-9:
            return False  # no tick beyond the media once it has ended
        if (
            not self.live
            and not (self._input_closed or self._feeder_waits)
            and t >= self.media_end - 1e-9
        ):
            # A file's tick at the end of the media so far waits for more media or the end
            # of the input: if it is the last one, it runs once the ASR has flushed (_run),
            # whatever the timing, so a file always gives the same frames. (Not while the
            # feeder waits for the ticks: it would wait for this one for good.)
            return False
        return self.live or self._asr_caught_up(t)

    def _asr_caught_up(self, t: float) -> bool:
        """Whether the ASR steps a tick at ``t`` needs have finished (file sessions wait)."""
        if "audio" not in self._tracks or self._asr_finished:
            return True
        hop = self.asr.hop_s
        need = int((t - self.text_delay_s) / hop + 1e-6) * hop
        if self._feeder_waits and self.ring.end_time < self.media_end - TRACK_STALL_S:
            # The audio stalled (a file whose audio ends early or starts late) and the file
            # feeder waits for these ticks (`wait_caught_up`): the ASR cannot step past the
            # audio there is, and waiting for more would deadlock. Only then: audio that is
            # merely muxed a few seconds behind the video still holds the ticks until it
            # comes, so the words are the same whatever the timing.
            need = min(need, int(self.ring.end_time / hop + 1e-6) * hop)
        return need <= 0 or self._asr_done_t >= need - 1e-9

    async def _infer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _infer_asr(self, fn: Any, *args: Any) -> Any:
        # Whisper decodes take 0.1-0.5 s: they have threads of their own, so that the
        # ticks (a few ms each) of every session never queue behind them.
        return await asyncio.get_running_loop().run_in_executor(self.asr_executor, fn, *args)

    def _tick_time(self, k: int) -> float:
        """Media time of the ``k``-th tick: ``k / analysis_hz`` rounded to the millisecond
        (each tick on its own, so rates such as 30 Hz do not drift off the grid)."""
        return round(k * 1000 / self.analysis_hz) / 1000.0

    async def _run(self) -> None:
        k = 1
        last_tick = 0.0
        self._asr_task = asyncio.get_running_loop().create_task(
            self._asr_run(), name=f"asr-{self.id}"
        )
        try:
            while True:
                t = self._tick_time(k)
                while not self._tick_ready(t):
                    if self._input_closed and (self._asr_finished or self._media_short_of(t)):
                        break
                    self._wake_tick.clear()
                    await self._wake_tick.wait()
                if not self._tick_ready(t):
                    break
                if self._input_closed and t >= self.media_end - 1e-9:
                    break  # the media's last tick: below, once the ASR has flushed its words
                await self._tick(t)
                if self._analysis_stopped:
                    return  # reported; the final events and the cleanup run below
                last_tick = t
                k += 1
                self.processed_t = t
                self._progress.set()
            await asyncio.shield(self._asr_task)  # it reports its own failures
            end = self.media_end
            if end > last_tick + 1e-6:
                await self._tick(end, take_all=True)
            elif self._asr_updates:
                # A live session's tick at the media's end ran before its input closed: the
                # words the ASR flushed since get a frame of their own, one interval later
                # (a file session holds that tick until its input closes, see _tick_ready).
                await self._tick(self._tick_time(k), take_all=True)
        except Exception as exc:  # one session's failure must not reach the others
            log_failure(log, exc, "session %s: worker failed", self.id)
            self.report_error("internal", f"analysis failed ({type(exc).__name__})")
        finally:
            if self._asr_task is not None and not self._asr_task.done():
                self._asr_task.cancel()
            try:
                await self._close_analyzer()
            finally:
                self._finalize()
                self._progress.set()

    async def _close_analyzer(self) -> None:
        """Publish the analyzer's pending cues and release its face graph (also after a
        failure); wait for a face warm-up still running, so none outlives the session."""
        try:
            self._publish_cues(await self._infer(self.analyzer.flush))
        except Exception as exc:
            if isinstance(exc, CueFlushError):  # the other detectors' cues still go out
                self._publish_cues(exc.hits)
                exc = exc.__cause__ or exc
            log_failure(log, exc, "session %s: analyzer flush failed", self.id)
            self.report_error("internal", f"analysis failed ({type(exc).__name__})")
        if self._warming is not None:  # a no-op once the analyzer is closed; never raises
            await asyncio.wait({self._warming})

    def _media_short_of(self, t: float) -> bool:
        """Whether the input (closed) ended before the tick at ``t`` could be ready."""
        ends = {"audio": self.ring.end_time + self._audio_lag, "video": self._video_end}
        return all(ends[k] < t - 1e-9 for k in self._tracks) or not self._tracks

    async def _asr_run(self) -> None:
        """Step the ASR every hop of audio, publish transcripts, hand updates to the ticks."""
        hop_ms = int(round(self.asr.hop_s * 1000))
        try:
            while "audio" not in self._tracks and not self._input_closed:
                self._wake_asr.clear()
                await self._wake_asr.wait()
            if "audio" not in self._tracks:
                return
            k = 1
            while True:
                s = k * hop_ms / 1000.0
                while self.ring.end_time < s - 1e-9 and not (
                    self._input_closed or self._tracks.get("audio")
                ):
                    self._wake_asr.clear()
                    await self._wake_asr.wait()
                if self.ring.end_time < s - 1e-9:
                    break
                if self.live and self.asr_skip:
                    newest = int(self.ring.end_time * 1000 + 1e-6) // hop_ms
                    if newest > k + 1:  # more than a hop behind: decode the newest audio
                        self.asr_skipped += newest - k
                        k = newest
                        s = k * hop_ms / 1000.0
                ok = await self._asr_step(self.asr.step, s)
                if not ok:
                    return
                k += 1
            await self._asr_step(self.asr.flush, self.ring.end_time)
        except Exception as exc:  # not the decode (see _asr_step): stop the ASR, not the session
            log_failure(log, exc, "session %s: ASR worker failed", self.id)
            self.report_error("internal", f"speech recognition stopped ({type(exc).__name__})")
        finally:
            self._asr_finished = True
            self._wake_tick.set()

    async def _asr_step(self, fn: Any, s: float) -> bool:
        """Run the ASR step (or flush) ``fn`` at media time ``s`` and hand on its update.

        A step that raises is reported and skipped: the ASR commits only after a decode,
        so the next step decodes the same utterance again with newer audio, and a one-off
        failure costs a hop of latency, not words. That is what a live user wants from a
        glitch; a failure that repeats (a broken model, no memory) would fail every hop,
        so after ``ASR_MAX_FAILURES`` in a row the session goes on without transcripts.
        Returns False then. The message has no exception text: it may quote the prompt,
        i.e. the transcript, which is health data.
        """
        try:
            update = await self._infer_asr(self._timed_asr, fn, s)
        except Exception as exc:
            self._asr_failures += 1
            log_failure(log, exc, "session %s: ASR failed at %.2f s", self.id, s)
            stop = self._asr_failures >= ASR_MAX_FAILURES
            self._asr_stopped = stop
            then = (
                f"stopped after {self._asr_failures} failures in a row: no more transcripts"
                if stop
                else "step skipped"
            )
            self.report_error(
                "internal",
                f"speech recognition failed at {s:.2f} s ({type(exc).__name__}); {then}",
            )
            self._on_asr(s, None)  # the step is done: file ticks need not wait for it
            return not stop
        self._asr_failures = 0
        self._on_asr(s, update)
        return True

    def _timed_asr(self, fn: Any, s: float) -> ASRUpdate | None:
        """Run ``fn(s)`` (in the ASR executor) and add its duration to the ASR compute time:
        timed here, not around the await, so that waiting for a thread of the executor
        (shared by the sessions) does not count as compute in ``status.rtf``."""
        started = time.perf_counter()
        try:
            return fn(s)
        finally:
            # One step of a session at a time: this thread is the only writer.
            self._asr_compute += time.perf_counter() - started

    def _on_asr(self, s: float, update: ASRUpdate | None) -> None:
        self._asr_done_t = max(self._asr_done_t, s)
        self._wake_tick.set()
        if update is None:
            return
        self._asr_updates.append((s, update))
        if update.committed:
            self._publish_transcript(update.committed, final=True)
        if update.tentative and (update.tentative != self._tentative or update.committed):
            self._publish_transcript(update.tentative, final=False)
        elif not update.tentative and self._tentative:
            # the tail was committed or dropped (a word the final pass did not confirm):
            # an empty tail replaces it, or subscribers would keep showing it
            self._publish(Transcript(self.id, t0=s, t1=s, text="", words=[], final=False))
        self._tentative = list(update.tentative)

    def _take_asr(self, t: float, take_all: bool) -> tuple[list[Any], bool, list[Any] | None]:
        """Words of the ASR steps a tick at ``t`` may use: (committed, final, tentative)."""
        committed: list[Any] = []
        final = False
        tentative: list[Any] | None = None
        limit = t - self.text_delay_s + 1e-9
        while self._asr_updates and (take_all or self._asr_updates[0][0] <= limit):
            s, update = self._asr_updates.popleft()
            committed.extend(update.committed)
            final |= update.final
            tentative = list(update.tentative)
            self._asr_used_t = s
        return committed, final, tentative

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

    async def _tick(self, t: float, take_all: bool = False) -> None:
        started = time.monotonic()
        committed, final, tentative = self._take_asr(t, take_all)
        if tentative is not None:
            self._tick_tentative = tentative
        earlier: list[VideoFrame] = []  # frames before the newest (full profile only)
        if self.analyzer.full is not None:
            earlier = self.slot.take_all_until(t)
            frame = earlier.pop() if earlier else None
        else:
            frame = self.slot.take_until(t)
        taken = 0 if frame is None else 1 + len(earlier)
        if frame is not None:
            self._last_video_t = frame.t
            if not self._analyse_video:  # stopped after failures; frames still leave the slot
                frame, earlier = None, []
        audio_t = t if take_all else t - self._audio_lag
        result, frame = await self._analyse(t, committed, final, frame, audio_t, earlier)
        if taken and frame is None:
            self.slot.dropped += taken  # the slot counts every frame never analysed
        if result is None:
            return  # the tick failed (reported): nothing to publish or aggregate
        p, evidence = result.p, result.evidence
        self._evidence = evidence
        if result.face is not None:
            self._last_face_t = t
        elif result.face_checked:  # the newest frame shows no face: not "face" any more
            self._last_face_t = None
        self._publish_cues(result.cues)
        dt = 1.0 / self.analysis_hz
        has_audio = self._audio_covers(audio_t - dt, audio_t)
        lag = self.clock.lag(min(t, self.media_end))  # a tick may run before t arrives
        lags = {} if lag is None else {"tick": lag}
        if frame is not None:
            arrived = next((w for ft, w in self._frame_arrivals if ft == frame.t), None)
            if arrived is not None:
                lags["frame"] = time.monotonic() - arrived  # frame arrival -> publish
                lags["wait"] = max(0.0, started - arrived)  # frame arrival -> tick start
        lags.update({k: v for k, v in result.timings.items()})
        self._publish(
            Frame(
                self.id,
                t=t,
                p=p,
                evidence=evidence,
                modalities={
                    "audio": has_audio,
                    "speech": has_audio and self.vad.speech_fraction(audio_t - dt, audio_t) > 0,
                    "video": self._last_video_t is not None and t - self._last_video_t <= 1.0,
                    "face": self._last_face_t is not None and t - self._last_face_t <= 0.5,
                    "text": result.n_words > 0,
                },
                words=result.n_words,
                video_t=None if frame is None else round(frame.t, 4),
                asr_t=self._asr_used_t,
                lags={k: round(v, 4) for k, v in lags.items()},
            )
        )
        self.aggregator.add(p)
        self._publish_segment(self.segments.update(t, p, evidence != "prior"))
        n = self.aggregator.frames
        per_video = max(1, int(round(self._video_every * self.analysis_hz)))
        if n % per_video == 0:
            self._publish(self._video_event(t, final=False))
        per_status = max(1, int(round(self._status_every * self.analysis_hz)))
        if n % per_status == 0:
            self._publish(self._status(t))

    async def _analyzer_tick(
        self,
        t: float,
        committed: list[Any],
        final: bool,
        frame: VideoFrame | None,
        audio_t: float,
        earlier: list[VideoFrame],
    ) -> TickResult:
        """One `Analyzer.tick` in the executor: the one place the session calls it."""
        tick = functools.partial(
            self.analyzer.tick,
            t,
            committed,
            final,
            list(self._tick_tentative),
            frame=frame,
            audio_t=audio_t,
            earlier=earlier,
            # Cues that pair words with frames or audio wait for the words: their times
            # then do not depend on the ASR lag.
            asr_t=self._words_complete_t(),
        )
        return await self._infer(tick)

    def _words_complete_t(self) -> float | None:
        """Media time up to which the words the ticks were given are complete: the newest
        ASR step they took (with its tentative tail, `Analyzer.tick`), less a hop for speech
        the ASR had not yet opened an utterance for. None (the tick's own time) once the
        ASR has stopped: no more words will come."""
        if self._asr_stopped:
            return None
        if self._asr_used_t is None:
            return 0.0
        return self._asr_used_t - self.asr.hop_s

    async def _analyse(
        self,
        t: float,
        committed: list[Any],
        final: bool,
        frame: VideoFrame | None,
        audio_t: float,
        earlier: list[VideoFrame],
    ) -> tuple[TickResult | None, VideoFrame | None]:
        """The analysis of the tick at ``t`` and the video frame it analysed.

        A frame whose face analysis fails (the face mesh, the expression model, a pixel
        conversion, ...) is left out by the analyzer, which goes on with the tick's words,
        voice and cues (`TickResult.face_error`): it is reported here and the frame counts
        as dropped. A tick that raises otherwise is reported and skipped (result None).
        Failures repeat when something is broken for good, so after ``TICK_MAX_FAILURES``
        in a row the video analysis stops (the session goes on without face features) or,
        for ticks that keep failing, the session ends (`_analysis_stopped`).
        """
        try:
            result = await self._analyzer_tick(t, committed, final, frame, audio_t, earlier)
            if not math.isfinite(result.p):  # not a probability: nothing to publish or add
                raise FloatingPointError("the model's probability is not a number")
        except Exception as exc:
            self._tick_failed("tick", t, exc)
            return None, None
        self._tick_failures["tick"] = 0
        if result.face_error is not None:
            self._tick_failed("video", t, result.face_error)
            return result, None
        if frame is not None:
            self._tick_failures["video"] = 0
        return result, frame

    def _tick_failed(self, kind: str, t: float, exc: Exception) -> None:
        """Log a failed tick (``kind`` "video": it went on without its frame; "tick": it
        was skipped) and report the first of a run of failures and the one that stops."""
        self._tick_failures[kind] += 1
        n = self._tick_failures[kind]
        name = type(exc).__name__
        log_failure(log, exc, "session %s: analysis failed at %.2f s", self.id, t)
        stop = n >= TICK_MAX_FAILURES
        if kind == "video":
            then = "the tick went on without its video frame"
            if stop:
                self._analyse_video = False
                then = f"video analysis stopped after {n} failures in a row: no face features"
        else:
            then = "tick skipped"
            if stop:
                self._analysis_stopped = True
                self.note_end_reason("analysis failed")
                then = f"analysis stopped after {n} failures in a row: the session ends"
        if n == 1 or stop:  # a run of failures is one event, not ten a second
            # The step by its code location; the exception text may quote the transcript.
            self.report_error(
                "internal", f"analysis failed at {t:.2f} s ({name} in {_failed_in(exc)}); {then}"
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

    def _status(self, t: float) -> Status:
        lag = self.clock.lag(min(t, self.media_end))  # a tick may run before t arrives
        message = None
        if self.live and lag is not None and lag > BEHIND_S:
            message = (
                f"analysis {lag:.1f} s behind the call (CPU short): video frames are dropped "
                "to keep up and speech recognition skips ahead"
            )
        return Status(
            self.id,
            t=t,
            lags={} if lag is None else {"tick": lag},
            dropped_video_frames=self.slot.dropped,
            received_video_frames=self.slot.received,
            rtf=self._asr_compute / t if t > 0 else None,
            asr_skipped=self.asr_skipped,
            message=message,
        )

    def _finalize(self) -> None:
        end = self.media_end
        self._publish(self._status(end))  # the final counts
        self._publish_segment(self.segments.flush())
        if self.aggregator.frames:
            video = self._video_event(end, final=True)
            self._publish(video)
            self.decision = {
                "p": video.p,
                "label": video.label,
                "threshold": video.threshold,
                "method": video.method,
                # "prior": fewer than three words were heard, so p is the model's value
                # without words (the context's question rate), not evidence from the call.
                "evidence": video.evidence,
            }
        self._publish(
            SessionEnded(self.id, duration=end, reason=self.end_reason, decision=self.decision)
        )

    def _publish(self, event: Event) -> None:
        self.publisher.publish(event)
