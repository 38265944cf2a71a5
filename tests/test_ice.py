"""`--ice-server` of `ahstream serve` and `ahstream send`: which URLs are taken, how they reach
aiortc, and how the command line refuses the others (the live checks, a server asking no
STUN server by default and one given to a front reaching its workers, are in
tests/test_whip_offers.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stream.cli import build_parser, worker_argv
from tests.conftest import ROOT


def _ahstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        env={**os.environ, "AHSTREAM_TOKENS": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ice_server_urls_become_aiortc_ice_servers():
    from aiortc.rtcicetransport import connection_kwargs

    from stream.serving import ice_configuration, ice_server

    assert ice_configuration().iceServers == []  # aiortc's own default: Google's STUN
    stun = ice_server("stun:stun.example.org:3478")
    assert (stun.urls, stun.username, stun.credential) == ("stun:stun.example.org:3478", None, None)
    turn = ice_server("turn:alice:s%40cret:x@turn.example.org?transport=tcp")
    assert turn.urls == "turn:turn.example.org?transport=tcp"
    assert (turn.username, turn.credential) == ("alice", "s@cret:x")
    config = ice_configuration(["stun:stun.example.org", "turns:bob:pw@turn.example.org:443"])
    assert connection_kwargs(config.iceServers) == {
        "stun_server": ("stun.example.org", 3478),
        "turn_server": ("turn.example.org", 443),
        "turn_ssl": True,
        "turn_transport": "tcp",
        "turn_username": "bob",
        "turn_password": "pw",
    }


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("stun.example.org", "expected stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT]"),
        ("stuns:stun.example.org", "expected stun:HOST[:PORT]"),
        ("turn:turn.example.org", "a TURN server needs turn:USER:PASSWORD@HOST[:PORT]"),
        ("turn:alice@turn.example.org", "a TURN server needs"),
        ("turn:alice:pw", "a TURN server needs"),  # the @HOST forgotten: all credentials
        ("stun:alice:pw@stun.example.org", "a stun: server takes no USER:PASSWORD@"),
        ("turn:alice:pw@turn.example.org?transport=tls", "unsupported transport"),
        ("stun:stun.example.org:99999", "the port must be between 1 and 65535"),
        ("stun:stun.example.org:x", "expected stun:HOST[:PORT]"),
    ],
)
def test_unusable_ice_server_urls_are_refused_without_the_password(url, message):
    from stream.serving import ice_server

    with pytest.raises(ValueError) as err:
        ice_server(url)
    assert message in str(err.value)
    assert "pw" not in str(err.value)


@pytest.mark.parametrize("command", ["serve", "send"])
def test_the_command_line_refuses_a_bad_ice_server_at_once(command, tmp_path):
    args = ["--ice-server", "turn:alice:hunter2@turn.example.org?transport=tls"]
    if command == "send":
        (tmp_path / "call.mp4").write_bytes(b"")  # there: the ICE server is what is wrong
        args = [str(tmp_path / "call.mp4"), "--url", "http://127.0.0.1:9", *args]
    proc = _ahstream(command, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"ahstream {command}: --ice-server: turn:turn.example.org?transport=tls: "
        "unsupported transport (turn: udp or tcp; turns: tcp)"
    ]
    two = ["--ice-server", "stun:a.example.org", "--ice-server", "stun:b.example.org"]
    if command == "send":
        two = [str(tmp_path / "call.mp4"), "--url", "http://127.0.0.1:9", *two]
    proc = _ahstream(command, *two)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("aiortc uses at most one STUN and one TURN server")


def test_help_explains_the_option_and_its_default():
    for command in ("serve", "send"):
        text = " ".join(_ahstream(command, "--help").stdout.split())
        assert "--ice-server URL" in text
        assert "stun:HOST[:PORT], turn:USER:PASSWORD@HOST[:PORT]" in text
        assert "Default: none" in text and "no request to any STUN server" in text


def test_workers_get_the_ice_servers_of_the_front_outside_their_command_line():
    """TURN passwords stay out of the workers' process list: worker_argv leaves the URLs
    out, and the workers read them from the environment the front sets (the front test in
    test_whip_offers.py checks a real worker's STUN request and command line)."""
    args = build_parser().parse_args(
        ["serve", "--processes", "2", "--max-sessions", "5"]
        + ["--ice-server", "stun:stun.example.org", "--ice-server", "turn:u:p@turn.example.org"]
    )
    assert args.ice_server == ["stun:stun.example.org", "turn:u:p@turn.example.org"]
    assert worker_argv(args)[3:] == ["--max-sessions", "5"]


def test_the_ice_servers_and_the_token_can_come_from_the_environment(tmp_path, monkeypatch):
    """$AHSTREAM_ICE_SERVERS stands in for --ice-server (checked the same way, named in
    the error), and $AHSTREAM_TOKEN for the --token of send and listen."""
    env = {
        "AHSTREAM_ICE_SERVERS": "stun:a.example.org  turn:alice:hunter2@b.example.org?transport=tls"
    }
    proc = _ahstream("serve", env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "ahstream serve: AHSTREAM_ICE_SERVERS: turn:b.example.org?transport=tls: "
        "unsupported transport (turn: udp or tcp; turns: tcp)"
    ]
    proc = _ahstream("serve", "--ice-server", "stun:u@c.example.org", env=env)
    assert proc.returncode == 2, proc.stderr  # the option wins over the variable:
    assert proc.stderr.splitlines() == [
        "ahstream serve: --ice-server: a stun: server takes no USER:PASSWORD@"
    ]
    monkeypatch.setenv("AHSTREAM_TOKEN", "s3cret")
    send = build_parser().parse_args(["send", str(tmp_path / "a.mp4"), "--url", "http://h"])
    listen = build_parser().parse_args(["listen", "http://127.0.0.1:9/sessions/x/events"])
    given = build_parser().parse_args(["send", "a.mp4", "--url", "http://h", "--token", "o"])
    assert (send.token, listen.token, given.token) == ("s3cret", "s3cret", "o")
    monkeypatch.delenv("AHSTREAM_TOKEN")
    assert build_parser().parse_args(["send", "a.mp4", "--url", "http://h"]).token is None
