"""Publish a media file over WHIP at real-time pace and collect the session's events.

This is `ahstream send`: aiortc's MediaPlayer decodes the file and paces its
frames in real time; the sender POSTs the offer to ``<url>/whip``, subscribes
to ``<url>/sessions/<id>/events``, writes every event, sends
``DELETE /whip/<id>`` when the file is done and returns after `session.ended`.
With ``token`` (a service token) the offer carries ``Authorization: Bearer``;
the websocket and the DELETE then use the session's read token from the
``X-Ahstream-Read-Token`` response header (or the service token without one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

__all__ = ["SendError", "send_file", "ws_url"]


class SendError(Exception):
    """Publishing failed (unreachable server, refused offer, unreadable file)."""


def ws_url(base: str, path: str) -> str:
    """Websocket URL for ``path`` on the server at http(s) ``base``."""
    base = base.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + path


async def _read_events(
    ws: aiohttp.ClientWebSocketResponse,
    out: TextIO | None,
    events: list[dict[str, Any]],
    on_event: Callable[[dict[str, Any]], None] | None,
) -> None:
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(msg.data)
        events.append(event)
        if out is not None:
            out.write(msg.data + "\n")
            out.flush()
        if on_event is not None:
            on_event(event)
        if event.get("type") == "session.ended":
            break


async def send_file(
    path: str | Path,
    url: str,
    *,
    events_out: str | Path | None = None,
    token: str | None = None,
    context: str | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    end_timeout_s: float = 60.0,
    duration_s: float | None = None,
    on_session: Callable[[str, str | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Publish ``path`` to the server at ``url``; returns every event received.

    ``duration_s`` stops publishing early (the session is then ended with DELETE);
    ``on_session`` is called with the session id and its read token once created.
    """
    path = Path(path)
    if not path.is_file():
        raise SendError(f"no such file: {path}")
    try:
        player = MediaPlayer(str(path))
    except Exception as exc:
        raise SendError(f"cannot read {path}: {exc}") from exc
    tracks = [t for t in (player.audio, player.video) if t is not None]
    if not tracks:
        raise SendError(f"{path} has no audio or video")
    pc = RTCPeerConnection()
    finished = asyncio.Event()
    remaining = {id(t) for t in tracks}

    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")

        def _ended(track: Any = track) -> None:
            remaining.discard(id(track))
            if not remaining:
                finished.set()

        track.on("ended", _ended)

    out = open(events_out, "w", encoding="utf-8") if events_out else None  # noqa: SIM115
    events: list[dict[str, Any]] = []
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if context:
        headers["X-Ahstream-Context"] = context
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            try:
                resp = await http.post(
                    url.rstrip("/") + "/whip", data=pc.localDescription.sdp, headers=headers
                )
            except aiohttp.ClientError as exc:
                raise SendError(f"cannot reach {url}: {exc}") from exc
            answer = await resp.text()
            if resp.status != 201:
                raise SendError(f"server refused the offer: HTTP {resp.status}: {answer.strip()}")
            location = resp.headers.get("Location", "")
            session_id = resp.headers.get("X-Ahstream-Session") or location.rsplit("/", 1)[-1]
            read_token = resp.headers.get("X-Ahstream-Read-Token")
            if on_session is not None:
                on_session(session_id, read_token)
            sub_token = read_token or token
            auth = {"Authorization": f"Bearer {sub_token}"} if sub_token else {}
            ws = await http.ws_connect(ws_url(url, f"/sessions/{session_id}/events"), headers=auth)
            reader = asyncio.create_task(_read_events(ws, out, events, on_event))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            waits = [asyncio.create_task(finished.wait()), reader]
            await asyncio.wait(waits, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
            if not reader.done():
                delete_url = url.rstrip("/") + (location or f"/whip/{session_id}")
                async with http.delete(delete_url, headers=auth) as resp_del:
                    await resp_del.read()
                try:
                    await asyncio.wait_for(reader, timeout=end_timeout_s)
                except TimeoutError:
                    raise SendError("no session.ended received in time") from None
            waits[0].cancel()
            await ws.close()
    finally:
        await pc.close()
        for track in tracks:
            track.stop()
        if out is not None:
            out.close()
    return events
