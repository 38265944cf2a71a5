"""Faults inside a real `Session` (real models, real speech and a real face): a failing ASR
step, a session that ends while its face graph is still being made, a live ASR that falls
behind and skips ahead, failing analysis ticks, the ASR compute the session reports, and a
face that leaves the picture.

Faults are injected in the narrowest place: the session's own ASR object's `step`, the
moment its analyzer's face warm-up runs, one call of its face analyzer, its fusion TCN's
`step`, or its analyzer closed under it. Everything else is the production code path.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from stream.buffers import VideoFrame
from stream.publisher import Publisher
from stream.session import ASR_MAX_FAILURES, TICK_MAX_FAILURES, Session
from tests.media import espeak_speech, librivox_speech, silence
from tests.mediafiles import astronaut_frames

RATE = 16000
CHUNK = 320  # 20 ms, as WebRTC delivers audio
FPS = 10

TWO_SENTENCES = (
    "Well, I guess I could try to walk a little every morning. "
    "But honestly, I doubt that it would change much."
)
SPEECH = TWO_SENTENCES + " Maybe I will begin next week, when the weather is warmer."


@pytest.fixture(scope="module")
def models() -> Any:
    from models.profile import load_models

    return load_models("lite")


@pytest.fixture(scope="module")
def sentences() -> np.ndarray:
    """About 10 s of espeak-ng speech, then 1 s of silence (the last utterance ends)."""
    return np.concatenate([espeak_speech(SPEECH), silence(1.0)])


@pytest.fixture(scope="module")
def two_sentences() -> np.ndarray:
    """The first two of `sentences` (about 7 s), then 1 s of silence: enough for a failure
    after the first words and speech after it, in a live call that takes as long as it is."""
    return np.concatenate([espeak_speech(TWO_SENTENCES), silence(1.0)])


@pytest.fixture
def handed_out(models: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The face analyzers the pool hands out during the test."""
    pool = models.face_pool
    taken: list[Any] = []
    take = pool.take

    def recording_take() -> Any:
        analyzer = take()
        taken.append(analyzer)
        return analyzer

    monkeypatch.setattr(pool, "take", recording_take)
    return taken


def graph_closed(face_analyzer: Any) -> bool:
    """Whether a `FaceAnalyzer`'s MediaPipe graph has been closed."""
    return face_analyzer._mesh._graph is None


class Run:
    """A `Session` and the events it published, each with the media time received by then."""

    def __init__(self, models: Any, name: str = "faults", **kw: Any) -> None:
        self.events: list[dict[str, Any]] = []
        publisher = Publisher(name)
        publisher.listeners.append(self._record)
        self.session = Session(name, models, publisher, **kw)

    def _record(self, event: Any) -> None:
        self.events.append({**event.to_dict(), "received": self.session.media_end})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def index(self, event: dict[str, Any]) -> int:
        return next(i for i, e in enumerate(self.events) if e is event)

    async def feed(
        self, audio: np.ndarray, video: bool = False, realtime: bool = True, t0: float = 0.0
    ) -> float:
        """Push ``audio`` (from media time ``t0``) in 20 ms chunks, and a face at FPS with
        ``video``: at the pace of a live call, or as a file is read (``realtime=False``).
        Stops early if the session ends; returns the media time pushed."""
        s = self.session
        frames = astronaut_frames(int(len(audio) / RATE * FPS) + 1) if video else []
        started = time.monotonic()
        next_frame = 0
        t = t0
        for i in range(0, len(audio), CHUNK):
            if s.done:
                break
            t = t0 + i / RATE
            s.push_audio(audio[i : i + CHUNK], t)
            while next_frame < len(frames) and next_frame / FPS <= t - t0:
                img = frames[next_frame]
                s.push_video(VideoFrame(t=t0 + next_frame / FPS, image=img, width=320, height=240))
                next_frame += 1
            if realtime:
                await asyncio.sleep(max(0.0, started + (t - t0) - time.monotonic()))
            else:
                await s.wait_caught_up()
        return t

    async def end(self, *kinds: str) -> None:
        for kind in kinds:
            self.session.track_ended(kind)
        await asyncio.wait_for(self.session.finish(), timeout=120)


def words_of(run: Run) -> set[str]:
    """The words (4 letters or more) of every transcript the session published."""
    text = " ".join(e["text"] for e in run.of("transcript")).lower()
    return {w.strip(".,!?'") for w in text.split() if len(w.strip(".,!?'")) >= 4}


async def test_a_failed_asr_step_is_reported_at_once_and_skipped(
    models: Any, two_sentences: np.ndarray, handed_out: list[Any]
) -> None:
    run = Run(models, live=True)
    asr = run.session.asr
    step = asr.step
    failed: list[float] = []

    def failing_step(t: float) -> Any:
        # The first step after words were committed fails, its exception quoting them
        # (as a decoder error may quote its prompt).
        if asr.committed_words and not failed:
            failed.append(t)
            raise RuntimeError(f"decode failed, prompt was: {asr.text}")
        return step(t)

    asr.step = failing_step
    run.session.add_track("audio")
    run.session.add_track("video")
    run.session.start()
    await run.feed(two_sentences, video=True)
    await run.end("audio", "video")

    assert len(failed) == 1
    (error,) = run.of("error")
    assert error["code"] == "internal"
    assert "speech recognition" in error["message"] and "RuntimeError" in error["message"]
    assert "prompt" not in error["message"]  # no exception text ...
    assert not words_of(run) & set(error["message"].lower().split())  # ... nor transcript
    # Reported while the call goes on, when the media had reached the failing step.
    assert error["received"] == pytest.approx(failed[0], abs=1.0)
    before = [e for e in run.events[: run.index(error)] if e["type"] == "frame"]
    assert before and before[-1]["t"] == pytest.approx(failed[0], abs=1.0)
    # The step was skipped, not the ASR: frames and committed words go on after it.
    after = run.events[run.index(error) :]
    assert [e["t"] for e in after if e["type"] == "frame"][-1] >= len(two_sentences) / RATE - 0.2
    assert any(e["type"] == "transcript" and e["final"] and e["t0"] > failed[0] for e in after)
    # A clean end: final decision, and the face graph closed.
    assert [v for v in run.of("video") if v["final"]]
    assert run.events[-1]["type"] == "session.ended"
    assert run.session.analyzer.face is None
    assert handed_out and all(graph_closed(a) for a in handed_out)


async def test_an_asr_that_keeps_failing_stops_but_the_session_goes_on(
    models: Any, sentences: np.ndarray
) -> None:
    # A file session: its ticks wait for the ASR steps, so a failed one must not stall them.
    run = Run(models, live=False)
    asr = run.session.asr
    step = asr.step
    calls: list[float] = []

    def broken_from_the_third_step(t: float) -> Any:
        calls.append(t)
        if len(calls) >= 3:
            raise MemoryError
        return step(t)

    asr.step = broken_from_the_third_step
    run.session.add_track("audio")
    run.session.start()
    await run.feed(sentences, realtime=False)
    await run.end("audio")

    errors = run.of("error")
    assert len(errors) == ASR_MAX_FAILURES and len(calls) == 2 + ASR_MAX_FAILURES
    assert all("MemoryError" in e["message"] for e in errors)
    assert "stopped" in errors[-1]["message"] and "skipped" in errors[0]["message"]
    frames = run.of("frame")
    assert len(frames) >= 10 * len(sentences) / RATE - 2  # every tick, to the end
    assert run.index(frames[-1]) > run.index(errors[-1])
    assert [v for v in run.of("video") if v["final"]]
    assert run.events[-1]["type"] == "session.ended"
    assert run.session.analyzer.face is None


@pytest.mark.parametrize("late", [False, True], ids=["warm-up-first", "warm-up-after-end"])
async def test_a_session_ended_right_after_its_video_track_closes_the_face_graph(
    models: Any, handed_out: list[Any], late: bool
) -> None:
    run = Run(models, live=True)
    analyzer = run.session.analyzer
    closed, warmed = threading.Event(), threading.Event()
    warm, close = analyzer.warm_face, analyzer.close

    def close_and_tell() -> None:
        # warm-up first: the close comes once the warm-up has taken its graph
        if not late:
            assert warmed.wait(30)
        close()
        closed.set()

    def warm_and_tell() -> None:
        # late: the executor runs the warm-up only once the session has closed its analyzer
        if late:
            assert closed.wait(30)
        warm()
        warmed.set()

    analyzer.close = close_and_tell
    analyzer.warm_face = warm_and_tell
    run.session.start()
    run.session.add_track("video")
    await run.end("video")
    assert await asyncio.to_thread(warmed.wait, 30)

    assert run.events[-1]["type"] == "session.ended"
    assert closed.is_set()
    assert analyzer.face is None
    assert all(graph_closed(a) for a in handed_out)
    if late:
        assert not handed_out  # a closed analyzer takes nothing from the pool
    else:
        assert len(handed_out) == 1  # the graph the warm-up took, closed with the session
    with pytest.raises(RuntimeError):
        analyzer.prepare_face()


async def test_a_live_asr_told_not_to_skip_decodes_every_hop(models: Any) -> None:
    """`serve --no-asr-skip`: a live session 4 s behind (a backlog delivered at once) steps
    its ASR at every hop of the backlog, none skipped, as a file session does."""
    audio, _ = librivox_speech()
    burst = 4 * RATE
    run = Run(models, live=True, asr_skip=False)
    s = run.session
    steps: list[float] = []
    step = s.asr.step
    s.asr.step = lambda t: (steps.append(t), step(t))[1]  # type: ignore[method-assign]
    s.add_track("audio")
    s.start()
    s.push_audio(audio[:burst], 0.0)
    await run.feed(audio[burst : 6 * RATE], t0=burst / RATE)
    await run.end("audio")
    hop = s.asr.hop_s
    assert run.of("status")[-1]["asr_skipped"] == 0
    assert steps[: int(4 / hop)] == [round((k + 1) * hop, 3) for k in range(int(4 / hop))]
    assert [e for e in run.of("transcript") if e["final"] and e["t0"] < 4.0]


async def test_a_live_asr_that_falls_behind_skips_ahead_and_keeps_up(models: Any) -> None:
    audio, _ = librivox_speech()
    burst = 18 * RATE  # 18 s at once (a stalled connection delivering its backlog) ...
    run = Run(models, live=True)
    s = run.session
    lags: list[float] = []  # newest media minus the newest finished ASR step, per tick

    def lag(event: Any) -> None:
        if event.type == "frame" and event.t >= 20.0:
            lags.append(s.media_end - s._asr_done_t)

    s.publisher.listeners.append(lag)
    s.add_track("audio")
    s.start()
    s.push_audio(audio[:burst], 0.0)
    await run.feed(audio[burst:], t0=burst / RATE)  # ... then the rest as it is spoken
    await run.end("audio")

    hop = s.asr.hop_s
    status = run.of("status")[-1]
    # The first step found 18 s waiting and went straight to the newest audio.
    assert status["asr_skipped"] >= round(18 / hop) - 2
    finals = [e for e in run.of("transcript") if e["final"]]
    assert any(e["t1"] <= 18.0 for e in finals)  # the newest of the backlog is transcribed
    assert any(e["t0"] >= 19.0 for e in finals)  # and what follows it
    # Without skipping, the ASR would be 18 s behind after the burst and catch up slowly.
    assert lags and max(lags) <= 4.0
    assert run.events[-1]["type"] == "session.ended"


async def test_a_live_session_short_of_cpu_says_so_in_its_status(models: Any) -> None:
    """Ticks slowed to 1.5x real time (a machine short of CPU, injected): the session
    falls behind, and its status events say so; before that, and in a file, they do not."""
    audio, _ = librivox_speech()
    run = Run(models, live=True, status_every_s=0.5)
    s = run.session
    tick = s.analyzer.tick

    def slow_tick(*args: Any, **kw: Any) -> Any:
        time.sleep(0.15)  # 10 ticks per media second: 1.5 s of work per second
        return tick(*args, **kw)

    s.analyzer.tick = slow_tick  # type: ignore[method-assign]
    s.add_track("audio")
    s.start()
    await run.feed(audio[: 4 * RATE])
    await run.end("audio")
    status = run.of("status")
    behind = [e for e in status if e.get("message")]
    assert behind and all("behind the call" in e["message"] for e in behind)
    assert all(e["lags"]["tick"] > 1.0 for e in behind)
    assert not status[0].get("message") and status[0]["lags"]["tick"] <= 1.0


def failed_at(error: dict[str, Any]) -> float:
    """The media time an analysis failure was reported at."""
    match = re.search(r"analysis failed at (\d+\.\d+) s", error["message"])
    assert match, error["message"]
    return float(match.group(1))


async def test_a_failed_face_analysis_is_reported_and_the_call_goes_on(
    models: Any, two_sentences: np.ndarray, handed_out: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's case: the 20th face analysis of a live call raises once."""
    run = Run(models, live=True)
    analyzed: list[float] = []
    failed: list[float] = []

    def face_analyzer_failing_once(analyzer: Any) -> Any:
        analyze = analyzer.analyze

        def analyze_or_fail(rgb: np.ndarray, t: float) -> Any:
            analyzed.append(t)
            if len(analyzed) == 20:
                failed.append(t)
                raise RuntimeError(f"mesh failed on the frame at {t} (transient)")
            return analyze(rgb, t)

        analyzer.analyze = analyze_or_fail
        return analyzer

    take = models.face_pool.take  # the recording one (handed_out)
    monkeypatch.setattr(models.face_pool, "take", lambda: face_analyzer_failing_once(take()))
    run.session.add_track("audio")
    run.session.add_track("video")
    run.session.start()
    await run.feed(two_sentences, video=True)
    assert not run.session.done  # the call was never cut off
    await run.end("audio", "video")

    duration = len(two_sentences) / RATE
    assert len(failed) == 1
    (error,) = run.of("error")
    assert error["code"] == "internal"
    assert "RuntimeError" in error["message"] and "without its video frame" in error["message"]
    assert "analyze_or_fail" in error["message"]  # the step that failed, by its code
    assert "mesh" not in error["message"] and "transient" not in error["message"]
    assert not words_of(run) & set(error["message"].lower().split())
    # The failed tick still has its frame event (no video analysed), reported right after it.
    t_fail = failed_at(error)
    assert 0.0 <= t_fail - failed[0] <= 0.1 + 1e-6
    frames = run.of("frame")
    (tick,) = [f for f in frames if f["t"] == pytest.approx(t_fail)]
    assert "video_t" not in tick
    assert frames[frames.index(tick) - 1]["t"] < t_fail  # reported as it happened
    assert run.index(frames[frames.index(tick) - 1]) < run.index(error) < run.index(tick)
    # Every tick of the call ran, and the face analysis went on after the failure.
    ticks = [round(f["t"] * 10) for f in frames if f["t"] <= duration - 0.4]
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) >= 10 * duration - 5
    after = [f for f in frames if f["t"] > t_fail]
    assert sum("video_t" in f and f["modalities"]["face"] for f in after) >= 0.9 * len(after)
    assert frames[-1]["t"] >= duration - 0.2
    assert any(e["type"] == "transcript" and e["t0"] > t_fail for e in run.events)
    assert run.of("status")[-1]["dropped_video_frames"] >= 1  # the frame never analysed
    # A clean end: final decision, and the face graph closed.
    assert [v for v in run.of("video") if v["final"]]
    assert run.events[-1]["type"] == "session.ended" and run.events[-1]["reason"] == "ended"
    assert run.events[-1]["decision"] is not None
    assert handed_out and all(graph_closed(a) for a in handed_out)


async def test_ticks_that_keep_failing_end_the_session_with_its_final_events(
    models: Any, sentences: np.ndarray, handed_out: list[Any]
) -> None:
    """A model broken for good (the fusion TCN, from its 30th step on): the ticks fail, and
    after TICK_MAX_FAILURES in a row the session ends, while the call is still sending,
    with its final events."""
    run = Run(models, live=True)
    s = run.session
    tcn_step = s.analyzer.tcn.step
    calls: list[int] = []

    def broken_from_the_30th_step(x: Any) -> Any:
        calls.append(1)
        if len(calls) >= 30:
            raise MemoryError
        return tcn_step(x)

    s.analyzer.tcn.step = broken_from_the_30th_step
    s.add_track("audio")
    s.add_track("video")
    s.start()
    pushed = await run.feed(sentences, video=True)
    assert s.done and pushed < len(sentences) / RATE - 2.0  # it ended during the call
    await run.end("audio", "video")

    first, last = run.of("error")
    assert first["code"] == last["code"] == "internal"
    assert "MemoryError" in first["message"] and "tick skipped" in first["message"]
    assert "MemoryError" in last["message"] and "session ends" in last["message"]
    assert f"after {TICK_MAX_FAILURES} failures in a row" in last["message"]
    t0, t1 = failed_at(first), failed_at(last)
    assert t1 == pytest.approx(t0 + (TICK_MAX_FAILURES - 1) / 10)
    # The ticks before the failures were published and aggregated; none after.
    frames = run.of("frame")
    assert len(frames) == 29 and frames[-1]["t"] < t0
    (final,) = [v for v in run.of("video") if v["final"]]
    assert run.index(final) > run.index(last)
    ended = run.events[-1]
    assert ended["type"] == "session.ended" and ended["reason"] == "analysis failed"
    assert ended["decision"] is not None and ended["decision"]["p"] == final["p"]
    # Each failing tick was tried once: only a failing frame is left out and its tick kept.
    assert len(calls) == 29 + TICK_MAX_FAILURES
    assert s.analyzer.face is None and all(graph_closed(a) for a in handed_out)
    assert s._asr_task is not None and s._asr_task.done()


async def test_a_probability_that_is_not_a_number_skips_its_tick(
    models: Any, sentences: np.ndarray
) -> None:
    """Five ticks whose model output is NaN (a broken model): each is skipped and reported,
    never published (a NaN is not JSON) nor aggregated (it stayed in the mean for good);
    the session goes on and decides on the other ticks."""
    import dataclasses
    import math

    run = Run(models)
    s = run.session
    tick = s.analyzer.tick
    calls: list[int] = []

    def nan_from_the_20th_tick_to_the_24th(*args: Any, **kw: Any) -> Any:
        result = tick(*args, **kw)
        calls.append(1)
        return dataclasses.replace(result, p=math.nan) if 20 <= len(calls) < 25 else result

    s.analyzer.tick = nan_from_the_20th_tick_to_the_24th  # type: ignore[method-assign]
    s.add_track("audio")
    s.start()
    await run.feed(sentences[: 6 * RATE], realtime=False)
    await run.end("audio")
    (error,) = run.of("error")
    assert "FloatingPointError" in error["message"] and "tick skipped" in error["message"]
    frames = run.of("frame")
    assert all(math.isfinite(f["p"]) for f in frames)
    assert len(frames) == len(calls) - 5
    ended = run.events[-1]
    assert ended["type"] == "session.ended" and math.isfinite(ended["decision"]["p"])


async def test_a_closed_face_analyzer_stops_the_video_analysis_not_the_session(
    models: Any, sentences: np.ndarray
) -> None:
    """The face graph gone mid-call (its analyzer closed under the session): every frame's
    analysis fails, so after TICK_MAX_FAILURES the session stops analysing video (no error
    per frame, no retries) and goes on with audio and words to its normal end."""
    run = Run(models, live=False)
    s = run.session
    analyzer = s.analyzer
    prepare = analyzer.prepare_face
    closed: list[float] = []
    refused: list[float] = []

    def close_at_3_s(event: Any) -> None:
        if event.type == "frame" and event.t >= 3.0 and not closed:
            closed.append(event.t)
            analyzer.close()

    def prepare_or_refuse() -> Any:
        try:
            return prepare()
        except RuntimeError:
            refused.append(time.monotonic())
            raise

    s.publisher.listeners.append(close_at_3_s)
    analyzer.prepare_face = prepare_or_refuse
    s.add_track("audio")
    s.add_track("video")
    s.start()
    await run.feed(sentences, video=True, realtime=False)
    await run.end("audio", "video")

    assert len(refused) == TICK_MAX_FAILURES  # then no more attempts
    first, last = run.of("error")
    assert "RuntimeError in stream.analysis.prepare_face" in first["message"]
    assert "without its video frame" in first["message"]
    assert f"video analysis stopped after {TICK_MAX_FAILURES} failures" in last["message"]
    frames = run.of("frame")
    ticks = [round(f["t"] * 10) for f in frames]
    assert ticks[: len(ticks) - 1] == list(range(1, len(ticks)))  # every tick, to the end
    assert frames[-1]["t"] >= len(sentences) / RATE - 0.1
    after = [f for f in frames if f["t"] > failed_at(first)]
    assert after and not any("video_t" in f for f in after)
    assert all(f["modalities"]["video"] for f in after[:-1])  # the camera is still there
    assert not any(f["modalities"]["face"] for f in after[5:])
    assert any(f["modalities"]["text"] for f in after)
    status = run.of("status")[-1]
    assert status["dropped_video_frames"] >= len(after) - 1  # frames no longer analysed
    assert [v for v in run.of("video") if v["final"]]
    assert run.events[-1]["type"] == "session.ended" and run.events[-1]["reason"] == "ended"


async def test_rtf_is_the_asr_compute_not_the_wait_for_a_shared_asr_thread(
    models: Any,
) -> None:
    """Two live calls share one ASR thread: one speaks, one is silent. Silence is never
    decoded, so the silent call's ASR compute is nearly nothing, however long its steps
    waited for the other call's decodes."""
    speech, _ = librivox_speech()
    speech = speech[: 8 * RATE]
    with ThreadPoolExecutor(1, thread_name_prefix="asr") as shared:
        talking = Run(models, "talking", live=True, asr_executor=shared)
        silent = Run(models, "silent", live=True, asr_executor=shared)
        for run in (talking, silent):
            run.session.add_track("audio")
            run.session.start()
        await asyncio.gather(talking.feed(speech), silent.feed(np.zeros_like(speech)))
        await asyncio.gather(talking.end("audio"), silent.end("audio"))

    assert talking.session.asr.decode_calls > 10 and silent.session.asr.decode_calls == 0
    assert talking.of("status")[-1]["rtf"] > 0
    assert silent.of("status")[-1]["rtf"] < 0.05


class _FailingFace:
    """A face analyzer whose analysis fails (as a broken mesh graph would)."""

    def analyze(self, rgb: np.ndarray, t: float) -> Any:
        raise RuntimeError("mesh graph failed")


async def test_a_failed_face_analysis_keeps_the_ticks_words_voice_and_cues(models: Any) -> None:
    """The frame is left out, not the tick: its word cues are published, its words reach the
    cross-modal cue, its voice features are computed (the tick was retried without words)."""
    from models.whisper import Word

    run = Run(models, live=True)
    s = run.session
    s.add_track("audio")
    s.push_audio(espeak_speech("I um, maybe I don't know."), 0.0)
    s.analyzer.prepare_face = lambda: _FailingFace()
    said = [("I", 0.1, 0.3), ("um,", 0.35, 0.8), ("maybe", 0.9, 1.2), ("I", 1.25, 1.35)]
    said += [("don't", 1.4, 1.6), ("know.", 1.6, 1.9)]
    words = [Word(f" {w}", t0, t1, 0.9) for w, t0, t1 in said]
    frame = VideoFrame(t=2.0, image=np.zeros((64, 64, 3), np.uint8), width=64, height=64)
    result, analysed = await s._analyse(2.0, words, True, frame, 2.0, [])
    assert result is not None and analysed is None and result.face_error is not None
    assert {"filler_sound", "hedge"} <= {c.cue for c in result.cues}
    assert result.voice is not None and result.n_words == 6
    assert [w.w for w in s.analyzer.cross_cues._words] == [w.w for w in words]
    assert [e["code"] for e in run.of("error")] == ["internal"]


async def test_cues_wait_for_asr_steps_the_ticks_were_given_not_just_finished(
    models: Any,
) -> None:
    """A finished ASR step whose words no tick has taken yet does not make its words count
    as complete (a lagging ASR that skipped ahead); an ASR that stopped makes nothing wait."""
    from collections import deque

    from models.whisper import Word
    from stream.asr import ASRUpdate

    run = Run(models, live=True)
    s = run.session
    s.add_track("audio")
    seen: list[float | None] = []
    tick = s.analyzer.tick

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw["asr_t"])
        return tick(*args, **kw)

    s.analyzer.tick = spy  # type: ignore[method-assign]
    s._asr_used_t, s._asr_done_t = 4.0, 6.0  # taken up to 4.0; 6.0 done, not yet usable
    love = Word(" love", 4.5, 4.8, 0.9)
    s._asr_updates = deque([(6.0, ASRUpdate(committed=[love], tentative=[], final=True, t=6.0))])
    await s._tick(6.4)
    assert seen[-1] is not None and seen[-1] <= 4.0  # not 6.0 - hop: "love" is not in yet
    s._asr_stopped = True
    await s._tick(6.5)
    assert seen[-1] is None  # the tick's own time: no more words will come


async def test_a_tentative_tail_that_goes_away_is_replaced_by_an_empty_one(
    models: Any, sentences: np.ndarray
) -> None:
    """A subscriber that keeps the committed words and replaces the tentative tail with each
    `final: false` event (the documented protocol) ends with no tail: a tail committed or
    dropped by the ASR is followed by an empty one, not left showing."""
    run = Run(models)
    run.session.add_track("audio")
    run.session.start()
    await run.feed(sentences, realtime=False)
    await run.end("audio")

    committed: list[str] = []
    tail: list[str] = []
    empties = 0
    for e in run.of("transcript"):
        words = [w["w"] for w in e["words"]]
        if e["final"]:
            committed += words
        else:
            tail = words
            empties += not words and e["text"] == "" and e["t0"] == e["t1"]
    assert len(committed) >= 20
    assert tail == [] and empties >= 1


async def test_the_face_is_gone_at_the_first_frame_without_one(models: Any) -> None:
    """A real face for 2 s, then frames without one (the person left the picture): from the
    first tick that analyses such a frame, `modalities.face` is false (it used to say "face"
    for up to 0.5 s more, from the last face's features)."""
    run = Run(models, "no-face")
    s = run.session
    s.add_track("audio")
    s.add_track("video")
    s.start()
    faces = astronaut_frames(2 * FPS)
    empty = np.full_like(faces[0], 128)  # a grey wall
    audio = silence(4.0)
    for i in range(0, len(audio), CHUNK):
        t = i / RATE
        s.push_audio(audio[i : i + CHUNK], t)
        k = int(round(t * FPS))
        if abs(t - k / FPS) < 0.5 * CHUNK / RATE:
            img = faces[k] if k < len(faces) else empty
            s.push_video(VideoFrame(t=k / FPS, image=img, width=320, height=240))
        await s.wait_caught_up()
    await run.end("audio", "video")

    frames = [f for f in run.of("frame") if "video_t" in f]
    with_face = [f for f in frames if f["video_t"] < 2.0 - 1e-6]
    without = [f for f in frames if f["video_t"] >= 2.0 - 1e-6]
    assert len(with_face) >= 15 and len(without) >= 15, frames
    assert sum(f["modalities"]["face"] for f in with_face) >= 0.8 * len(with_face)
    assert not [f["t"] for f in without if f["modalities"]["face"]]


async def test_a_file_session_ends_with_one_frame_at_the_media_end_whatever_the_timing(
    models: Any,
) -> None:
    """A file whose audio ends 0.5 s before its video, on the tick grid: the last frame is
    at the media's end, once, with the words the ASR flushed, even when the last ticks run
    slowly (a loaded machine; they used to end with a repeated 7.0, or with 7.1 when slow;
    test_analyze_is_deterministic checks an idle run)."""
    slow_s = 0.4
    run = Run(models, "file-end", live=False)
    s = run.session
    tick = s.analyzer.tick

    def slow_tick(t: float, *args: Any, **kw: Any) -> Any:
        if t > 6.2:
            time.sleep(slow_s)  # the analysis of the last ticks lags (a loaded machine)
        return tick(t, *args, **kw)

    s.analyzer.tick = slow_tick
    speech, _ = librivox_speech()
    audio = speech[: int(16000 * 6.5)]
    image = astronaut_frames(1)[0]
    s.add_track("audio")
    s.add_track("video")
    s.start()
    pushed = 0
    for k in range(71):  # video to 7.0 s at 10 fps
        s.push_video(VideoFrame(t=k / 10, image=image, width=320, height=240))
        while pushed < audio.size and pushed / RATE < k / 10:
            s.push_audio(audio[pushed : pushed + CHUNK], pushed / RATE)
            pushed += CHUNK
        await s.wait_caught_up()
    await run.end("audio", "video")

    times = [f["t"] for f in run.of("frame")]
    assert times == [round(0.1 * k, 4) for k in range(1, 71)], times[-4:]
    assert run.events[-1]["duration"] == 7.0
    final = run.of("frame")[-1]
    committed = sum(len(e["words"]) for e in run.of("transcript") if e["final"])
    assert committed >= 10 and final["words"] == committed  # the flushed words are in it


async def test_a_file_whose_audio_is_muxed_behind_its_video_gives_the_same_frames(
    models: Any,
) -> None:
    """A container whose audio packets come 4 s after the video of the same time (poor
    interleaving): the ticks wait for that audio as for any other, so every frame has its
    audio and the same words as a well-interleaved file. (A stalled audio track lets the
    ticks go on only while the file feeder waits for them, which this lag never causes.)"""
    speech, _ = librivox_speech()
    audio = speech[: 16000 * 6]
    image = astronaut_frames(1)[0]

    async def frames_of(lag_s: float) -> list[tuple[float, int, bool]]:
        run = Run(models, f"muxed-{lag_s:g}", live=False)
        s = run.session
        s.add_track("audio")
        s.add_track("video")
        s.start()
        pushed, k, fed = 0, 0, 0.0
        while fed < audio.size / RATE + lag_s + 0.25:
            fed += 0.25  # the demuxer's batches
            while k / 10 <= min(fed, audio.size / RATE - 0.1):
                s.push_video(VideoFrame(t=k / 10, image=image, width=320, height=240))
                k += 1
            while pushed < audio.size and pushed / RATE < fed - lag_s:
                s.push_audio(audio[pushed : pushed + CHUNK], pushed / RATE)
                pushed += CHUNK
            await s.wait_caught_up()
        await run.end("audio", "video")
        return [(f["t"], f["words"], f["modalities"]["audio"]) for f in run.of("frame")]

    interleaved = await frames_of(0.0)
    assert len(interleaved) == 60 and interleaved[-1][1] >= 10
    assert await frames_of(4.0) == interleaved


async def test_a_cue_detector_failing_at_the_end_loses_not_the_others_cues(models: Any) -> None:
    """The face cue detector raises when the session ends: the word cues still pending then
    (a hedge at the very end of the speech) are published, and the failure reported."""
    from models.whisper import Word

    run = Run(models, live=True)
    s = run.session
    s.add_track("audio")
    s.push_audio(espeak_speech("I want to. But I don't know."), 0.0)
    said = [("I", 0.1, 0.3), ("want", 0.35, 0.6), ("to.", 0.6, 0.8), ("But", 1.0, 1.2)]
    said += [("I", 1.25, 1.35), ("don't", 1.4, 1.6), ("know.", 1.6, 1.9)]
    words = [Word(f" {w}", t0, t1, 0.9) for w, t0, t1 in said]
    result, _ = await s._analyse(2.0, words, False, None, 2.0, [])
    assert result is not None
    before = {c.cue for c in result.cues}

    def broken_flush() -> list[Any]:
        raise RuntimeError("face cue state broken")

    s.analyzer.face_cues.flush = broken_flush
    await s._close_analyzer()
    published = {e["cue"] for e in run.of("cue")}
    assert "hedge" in published - before, (before, published)
    assert [e["code"] for e in run.of("error")] == ["internal"]
