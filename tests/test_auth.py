"""Bearer-token auth: `stream/auth.py` and a real `ahstream serve --token-file` process."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from clients.listen import listen
from clients.send import send_file
from stream.auth import Auth, TokenFileError, load_tokens, parse_token_file
from stream.serving import ice_configuration
from tests.conftest import ROOT, ServeProcess, http_request

TOKEN = "svc-token-Zq8rT2"
READ_TOKENS: list[str] = []


def test_token_file_parsing(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# service tokens\n\n  alpha  \nbeta # the second\n   \n#gamma\n")
    assert parse_token_file(f) == ["alpha", "beta"]
    assert load_tokens(f, environ={"AHSTREAM_TOKENS": " beta, delta ,,"}) == [
        "alpha",
        "beta",
        "delta",
    ]
    assert load_tokens(None, environ={}) == []
    assert load_tokens(None, environ={"AHSTREAM_TOKENS": "x"}) == ["x"]
    with pytest.raises(TokenFileError, match="not found"):
        parse_token_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing here\n\n")
    with pytest.raises(TokenFileError, match="no token"):
        parse_token_file(tmp_path / "empty")


def test_token_comparison_and_read_tokens():
    auth = Auth(["alpha", "beta"])
    assert auth.enabled and not Auth().enabled
    assert auth.is_service("alpha") and auth.is_service("beta")
    assert not auth.is_service("alph") and not auth.is_service("") and not auth.is_service(None)
    assert not auth.is_service("alphä")  # non-ASCII must not raise
    read = auth.issue("s1")
    assert len(read) >= 24 and read != auth.issue("s2")
    assert auth.may_read("s1", read) and auth.may_read("s1", "alpha")
    assert not auth.may_read("s2", read) and not auth.may_read("s1", None)
    assert not auth.is_service(read)
    auth.forget("s1")
    assert not auth.may_read("s1", read)


def test_serve_refuses_public_host_without_tokens():
    env = {k: v for k, v in os.environ.items() if k != "AHSTREAM_TOKENS"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "refusing to bind 0.0.0.0 without authentication" in proc.stderr
    assert "--token-file" in proc.stderr


def test_serve_reports_missing_token_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "serve", "--token-file", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "token file not found" in proc.stderr


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text(f"# test service token\n{TOKEN}\n")
    srv = ServeProcess("--token-file", str(token_file))
    yield srv
    output = srv.stop()
    assert "bearer-token auth on" in output
    for secret in (TOKEN, *READ_TOKENS):  # tokens never reach the logs
        assert secret not in output


def _post(srv, token=None, body=b"hello"):
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http_request(srv.url + "/whip", "POST", body, headers)


def test_whip_requires_a_service_token(auth_server):
    assert auth_server.health()["status"] == "ok"
    status, headers = _post(auth_server)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert _post(auth_server, token="wrong")[0] in (401, 403)
    assert _post(auth_server, token=TOKEN + "x")[0] in (401, 403)
    assert _post(auth_server, token=TOKEN)[0] == 400  # authorized, but not SDP
    assert _post(auth_server, token=TOKEN, body=b"v=0\r\nm=garbage\r\n")[0] == 400
    assert http_request(auth_server.url + "/whip/nope", "DELETE")[0] == 404
    status, _ = http_request(auth_server.url + "/")
    assert status == 200
    health = auth_server.health()
    assert health["status"] == "ok" and health["sessions"] == 0


async def test_unknown_session_events_is_404(auth_server):
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            async with http.get(auth_server.url + "/sessions/nope/events", headers=headers) as r:
                assert r.status == 404
    assert auth_server.health()["status"] == "ok"


async def test_publish_with_token_and_read_token_subscription(auth_server, audio_only_wav):
    seen: dict[str, str | None] = {}

    def on_session(session_id: str, read_token: str | None) -> None:
        seen.update(id=session_id, read=read_token)
        READ_TOKENS.append(read_token or "")

    events = await send_file(
        audio_only_wav, auth_server.url, token=TOKEN, on_session=on_session, duration_s=3.0
    )
    assert events[-1]["type"] == "session.ended"
    assert seen["read"] and seen["read"] != TOKEN
    sid = seen["id"]
    events_url = f"{auth_server.url}/sessions/{sid}/events"

    async with aiohttp.ClientSession() as http:
        for query, headers, expected in (
            ("", {}, 401),
            ("", {"Authorization": "Bearer wrong"}, 403),
            ("?token=wrong", {}, 403),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(events_url + query, headers=headers)
            assert err.value.status == expected
    # a read token of one session does not open another, nor publish
    assert _post(auth_server, token=seen["read"])[0] == 401

    out = io.StringIO()  # `ahstream listen --token <read token>`
    await asyncio.wait_for(listen(events_url, out=out, token=seen["read"]), timeout=20)
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert got[0]["type"] == "session.started" and got[-1]["type"] == "session.ended"
    assert all(e["session"] == sid for e in got)

    out = io.StringIO()  # a browser: the read token as ?token=
    await asyncio.wait_for(listen(f"{events_url}?token={seen['read']}", out=out), timeout=20)
    assert json.loads(out.getvalue().splitlines()[-1])["type"] == "session.ended"

    out = io.StringIO()  # the service token reads every session
    await asyncio.wait_for(listen(events_url, out=out, token=TOKEN), timeout=20)
    assert json.loads(out.getvalue().splitlines()[-1])["type"] == "session.ended"
    assert auth_server.health()["status"] == "ok"


async def _media_less_session(srv) -> tuple[str, str]:
    """A session from a real offer (no media flows): (location, read token)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(ice_configuration())
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp.encode()
    await pc.close()
    status, headers = await asyncio.to_thread(_post, srv, TOKEN, offer)
    assert status == 201
    READ_TOKENS.append(headers["X-Ahstream-Read-Token"])
    return headers["Location"], headers["X-Ahstream-Read-Token"]


async def test_delete_needs_a_token_that_may_read_the_session(auth_server):
    (loc_a, read_a), (loc_b, read_b) = [await _media_less_session(auth_server) for _ in "ab"]
    url = auth_server.url + loc_a

    def delete(token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_request(url, "DELETE", headers=headers)[0]

    assert await asyncio.to_thread(delete, None) == 401
    assert await asyncio.to_thread(delete, "wrong") == 403
    assert await asyncio.to_thread(delete, read_b) == 403  # another session's read token
    assert auth_server.health()["sessions"] == 2  # both still running
    assert await asyncio.to_thread(delete, read_a) == 200
    assert auth_server.health()["sessions"] == 1
    out = io.StringIO()  # its final events, kept for late subscribers
    events_url = auth_server.url + loc_a.replace("/whip/", "/sessions/") + "/events"
    await asyncio.wait_for(listen(events_url, out=out, token=read_a), timeout=20)
    ended = json.loads(out.getvalue().splitlines()[-1])
    assert ended["type"] == "session.ended" and ended["reason"] == "deleted"
    assert http_request(auth_server.url + loc_b, "DELETE", headers=_bearer(TOKEN))[0] == 200
    assert auth_server.health()["sessions"] == 0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_read_tokens_never_look_like_command_line_options():
    auth = Auth(["svc"])
    assert not any(auth.issue(f"s{i}").startswith("-") for i in range(2000))
