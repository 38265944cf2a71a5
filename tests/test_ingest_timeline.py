"""Incoming media on the media timeline: real av frames through the real ingest code into a
real `Session` (its ring, VAD and frame slot), and through `drain_track` as aiortc feeds it.

Live arrival times come from the session clock's ``now``, which the tests drive: each frame
"arrives" at a wall time of its own, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from stream.clock import TrackClock
from stream.ingest import AHEAD_SLACK_S, AudioIngest, MediaLimits, VideoIngest, drain_track
from stream.publisher import Publisher
from stream.record import SessionRecorder
from stream.session import Session

AUDIO_TB = Fraction(1, 48000)  # Opus RTP clock
VIDEO_TB = Fraction(1, 90000)  # video RTP clock
AUDIO_LATENCY = 0.10  # capture -> recv() of the receive paths (aiortc holds 4 audio packets)
VIDEO_LATENCY = 0.04


@pytest.fixture(scope="module")
def models() -> Any:
    from models.profile import load_models

    return load_models("lite")


class Run:
    """A live `Session` and the events it published."""

    def __init__(self, models: Any, **kw: Any) -> None:
        self.events: list[dict[str, Any]] = []
        publisher = Publisher("timeline")
        publisher.listeners.append(lambda e: self.events.append(e.to_dict()))
        self.session = Session("timeline", models, publisher, live=True, **kw)
        self.placed: list[float] = []  # media times of the video frames the ingest passed on
        push_video = self.session.push_video

        def placing(frame: Any) -> None:
            self.placed.append(frame.t)
            push_video(frame)

        self.session.push_video = placing  # type: ignore[method-assign]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def errors(self, code: str) -> list[str]:
        return [e["message"] for e in self.of("error") if e["code"] == code]


def audio_frame(pts: int, level: float = 0.0, samples: int = 960) -> av.AudioFrame:
    """A 20 ms 48 kHz mono s16 frame of constant ``level``, as aiortc's Opus decoder gives."""
    pcm = np.full((1, samples), int(level * 32767), dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = 48000
    frame.pts, frame.time_base = pts, AUDIO_TB
    return frame


def video_frame(pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")
    frame.pts, frame.time_base = pts, VIDEO_TB
    return frame


def level(k: int) -> float:
    """A level of its own for audio frame ``k``, never silence."""
    return 0.05 + 0.9 * ((k * 37) % 50) / 50


# ---- audio: lost packets --------------------------------------------------------------------


def test_lost_audio_packets_leave_silence_at_their_time_in_ring_and_recording(models, tmp_path):
    """5 % of 20 ms Opus packets never arrive (aiortc has no NACK for audio): every frame
    that does arrive sits at its RTP timestamp, in the ring and in the --record WAV, and
    each lost one is 20 ms of silence, not 20 ms less timeline."""
    run = Run(models)
    recorder = SessionRecorder(tmp_path, "timeline")
    ingest = AudioIngest(run.session, recorder=recorder)
    clock = TrackClock(run.session.clock)
    n, pts0 = 1000, 1_234_567  # 20 s from a random RTP origin
    lost = {k for k in range(n) if k % 20 == 7}
    for k in range(n):
        if k not in lost:
            frame = audio_frame(pts0 + 960 * k, level(k))
            ingest.push(frame, clock.media_time(frame.pts, frame.time_base))
    recorder.close()
    assert recorder.join(30)  # its thread has finished the files

    ring = run.session.ring
    assert ring.end_time == pytest.approx(20.0, abs=0.002)  # was 19.0: 50 packets lost
    with wave.open(str(tmp_path / "timeline" / "audio.wav"), "rb") as wav:
        recorded = np.frombuffer(wav.readframes(wav.getnframes()), "<i2") / 32767
    assert recorded.size == ring.end_index
    for k in range(n):
        mid = 320 * k + 160  # the middle of frame k at 16 kHz, clear of its edges
        want = 0.0 if k in lost else level(k)
        assert ring.read(mid, mid + 1)[0] == pytest.approx(want, abs=2e-3), k
        assert recorded[mid] == pytest.approx(want, abs=2e-3), k
    assert not run.errors("pts_jump")


def test_jittered_audio_timestamps_are_appended_not_cut_into_pieces(models):
    """Timestamps from a capture clock, +-2 ms off the samples in a 1 ms time base: each
    frame continues the last (no silence put in, nothing cut off), and the timeline does
    not drift from the timestamps."""
    run = Run(models)
    ingest = AudioIngest(run.session)
    rng = np.random.default_rng(0)
    n = 500  # 10 s
    loud = [0.3 + 0.4 * level(k) for k in range(n)]  # steps the resampler does not ring to 0
    for k in range(n):
        frame = audio_frame(0, loud[k])
        frame.pts, frame.time_base = round(20 * k + rng.uniform(-2, 2)), Fraction(1, 1000)
        ingest.push(frame, float(frame.pts * frame.time_base))
    ring = run.session.ring
    assert ring.end_time == pytest.approx(10.0, abs=0.005)
    x = ring.read(0, ring.end_index)
    assert np.count_nonzero(np.abs(x[320:]) < 0.01) == 0  # no silence put in after frame 0
    for k in range(n):  # every frame in one piece, in order
        assert x[320 * k + 160] == pytest.approx(loud[k], abs=2e-3), k


async def test_audio_loss_keeps_a_live_session_hearing_the_call(models):
    """A live session with 10 % audio loss over 30 s: the audio keeps up with the video, so
    every tick has its audio (the drift made the last seconds of the call audio-less)."""
    run = Run(models)
    session = run.session
    audio, video = AudioIngest(session), VideoIngest(session)
    session.add_track("audio")
    session.add_track("video")
    session.start()
    for k in range(1500):  # 30 s of 20 ms audio frames, 25 fps video
        if k % 10 != 3:
            frame = audio_frame(960 * k)
            audio.push(frame, float(frame.pts * frame.time_base))
        if k % 2 == 0:
            vf = video_frame(1800 * k)
            video.push(vf, float(vf.pts * vf.time_base))
        if k % 50 == 49:  # let the analysis keep up, a second at a time
            await session.wait_caught_up(3.0)
    for kind in ("audio", "video"):
        session.track_ended(kind)
    await session.finish()

    assert session.ring.end_time == pytest.approx(30.0, abs=0.002)  # was 27.0
    frames = run.of("frame")
    assert frames[-1]["t"] == pytest.approx(30.0, abs=0.1)
    assert all(f["modalities"]["audio"] for f in frames)


# ---- live tracks: drain_track with arrival times ----------------------------------------


class FakeTrack:
    """A remote track as aiortc's: ``recv`` returns decoded frames, then raises
    `MediaStreamError` once the track has ended (``None`` queued)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def recv(self) -> Any:
        frame = await self.queue.get()
        self.queue.task_done()
        if frame is None:
            raise MediaStreamError
        return frame


async def publish(run: Run, arrivals: list[tuple[float, str, Any]]) -> None:
    """Drain one track per kind into ``run``'s started session, each frame arriving at its
    wall time (the session clock reads it), in order; then end the tracks and the session."""
    session = run.session
    arrivals = sorted(arrivals, key=lambda a: a[0])
    now = [arrivals[0][0]]
    session.clock.now = lambda: now[0]
    tracks = {kind: FakeTrack(kind) for kind in {a[1] for a in arrivals}}
    session.start()
    drains = [asyncio.create_task(drain_track(tr, k, session)) for k, tr in tracks.items()]
    paced = now[0]
    for wall, kind, frame in arrivals:
        now[0] = wall
        await tracks[kind].queue.put(frame)
        await tracks[kind].queue.join()  # recv() returned: the frame is in, read at `wall`
        if wall - paced >= 1.0:
            # Let the analysis keep up, a second at a time; more than TRACK_STALL_S ahead,
            # so a track that stops sending does not hold the feeder (the ticks wait for it).
            await session.wait_caught_up(3.0)
            paced = wall
    for track in tracks.values():
        await track.queue.put(None)
    await asyncio.gather(*drains)
    await session.finish()


def audio_arrivals(t0: float, t1: float, pts0: int, wall0: float) -> Iterator[tuple]:
    """20 ms audio frames captured from ``t0`` to ``t1`` (call time, s)."""
    for k in range(round(t0 / 0.02), round(t1 / 0.02)):
        yield wall0 + k * 0.02 + AUDIO_LATENCY, "audio", audio_frame(pts0 + 960 * k)


def video_arrivals(t0: float, t1: float, pts0: int, wall0: float, fps: int = 25) -> Iterator:
    """Video frames captured from ``t0`` to ``t1``; ``pts0`` is the RTP time of call time 0."""
    for k in range(round(t0 * fps), round(t1 * fps)):
        t = k / fps
        yield wall0 + t + VIDEO_LATENCY, "video", video_frame(pts0 + round(t * 90000))


def video_times(run: Run) -> list[float]:
    """Media times of the video frames the ticks analysed."""
    return [f["video_t"] for f in run.of("frame") if f.get("video_t") is not None]


async def test_a_paused_camera_resumes_at_its_time_and_a_restarted_clock_is_rebased(models):
    """The camera pauses for 12 s while the audio goes on (its RTP timestamps jump by 12 s,
    and so do the arrivals): the frames after the pause keep their times, no `pts_jump`.
    Then the sender restarts its video clock (a jump of hours, arrivals going on as
    before): that jump is re-based to continue right after the newest frame."""
    run = Run(models)
    wall0, vpts0 = 5000.0, 3_000_000_000
    restart = vpts0 + 10**9  # about 3 h ahead of where the video clock was
    arrivals = [
        *audio_arrivals(0.0, 18.0, 1_000_000, wall0),
        *video_arrivals(0.0, 2.0, vpts0, wall0),
        *video_arrivals(14.0, 16.0, vpts0, wall0),
        *video_arrivals(16.0, 18.0, restart, wall0),
    ]
    await publish(run, arrivals)

    jumps = run.errors("pts_jump")
    assert len(jumps) == 1 and "video timestamps jumped forwards" in jumps[0], jumps
    placed = run.placed
    assert len(placed) == 150
    assert placed[50] == pytest.approx(14.0, abs=0.1)  # was 2.02: 12 s behind the audio
    assert placed[100] == pytest.approx(16.0, abs=0.1)  # the restarted clock continues
    assert placed == sorted(placed)
    resumed = [f for f in run.of("frame") if 14.5 <= f["t"] <= 17.5]
    assert resumed and all(f["modalities"]["video"] for f in resumed)
    assert run.events[-1]["duration"] == pytest.approx(18.0, abs=0.15)


async def test_a_sender_clock_running_fast_does_not_make_media_time_race_ahead(models):
    """A video sender whose timestamps step 9.9 s per frame (each step under the 10 s
    --max-gap, so no single one looked like a jump) at 25 frames a second for 2 s: media
    time used to reach 485 s, with 4,850 ticks queued for a 2 s call. Once its time runs
    more than `AHEAD_SLACK_S` ahead of the arrivals, its frames are re-based (`pts_jump`):
    the session ends within that slack of the call's own length."""
    run = Run(models)
    wall0 = 900.0
    fast = [
        (wall0 + k / 25 + VIDEO_LATENCY, "video", video_frame(555 + round(k * 9.9 * 90000)))
        for k in range(50)
    ]
    await publish(run, [*audio_arrivals(0.0, 2.0, 1234, wall0), *fast])

    assert run.errors("pts_jump"), run.of("error")
    bound = 2.0 + AHEAD_SLACK_S + 0.5
    assert run.events[-1]["duration"] < bound  # was 485 s
    assert len(run.of("frame")) < 10 * bound
    assert run.placed == sorted(run.placed) and run.placed[-1] < bound


@pytest.mark.parametrize("stall_s", [3.0, 6.0])
async def test_a_backlog_after_a_stall_at_the_start_keeps_its_times(models, stall_s):
    """The call's first ``stall_s`` seconds of audio and video arrive in one burst (the
    receiver stalled before the first frame), then the rest in real time: every frame keeps
    its capture time, the tracks stay together, and nothing is reported as a jump."""
    run = Run(models)
    wall0 = 1000.0
    arrivals = sorted(
        [*audio_arrivals(0.0, 12.0, 1234, wall0), *video_arrivals(0.0, 12.0, 5555, wall0)],
        key=lambda a: a[0],
    )
    burst = [
        (max(w, wall0 + stall_s + k * 1e-4), kind, f) for k, (w, kind, f) in enumerate(arrivals)
    ]
    await publish(run, burst)

    assert not run.errors("pts_jump"), run.of("error")
    assert run.placed[-1] == pytest.approx(11.96, abs=0.01)  # was 11.0 and 8.0 with 6 errors
    assert run.session.ring.end_time == pytest.approx(12.0, abs=0.01)


async def test_a_video_that_starts_late_starts_at_its_arrival(models):
    """The first decodable video frame arrives 1.5 s after the first audio (its first
    keyframe was lost, or the camera opened late): the video starts at 1.5 s of the call,
    not at 0, so it is not shown 1.5 s early against the audio."""
    run = Run(models)
    wall0 = 700.0
    await publish(
        run,
        [*audio_arrivals(0.0, 6.0, 42, wall0), *video_arrivals(1.5, 6.0, 123_456, wall0)],
    )
    # The receive paths' latencies differ by 60 ms; the rest of the shift was 1.5 s.
    assert run.placed[0] == pytest.approx(1.5, abs=0.1)  # was 0.0
    assert run.placed[-1] == pytest.approx(5.96, abs=0.1)  # was 4.46
    assert min(video_times(run)) == pytest.approx(1.5, abs=0.1)  # what the ticks analysed
    assert not run.errors("pts_jump")


async def test_tracks_whose_first_frames_arrive_together_both_start_at_zero(models):
    """A call's tracks start together; first frames apart by no more than their receive
    paths' latencies (here the video is 60 ms ahead) still share time zero."""
    run = Run(models)
    await publish(run, [*audio_arrivals(0.0, 3.0, 7, 10.0), *video_arrivals(0.0, 3.0, 99, 10.0)])
    assert run.placed[0] == 0.0 and run.placed[-1] == pytest.approx(2.96, abs=1e-6)


# ---- video: the fps limit --------------------------------------------------------------------


def test_max_fps_below_the_camera_rate_drops_frames_and_keeps_the_timeline(models):
    """--max-fps 5 with a 30 fps camera: five frames a second pass at their own times, the
    rest are dropped; frames closer together than 1 / max_fps are no timestamp jump."""
    run = Run(models)
    ingest = VideoIngest(run.session, MediaLimits(max_fps=5.0))
    clock = TrackClock(run.session.clock)
    for k in range(300):  # 10 s of a 30 fps camera
        frame = video_frame(777 + 3000 * k)
        ingest.push(frame, clock.media_time(frame.pts, frame.time_base))

    assert not run.errors("pts_jump")  # were 3 "jumped backwards by 0.167 s"
    assert ingest.over_fps == 250  # were 1
    assert run.session.slot.received == 300
    assert run.session.media_end == pytest.approx(9.8, abs=1e-6)  # was 59.63 s


def test_non_finite_audio_samples_are_zeroed_and_the_rest_clipped(models):
    """A decoder's NaN and infinite float samples become silence (an infinity is no loud
    sample: it used to be written as full scale), finite ones are clipped to [-1, 1]."""
    run = Run(models)
    ingest = AudioIngest(run.session)
    values = np.array([np.nan, np.inf, -np.inf, 0.5, 3.0, -2.0, -0.25, 0.0], np.float32)
    pcm = np.tile(values, 40)[None, :]  # 320 samples: 20 ms at 16 kHz
    frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
    frame.sample_rate = 16000
    frame.pts, frame.time_base = 0, Fraction(1, 16000)
    ingest.push(frame, 0.0)
    got = run.session.ring.read(0, run.session.ring.end_index)
    assert got.size == 320 and np.isfinite(got).all()
    want = np.tile(np.array([0, 0, 0, 0.5, 1, -1, -0.25, 0], np.float32), 40)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_stereo_is_the_mean_of_its_channels_not_louder_than_mono(models):
    """aiortc decodes every Opus call to stereo: the same voice in both channels lands in
    the ring at the level the mono file gives (libswresample's downmix made it +3 dB and
    clipped a peak of 0.9), and a voice in one channel at half its level."""
    t = np.arange(48000) / 48000
    voice = (0.9 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    rings = {}
    for name, channels in {
        "mono": [voice],
        "stereo": [voice, voice],
        "left only": [voice, np.zeros_like(voice)],
    }.items():
        run = Run(models)
        ingest = AudioIngest(run.session)
        pcm = np.stack(channels)
        layout = "mono" if len(channels) == 1 else "stereo"
        for k in range(50):  # 20 ms frames, as aiortc's decoder gives them
            frame = av.AudioFrame.from_ndarray(
                pcm[:, 960 * k : 960 * (k + 1)].copy(), format="fltp", layout=layout
            )
            frame.sample_rate = 48000
            frame.pts, frame.time_base = 960 * k, AUDIO_TB
            ingest.push(frame, 960 * k / 48000)
        ring = run.session.ring
        rings[name] = ring.read(1600, ring.end_index - 1600)  # clear of the filter's edges
    peak = {name: float(np.abs(x).max()) for name, x in rings.items()}
    assert peak["mono"] == pytest.approx(0.9, abs=0.01)
    np.testing.assert_allclose(rings["stereo"], rings["mono"], atol=1e-5)
    assert peak["left only"] == pytest.approx(0.45, abs=0.01)
