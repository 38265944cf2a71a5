"""What a WHIP offer may be, and what the servers do with odd requests and ICE servers.

Real `ahstream serve` processes on loopback (one single process, one front with two
workers; tokens on) and real aiortc peers. Both servers run with a small `sitecustomize`
(PYTHONPATH) that records the host names the process resolves for ICE and resolves
``*.ahstream.test`` to loopback, where a STUN responder of this module answers.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from clients.send import send_file
from tests.conftest import ROOT, ServeProcess, http_request

TOKEN = "offers-token-7Hq2"
MAPPED = ("203.0.113.7", 40000)  # the address the STUN responder says a peer has

RESOLVER_HOOK = """
import os, socket

_log = os.environ["AHSTREAM_TEST_DNS_LOG"]
_real = socket.gethostbyname


def gethostbyname(host):
    with open(_log, "a") as f:
        f.write(host + "\\n")
    return "127.0.0.1" if host.endswith(".ahstream.test") else _real(host)


socket.gethostbyname = gethostbyname  # what aioice resolves STUN servers with
"""


class StunResponder:
    """A STUN server on loopback UDP: answers every binding request with ``MAPPED``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[str, int]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from aioice import stun

        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:  # closed
                return
            request = stun.parse_message(data)
            self.requests.append(addr)
            response = stun.Message(
                message_method=stun.Method.BINDING,
                message_class=stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = MAPPED
            self.sock.sendto(bytes(response), addr)

    def close(self) -> None:
        self.sock.close()


def _hooked_env(tmp: Path) -> tuple[dict[str, str], Path]:
    """Environment of a server whose ICE name lookups are logged (and the log file)."""
    (tmp / "sitecustomize.py").write_text(RESOLVER_HOOK)
    log = tmp / "lookups.txt"
    log.touch()
    return {"PYTHONPATH": f"{tmp}:{ROOT}", "AHSTREAM_TEST_DNS_LOG": str(log)}, log


def _token_file(tmp: Path) -> str:
    path = tmp / "tokens"
    path.write_text(TOKEN + "\n")
    return str(path)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """One process, no --ice-server; ``srv.lookups`` is its log of resolved names."""
    tmp = tmp_path_factory.mktemp("single")
    env, log = _hooked_env(tmp)
    server = ServeProcess("--token-file", _token_file(tmp), env=env)
    server.lookups = log
    yield server
    output = server.stop()
    assert "Traceback" not in output, output[-3000:]


@pytest.fixture(scope="module")
def stun_server():
    responder = StunResponder()
    yield responder
    responder.close()


@pytest.fixture(scope="module")
def front(tmp_path_factory, stun_server):
    """A front and two workers, given one STUN server (the responder, by name)."""
    tmp = tmp_path_factory.mktemp("front")
    env, log = _hooked_env(tmp)
    server = ServeProcess(
        "--processes",
        "2",
        "--token-file",
        _token_file(tmp),
        "--ice-server",
        f"stun:stun.ahstream.test:{stun_server.port}",
        env=env,
    )
    server.lookups = log
    yield server
    output = server.stop()
    assert "Traceback" not in output, output[-3000:]


async def _offer(*directions: tuple[str, str]) -> str:
    """A real aiortc offer with one section per (kind, direction); sending sections get
    a track."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind, direction in directions:
        if direction in ("sendonly", "sendrecv"):
            track = AudioStreamTrack() if kind == "audio" else VideoStreamTrack()
            pc.addTransceiver(track, direction=direction)
        else:
            pc.addTransceiver(kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _post(url: str, sdp: str) -> tuple[int, dict[str, str], str]:
    """POST an offer: (status, headers, body)."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/sdp", **_auth()}
    req = urllib.request.Request(url + "/whip", data=sdp.encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def _delete(url: str, location: str) -> int:
    return http_request(url + location, "DELETE", headers=_auth())[0]


def _until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


# -- media sections of an offer -------------------------------------------------------------


async def _assert_a_session(srv, *sections: tuple[str, str]) -> None:
    """An offer of ``sections`` is accepted (201, one session), then ended."""
    status, headers, body = await asyncio.to_thread(_post, srv.url, await _offer(*sections))
    assert status == 201, body
    try:
        assert srv.health()["sessions"] == 1
    finally:
        assert await asyncio.to_thread(_delete, srv.url, headers["Location"]) == 200
    assert _until(lambda: srv.health()["sessions"] == 0)


@pytest.mark.parametrize("kind", ["audio", "video"])
async def test_two_sending_sections_of_one_kind_are_refused(srv, kind):
    """Two audio (or video) tracks would feed one session's buffer, its media time running
    twice as fast: 400 with the reason, and no session. One of each kind is a session."""
    sdp = await _offer((kind, "sendonly"), (kind, "sendonly"))
    status, _, body = await asyncio.to_thread(_post, srv.url, sdp)
    assert status == 400, body
    assert f"sends 2 {kind} tracks" in body and "one audio and one video track" in body
    assert srv.health()["sessions"] == 0
    await _assert_a_session(srv, ("audio", "sendonly"), ("video", "sendonly"))


@pytest.mark.parametrize(
    ("sections", "usable"),
    [
        ((("audio", "recvonly"), ("video", "recvonly")), (("audio", "sendrecv"),)),
        ((("audio", "inactive"),), (("audio", "sendonly"),)),
        (
            (("video", "recvonly"), ("audio", "inactive")),
            (("video", "sendonly"), ("audio", "recvonly")),
        ),
    ],
)
async def test_an_offer_that_sends_nothing_is_refused(srv, sections, usable):
    """A recvonly or inactive offer has no media for a session: 400, no slot held. One
    sending section is enough (others that do not send are ignored)."""
    status, _, body = await asyncio.to_thread(_post, srv.url, await _offer(*sections))
    assert status == 400, body
    assert "sends no audio or video" in body and "sendonly or sendrecv" in body
    assert srv.health()["sessions"] == 0
    await _assert_a_session(srv, *usable)


# -- malformed requests: 4xx, never 500 -------------------------------------------------------


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client would send them): (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _request(method: str, target: str, *headers: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", *headers]
    return b"\r\n".join([*lines, b"Content-Length: 0", b"Connection: close", b"", b""])


#: Authorization values whose bytes are not UTF-8; the last is the service token and one
#: more byte (a front that dropped that byte would let it through).
BAD_TOKENS = [
    b"Bearer \xff\xfe",
    b"Bearer caf\xe9",
    b"Bearer \xed\xa0\x80x",
    b"Bearer " + TOKEN.encode() + b"\xe9",
]


@pytest.mark.parametrize("server", ["srv", "front"])
async def test_a_token_that_is_not_utf8_is_refused_not_a_server_error(server, request):
    """Authorization bytes that are not UTF-8 (or not ASCII) are a wrong token: 401 on
    POST /whip, 403 on a session's events and DELETE; through the front as well."""
    srv = request.getfixturevalue(server)
    status, headers, body = await asyncio.to_thread(
        _post, srv.url, await _offer(("audio", "sendonly"))
    )
    assert status == 201, body
    sid, location = headers["X-Ahstream-Session"], headers["Location"]
    try:
        for token in BAD_TOKENS:
            auth = b"Authorization: " + token
            whip = _request("POST", "/whip", auth, b"Content-Type: application/sdp")
            assert (await asyncio.to_thread(_raw, srv.url, whip))[0] == 401
            events = _request("GET", f"/sessions/{sid}/events", auth)
            assert (await asyncio.to_thread(_raw, srv.url, events))[0] == 403
            delete = _request("DELETE", location, auth)
            assert (await asyncio.to_thread(_raw, srv.url, delete))[0] == 403
        query = _request("GET", f"/sessions/{sid}/events?token=%FF%FE%ED%A0%80")
        assert (await asyncio.to_thread(_raw, srv.url, query))[0] == 403
        assert srv.health()["sessions"] == 1
    finally:
        assert await asyncio.to_thread(_delete, srv.url, location) == 200
    assert "Traceback" not in srv.output


@pytest.mark.parametrize("server", ["srv", "front"])
@pytest.mark.parametrize("target", ["/static/%00.js", "/static/app%00.js"])
def test_a_static_name_with_a_nul_or_control_byte_is_404(server, target, request):
    srv = request.getfixturevalue(server)
    assert _raw(srv.url, _request("GET", target))[0] == 404
    assert _raw(srv.url, _request("GET", "/static/app.js"))[0] == 200
    assert "Traceback" not in srv.output


def _log_line(srv: ServeProcess, needle: str, timeout: float = 10.0) -> str:
    """The first line of the server's log holding ``needle`` (waits for it to be written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in srv.output.splitlines():
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no {needle!r} in the log: {srv.output[-2000:]}")


@pytest.mark.parametrize("server", ["srv", "front"])
def test_a_request_aiohttp_cannot_parse_leaves_its_token_out_of_the_log(server, request):
    """A request line with a control byte in its query (here after a token): 400, and
    aiohttp's log of it names the error's type, at INFO, not the request (it quoted the
    line, token and all, in an ERROR with a traceback)."""
    srv = request.getfixturevalue(server)
    secret = "leak-" + TOKEN[::-1]
    bad = f"GET /sessions/abc/events?token={secret}\x01 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _raw(srv.url, bad.encode())[0] == 400
    line = _log_line(srv, "InvalidURLError")
    assert " INFO aiohttp.server: " in line, line
    assert secret not in srv.output and "Traceback" not in srv.output


async def test_an_offer_whose_body_stalls_holds_no_session_slot(srv):
    """Clients that send an offer's headers and then nothing, as many as the server has
    session slots: a real offer still gets its session (they held the slots for as long
    as they kept the connection open, and every other offer got 503)."""
    slots = srv.health()["max_sessions"]
    host, port = srv.url.removeprefix("http://").split(":")
    head = "\r\n".join(
        [
            "POST /whip HTTP/1.1",
            "Host: 127.0.0.1",
            f"Authorization: Bearer {TOKEN}",
            "Content-Type: application/sdp",
            "Content-Length: 4000",
            "",
            "v=0\r\n",
        ]
    ).encode()
    stalled = [socket.create_connection((host, int(port)), timeout=30) for _ in range(slots)]
    try:
        for s in stalled:
            s.sendall(head)
        await asyncio.sleep(0.5)  # each is in the server's handler, reading its body
        status, headers, answer = await asyncio.to_thread(
            _post, srv.url, await _offer(("audio", "sendonly"))
        )
        assert status == 201, answer
        assert await asyncio.to_thread(_delete, srv.url, headers["Location"]) == 200
    finally:
        for s in stalled:
            s.close()


async def test_a_body_that_does_not_come_in_time_is_408_and_one_cut_off_400():
    """`read_body` on a real aiohttp server: a body still short of its Content-Length
    after the time limit is 408; one whose client closes the connection mid-way is 400
    (it was an unhandled ConnectionResetError: a 500 and an ERROR traceback)."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from stream.serving import read_body

    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        try:
            return web.Response(body=await read_body(request, 1000, timeout_s=0.5))
        except web.HTTPException as exc:
            seen.append(exc.status)
            raise

    app = web.Application()
    app.router.add_post("/", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(head)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        assert status_line.split()[1] == b"408", status_line
        writer.close()
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.05)
        assert seen == [408, 400]
    finally:
        await server.close()


# -- ICE servers: none unless configured ----------------------------------------------------


def _candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def test_the_server_asks_no_stun_server_by_default(srv):
    """aiortc's default ICE servers are Google's STUN server: the server must not resolve
    it, nor any other, and answers with host candidates only."""
    status, headers, answer = await asyncio.to_thread(
        _post, srv.url, await _offer(("audio", "sendonly"))
    )
    assert status == 201, answer
    try:
        candidates = _candidates(answer)
        assert candidates and all(" typ host" in c for c in candidates), candidates
        assert srv.lookups.read_text().split() == []  # no STUN server looked up
    finally:
        assert await asyncio.to_thread(_delete, srv.url, headers["Location"]) == 200


async def test_the_ice_server_option_reaches_the_workers(front, stun_server):
    """`serve --processes 2 --ice-server stun:…`: the worker holding the peer connection
    asks that STUN server, whose reply is in the answer as a server-reflexive candidate."""
    offer = await _offer(("audio", "sendonly"), ("video", "sendonly"))
    locations = []
    try:
        for _ in range(2):  # the least loaded worker takes each: one offer on each
            status, headers, answer = await asyncio.to_thread(_post, front.url, offer)
            assert status == 201, answer
            locations.append(headers["Location"])
            srflx = [c for c in _candidates(answer) if " typ srflx" in c]
            assert srflx and f"{MAPPED[0]} {MAPPED[1]} typ srflx" in srflx[0], answer
        busy = [p["pid"] for p in front.health()["processes"] if p["sessions"]]
        assert len(busy) == 2  # both workers answered with it
        for pid in busy:  # ... which is not on their command lines (TURN passwords)
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"stream.cli" in argv and not any(b"stun" in a for a in argv), argv
    finally:
        for location in locations:
            assert await asyncio.to_thread(_delete, front.url, location) == 200
    assert set(front.lookups.read_text().split()) == {"stun.ahstream.test"}  # nothing else
    assert stun_server.requests


async def test_the_sender_asks_no_stun_server_by_default(srv, audio_only_wav, monkeypatch):
    looked_up: list[str] = []
    real = socket.gethostbyname
    monkeypatch.setattr(socket, "gethostbyname", lambda h: looked_up.append(h) or real(h))
    events = await send_file(audio_only_wav, srv.url, token=TOKEN, duration_s=1.0)
    assert events[-1]["type"] == "session.ended"
    assert looked_up == []


async def test_the_sender_uses_the_ice_server_it_is_given(srv, audio_only_wav, monkeypatch):
    responder = StunResponder()
    real = socket.gethostbyname
    monkeypatch.setattr(
        socket,
        "gethostbyname",
        lambda h: "127.0.0.1" if h == "stun.ahstream.test" else real(h),
    )
    try:
        url = f"stun:stun.ahstream.test:{responder.port}"
        events = await send_file(
            audio_only_wav, srv.url, token=TOKEN, duration_s=1.0, ice_servers=[url]
        )
    finally:
        responder.close()
    assert events[-1]["type"] == "session.ended"
    assert responder.requests  # the sender's binding requests reached it


# -- the command line ---------------------------------------------------------------------


def _silence(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 8000)
    return path


@pytest.mark.parametrize("flags", [["--out-dir", "out"], ["--report", "out"]])
def test_analyze_refuses_two_files_with_one_stem(tmp_path, flags):
    """a/x.wav and b/x.wav would both write out/x.jsonl (or x.png/x.html): refused at
    once, naming both files, before anything is written."""
    a, b = _silence(tmp_path / "a" / "x.wav"), _silence(tmp_path / "b" / "x.wav")
    other = _silence(tmp_path / "a" / "y.wav")
    flags = [flags[0], str(tmp_path / flags[1])]
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "analyze", str(a), str(other), str(b), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ahstream analyze: ")
    assert str(a) in lines[0] and str(b) in lines[0] and flags[0] in lines[0]
    assert not list((tmp_path / "out").glob("*"))


def test_a_path_cannot_forge_a_line_of_the_access_log(srv):
    """The access log writes a path as it was sent: a %0A in it stays %0A, not a new line
    that could pass for one of the server's (any client could write one, with a 404)."""
    fake = "2026-11-23 07:30:00,000 INFO stream.record: session abc: recorded FAKE"
    path = "/sessions/x%0A" + fake.replace(" ", "%20") + "/events"
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert _raw(srv.url, request.encode())[0] == 404
    line = _log_line(srv, "/sessions/x%0A2026-11-23")
    assert "aiohttp.access" in line and " 404 " in line
    assert not [s for s in srv.output.splitlines() if s.startswith("2026-11-23 07:30:00,000")]


async def test_an_offer_the_parser_refuses_is_not_quoted_back_or_logged(srv):
    """aiortc's error for a malformed line quotes it (a name in a candidate, here): the 400
    and the log give the error's type only. Our own reasons are still given in full."""
    sdp = await _offer(("audio", "sendonly"))
    odd = "a=candidate:1 1 udp 2113937151 192.0.2.7 patient-jane-doe typ host\r\n"
    status, _, body = await asyncio.to_thread(_post, srv.url, sdp + odd)
    assert status == 400, body
    assert body == "unusable SDP offer: the SDP could not be used (ValueError)\n"
    _log_line(srv, "rejected WHIP offer: the SDP could not be used (ValueError)")
    assert "patient-jane-doe" not in srv.output
    assert srv.health()["sessions"] == 0
