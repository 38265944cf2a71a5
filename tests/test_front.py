"""`ahstream serve --processes 2`: a front routing WHIP sessions to two worker processes.

A real server (front + two workers with their models) and real aiortc publishers over
loopback; tokens on, so the workers' authentication is exercised through the front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import urllib.request
from typing import Any

import aiohttp
import pytest

from clients.send import SendError, send_file
from stream.cli import build_parser, worker_argv
from stream.front import merge_metrics
from stream.serving import ice_configuration
from tests.conftest import ServeProcess, post_in_parts

TOKEN = "front-token-4Rk9"


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("front") / "tokens"
    tokens.write_text(TOKEN + "\n")
    srv = ServeProcess("--processes", "2", "--token-file", str(tokens), "--max-sessions", "3")
    yield srv
    srv.stop()


def _health(front) -> dict:
    with urllib.request.urlopen(front.url + "/healthz", timeout=10) as r:
        return json.loads(r.read())


def _get(front, path: str, token: str | None = TOKEN) -> tuple[int, str]:
    req = urllib.request.Request(front.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_workers_start_behind_one_front(front):
    h = _health(front)
    assert h["status"] == "ok" and h["profile"] == "lite"
    assert len(h["processes"]) == 2 and all(p["ready"] for p in h["processes"])
    assert len({p["pid"] for p in h["processes"]}) == 2
    assert h["max_sessions"] == 3  # in total, over both workers
    status, page = _get(front, "/", token=None)  # the page comes from a worker
    assert status == 200 and "<html" in page.lower()
    # the worker's page, as it is: this server does not record (no --record)
    assert '<span id="recording" data-records="false">· nothing is recorded</span>' in page


async def test_concurrent_sessions_spread_over_workers_with_full_events(front, audio_only_wav):
    async def one() -> list[dict]:
        return await send_file(audio_only_wav, front.url, token=TOKEN, duration_s=3.0)

    async def spread() -> list[int]:
        # While both calls run, each worker holds one of them.
        for _ in range(100):
            counts = [p["sessions"] for p in _health(front)["processes"]]
            if sum(counts) == 2:
                return counts
            await asyncio.sleep(0.1)
        return counts

    a, b, counts = await asyncio.gather(one(), one(), spread())
    assert sorted(counts) == [1, 1]
    for events in (a, b):
        assert events[0]["type"] == "session.started"
        assert [e for e in events if e["type"] == "frame"]
        assert [e for e in events if e["type"] == "transcript" and e["final"]]
        assert events[-1]["type"] == "session.ended"
    status, text = _get(front, "/metrics")
    assert status == 200
    assert "ahstream_worker_processes 2" in text
    started = [line for line in text.splitlines() if line.startswith("ahstream_sessions_total")]
    assert started and float(started[0].split()[-1]) >= 2.0  # summed over both workers


async def test_auth_and_unknown_sessions_through_the_front(front):
    async with aiohttp.ClientSession() as http:
        async with http.post(
            front.url + "/whip", data=b"v=0\r\n", headers={"Content-Type": "application/sdp"}
        ) as r:
            assert r.status == 401  # the worker's check, passed through
            assert "Bearer" in r.headers.get("WWW-Authenticate", "")
        async with http.get(front.url + "/sessions/nope/events") as r:
            assert r.status == 404
        async with http.delete(
            front.url + "/whip/nope", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 404
        async with http.post(
            front.url + "/whip",
            data=b"not sdp",
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 400
    assert _get(front, "/metrics", token=None)[0] == 401


async def _offer() -> bytes:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(ice_configuration())
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp.encode()


async def test_the_session_limit_is_the_total_over_workers(front):
    """--max-sessions 3 with two workers: five offers at once give three sessions (spread
    over both workers), whichever worker has room; an offer without a token is 401 even
    then; an offer split across TCP segments is read whole by the front."""
    offer = await _offer()
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:

        async def post() -> tuple[int, str | None]:
            async with http.post(front.url + "/whip", data=offer, headers=headers) as r:
                return r.status, r.headers.get("Location")

        got = await asyncio.gather(*(post() for _ in range(5)))
        try:
            assert sorted(s for s, _ in got) == [201, 201, 201, 503, 503], got
            counts = [p["sessions"] for p in _health(front)["processes"]]
            assert sorted(counts) == [1, 2]
            # At the limit, an offer without a valid token is refused as such (401), as
            # one server alone does, not told about the server's capacity (503).
            for auth in ({}, {"Authorization": "Bearer not-a-token"}):
                hdrs = {"Content-Type": "application/sdp", **auth}
                async with http.post(front.url + "/whip", data=offer, headers=hdrs) as r:
                    assert r.status == 401, r.status
                    assert "Bearer" in r.headers.get("WWW-Authenticate", "")
        finally:
            for status, location in got:
                if status == 201:
                    async with http.delete(front.url + location, headers=headers) as r:
                        assert r.status == 200
        status, out = await asyncio.to_thread(post_in_parts, front.url, "/whip", offer, headers)
        assert status == 201
        async with http.delete(front.url + out["Location"], headers=headers) as r:
            assert r.status == 200
    assert _health(front)["sessions"] == 0


def _subscribers(front) -> float:
    """Websocket subscribers of every worker's sessions, as the front's /metrics sums them."""
    status, text = _get(front, "/metrics")
    assert status == 200
    (value,) = re.findall(r"^ahstream_subscribers (\S+)$", text, re.M)
    return float(value)


async def test_plain_gets_of_an_events_url_leave_no_subscription_behind(front):
    """The page's probe() asks the events URL over plain HTTP for the status a refused
    websocket hides: the front answers what the worker says (400, 401, 403) and leaves no
    subscription open on the worker (it used to subscribe upstream first, for good)."""
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(front.url + "/whip", data=await _offer(), headers=headers) as r:
            assert r.status == 201
            location, read = r.headers["Location"], r.headers["X-Ahstream-Read-Token"]
        url = f"{front.url}/sessions/{r.headers['X-Ahstream-Session']}/events"
        try:
            for _ in range(3):
                async with http.get(url, params={"token": read}) as r:
                    assert r.status == 400  # a valid token, but not a websocket handshake
            async with http.get(url) as r:
                assert r.status == 401 and "Bearer" in r.headers.get("WWW-Authenticate", "")
            async with http.get(url, params={"token": "not-the-token"}) as r:
                assert r.status == 403
            for _ in range(5):  # none now, nor a moment later
                assert _subscribers(front) == 0
                await asyncio.sleep(0.1)
            async with http.ws_connect(url, params={"token": read}) as ws:
                assert json.loads((await ws.receive()).data)["type"] == "session.started"
                assert _subscribers(front) == 1  # a real subscriber is counted
            deadline = time.monotonic() + 10
            while _subscribers(front) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert _subscribers(front) == 0  # ... and released with its relay
        finally:
            async with http.delete(front.url + location, headers=headers) as r:
                assert r.status == 200


def test_a_hung_worker_does_not_take_the_page_and_metrics_down(front):
    """A worker that is alive but answers nothing (SIGSTOP): the page, its files and
    /metrics come from the other worker (they were 502 after 30 s); /healthz says
    degraded; when it answers again all is as before."""
    pids = [p["pid"] for p in _health(front)["processes"]]
    os.kill(pids[0], signal.SIGSTOP)  # the first worker: the one the page came from
    try:
        for path in ("/", "/static/app.js"):
            status, body = _get(front, path, token=None)
            assert status == 200 and body, path
        status, text = _get(front, "/metrics")
        assert status == 200
        assert "ahstream_worker_processes 2" in text  # both alive ...
        assert "ahstream_worker_processes_answering 1" in text  # ... one answering
        h = _health(front)
        assert h["status"] == "degraded" and [p["ready"] for p in h["processes"]] == [False, True]
    finally:
        os.kill(pids[0], signal.SIGCONT)
    deadline = time.monotonic() + 30
    while _health(front)["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [p["pid"] for p in _health(front)["processes"]] == pids  # nothing was restarted
    assert "ahstream_worker_processes_answering 2" in _get(front, "/metrics")[1]


async def test_a_worker_that_answers_no_health_check_is_killed(monkeypatch):
    """A worker process that is alive but has answered no health check for HUNG_AFTER_S
    never exits by itself: the front kills it (its supervisor then starts it again).
    Here a real process that listens on the worker's port and never answers."""
    import sys

    import stream.front as front_module
    from stream.front import Front, Worker
    from tests.conftest import free_port

    monkeypatch.setattr(front_module, "HEALTH_EVERY_S", 0.2)
    monkeypatch.setattr(front_module, "HUNG_AFTER_S", 1.5)
    port = free_port()
    listens = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(120)"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", listens, stdout=asyncio.subprocess.PIPE
    )
    front = Front(["serve"], processes=1)
    front.client = aiohttp.ClientSession()
    w = Worker(0, port=port, proc=proc, ready=True)
    front.workers = [w]
    watcher = asyncio.get_running_loop().create_task(front._watch(w))
    try:
        assert await proc.stdout.readline() == b"up\n"
        assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
        assert not w.ready and w.unanswered_since is not None
    finally:
        front.stopping = True
        watcher.cancel()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        await front.client.close()


async def test_a_dead_worker_is_restarted_and_other_sessions_go_on(front, audio_only_wav):
    """SIGKILL the worker of one call during a call on the other: that call ends normally,
    the killed call's subscriber sees its stream close with 1011 and the front's reason
    (it was a normal close, as if the session had ended), the dead worker comes back, and
    the front reports it."""
    ids: dict[str, str] = {}
    started = {"kept": asyncio.Event(), "lost": asyncio.Event()}

    def on(name: str) -> Any:
        def on_session(session_id: str, read_token: str | None) -> None:
            ids[name] = session_id
            started[name].set()

        return on_session

    def busy_pids() -> set[int]:
        return {p["pid"] for p in _health(front)["processes"] if p["sessions"]}

    call = asyncio.ensure_future(
        send_file(audio_only_wav, front.url, token=TOKEN, on_session=on("kept"), duration_s=3.0)
    )
    await asyncio.wait_for(started["kept"].wait(), 60)
    (kept_pid,) = busy_pids()
    lost_call = asyncio.ensure_future(
        send_file(audio_only_wav, front.url, token=TOKEN, on_session=on("lost"), duration_s=30)
    )
    try:
        await asyncio.wait_for(started["lost"].wait(), 60)
        (victim,) = busy_pids() - {kept_pid}  # the least loaded worker took the second call
        types: list[str] = []
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                f"{front.url}/sessions/{ids['lost']}/events",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as ws,
        ):
            first = await ws.receive(timeout=30)
            types.append(json.loads(first.data)["type"])
            os.kill(victim, signal.SIGKILL)
            async for msg in ws:
                types.append(json.loads(msg.data)["type"])
        assert types[0] == "session.started" and "session.ended" not in types
        assert ws.close_code == 1011, (ws.close_code, types)
        with pytest.raises(SendError):
            await asyncio.wait_for(lost_call, 60)
    finally:  # nothing left running if an assertion failed (the loop's close would hang)
        lost_call.cancel()
        with contextlib.suppress(BaseException):
            await lost_call
        events = await call
    assert events[-1]["type"] == "session.ended"
    assert not [e for e in events if e["type"] == "error"]
    deadline = time.monotonic() + 180
    h = _health(front)
    while time.monotonic() < deadline and h["status"] != "ok":
        await asyncio.sleep(1.0)
        h = _health(front)
    assert h["status"] == "ok"
    assert sum(p["restarts"] for p in h["processes"]) == 1
    assert victim not in {p["pid"] for p in h["processes"]}
    # the log counts the victim's one live call (not every session it ever held)
    (line,) = [s for s in front.lines if f"(pid {victim}) exited" in s]
    assert "its live sessions are lost (1 at its last health check)" in line, line


def test_worker_command_line_keeps_the_users_options():
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--processes", "3"]
        + ["--token-file", "/t", "--max-sessions", "5", "--analysis-hz", "5"]
        + ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--record", "/r"]
        + ["--max-fps", "60"]  # its default: the workers' own default is the same
    )
    argv = worker_argv(args)
    assert argv[:3] == ["--log-level", "WARNING", "serve"]
    rest = argv[3:]
    assert dict(zip(rest[::2], rest[1::2], strict=True)) == {
        "--token-file": "/t",
        "--max-sessions": "5",
        "--analysis-hz": "5.0",
        "--record": "/r",  # the workers record, and their page (served by the front) says so
    }
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--processes", "0"])


def test_merge_metrics_sums_samples_with_the_same_labels():
    a = (
        "# HELP ahstream_errors Error events\n# TYPE ahstream_errors counter\n"
        'ahstream_errors_total{code="bad_media"} 2.0\n'
        "# HELP ahstream_sessions_active Live\n# TYPE ahstream_sessions_active gauge\n"
        "ahstream_sessions_active 1.0\n"
    )
    b = (
        "# HELP ahstream_errors Error events\n# TYPE ahstream_errors counter\n"
        'ahstream_errors_total{code="bad_media"} 3.0\n'
        'ahstream_errors_total{code="asr"} 1.0\n'
        "# HELP ahstream_sessions_active Live\n# TYPE ahstream_sessions_active gauge\n"
        "ahstream_sessions_active 2.0\n"
    )
    merged = merge_metrics([a, b])
    assert 'ahstream_errors_total{code="bad_media"} 5.0' in merged
    assert 'ahstream_errors_total{code="asr"} 1.0' in merged
    assert "ahstream_sessions_active 3.0" in merged
    assert merged.count("# TYPE ahstream_errors counter") == 1
