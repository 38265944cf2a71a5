"""Subscribe to a session's events and print them (`ahstream listen`).

Error messages never show a URL's query string: a browser-style ``?token=`` would
otherwise land in logs.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

import aiohttp

from clients.send import REQUEST_TIMEOUT, ws_url

__all__ = ["ListenError", "events_url", "listen", "redact"]

#: Websocket ping interval: a half-open connection ends the listener instead of hanging it.
HEARTBEAT_S = 30.0
#: What a refused subscription means, by HTTP status.
REFUSALS = {
    401: "a token is required: pass --token",
    403: "this token may not read this session",
    404: "no such session",
}


class ListenError(Exception):
    """The subscription was refused or failed (the message holds no URL query)."""


def redact(url: str) -> str:
    """``url`` without its query string (which may hold a token)."""
    base, sep, _ = url.partition("?")
    return base + ("?…" if sep else "")


def events_url(url: str) -> str:
    """Accept ws(s):// or http(s):// URLs of `/sessions/<id>/events`."""
    if url.startswith(("ws://", "wss://")):
        return url
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    return ws_url(f"{scheme}://{host}", "/" + path)


async def listen(url: str, out: TextIO = sys.stdout, token: str | None = None) -> bool:
    """Print each event as a JSON line until `session.ended`; True when it came.

    Raises ListenError when the server refuses the subscription or the connection
    fails, aiohttp.InvalidURL for a malformed URL.
    """
    target = events_url(url)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
            async with http.ws_connect(target, headers=headers, heartbeat=HEARTBEAT_S) as ws:
                while True:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.CLOSE and msg.data != aiohttp.WSCloseCode.OK:
                        # e.g. 1011 from a front whose worker died: the session is lost
                        why = f": {msg.extra}" if msg.extra else ""
                        raise ListenError(
                            f"the server closed the event stream with {msg.data}{why}"
                        )
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    try:
                        event = json.loads(msg.data)
                    except json.JSONDecodeError:
                        raise ListenError("the server sent a message that is not JSON") from None
                    out.write(msg.data + "\n")
                    out.flush()
                    if isinstance(event, dict) and event.get("type") == "session.ended":
                        return True
    except aiohttp.WSServerHandshakeError as exc:
        hint = REFUSALS.get(exc.status)
        detail = f"{exc.status} ({hint})" if hint else str(exc.status)
        raise ListenError(f"the server refused the subscription: {detail}") from None
    except aiohttp.InvalidURL:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        text = str(exc) or type(exc).__name__
        _, sep, query = target.partition("?")
        if sep and query:
            text = text.replace(query, "…")
        raise ListenError(f"cannot subscribe to {redact(target)}: {text}") from None
    return False
