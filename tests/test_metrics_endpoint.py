"""`GET /metrics` and the back-end example against a real server with tokens, real WHIP calls."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.send import send_file, ws_url
from stream.events import Error, Frame, SessionEnded, SessionStarted, Status
from stream.metrics import ServerMetrics
from tests.conftest import ROOT, ServeProcess

TOKEN = "metrics-svc-token-7Hq2"


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_server_metrics_account_for_events():
    active = [2]
    m = ServerMetrics(active_sessions=lambda: active[0], subscribers=lambda: 3)
    frame = Frame("s1", t=0.1, p=0.5, lags={"tick": 0.25, "face": 0.04, "Bad Stage!": 1.0})
    for event in (
        SessionStarted("s1"),
        frame,
        frame,
        Status("s1", t=5.0, received_video_frames=75, dropped_video_frames=20, rtf=0.4),
        Status("s1", t=10.0, received_video_frames=150, dropped_video_frames=45, rtf=0.5),
        Error("s1", code="bad_media", message="secret words"),
        Error("s1", code="Not A Code!", message="x"),
        SessionEnded("s1", duration=10.5, reason="deleted"),
    ):
        m.observe(event)
    m.observe(object())  # not an event: logged, never raised into the session
    m.subscriber_left(7)
    m.subscriber_left(0)
    text = m.exposition().decode()
    s = parse(text)
    assert value(s, "ahstream_sessions_total") == 1
    assert value(s, "ahstream_sessions_active") == 2
    assert value(s, "ahstream_subscribers") == 3
    assert value(s, "ahstream_sessions_ended_total", reason="deleted") == 1
    assert value(s, "ahstream_media_seconds_total") == 10.5
    assert value(s, "ahstream_frame_events_total") == 2
    assert value(s, "ahstream_events_total", type="frame") == 2
    assert value(s, "ahstream_events_total", type="status") == 2
    assert value(s, "ahstream_events_total", type="session.started") == 1
    assert value(s, "ahstream_events_total", type="session.ended") == 1
    assert value(s, "ahstream_video_frames_received_total") == 150  # cumulative, not 75 + 150
    assert value(s, "ahstream_video_frames_dropped_total") == 45
    assert value(s, "ahstream_stage_lag_seconds_count", stage="tick") == 2
    assert value(s, "ahstream_stage_lag_seconds_sum", stage="tick") == 0.5
    assert value(s, "ahstream_stage_lag_seconds_bucket", stage="tick", le="0.3") == 2
    assert value(s, "ahstream_stage_lag_seconds_bucket", stage="tick", le="0.2") == 0
    assert value(s, "ahstream_stage_lag_seconds_count", stage="face") == 2
    assert value(s, "ahstream_stage_lag_seconds_count", stage="other") == 2
    assert value(s, "ahstream_asr_rtf_count") == 2
    assert value(s, "ahstream_asr_rtf_sum") == pytest.approx(0.9)
    assert value(s, "ahstream_errors_total", code="bad_media") == 1
    assert value(s, "ahstream_errors_total", code="other") == 1
    assert value(s, "ahstream_subscriber_dropped_events_total") == 7
    assert "secret" not in text and "s1" not in text


def _get(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, "", ""


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("metrics") / "tokens"
    tokens.write_text(TOKEN + "\n")
    srv = ServeProcess("--token-file", str(tokens))
    yield srv
    srv.stop()


def test_metrics_move_after_a_live_session(token_server, talking_face_mp4):
    url = token_server.url
    assert _get(url)[0] == 401
    assert _get(url, "wrong")[0] == 401
    status, ctype, before_text = _get(url, TOKEN)
    assert status == 200 and ctype.startswith("text/plain")
    before = parse(before_text)

    read_tokens = []
    events = asyncio.run(
        send_file(
            talking_face_mp4,
            url,
            token=TOKEN,
            duration_s=6.5,
            on_session=lambda sid, read: read_tokens.append(read),
        )
    )
    assert events[-1]["type"] == "session.ended"
    assert read_tokens[0] and _get(url, read_tokens[0])[0] == 401  # read tokens do not open it

    deadline = time.monotonic() + 10
    while True:
        after_text = _get(url, TOKEN)[2]
        after = parse(after_text)
        if value(after, "ahstream_sessions_active") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    frames = [e for e in events if e["type"] == "frame"]
    statuses = [e for e in events if e["type"] == "status"]
    assert len(frames) > 40 and statuses
    assert value(after, "ahstream_sessions_active") == 0
    assert value(after, "ahstream_subscribers") == 0
    assert delta("ahstream_sessions_total") == 1
    assert delta("ahstream_sessions_ended_total", reason="deleted") == 1
    assert delta("ahstream_media_seconds_total") == pytest.approx(events[-1]["duration"])
    dropped = delta("ahstream_subscriber_dropped_events_total")
    assert len(frames) <= delta("ahstream_frame_events_total") <= len(frames) + dropped
    assert delta("ahstream_events_total", type="frame") == delta("ahstream_frame_events_total")
    ticks = delta("ahstream_stage_lag_seconds_count", stage="tick")
    assert ticks >= sum("tick" in f["lags"] for f in frames) > 0
    assert delta("ahstream_stage_lag_seconds_sum", stage="tick") > 0
    assert delta("ahstream_asr_rtf_count") == sum(s.get("rtf") is not None for s in statuses)
    assert delta("ahstream_video_frames_received_total") == statuses[-1]["received_video_frames"]
    assert delta("ahstream_video_frames_received_total") > 50
    assert delta("ahstream_video_frames_dropped_total") == statuses[-1]["dropped_video_frames"]
    # no health data: neither the words said nor the session id
    session = events[0]["session"]
    words = {w["w"] for e in events if e["type"] == "transcript" for w in e["words"]}
    assert session not in after_text
    assert not [w for w in words if len(w) > 4 and w in after_text]


def test_backend_example_follows_a_live_session(token_server, talking_face_mp4):
    """clients/examples/backend.py, run as a user would, against a call being published."""

    async def run():
        created = asyncio.get_running_loop().create_future()
        sender = asyncio.create_task(
            send_file(
                talking_face_mp4,
                token_server.url,
                token=TOKEN,
                duration_s=5.0,
                on_session=lambda sid, read: created.set_result((sid, read)),
            )
        )
        session, read = await asyncio.wait_for(created, 60)
        backend = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "clients" / "examples" / "backend.py"),
            ws_url(token_server.url, f"/sessions/{session}/events"),
            "--token",
            read,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        events = await sender
        out, err = await asyncio.wait_for(backend.communicate(), 60)
        return events, backend.returncode, out.decode(), err.decode()

    events, code, out, err = asyncio.run(run())
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"session {events[0]['session']} started")
    summary = json.loads(lines[-1])
    ended = events[-1]
    assert summary["session"] == ended["session"]
    assert summary["decision"] == ended["decision"] and summary["reason"] == "deleted"
    assert summary["duration"] == ended["duration"]
    assert len(summary["segments"]) == sum(e["type"] == "segment" for e in events)
    assert sum(summary["cues"].values()) == sum(e["type"] == "cue" for e in events)
