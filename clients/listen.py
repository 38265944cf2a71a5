"""Subscribe to a session's events and print them (`ahstream listen`)."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import aiohttp

from clients.send import ws_url

__all__ = ["listen"]


def events_url(url: str) -> str:
    """Accept ws(s):// or http(s):// URLs of `/sessions/<id>/events`."""
    if url.startswith(("ws://", "wss://")):
        return url
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    return ws_url(f"{scheme}://{host}", "/" + path)


async def listen(url: str, out: TextIO = sys.stdout, token: str | None = None) -> int:
    """Print each event as a JSON line until `session.ended`; returns the count."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    n = 0
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(events_url(url), headers=headers) as ws:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                out.write(msg.data + "\n")
                out.flush()
                n += 1
                if json.loads(msg.data).get("type") == "session.ended":
                    break
    return n
