"""End to end over loopback: a real aiortc publisher, the real server, real websockets."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from clients.listen import listen
from clients.send import send_file
from models.wer import wer
from tests.conftest import ROOT


def _of(events, kind):
    return [e for e in events if e["type"] == kind]


def _committed(events):
    return " ".join(e["text"] for e in _of(events, "transcript") if e["final"])


def test_live_call_gives_transcript_probabilities_and_decision(live_call_events, speech):
    _, reference = speech
    events = live_call_events
    assert events[0]["type"] == "session.started"
    assert events[-1]["type"] == "session.ended"
    assert all(e["v"] == 1 and e["session"] == events[0]["session"] for e in events)

    status = _of(events, "status")
    assert status and status[-1]["asr_skipped"] == 0  # --no-asr-skip: every hop decoded
    assert wer(reference, _committed(events)) <= 0.15

    frames = _of(events, "frame")
    duration = events[-1]["duration"]
    assert duration == pytest.approx(len(speech[0]) / 16000, abs=1.5)
    assert len(frames) >= 8 * (duration - 1)
    assert all(0.0 <= f["p"] <= 1.0 for f in frames)
    ts = [f["t"] for f in frames]
    assert ts == sorted(ts)
    assert sum(f["modalities"]["video"] for f in frames) >= 0.9 * len(frames)
    assert sum(f["modalities"]["audio"] for f in frames) >= 0.9 * len(frames)

    finals = [v for v in _of(events, "video") if v["final"]]
    assert len(finals) == 1
    assert finals[0]["label"] == int(finals[0]["p"] >= finals[0]["threshold"])
    assert events[-1]["decision"]["label"] == finals[0]["label"]
    assert events[-1]["decision"]["evidence"] == finals[0]["evidence"] == "text"
    for word in (w for t in _of(events, "transcript") for w in t["words"]):
        assert 0.0 <= word["t0"] <= word["t1"] <= duration + 0.5


def _post(url, body, ctype="application/sdp"):
    req = urllib.request.Request(
        url + "/whip", data=body, method="POST", headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_malformed_sdp_is_refused_and_server_keeps_serving(server):
    assert _post(server.url, b"hello") == 400
    assert _post(server.url, b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nm=garbage\r\n") == 400
    assert _post(server.url, b"\xff\xfe\x00") == 400
    assert _post(server.url, b"v=0\r\n", ctype="application/json") == 415
    assert _post(server.url, b"v=0\r\n" + b"a=x\r\n" * 40000) == 413
    assert server.health()["status"] == "ok"
    assert server.health()["sessions"] == 0


async def test_unknown_session_events_is_404(server):
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url + "/sessions/nope/events") as resp:
            assert resp.status == 404


async def test_audio_only_publisher(server, audio_only_wav):
    events = await send_file(audio_only_wav, server.url, duration_s=3.0)
    frames = _of(events, "frame")
    assert frames and not any(f["modalities"]["video"] for f in frames)
    assert any(f["modalities"]["speech"] for f in frames)
    assert _committed(events).strip()
    assert [v for v in _of(events, "video") if v["final"]]
    assert events[-1]["type"] == "session.ended"


async def test_video_only_publisher(server, video_only_mp4):
    events = await send_file(video_only_mp4, server.url)
    frames = _of(events, "frame")
    assert len(frames) >= 8 * 3
    assert all(f["modalities"]["video"] and not f["modalities"]["audio"] for f in frames[5:])
    assert not _of(events, "transcript")
    assert not _of(events, "error")
    assert events[-1]["type"] == "session.ended"


async def test_vanishing_publisher_ends_session_with_final_events(
    server, talking_face_mp4, tmp_path
):
    events_file = tmp_path / "events.jsonl"
    sender = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream.cli",
            "send",
            str(talking_face_mp4),
            "--url",
            server.url,
            "--events",
            str(events_file),
            "--quiet",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        session_id = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and session_id is None:
            await asyncio.sleep(0.2)
            if events_file.exists():
                for line in events_file.read_text().splitlines():
                    e = json.loads(line)
                    # a second in: frames exist, so the final events have a decision to carry
                    if e["type"] == "frame" and e["t"] > 1.0:
                        session_id = e["session"]
        assert session_id, "the sender never got going"
        out = io.StringIO()  # `ahstream listen` is the subscriber here
        listener = asyncio.create_task(
            listen(f"{server.url}/sessions/{session_id}/events", out=out)
        )
        await asyncio.sleep(0.5)
        sender.send_signal(signal.SIGKILL)  # no DELETE, no goodbye
        killed = time.monotonic()
        await asyncio.wait_for(listener, timeout=30)
        got = [json.loads(line) for line in out.getvalue().splitlines()]
        assert got[-1]["type"] == "session.ended"
        assert time.monotonic() - killed < 10.0
        assert [v for v in _of(got, "video") if v["final"]]
        deadline = time.monotonic() + 10
        while server.health()["sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert server.health()["sessions"] == 0
    finally:
        sender.kill()
        sender.wait()
