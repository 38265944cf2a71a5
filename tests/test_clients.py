"""`ahstream send` and `ahstream listen` when things go wrong: refusals, bad servers, Ctrl-C.

A real `ahstream serve --token-file` process wherever it can show the behaviour; a small
aiohttp server only for what a real server never does (a non-JSON event, an absolute
Location, an unusable answer, a refused DELETE, a stream that stops early or goes silent).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

import clients.listen
import clients.send
from clients.listen import ListenError, listen
from clients.send import SendError, send_file, ws_url
from stream.cli import main
from stream.serving import ice_configuration
from tests.conftest import ROOT, ServeProcess, app_on_loopback, http_request

TOKEN = "svc-token-clients-Hk4"
SECRET = "SECRET-wrong-token-7Qz"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server with tokens whose idle watchdog is far away: only a DELETE ends a session
    within a few seconds."""
    token_file = tmp_path_factory.mktemp("tokens") / "tokens"
    token_file.write_text(f"{TOKEN}\n")
    server = ServeProcess("--token-file", str(token_file), "--idle-timeout", "120")
    yield server
    output = server.stop()
    assert SECRET not in output and TOKEN not in output


def _media_less_session(srv: ServeProcess) -> tuple[str, str]:
    """A session from a real offer with no media flowing: (session id, location)."""

    async def offer() -> str:
        pc = RTCPeerConnection(ice_configuration())
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    status, got = http_request(srv.url + "/whip", "POST", asyncio.run(offer()).encode(), headers)
    assert status == 201
    return got["X-Ahstream-Session"], got["Location"]


def _delete(srv: ServeProcess, location: str) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return http_request(srv.url + location, "DELETE", headers=headers)[0]


@pytest.fixture(scope="module")
def ended_session(srv):
    """The id of a session ended by DELETE: its events (and read token) linger on."""
    session_id, location = _media_less_session(srv)
    assert _delete(srv, location) == 200
    return session_id


def _until(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll ``check`` until it returns something true (or time is up: its last value)."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def _deleted(srv: ServeProcess) -> set[str]:
    """Ids of the sessions the server closed because of a DELETE."""
    return set(re.findall(r"session (\w+): closing \(deleted\)", srv.output))


def _sessions(srv: ServeProcess) -> int:
    return srv.health()["sessions"]


def _cli(*args: Any) -> list[str]:
    return [sys.executable, "-m", "stream.cli", *map(str, args)]


def _interruptible() -> None:
    """Ctrl-C as at a terminal: a test run started in the background (`pytest &` in a
    script) ignores SIGINT, and its children would inherit that and never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_refused_subscription_is_one_line_and_ends_the_session(
    srv, ended_session, audio_only_wav, tmp_path, monkeypatch, capsys
):
    # Subscribe to another session's events with this session's read token: the real
    # server answers 403 on the websocket after it has accepted the call.
    real_ws_url = clients.send.ws_url
    monkeypatch.setattr(
        clients.send,
        "ws_url",
        lambda base, _: real_ws_url(base, f"/sessions/{ended_session}/events"),
    )
    earlier = tmp_path / "events.jsonl"
    earlier.write_text("an earlier recording\n")
    before = _deleted(srv)
    argv = ["send", audio_only_wav, "--url", srv.url, "--token", TOKEN, "--events", earlier]
    assert main([*map(str, argv), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "ahstream send: events websocket refused: 403 Forbidden"
    assert "Traceback" not in err
    assert earlier.read_text() == "an earlier recording\n"  # opened only once subscribed
    # the sender ended its session with DELETE: not the idle watchdog (120 s away)
    assert len(_until(lambda: _deleted(srv) - before)) == 1
    assert _until(lambda: _sessions(srv) == 0)


def test_refused_offer_keeps_an_earlier_recording(srv, audio_only_wav, tmp_path):
    earlier = tmp_path / "events.jsonl"
    earlier.write_text("an earlier recording\n")
    run = subprocess.run(
        _cli("send", audio_only_wav, "--url", srv.url, "--events", earlier),  # no token: 401
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("ahstream send: server refused the offer: HTTP 401")
    assert earlier.read_text() == "an earlier recording\n"


async def test_failing_event_handler_ends_the_session(srv, audio_only_wav):
    created: list[str] = []

    def on_event(event: dict[str, Any]) -> None:
        raise RuntimeError("a bug in the caller's handler")

    with pytest.raises(SendError, match="event handler failed on a session.started event"):
        await send_file(
            audio_only_wav,
            srv.url,
            token=TOKEN,
            on_event=on_event,
            on_session=lambda sid, _: created.append(sid),
        )
    assert await asyncio.to_thread(_until, lambda: created[0] in _deleted(srv))
    assert await asyncio.to_thread(_until, lambda: _sessions(srv) == 0)


def test_ctrl_c_during_send_ends_the_session(srv, audio_only_wav, tmp_path):
    events = tmp_path / "events.jsonl"
    sender = subprocess.Popen(
        _cli("send", audio_only_wav, "--url", srv.url, "--token", TOKEN, "--events", events),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        started = _until(lambda: events.exists() and events.read_text().strip(), 90)
        assert started, "the sender never got going"
        session_id = json.loads(started.splitlines()[0])["session"]
        assert _sessions(srv) == 1
        sender.send_signal(signal.SIGINT)
        stdout, stderr = sender.communicate(timeout=60)
    finally:
        sender.kill()
    assert sender.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "ahstream send: interrupted"
    assert stdout == ""
    assert _until(lambda: session_id in _deleted(srv))  # ended by its DELETE
    assert _until(lambda: _sessions(srv) == 0, 10)
    # the DELETE returns once the session is finalized: its last event came in time
    last = json.loads(events.read_text().splitlines()[-1])
    assert last["type"] == "session.ended" and last["session"] == session_id
    assert last["reason"] == "deleted"  # recorded before the tracks end with the connection


def test_listen_refusals_are_plain_and_never_show_the_token(srv, ended_session):
    url = f"{srv.url}/sessions/{ended_session}/events"
    run = subprocess.run(
        _cli("listen", f"{url}?token={SECRET}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (
        "ahstream listen: the server refused the subscription: 403 "
        "(this token may not read this session)\n"
    )

    async def refusal(url: str) -> str:
        with pytest.raises(ListenError) as err:
            await listen(url, out=io.StringIO())
        return str(err.value)

    assert asyncio.run(refusal(url)) == (
        "the server refused the subscription: 401 (a token is required: pass --token)"
    )
    unknown = f"{srv.url}/sessions/nope/events?token={SECRET}"
    assert (
        asyncio.run(refusal(unknown))
        == "the server refused the subscription: 404 (no such session)"
    )
    out = io.StringIO()  # the service token reads it: its final events were kept
    assert asyncio.run(listen(url, out=out, token=TOKEN)) is True
    assert json.loads(out.getvalue().splitlines()[-1])["reason"] == "deleted"

    run = subprocess.run(
        _cli("listen", f"http://127.0.0.1:99999/sessions/x/events?token={SECRET}"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.startswith("ahstream listen: invalid URL: ")
    assert SECRET not in run.stderr


def test_ctrl_c_during_listen(srv, tmp_path):
    session_id, location = _media_less_session(srv)
    printed = tmp_path / "listen.jsonl"
    try:
        with printed.open("w") as out:
            listener = subprocess.Popen(
                _cli("listen", f"{srv.url}/sessions/{session_id}/events", "--token", TOKEN),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=_interruptible,
            )
            try:
                assert _until(lambda: printed.read_text().strip(), 90), "listen printed nothing"
                listener.send_signal(signal.SIGINT)
                _, stderr = listener.communicate(timeout=60)
            finally:
                listener.kill()
    finally:
        assert _delete(srv, location) == 200
    assert listener.returncode == 130, stderr
    assert stderr == "ahstream listen: interrupted\n"
    assert json.loads(printed.read_text().splitlines()[0])["type"] == "session.started"


# A small server for what a real one never does


def _started() -> str:
    started = {"v": 1, "type": "session.started", "session": "abc", "models": {}}
    return json.dumps({**started, "profile": "lite", "analysis_hz": 10.0, "context": None})


class FakeServer:
    """WHIP + events with a chosen misbehaviour; records the DELETEs it receives."""

    def __init__(
        self,
        *,
        events: str = "normal",
        absolute_location: bool = False,
        answer: str | None = None,
        delete_status: int = 200,
        same_errors: bool = False,
    ) -> None:
        # normal | not_json | close | silent | drop_once (the first subscription closes
        # after session.started, the next get its replay, then the rest) | drop_always |
        # drop_then_gone (the first closes, later ones are refused with 404) | lost (closes
        # with 1011, as a front whose worker died) | ended_early (session.ended "max
        # duration" with a decision, at once)
        self.events = events
        self.subscriptions = 0
        self.contexts: list[tuple[str | None, str | None]] = []  # (?context=, header)
        self.absolute_location = absolute_location
        self.answer = answer
        self.delete_status = delete_status
        # the same error event twice after session.started (as a server repeats a message
        # per rejected frame): a later subscription gets both as replay, then a third, new
        self.same_errors = same_errors
        self.deletes: list[tuple[str, str | None]] = []
        self.deleted = asyncio.Event()
        self.stopping = asyncio.Event()
        self.pcs: list[RTCPeerConnection] = []
        self.url = ""

    async def whip(self, request: web.Request) -> web.Response:
        self.contexts.append(
            (request.query.get("context"), request.headers.get("X-Ahstream-Context"))
        )
        pc = RTCPeerConnection(ice_configuration())
        self.pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        location = "/resources/abc"
        if self.absolute_location:
            location = self.url + location
        return web.Response(
            status=201,
            content_type="application/sdp",
            text=self.answer if self.answer is not None else pc.localDescription.sdp,
            headers={"Location": location, "X-Ahstream-Read-Token": "RT"},
        )

    async def delete(self, request: web.Request) -> web.Response:
        self.deletes.append((request.path, request.headers.get("Authorization")))
        if self.delete_status != 200:
            return web.Response(status=self.delete_status, text="unknown session\n")
        self.deleted.set()
        return web.Response(status=200)

    async def subscribe(self, request: web.Request) -> web.WebSocketResponse:
        self.subscriptions += 1
        if self.events == "drop_then_gone" and self.subscriptions > 1:
            raise web.HTTPNotFound(text="unknown session\n")
        ws = web.WebSocketResponse(autoping=self.events != "silent")
        await ws.prepare(request)
        await ws.send_str(_started())
        if self.same_errors:
            error = {"v": 1, "type": "error", "session": "abc", "code": "bad_media"}
            message = json.dumps({**error, "message": "audio frame rejected"})
            for _ in range(2 if self.subscriptions == 1 else 3):
                await ws.send_str(message)
        dropping = self.events in ("drop_always", "drop_then_gone") or (
            self.events == "drop_once" and self.subscriptions == 1
        )
        if self.events == "close" or dropping:
            await ws.close()
            return ws
        if self.events == "not_json":
            await ws.send_str("not json")
        if self.events == "lost":
            await ws.close(code=1011, message=b"the session's worker process died")
            return ws
        if self.events == "ended_early":
            decision = {"p": 0.7, "label": 1, "threshold": 0.6, "method": "final"}
            ended = {"v": 1, "type": "session.ended", "session": "abc", "duration": 0.4}
            await ws.send_str(json.dumps({**ended, "reason": "max duration", "decision": decision}))
            await ws.close()
            return ws
        done = asyncio.ensure_future(self.deleted.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([done, stop], return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        stop.cancel()
        if self.deleted.is_set() and not ws.closed:
            ended = {"v": 1, "type": "session.ended", "session": "abc", "reason": "deleted"}
            await ws.send_str(json.dumps({**ended, "duration": 1.0}))
        await ws.close()
        return ws


@contextlib.asynccontextmanager
async def fake_server(**behaviour: Any) -> AsyncIterator[FakeServer]:
    fake = FakeServer(**behaviour)
    app = web.Application()
    app.router.add_post("/whip", fake.whip)
    app.router.add_delete("/resources/{id}", fake.delete)
    app.router.add_get("/sessions/{id}/events", fake.subscribe)
    async with app_on_loopback(app) as fake.url:
        try:
            yield fake
        finally:
            fake.stopping.set()
            for pc in fake.pcs:
                await pc.close()


async def test_send_names_its_session_and_fails_when_it_ends_without_a_decision(tmp_path):
    """`ahstream send` says which session it created (to watch it in the page) and exits 1
    when the session ends with no decision, saying so; `--quiet` prints only the summary."""
    import wave

    short = tmp_path / "short.wav"
    with wave.open(str(short), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(2 * 16000))  # 1 s of silence
    async with fake_server() as fake:  # ends the session ("deleted") without a decision
        for quiet in ((), ("--quiet",)):
            proc = await asyncio.create_subprocess_exec(
                *_cli("send", short, "--url", fake.url, *quiet),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            fake.deleted.clear()
            stderr = err.decode()
            assert proc.returncode == 1, stderr
            assert json.loads(out) == {"events": 2, "session_ended": True, "decision": None}
            lines = stderr.splitlines()
            assert lines[-1] == "ahstream send: the session ended (deleted) without a decision"
            if quiet:  # failures only
                assert len(lines) == 1
                continue
            assert lines[0] == (
                f"session abc (watch it at {fake.url}/?session=abc; its read token: RT)"
            )


async def test_absolute_location_is_where_the_delete_goes(audio_only_wav):
    async with fake_server(absolute_location=True) as fake:
        events = await send_file(audio_only_wav, fake.url, duration_s=1.0)
    assert events[-1]["type"] == "session.ended"
    assert fake.deletes == [("/resources/abc", "Bearer RT")]


async def test_non_json_event_is_a_send_error_and_the_session_is_deleted(audio_only_wav):
    async with fake_server(events="not_json") as fake:
        with pytest.raises(SendError, match="the server sent an event that is not JSON"):
            await send_file(audio_only_wav, fake.url)
    assert fake.deletes == [("/resources/abc", "Bearer RT")]


async def test_unusable_answer_is_a_send_error_and_the_session_is_deleted(audio_only_wav):
    async with fake_server(answer="v=0\r\nthis is no answer\r\n") as fake:
        with pytest.raises(SendError, match="unusable SDP answer"):
            await send_file(audio_only_wav, fake.url)
    assert fake.deletes == [("/resources/abc", "Bearer RT")]


async def test_refused_delete_is_a_send_error(audio_only_wav, monkeypatch):
    monkeypatch.setattr(clients.send, "CLEANUP_TIMEOUT_S", 0.5)
    async with fake_server(delete_status=404) as fake:
        with pytest.raises(SendError, match=r"\(DELETE\) failed: 404 Not Found: unknown session"):
            await send_file(audio_only_wav, fake.url, duration_s=1.0)
    assert fake.deletes == [("/resources/abc", "Bearer RT")]  # sent once, not retried


async def test_a_dropped_events_socket_is_reopened_without_duplicates(audio_only_wav, tmp_path):
    """The events websocket drops while the file is published: the sender subscribes again
    (same read token); the replayed session.started is neither kept nor written twice."""
    out = tmp_path / "events.jsonl"
    async with fake_server(events="drop_once") as fake:
        events = await send_file(audio_only_wav, fake.url, duration_s=2.0, events_out=out)
    assert [e["type"] for e in events] == ["session.started", "session.ended"]
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == [
        "session.started",
        "session.ended",
    ]
    assert fake.subscriptions == 2
    assert fake.deletes == [("/resources/abc", "Bearer RT")]
    assert out.stat().st_mode & 0o777 == 0o600  # events hold transcripts: owner only


async def test_identical_events_are_all_kept_and_only_the_replay_is_skipped(audio_only_wav):
    """Events carry no sequence number: the same error twice is two events, on the first
    socket as on a reopened one, where only the replay of what came before is skipped."""
    async with fake_server(same_errors=True) as fake:
        events = await send_file(audio_only_wav, fake.url, duration_s=1.0)
    assert [e["type"] for e in events] == ["session.started", "error", "error", "session.ended"]
    async with fake_server(events="drop_once", same_errors=True) as fake:
        events = await send_file(audio_only_wav, fake.url, duration_s=2.0)
    assert fake.subscriptions == 2
    assert [e["type"] for e in events] == ["session.started", *["error"] * 3, "session.ended"]


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("drop_always", r"could not be reopened \(3 attempts; last: it closed again"),
        ("drop_then_gone", r"reopening it was refused: 404 Not Found"),
    ],
)
async def test_events_that_cannot_be_reopened_end_the_call_with_a_reason(
    audio_only_wav, monkeypatch, behaviour, why
):
    monkeypatch.setattr(clients.send, "RESUBSCRIBE_S", (0.05, 0.1, 0.2), raising=False)
    async with fake_server(events=behaviour) as fake:
        with pytest.raises(SendError, match="events websocket closed before session.ended"):
            try:
                await send_file(audio_only_wav, fake.url)
            except SendError as exc:
                assert re.search(why, str(exc)), exc
                raise
    assert fake.subscriptions == (4 if behaviour == "drop_always" else 2)
    assert fake.deletes == [("/resources/abc", "Bearer RT")]  # the call was ended


async def test_a_context_with_newlines_is_sent_on_one_line(audio_only_wav):
    """A multi-line context is no header error: it goes as ?context=, as the page sends it."""
    context = "  What do you think\nabout   exercising\tmore? ¿Sí?\r\n"
    async with fake_server() as fake:
        events = await send_file(audio_only_wav, fake.url, duration_s=1.0, context=context)
    assert events[-1]["type"] == "session.ended"
    assert fake.contexts == [("What do you think about exercising more? ¿Sí?", None)]


async def _backend(url: str, *args: str) -> tuple[int, str, str]:
    """clients/examples/backend.py run as a user would: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "clients" / "examples" / "backend.py"),
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backend_example_refusals_and_failures_are_one_line():
    """A refused token or an unreachable server: one line on stderr, exit 1, no traceback
    and no token (it used to die with a websockets traceback)."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403, text="this token may not read this session\n")

    async def array(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("[1, 2]")  # JSON, but not an event object
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/sessions/{id}/events", refuse)
    app.router.add_get("/array/{id}/events", array)
    async with app_on_loopback(app) as url:
        port = int(url.rsplit(":", 1)[1])
        refused = await _backend(f"ws://127.0.0.1:{port}/sessions/abc/events", "--token", "T0K")
        not_object = await _backend(f"ws://127.0.0.1:{port}/array/abc/events")
    # the same port, closed now: nothing listens there
    down = await _backend(f"ws://127.0.0.1:{port}/sessions/abc/events?token=T0K")
    async with fake_server(events="close") as fake:
        cut = await _backend(ws_url(fake.url, "/sessions/abc/events"))
    assert refused == (
        1,
        "",
        "backend.py: the server refused the subscription: 403 "
        "(this token may not read this session)\n",
    )
    assert not_object[0] == 1 and not_object[2] == (
        "backend.py: the server sent a message that is not a JSON object\n"
    ), not_object
    code, out, err = down
    assert code == 1 and out == "" and len(err.splitlines()) == 1, down
    assert err.startswith(f"backend.py: cannot subscribe to ws://127.0.0.1:{port}/sessions/abc/")
    assert "T0K" not in err and "Traceback" not in err
    code, out, err = cut  # closed before session.ended: the partial summary, and why
    assert code == 1 and out.startswith("session abc started (lite)\n"), cut
    assert json.loads(out.splitlines()[-1])["decision"] is None
    assert err == "backend.py: the event stream ended before session.ended\n"
    for malformed in ("http://[::1", "ws://[::1/sessions/abc/events?token=T0K", "notaurl"):
        code, out, err = await _backend(malformed)  # the first two were a traceback
        assert (code, out) == (2, ""), (malformed, err)
        assert err == f"backend.py: invalid URL: {malformed.replace('?token=T0K', '?…')}\n"


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ("close", "the event stream ended before session.ended"),
        # a front closes a subscriber with 1011 when the session's worker dies: said so, with
        # the code and reason, not as if the stream merely stopped
        ("lost", "the server closed the event stream with 1011: the session's worker process died"),
    ],
)
async def test_listen_exits_1_when_the_stream_stops_before_session_ended(events, message):
    async with fake_server(events=events) as fake:
        proc = await asyncio.create_subprocess_exec(
            *_cli("listen", f"{fake.url}/sessions/abc/events"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 1
    assert json.loads(stdout)["type"] == "session.started"
    assert stderr.decode() == f"ahstream listen: {message}\n"


async def test_listen_gives_up_on_a_silent_connection(monkeypatch):
    monkeypatch.setattr(clients.listen, "HEARTBEAT_S", 0.5)  # the server answers no ping
    async with fake_server(events="silent") as fake:
        out = io.StringIO()
        ended = await asyncio.wait_for(listen(f"{fake.url}/sessions/abc/events", out=out), 60)
    assert ended is False and json.loads(out.getvalue())["type"] == "session.started"


async def test_a_server_that_never_answers_is_given_up_on(audio_only_wav, monkeypatch):
    """A server that accepts connections and never answers: `send` and `listen` fail with
    one clear reason once the request timeout passes. `send` waited aiohttp's 5 minutes,
    then crashed with a TimeoutError traceback."""
    import socket

    import aiohttp

    silent = socket.socket()  # the kernel completes the handshakes; nobody reads
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    short = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=1.0)
    monkeypatch.setattr(clients.send, "REQUEST_TIMEOUT", short)
    monkeypatch.setattr(clients.listen, "REQUEST_TIMEOUT", short)
    try:
        started = time.monotonic()
        with pytest.raises(SendError, match=r"cannot reach http://127\.0\.0\.1:\d+: Timeout"):
            await send_file(audio_only_wav, url)
        with pytest.raises(ListenError, match="Timeout"):
            await listen(f"{url}/sessions/abc/events", out=io.StringIO())
        assert time.monotonic() - started < 20
    finally:
        silent.close()


async def test_send_fails_when_the_server_ends_the_session_before_the_file_is_sent(
    audio_only_wav,
):
    """A session ended by the server (max duration, idle, a failed connection) while the
    file was still playing: the summary and its decision are printed, but the exit is 1
    and stderr says the file was cut short (it used to exit 0)."""
    async with fake_server(events="ended_early") as fake:
        proc = await asyncio.create_subprocess_exec(
            *_cli("send", audio_only_wav, "--url", fake.url, "--quiet"),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    assert json.loads(out)["decision"]["p"] == 0.7
    assert err.decode() == (
        "ahstream send: the server ended the session (max duration) before the file was "
        "sent; the decision covers its first 0.4 s\n"
    )


def test_send_refuses_to_overwrite_the_file_it_sends_and_urls_without_a_scheme(
    audio_only_wav, tmp_path, capsys
):
    victim = tmp_path / "call.wav"
    victim.write_bytes(audio_only_wav.read_bytes())
    before = victim.read_bytes()
    assert main(["send", str(victim), "--events", str(victim)]) == 2
    assert victim.read_bytes() == before
    assert "is the file being sent: it would be overwritten" in capsys.readouterr().err
    assert main(["send", str(victim), "--url", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == (
        "ahstream send: --url 127.0.0.1:9: give the scheme, e.g. http://127.0.0.1:9\n"
    )


async def test_a_phone_recording_is_sent_upright(tmp_path):
    """WebRTC carries no display rotation: `send` turns a phone's sideways or upside-down
    frames as its tag says before sending them, and leaves untagged frames alone."""
    import numpy as np
    from aiortc.contrib.media import MediaPlayer

    from clients.send import SentVideo
    from tests.mediafiles import astronaut_frames, tag_rotation, write_media

    upright = astronaut_frames(1)[0]
    for turn in (0, 90, 180, 270):
        stored = np.ascontiguousarray(np.rot90(upright, turn // 90))
        clip = write_media(tmp_path / f"phone_{turn}.mp4", None, [stored] * 3, fps=10)
        if turn:
            tag_rotation(clip, turn)
        track = SentVideo(MediaPlayer(str(clip)).video)
        try:
            frame = await track.recv()
        finally:
            track.stop()
        rgb = frame.to_ndarray(format="rgb24")
        assert rgb.shape == upright.shape, turn
        assert np.abs(rgb.astype(int) - upright).mean() < 6.0, turn


async def test_a_mono_file_is_sent_at_its_own_level(tmp_path):
    """aiortc's MediaPlayer turns a mono file into stereo at -3 dB per channel; the server
    averages the channels (a browser's mono voice arrives as two equal channels at full
    level), so `send` puts the 3 dB back for a mono file: what arrives is the file's level."""
    import wave

    import numpy as np
    from aiortc.contrib.media import MediaPlayer

    from clients.send import SentAudio

    tone = (0.5 * 32767 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype("<i2")
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone.tobytes())
    peaks = {}
    for name in ("player", "sent"):
        player = MediaPlayer(str(path))
        track = player.audio if name == "player" else SentAudio(player.audio, 2**0.5)
        frames = [await track.recv() for _ in range(25)]
        track.stop()
        both = np.concatenate([f.to_ndarray().reshape(-1, 2) for f in frames])
        assert frames[0].layout.name == "stereo"
        assert np.array_equal(both[:, 0], both[:, 1])
        peaks[name] = np.abs(both).max() / 32767
    assert peaks["player"] == pytest.approx(0.5 / 2**0.5, abs=0.01)
    assert peaks["sent"] == pytest.approx(0.5, abs=0.01)
