"""What every HTTP process of ahstream shares (the server, the multi-process front):
its event loop and its access log. Light on purpose: the front loads no models."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = [
    "EXIT_CANNOT_LISTEN",
    "ROUTES",
    "AccessLogger",
    "add_routes",
    "limit_malloc_arenas",
    "new_event_loop",
    "read_body",
    "tls_context",
    "trim_heap",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


def add_routes(app: web.Application, handlers: Mapping[str, Handler]) -> None:
    """Route every path of ROUTES to its handler in ``handlers`` (all must be given)."""
    for method, path, name in ROUTES:
        app.router.add_route(method, path, handlers[name])


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, however many TCP segments it arrives in; 413 past ``limit``.

    (``request.content.read(n)`` alone returns only what has arrived so far: a browser's
    5 kB offer split across packets would be cut short.)
    """
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    return b"".join(chunks)


class AccessLogger(AbstractAccessLogger):
    """Access log lines without query strings (they may carry tokens or context)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Log method, path, status and duration of one request."""
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


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
