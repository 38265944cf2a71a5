"""What every HTTP process of ahstream shares (the server, the multi-process front):
its event loop, its access log, the names of the page's static files, and the ICE
configuration of WebRTC peers (also used by `ahstream send`). Light on purpose: the front
loads no models (and no aiortc)."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

if TYPE_CHECKING:
    from aiortc import RTCConfiguration, RTCIceServer

    from stream.front import Front
    from stream.server import Server

__all__ = [
    "BODY_TIMEOUT_S",
    "EXIT_CANNOT_LISTEN",
    "SEND_TIMEOUT_S",
    "FRONT",
    "ROUTES",
    "SERVER",
    "WS_MAX_MSG",
    "AccessLogger",
    "add_routes",
    "close_subscriber",
    "ice_configuration",
    "ice_server",
    "limit_malloc_arenas",
    "new_event_loop",
    "read_body",
    "send_to_subscriber",
    "static_name_ok",
    "tls_context",
    "trim_heap",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: What a process's web application holds: the server of one process (`stream.server`),
#: or the front of several and its websocket message limit (`stream.front`).
SERVER: web.AppKey[Server] = web.AppKey("server")
FRONT: web.AppKey[Front] = web.AppKey("front")
WS_MAX_MSG: web.AppKey[int] = web.AppKey("ws_max_msg", int)

#: A request body (a WHIP offer) must have arrived this long after its headers: a client
#: that sends the headers and stalls holds no slot and no handler for longer (408).
BODY_TIMEOUT_S = 10.0

#: An event subscriber whose socket has taken nothing for this long (its buffers full: a
#: paused or suspended reader, e.g. `ahstream listen … | less`) is disconnected, so that
#: its handler, queue and socket are not held until it goes away.
SEND_TIMEOUT_S = 15.0

#: Exit status of `ahstream serve` that could not listen on its address (the front starts
#: a worker again on another port then; any other failure to start is not retried).
EXIT_CANNOT_LISTEN = 3

#: The HTTP interface (README, "HTTP interface"): method, path, handler name. The server
#: and the multi-process front (stream.front) both serve exactly these.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("GET", "/", "index"),
    ("GET", "/static/{name}", "static"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/metrics", "metrics"),
    ("POST", "/whip", "whip_post"),
    ("DELETE", "/whip/{session}", "whip_delete"),
    ("GET", "/sessions/{session}/events", "events"),
)


#: A file of the browser page under /static/: a plain name, a .js or .css suffix.
STATIC_NAME = re.compile(r"[A-Za-z0-9_-]+\.(?:js|css)")


def static_name_ok(name: str) -> bool:
    """Whether ``name`` may be a file of the browser page (no path, no odd characters)."""
    return STATIC_NAME.fullmatch(name) is not None


def add_routes(app: web.Application, handlers: Mapping[str, Handler]) -> None:
    """Route every path of ROUTES to its handler in ``handlers`` (all must be given)."""
    for method, path, name in ROUTES:
        app.router.add_route(method, path, handlers[name])


async def read_body(request: web.Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """The whole request body, however many TCP segments it arrives in; 413 past ``limit``,
    408 when it has not all come within ``timeout_s``, 400 when the client drops it.

    (``request.content.read(n)`` alone returns only what has arrived so far: a browser's
    5 kB offer split across packets would be cut short.)
    """
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0

    async def read() -> None:
        nonlocal size
        while chunk := await request.content.read(limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {timeout_s:g} s\n"
        ) from None
    except (ConnectionResetError, aiohttp.ClientPayloadError):
        raise web.HTTPBadRequest(text="the request body was cut off\n") from None
    return b"".join(chunks)


class AccessLogger(AbstractAccessLogger):
    """Access log lines without query strings (they may carry tokens or context), with the
    path as sent, percent-encoded: a decoded ``%0A`` would start a forged log line."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log method, path, status and duration of one request."""
        path = request.rel_url.raw_path.encode("ascii", "backslashreplace").decode("ascii")
        path = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
        self.logger.info("%s %s %d %.3fs", request.method, path, response.status, time)


async def send_to_subscriber(ws: web.WebSocketResponse, request: web.Request, data: str) -> bool:
    """Send one event message to a subscriber; False (its connection aborted) when its
    socket took nothing for `SEND_TIMEOUT_S`."""
    try:
        await asyncio.wait_for(ws.send_str(data), SEND_TIMEOUT_S)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # a close would wait for the buffers it never reads
        return False
    return True


async def close_subscriber(
    ws: web.WebSocketResponse, request: web.Request, **close: object
) -> None:
    """Close a subscriber's websocket (``close``: code, message), aborting the connection
    when the close cannot be sent in `SEND_TIMEOUT_S` or the connection is gone."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    try:
        await asyncio.wait_for(ws.close(**close), SEND_TIMEOUT_S)  # type: ignore[arg-type]
    except (TimeoutError, ConnectionError):
        transport.abort()


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads created from now on (what MALLOC_ARENA_MAX does
    at start-up); the user's MALLOC_ARENA_MAX wins. False where it does not apply."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, n))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """Give the heap pages freed by an ended session back to the system (glibc's
    ``malloc_trim``); without it a worker keeps its high-water mark (about 150 MB after a
    few sessions, reused by the next ones but counted in RSS). False where it does not apply."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (Linux, macOS): aiortc's RTP handling runs on the loop,
    and uvloop's transports and callbacks cost it less (see README, Performance)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def tls_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    """Server TLS context (TLS 1.2+) from PEM files; raises OSError/ssl.SSLError if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


ICE_SERVER_FORMS = "stun:HOST[:PORT] or turn:USER:PASSWORD@HOST[:PORT][?transport=udp|tcp]"


def ice_server(url: str) -> RTCIceServer:
    """The ICE server of ``url``: ``stun:HOST[:PORT]``, or ``turn:`` / ``turns:`` (TLS) with
    ``USER:PASSWORD@`` before the host (both percent-decoded). ValueError when aiortc could
    not use it; the message never contains the password."""
    from aiortc import RTCIceServer
    from aiortc.rtcicetransport import connection_kwargs

    scheme, colon, rest = url.partition(":")
    if not colon or scheme not in ("stun", "turn", "turns"):
        raise ValueError(f"expected {ICE_SERVER_FORMS}")
    username = credential = None
    if "@" in rest:
        if scheme == "stun":
            raise ValueError("a stun: server takes no USER:PASSWORD@")
        userinfo, _, rest = rest.rpartition("@")
        user, _, password = userinfo.partition(":")
        username, credential = unquote(user), unquote(password)
    where = f"{scheme}:{rest}"  # shown in messages: without the credentials
    if scheme != "stun" and not (username and credential):
        # Not `where`: without an @, the text may be the credentials themselves.
        raise ValueError(f"{scheme}: a TURN server needs {scheme}:USER:PASSWORD@HOST[:PORT]")
    server = RTCIceServer(urls=where, username=username, credential=credential)
    try:
        used = connection_kwargs([server])
    except ValueError:
        raise ValueError(f"{where}: expected {ICE_SERVER_FORMS}") from None
    if not used:  # aiortc skips what it does not support (turn over TLS, turns over UDP)
        raise ValueError(f"{where}: unsupported transport (turn: udp or tcp; turns: tcp)")
    _host, port = used.get("stun_server") or used["turn_server"]
    if not 1 <= port <= 65535:
        raise ValueError(f"{where}: the port must be between 1 and 65535")
    return server


def ice_configuration(urls: Sequence[str] = ()) -> RTCConfiguration:
    """The configuration of a peer connection with exactly the ICE servers of ``urls``
    (none by default: unlike aiortc's default, no STUN request to Google with every peer
    connection; host candidates are enough on one network). ValueError for a URL
    :func:`ice_server` refuses, or for more than one STUN or TURN server (aiortc would
    silently use only the first of each)."""
    from aiortc import RTCConfiguration

    servers = [ice_server(url) for url in urls]
    stun = sum(str(s.urls).startswith("stun:") for s in servers)
    if stun > 1 or len(servers) - stun > 1:
        raise ValueError("aiortc uses at most one STUN and one TURN server")
    return RTCConfiguration(iceServers=servers)
