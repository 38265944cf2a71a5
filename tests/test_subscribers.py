"""Event websockets under load, on a real server and real sockets: a subscriber that reads
nothing is cut off, subscribers per session are capped, and a late joiner's replay shares
the event loop with everything else the process serves."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import pytest

import stream.server as server_module
import stream.serving as serving
from models.profile import load_models
from stream.events import Error
from stream.publisher import Publisher
from stream.server import Server, ServerConfig, make_app
from tests.conftest import app_on_loopback


@pytest.fixture()
async def served() -> Any:
    """A server with one session's publisher ("s"), and its URL."""
    server = Server(load_models("lite", asr=False, face=False), ServerConfig())
    server.publishers["s"] = Publisher("s", queue_size=8)
    try:
        async with app_on_loopback(make_app(server)) as url:
            yield server, url
    finally:
        await server.shutdown()


async def _silent_subscriber(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket client that completes the handshake and then reads nothing (a paused
    `ahstream listen … | less`)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /sessions/s/events HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    return reader, writer


async def test_a_subscriber_that_reads_nothing_is_cut_off(served, monkeypatch) -> None:
    """Its buffers full, the handler waited to send for good (the heartbeat's close waited
    for the same buffers; a shutdown took 2 minutes). Now it is disconnected after
    SEND_TIMEOUT_S, and the session's other subscriber gets every event."""
    server, url = served
    monkeypatch.setattr(serving, "SEND_TIMEOUT_S", 0.5)
    _, silent = await _silent_subscriber(url)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/sessions/s/events") as reading:
            for _ in range(200):
                if server.watchers["s"] == 2:
                    break
                await asyncio.sleep(0.01)
            big = "x" * 20_000
            for _ in range(1000):  # 20 MB of critical events: more than the socket buffers
                server.publishers["s"].publish(Error("s", code="test", message=big))
            got = 0
            while got < 1000:
                msg = await asyncio.wait_for(reading.receive(), 10)
                assert msg.type == aiohttp.WSMsgType.TEXT
                got += 1
            for _ in range(300):
                if server.watchers["s"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.watchers["s"] == 1  # the silent one's handler has ended
    silent.close()


async def test_subscribers_per_session_are_capped(served, monkeypatch) -> None:
    server, url = served
    monkeypatch.setattr(server_module, "MAX_SUBSCRIBERS", 3)
    async with aiohttp.ClientSession() as http:
        open_ = [await http.ws_connect(f"{url}/sessions/s/events") for _ in range(3)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}/sessions/s/events")
        assert refused.value.status == 503
        async with http.get(f"{url}/sessions/s/events") as r:  # the reason, as plain text
            assert r.status == 503 and "3 subscribers already" in await r.text()
            assert r.headers["Retry-After"] == "10"
        await open_.pop().close()
        for _ in range(200):
            if server.watchers["s"] == 2:
                break
            await asyncio.sleep(0.01)
        open_.append(await http.ws_connect(f"{url}/sessions/s/events"))  # a place again
        for ws in open_:
            await ws.close()


async def test_a_late_joiners_replay_lets_the_event_loop_run(served, monkeypatch) -> None:
    """A replay is thousands of messages that the socket takes without waiting: sent in one
    go, it held the event loop (every session of the process) for seconds with hundreds of
    subscribers. The handler now yields every SEND_BURST messages."""
    server, url = served
    publisher = server.publishers["s"]
    for k in range(3000):
        publisher.publish(Error("s", code="test", message=f"event {k}"))
    sent = 0
    send = serving.send_to_subscriber

    async def counted(ws: Any, request: Any, data: str) -> bool:
        nonlocal sent
        sent += 1
        return await send(ws, request, data)

    monkeypatch.setattr(server_module, "send_to_subscriber", counted)
    seen: list[int] = []  # how many messages had been sent each time another task ran
    done = asyncio.Event()

    async def other_work() -> None:
        while not done.is_set():
            seen.append(sent)
            await asyncio.sleep(0)

    other = asyncio.get_running_loop().create_task(other_work())
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/sessions/s/events") as ws:
            for _ in range(3000):
                await asyncio.wait_for(ws.receive(), 10)
    done.set()
    await other
    during = sorted({n for n in seen if 0 < n < 3000})
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert len(during) >= 3000 // server_module.SEND_BURST - 5
    assert max(gaps) <= server_module.SEND_BURST


async def test_through_the_front_the_cap_is_503_with_retry_after(served, monkeypatch) -> None:
    """The front relays a worker's refusal as it is: a session's 33rd subscriber got 502
    there (any refusal but 401/403/404 was), without Retry-After."""
    from stream.front import Front, Worker, make_front_app

    server, url = served
    monkeypatch.setattr(server_module, "MAX_SUBSCRIBERS", 1)
    front = Front(["serve"], processes=1)
    front.client = aiohttp.ClientSession()
    worker = Worker(0, port=int(url.rsplit(":", 1)[1]), ready=True)  # the served worker
    front.workers = [worker]
    front.routes["s"] = worker
    app = make_front_app(front)
    app.on_startup.clear()  # its worker is the one served above, not a process of its own
    app.on_shutdown.clear()
    try:
        async with app_on_loopback(app) as front_url, aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{front_url}/sessions/s/events"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await http.ws_connect(f"{front_url}/sessions/s/events")
                assert refused.value.status == 503
                assert (refused.value.headers or {}).get("Retry-After") == "10"
    finally:
        await front.client.close()
