"""The live benchmark harness measures what it says: real frames, matched by media time."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

import av
import numpy as np

from benchmarks.latency import STAGES, _stages
from benchmarks.live import (
    PeakRss,
    Publication,
    ServerProcess,
    percentiles,
    prepare_clip,
    publish,
    video_offset,
)
from benchmarks.output import finite, pyplot
from benchmarks.throughput import _round_summary, session_report
from tests.conftest import app_on_loopback
from tests.mediafiles import write_media


def test_passthrough_publisher_latencies_are_matched_frames(server, talking_face_mp4, tmp_path):
    clip = prepare_clip(talking_face_mp4, tmp_path)
    pub = asyncio.run(publish(clip, server.url, duration_s=4.0))
    assert pub.error is None
    models = pub.models()  # results record the weights that made them
    assert models and models["tcn"].startswith("tcn_lite v") and models["text"]
    frames = pub.frames()
    assert len(frames) >= 30  # 10 per media second
    # The H.264 packets were passed through (no re-encoding), decoded by the server and
    # analysed: every analysed frame names a frame the publisher sent.
    sent = {t for t, _ in pub.sent}
    analysed = [e["video_t"] for _, e in frames if e.get("video_t") is not None]
    assert len(analysed) >= 0.9 * len(frames)
    # On one common offset (`video_offset`, 0 unless a loaded CPU made the first video frame
    # reach the server late and its track start at its arrival, see stream.clock).
    d = video_offset(sorted(sent), analysed)
    assert all(min(abs(t - d - s) for s in sent) < 1e-3 for t in analysed)
    # Each tick analyses a frame at or before it: the newest one (15 fps clip: within 1/15 s)
    # unless the video track stalled behind the audio (stream.session.TRACK_STALL_S), which
    # a CPU loaded by other work can cause for a moment.
    ages = [e["t"] - e["video_t"] for _, e in frames if e.get("video_t") is not None]
    assert all(age >= 0 for age in ages)
    assert sum(age < 1 / 15 + 1e-3 for age in ages) >= 0.9 * len(ages)
    lat = pub.frame_latencies()
    assert len(lat) == len(analysed)
    assert 0 < min(lat) and max(lat) < 5.0
    stats = percentiles(lat)
    assert stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    report = session_report(pub, duration=4.0, hz=10.0, has_video=True)
    assert report["ticks_without_frame"] < 0.2 and report["frame_to_event_ms"]["n"] == len(lat)


def test_video_offset_finds_a_late_started_video_track() -> None:
    """Frames sent every 1/15 s; the server placed them as sent, or all 0.3137 s later (a
    first keyframe decoded late under load), with a few frames not analysed."""
    sent = [i / 15 for i in range(60)]
    analysed = [t for i, t in enumerate(sent) if i % 4]
    assert video_offset(sent, analysed) == 0.0
    late = [t + 0.3137 for t in analysed]
    assert abs(video_offset(sent, late) - 0.3137) < 1e-9
    pub = Publication(sent=[(t, 100.0 + t) for t in sent])
    pub.events = [(100.5 + t, {"type": "frame", "t": t + 0.05, "video_t": t}) for t in late]
    assert len(pub.matched_frames()) >= len(late) - 1  # all but the closing tick
    assert video_offset([], late) == 0.0 and video_offset(sent, []) == 0.0


def _frame(t: float, video_t: float | None, **lags: float) -> dict:
    return {"type": "frame", "t": t, "video_t": video_t, "lags": lags}


def test_prepared_clip_above_the_cap_drops_frames_and_keeps_its_duration(tmp_path):
    seconds, fps = 2, 60
    audio = 0.1 * np.sin(2 * np.pi * 220 * np.arange(16000 * seconds) / 16000)
    frames = [np.full((48, 64, 3), 4 * i % 256, np.uint8) for i in range(fps * seconds)]
    src = write_media(tmp_path / "fast.mp4", audio.astype(np.float32), frames, fps=fps)
    clip = prepare_clip(src, tmp_path)
    with av.open(str(clip)) as c:
        assert c.streams.video[0].average_rate <= 30
        times = [f.time for f in c.decode(video=0)]
    with av.open(str(clip)) as c:
        audio_s = sum(f.samples for f in c.decode(audio=0)) / 48000
    video_s = times[-1] - times[0] + 1 / 30
    assert abs(len(times) - 30 * seconds) <= 1
    assert abs(video_s - seconds) < 0.1 and abs(video_s - audio_s) < 0.1
    assert max(np.diff(times)) < 1 / 30 + 1e-3


def test_matched_frames_pair_each_latency_with_its_own_frame():
    sent = [(round(k / 10, 4), 100.0 + k / 10) for k in range(30)]
    events = [(100.0 + k / 10 + 0.01 * k, _frame(k / 10, k / 10)) for k in range(1, 30)]
    events[4] = (100.55, _frame(0.5, 0.4567))  # names no sent packet
    events[6] = (100.8, _frame(0.7, None))  # no frame analysed
    events[9] = (101.09, _frame(1.0, 1.0004))  # pts rounding: within a millisecond
    pub = Publication(sent=sent, events=events)
    pairs = [(m.t, round(m.latency, 6)) for m in pub.matched_frames()]
    want = [(k / 10, round(0.01 * k, 6)) for k in range(1, 30) if k not in (5, 7, 10)]
    assert pairs == [*want[:7], (1.0, 0.09), *want[7:]]
    assert pub.frame_latencies() == [m.latency for m in pub.matched_frames()]


def test_closing_tick_after_the_clip_ran_out_is_not_a_frame_latency():
    sent = [(k / 10, 100.0 + k / 10) for k in range(10)]
    events = [(100.0 + k / 10 + 0.02, _frame(k / 10, k / 10)) for k in range(10)]
    events.append((101.42, _frame(0.95, 0.9)))  # closing tick: its frame waited 0.5 s
    ran_out = Publication(sent=sent, events=events, ended_at=100.92, closed_at=101.42)
    assert max(ran_out.frame_latencies()) < 0.03 and len(ran_out.frame_latencies()) == 10
    stopped = Publication(sent=sent, events=events, ended_at=None, closed_at=101.42)
    assert len(stopped.frame_latencies()) == 11


def test_stages_are_over_the_matched_frames():
    sent = [(k / 10, 100.0 + k / 10) for k in range(20)]
    lags = {"frame": 0.02, "wait": 0.001, "face": 0.01, "model": 0.002}
    events = [(100.0 + k / 10 + 0.025, _frame(k / 10, k / 10, **lags)) for k in range(20)]
    events[3] = (100.325, _frame(0.3, 0.333, **lags))
    pub = Publication(sent=sent, events=events)
    matched = pub.matched_frames()
    stages = _stages(pub, matched)
    assert len(matched) == 19
    assert all(len(stages[k]) == 19 for k in STAGES)
    assert np.allclose(stages["transport"], 0.005)


def test_unmatched_frames_do_not_hide_lag_growth():
    # 9 s clip: frames of 3-6 s name no sent packet; the lag grows from 50 to 500 ms.
    sent = [(k / 10, 100.0 + k / 10) for k in range(91) if not 30 < k <= 60]
    events = [
        (100.0 + k / 10 + (0.05 if k <= 60 else 0.5), _frame(k / 10, k / 10)) for k in range(1, 91)
    ]
    report = session_report(Publication(sent=sent, events=events), 9.0, 10.0, has_video=True)
    assert report["lag_drift_ms"] == 450.0 and not report["realtime"]


def _audio_only_session(commit_lag: float) -> Publication:
    sent_audio = [(round(k * 0.02, 4), 100.0 + k * 0.02) for k in range(500)]
    events = [(100.0 + k / 10 + 0.01, _frame(k / 10, None)) for k in range(1, 101)]
    for s in range(1, 10):
        word = {"type": "transcript", "final": True, "t1": float(s), "words": [{"w": "so"}]}
        events.append((100.0 + s + commit_lag * s, word))
    return Publication(sent_audio=sent_audio, events=sorted(events, key=lambda e: e[0]))


def test_audio_only_session_is_judged_by_its_audio_and_writes_no_infinity():
    report = session_report(_audio_only_session(0.0), 10.0, 10.0, has_video=False)
    assert report["realtime"] and report["commit_latency_ms"]["n"] == 9
    assert report["frame_to_event_ms"]["p95"] is None and report["lag_drift_ms"] is None
    json.dumps(report, allow_nan=False)
    lagging = session_report(_audio_only_session(0.3), 10.0, 10.0, has_video=False)
    assert not lagging["realtime"] and lagging["commit_drift_ms"] > 1000


def test_round_without_frame_latencies_writes_null():
    session = {
        "realtime": True,
        "frame_to_event_ms": percentiles([]),
        "commit_latency_ms": percentiles([]),
        "ticks_without_frame": 0.0,
        "wer": None,
        "asr_skipped_hops": 0,
    }
    measured = {"rss_peak_mb": None, "cpu_s": 1.0, "wall_s": 2.0}
    summary = _round_summary(2, measured, [session, session], reference=None, duration=5.0)
    assert summary["frame_to_event_p95_ms"] is None and summary["commit_latency_p95_ms"] is None
    assert summary["rss_peak_mb"] is None
    json.dumps(summary, allow_nan=False)


def test_no_nan_or_infinity_in_results():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": 2}
    assert finite(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": 2}
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    server = ServerProcess.__new__(ServerProcess)
    server.proc = done
    assert server.rss_mb() is None


def test_peak_rss_is_sampled_during_the_session():
    readings = iter([500.0, 900.0, None, 600.0])

    class Server:
        def rss_mb(self) -> float | None:
            return next(readings, 550.0)

    async def session() -> float | None:
        async with PeakRss(Server(), every_s=0.01) as rss:
            await asyncio.sleep(0.1)
        return rss.peak_mb

    async def no_server() -> float | None:
        async with PeakRss(None) as rss:
            await asyncio.sleep(0)
        return rss.peak_mb

    assert asyncio.run(session()) == 900.0
    assert asyncio.run(no_server()) is None


def test_throughput_plot_keeps_the_frame_limit_off_the_commit_axis(tmp_path, monkeypatch):
    from benchmarks import throughput

    plt = pyplot()
    figures = []
    monkeypatch.setattr(
        throughput, "pyplot", lambda: SimpleNamespace(subplots=plt.subplots, close=figures.append)
    )
    commit = [900.0, 2600.0, 5000.0]
    rounds = [
        {
            "sessions": n,
            "realtime": n < 3,
            "frame_to_event_p95_ms": p95,
            "commit_latency_p95_ms": c,
            "cpu_s": 0.7 * n * 10,
            "rss_peak_mb": rss,
        }
        for n, p95, c, rss in zip(
            (1, 2, 3), (58.0, None, 150.0), commit, (800.0, None, 1060.0), strict=True
        )
    ]
    result = {"file": "x.mp4", "clip_s": 10.0, "machine": {"cores": 2}, "max_realtime_sessions": 2}
    throughput._plot({**result, "rounds": rounds}, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0
    (fig,) = figures

    def axes_with(y: list[float]) -> list:
        return [a for a in fig.axes if any(list(ln.get_ydata()) == y for ln in a.get_lines())]

    (limit_ax,) = axes_with([1000.0, 1000.0])
    (commit_ax,) = axes_with(commit)
    assert limit_ax is not commit_ax
    assert any("1000" in ln.get_label() for ln in limit_ax.get_lines())
    plt.close(fig)


async def test_a_refused_events_websocket_is_a_one_line_bench_error(talking_face_mp4, capsys):
    """`bench latency --url` against a server (or proxy) that takes the offer, answers with
    an absolute Location, and refuses the events websocket: a one-line error and exit 1
    (it was a traceback), and the session it opened is deleted at that Location."""
    from aiohttp import web

    from stream.cli import main

    deletes: list[str] = []

    async def offer(request: web.Request) -> web.Response:
        here = f"http://{request.host}"
        headers = {"Location": f"{here}/proxied/whip/abc", "X-Ahstream-Session": "abc"}
        return web.Response(status=201, text="v=0\r\n", headers=headers)

    async def events(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="no\n")

    async def delete(request: web.Request) -> web.Response:
        deletes.append(request.path)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whip", offer)
    app.router.add_get("/sessions/abc/events", events)
    app.router.add_delete("/proxied/whip/abc", delete)
    async with app_on_loopback(app) as url:
        argv = ["bench", "latency", str(talking_face_mp4), "--url", url, "--no-save"]
        code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == "ahstream bench latency: events websocket refused: HTTP 403\n"
    assert deletes == ["/proxied/whip/abc"]
