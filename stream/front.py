"""The front process of a multi-process server: one `ahstream serve` worker per core.

aiortc's RTP stack (SRTP, packet parsing, jitter buffers, RTCP) runs in Python on the
event loop of the process that holds the peer connection, so one process saturates one
core long before the machine's CPUs are busy (README, Performance). ``serve --processes N``
therefore starts N worker servers on loopback ports and this front on the public address:

- ``POST /whip`` goes to the worker with the fewest live sessions (asked at that moment;
  a worker at its limit answers 503 and the next is tried). The worker's SDP answer holds
  its own ICE candidates, so media flows straight to the worker, never through the front.
- ``DELETE /whip/<id>`` and the event websocket ``/sessions/<id>/events`` go to the worker
  that owns the session; headers (tokens) and queries pass through untouched, so the
  workers keep doing authentication.
- ``/healthz`` and ``/metrics`` add the workers' numbers up; ``/`` and ``/static`` come
  from any worker.

A worker that dies is started again (its sessions are lost, the others go on: their
subscribers' relays close with code 1011, `WORKER_LOST`, not a normal close); workers
die with the front (Linux parent-death signal) and are stopped with SIGTERM on shutdown,
which finalizes their sessions while the front still relays the final events. The front
loads no models, so its memory is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from stream.auth import CHALLENGE, Auth
from stream.redaction import redact_server_log
from stream.serving import (
    EXIT_CANNOT_LISTEN,
    FRONT,
    WS_MAX_MSG,
    AccessLogger,
    add_routes,
    close_subscriber,
    new_event_loop,
    read_body,
    send_to_subscriber,
    static_name_ok,
)

__all__ = ["Front", "Worker", "make_front_app", "merge_metrics", "run_front"]

log = logging.getLogger(__name__)

#: Request and response headers that belong to one hop, not to the request.
HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        "Content-Encoding",
    )
)
#: Close message of an event relay whose worker went away before the session ended
#: (close code 1011; the session is lost).
WORKER_LOST = "the session's worker stopped before the session ended"
#: Request headers relayed on an event websocket (the worker checks the token).
WS_HEADERS = frozenset(("authorization", "user-agent", "origin"))
#: Sessions the front remembers (id -> worker); past it the oldest is forgotten (their
#: DELETE and events then answer 404 at the front). Far above --max-sessions x linger.
MAX_ROUTES = 10_000
MALLOC_ARENAS = 2  # glibc malloc arenas per worker process (see _spawn)
STARTUP_TIMEOUT_S = 240.0  # model loading on a loaded 2-core machine takes a while
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
WORKER_TIMEOUT = aiohttp.ClientTimeout(total=30.0, sock_connect=5.0)
HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
#: The page, its files and /metrics: a worker that does not answer this fast is skipped.
QUICK_TIMEOUT = aiohttp.ClientTimeout(total=5.0, sock_connect=2.0)
#: Each worker's /healthz is asked this often; one that has answered no check for
#: HUNG_AFTER_S is taken as hung (alive, not answering), killed and started again.
#: Offers, the page and /metrics skip a worker whose last check failed.
HEALTH_EVERY_S = 5.0
HUNG_AFTER_S = 60.0


def relayed_headers(request: web.Request, keep: frozenset[str] | None = None) -> dict[str, str]:
    """The headers of ``request`` to send on to a worker: end-to-end ones (or only those
    in ``keep``, lower case). Bytes that are not UTF-8 (aiohttp hands them over as lone
    surrogates, which its client would silently drop: ``Bearer caf\\xe9`` would reach the
    worker as ``Bearer caf``) become U+FFFD, so the worker judges a token that is as
    wrong as the one sent."""
    headers = {}
    for name, value in request.headers.items():
        wanted = name.lower() in keep if keep is not None else name.lower() not in HOP_HEADERS
        if wanted:
            headers[name] = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return headers


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM when the front dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    """One worker server process."""

    index: int
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    restarts: int = 0
    pending: int = 0  # WHIP offers forwarded to it and not answered yet
    sessions: int | None = None  # live sessions at its last /healthz answer
    unanswered_since: float | None = None  # monotonic time of its first unanswered check
    started_at: float = 0.0
    supervisor: asyncio.Task[None] | None = field(default=None, repr=False)
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Base URL of the worker on loopback."""
        return f"http://127.0.0.1:{self.port}"


class Front:
    """Starts, watches and routes to the worker servers."""

    def __init__(
        self,
        worker_args: Sequence[str],
        processes: int,
        max_sessions: int | None = None,
        tokens: Sequence[str] = (),
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.worker_args = list(worker_args)
        # The workers' service tokens: an offer without one gets 401 here, before the
        # front says anything about its capacity (the workers check again).
        self.auth = Auth(tokens)
        self.max_sessions = max_sessions  # over all workers (each also enforces it alone)
        self.admitted = 0  # sessions the workers accepted through this front, ever
        self.workers = [Worker(i) for i in range(processes)]
        self.routes: OrderedDict[str, Worker] = OrderedDict()
        self.stopping = False
        self.client: aiohttp.ClientSession | None = None

    # -- processes ---------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until all answer /healthz (RuntimeError if one fails)."""
        self.client = aiohttp.ClientSession(timeout=WORKER_TIMEOUT, auto_decompress=False)
        try:
            await asyncio.gather(*(self._spawn(w) for w in self.workers))
        except BaseException:
            await self.stop()  # the workers that did start, and the client
            raise
        loop = asyncio.get_running_loop()
        for w in self.workers:
            w.supervisor = loop.create_task(self._supervise(w))
            w.watcher = loop.create_task(self._watch(w))

    async def _spawn(self, w: Worker) -> None:
        for _attempt in range(3):  # a port taken between probe and bind: try another
            w.port = free_port()
            env = {**os.environ, "AHSTREAM_WORKER": str(w.index)}
            # glibc gives each busy thread its own malloc arena; with a server's threads
            # (decoders, ASR, inference) that cost +210 MB per session instead of +126 MB
            # (README, Performance). The user's own setting wins.
            env.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "stream.cli",
                *self.worker_args,
                "--host",
                "127.0.0.1",
                "--port",
                str(w.port),
                "--processes",
                "1",
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            w.started_at = time.monotonic()
            if await self._wait_ready(w):
                w.ready, w.unanswered_since = True, None
                log.info("worker %d ready (pid %d, port %d)", w.index, w.proc.pid, w.port)
                return
            if w.proc.returncode != EXIT_CANNOT_LISTEN:  # it would fail again the same way
                break
        raise RuntimeError(f"worker {w.index} did not start (see its messages above)")

    async def _wait_ready(self, w: Worker) -> bool:
        assert self.client is not None and w.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if w.proc.returncode is not None:
                return False
            try:
                async with self.client.get(w.url + "/healthz", timeout=HEALTH_TIMEOUT) as r:
                    if r.status == 200:
                        return True
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.3)
        w.proc.kill()
        await w.proc.wait()
        return False

    async def _supervise(self, w: Worker) -> None:
        """Start ``w`` again when it dies (with back-off), unless the front is stopping."""
        while not self.stopping:
            assert w.proc is not None
            code = await w.proc.wait()
            w.ready = False
            if self.stopping:
                return
            # Its routes include sessions that had ended: the count is the health's.
            for sid in [sid for sid, owner in self.routes.items() if owner is w]:
                self.routes.pop(sid, None)
            log.error(
                "worker %d (pid %d) exited with %s; its live sessions are lost "
                "(%s at its last health check); restarting",
                w.index,
                w.proc.pid,
                code,
                "?" if w.sessions is None else w.sessions,
            )
            w.sessions = None
            delay = RESTART_BACKOFF_S[min(w.restarts, len(RESTART_BACKOFF_S) - 1)]
            w.restarts += 1
            await asyncio.sleep(delay)
            try:
                await self._spawn(w)
            except RuntimeError as exc:
                log.error("%s", exc)

    async def _watch(self, w: Worker) -> None:
        """Ask ``w``'s health every HEALTH_EVERY_S; kill it when it has answered none for
        HUNG_AFTER_S (its supervisor starts it again): a hung worker never exits by itself."""
        while not self.stopping:
            await asyncio.sleep(HEALTH_EVERY_S)
            if not w.ready or w.proc is None or w.proc.returncode is not None:
                continue
            await self.health(w)
            since = w.unanswered_since
            if since is not None and time.monotonic() - since >= HUNG_AFTER_S:
                log.error(
                    "worker %d (pid %d) has answered no health check for %.0f s: killing it",
                    w.index,
                    w.proc.pid,
                    time.monotonic() - since,
                )
                w.ready = False
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()

    async def stop(self) -> None:
        """SIGTERM every worker (they finalize their sessions), then wait for them."""
        self.stopping = True
        for w in self.workers:
            if w.watcher is not None:
                w.watcher.cancel()
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), 60.0)
            except TimeoutError:
                p.kill()
                await p.wait()
        for w in self.workers:
            if w.supervisor is not None:
                w.supervisor.cancel()
        if self.client is not None:
            await self.client.close()

    # -- routing -----------------------------------------------------------------------
    async def health(self, w: Worker) -> dict[str, Any] | None:
        """A worker's /healthz body, None if it does not answer."""
        if not w.ready or self.client is None:
            return None
        try:
            async with self.client.get(w.url + "/healthz", timeout=HEALTH_TIMEOUT) as r:
                if r.status == 200:
                    body = dict(await r.json())
                    w.sessions = int(body.get("sessions", 0))
                    w.unanswered_since = None
                    return body
        except (TimeoutError, aiohttp.ClientError, ValueError):
            pass
        if w.unanswered_since is None:
            w.unanswered_since = time.monotonic()
        return None

    def answering(self) -> list[Worker]:
        """The ready workers whose last health check was answered (or none was asked yet)."""
        return [w for w in self.workers if w.ready and w.unanswered_since is None]

    async def loads(self) -> dict[int, int]:
        """Live sessions of each answering worker, by worker index (one whose last health
        check failed is not asked: each offer would wait HEALTH_TIMEOUT for it)."""
        workers = self.answering()
        healths = await asyncio.gather(*(self.health(w) for w in workers))
        return {w.index: int(h["sessions"]) for w, h in zip(workers, healths, strict=True) if h}

    def least_loaded(self, loads: dict[int, int]) -> Worker | None:
        """Of the workers in ``loads``, the one with the fewest sessions plus offers on their
        way (decided without awaiting, so concurrent offers spread)."""
        if not loads:
            return None
        i = min(loads, key=lambda i: (loads[i] + self.workers[i].pending, i))
        return self.workers[i]

    def at_limit(self, loads: dict[int, int], admitted_before: int) -> bool:
        """Whether the workers' sessions, the offers on their way and the sessions admitted
        since ``loads`` was asked for (``admitted_before`` = ``admitted`` then) reach the
        total limit. Decided without awaiting, so concurrent offers cannot all pass."""
        if self.max_sessions is None:
            return False
        busy = sum(loads.values()) + sum(w.pending for w in self.workers)
        return busy + self.admitted - admitted_before >= self.max_sessions

    def remember(self, session_id: str, w: Worker) -> None:
        """Route ``session_id`` to ``w`` from now on (oldest forgotten past MAX_ROUTES)."""
        self.routes[session_id] = w
        self.routes.move_to_end(session_id)
        while len(self.routes) > MAX_ROUTES:
            self.routes.popitem(last=False)

    def owner(self, session_id: str) -> Worker:
        """The worker of a session (404 if the front does not know it)."""
        w = self.routes.get(session_id)
        if w is None or not w.ready:
            raise web.HTTPNotFound(text="unknown session\n")
        return w

    async def forward(
        self,
        request: web.Request,
        w: Worker,
        body: bytes | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> web.Response:
        """Send ``request`` (method, path, query, headers, body) to ``w``; its answer back
        (502 when it does not answer within ``timeout``, default WORKER_TIMEOUT)."""
        assert self.client is not None
        headers = relayed_headers(request)
        if body is None and request.can_read_body:
            body = await request.read()
        try:
            async with self.client.request(
                request.method,
                w.url + request.rel_url.path,
                params=request.rel_url.query,
                headers=headers,
                data=body,
                allow_redirects=False,
                timeout=timeout or WORKER_TIMEOUT,
            ) as r:
                payload = await r.read()
                out = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=r.status, body=payload, headers=out)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("worker %d did not answer %s: %s", w.index, request.path, exc)
            raise web.HTTPBadGateway(text="the worker holding this request failed\n") from None


# -- handlers ----------------------------------------------------------------------------
async def whip_post(request: web.Request) -> web.StreamResponse:
    """A new session on the least loaded worker."""
    front: Front = request.app[FRONT]
    front.auth.require_service(request)
    body = await read_body(request, 256 * 1024)
    last: web.Response | None = None
    admitted = front.admitted
    loads = await front.loads()
    if front.at_limit(loads, admitted):
        raise web.HTTPServiceUnavailable(
            text="the server is at its session limit; retry later\n",
            headers={"Retry-After": "10"},
        )
    while (w := front.least_loaded(loads)) is not None:
        del loads[w.index]
        w.pending += 1
        try:
            resp = await front.forward(request, w, body=body)
        finally:
            w.pending -= 1
        if resp.status == 503:  # that worker is at its session limit: try the next
            last = resp
            continue
        if resp.status == 201:
            front.admitted += 1
            location = resp.headers.get("Location", "")
            session_id = location.rsplit("/", 1)[-1]
            if session_id:
                front.remember(session_id, w)
        return resp
    if last is not None:
        return last
    raise web.HTTPServiceUnavailable(
        text="no worker process is ready; retry later\n", headers={"Retry-After": "5"}
    )


async def whip_delete(request: web.Request) -> web.StreamResponse:
    """End a session on its worker."""
    front: Front = request.app[FRONT]
    w = front.owner(request.match_info["session"])
    return await front.forward(request, w)


async def events_ws(request: web.Request) -> web.StreamResponse:
    """Relay a session's event websocket from its worker (the worker checks the token).

    A plain GET of the URL (the browser page asks it for the status a refused websocket
    hides) goes to the worker as a plain GET: it answers 404, 401, 403 or 400 without
    subscribing anything. No upstream subscription outlives a relay that did not start."""
    front: Front = request.app[FRONT]
    session_id = request.match_info["session"]
    w = front.owner(session_id)
    assert front.client is not None
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=request.app[WS_MAX_MSG])
    if not ws.can_prepare(request).ok:
        resp = await front.forward(request, w)
        if resp.status == 404:
            front.routes.pop(session_id, None)
        return resp
    headers = relayed_headers(request, WS_HEADERS)
    try:
        upstream = await front.client.ws_connect(
            w.url + request.rel_url.path,
            params=request.rel_url.query,
            headers=headers,
            heartbeat=20.0,
            timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
        )
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 404:
            front.routes.pop(session_id, None)
        raise _status(exc.status, exc.headers) from None
    except (TimeoutError, aiohttp.ClientError):
        raise web.HTTPBadGateway(text="the session's worker does not answer\n") from None
    try:
        await ws.prepare(request)
    except BaseException:  # the subscriber went away during the handshake
        await upstream.close()
        raise

    ended = False  # the session's last event (session.ended) was relayed
    stuck = False  # the subscriber read nothing for SEND_TIMEOUT_S

    async def pump() -> None:
        nonlocal ended, stuck
        async for msg in upstream:
            if msg.type == WSMsgType.TEXT:
                if not await send_to_subscriber(ws, request, msg.data):
                    stuck = True  # it reads nothing: cut off (aborted), as a worker does
                    return
                ended = ended or _is_session_end(msg.data)

    async def drain_client() -> None:
        async for msg in ws:  # subscribers have nothing to say; ignore what they send
            if msg.type == WSMsgType.ERROR:
                break

    tasks = {asyncio.ensure_future(pump()), asyncio.ensure_future(drain_client())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        pass
    finally:
        for task in tasks:
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                # a subscriber or worker that went away mid-send: the relay just ends
                log.debug("event relay ended: %r", task.exception())
        await upstream.close()
        if ended or ws.closed or stuck:
            await close_subscriber(ws, request)
        else:  # the worker went away mid-session (it died): not a normal end of the stream
            await close_subscriber(
                ws, request, code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=WORKER_LOST.encode()
            )
    return ws


def _is_session_end(data: str) -> bool:
    """Whether an event (JSON text) is the session's last, ``session.ended``."""
    try:
        event = json.loads(data)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("type") == "session.ended"


def _status(code: int, headers: Any = None) -> web.HTTPException:
    """The worker's refusal of a websocket, as the same HTTP status (``headers``: the
    refusal's, for its Retry-After)."""
    if code == 503:  # its subscribers' limit
        retry = (headers or {}).get("Retry-After", "10")
        return web.HTTPServiceUnavailable(
            text="this session has all the subscribers it takes\n", headers={"Retry-After": retry}
        )
    if code == 401:
        return web.HTTPUnauthorized(
            text="a valid bearer token is required\n", headers={"WWW-Authenticate": CHALLENGE}
        )
    if code == 403:
        return web.HTTPForbidden(text="this token may not read this session\n")
    if code == 404:
        return web.HTTPNotFound(text="unknown session\n")
    return web.HTTPBadGateway(text=f"the session's worker refused the websocket ({code})\n")


async def healthz(request: web.Request) -> web.StreamResponse:
    """The workers' health added up (status "degraded" while one is down)."""
    front: Front = request.app[FRONT]
    healths = await asyncio.gather(*(front.health(w) for w in front.workers))
    up = [h for h in healths if h]
    body = {
        "status": "ok" if len(up) == len(front.workers) else ("degraded" if up else "down"),
        "profile": up[0].get("profile") if up else None,
        "sessions": sum(int(h.get("sessions", 0)) for h in up),
        "max_sessions": (
            front.max_sessions
            if front.max_sessions is not None
            else sum(int(h.get("max_sessions", 0)) for h in up)
        ),
        "processes": [
            {
                "pid": w.proc.pid if w.proc else None,
                "ready": h is not None,
                "sessions": h.get("sessions") if h else None,
                "restarts": w.restarts,
            }
            for w, h in zip(front.workers, healths, strict=True)
        ],
    }
    return web.Response(
        text=json.dumps(body), content_type="application/json", status=200 if up else 503
    )


def merge_metrics(texts: Sequence[str]) -> str:
    """Prometheus text of several workers, samples with the same name and labels summed."""
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, dict[str, Any]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            f = families.setdefault(
                fam.name, {"doc": fam.documentation, "type": fam.type, "samples": {}}
            )
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                f["samples"][key] = f["samples"].get(key, 0.0) + float(s.value)
    lines: list[str] = []
    for name, f in families.items():
        lines.append(f"# HELP {name} {f['doc']}")
        lines.append(f"# TYPE {name} {f['type']}")
        for (sname, labels), value in f["samples"].items():
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sname}{{{lab}}} {value!r}" if lab else f"{sname} {value!r}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


async def metrics(request: web.Request) -> web.StreamResponse:
    """The workers' /metrics, summed (the workers check the token)."""
    front: Front = request.app[FRONT]
    texts: list[str] = []
    for w in front.workers:
        if not w.ready:
            continue
        try:
            resp = await front.forward(request, w, timeout=QUICK_TIMEOUT)
        except web.HTTPBadGateway:  # a hung worker: the others' metrics, and this gauge
            continue
        if resp.status != 200:
            return resp
        assert resp.body is not None
        texts.append(bytes(resp.body).decode("utf-8"))
    up = sum(w.ready for w in front.workers)
    restarts = sum(w.restarts for w in front.workers)
    text = merge_metrics(texts) + (
        "# HELP ahstream_worker_processes Worker processes ready\n"
        "# TYPE ahstream_worker_processes gauge\n"
        f"ahstream_worker_processes {up}\n"
        "# HELP ahstream_worker_processes_answering Worker processes whose metrics are in this "
        "answer\n"
        "# TYPE ahstream_worker_processes_answering gauge\n"
        f"ahstream_worker_processes_answering {len(texts)}\n"
        "# HELP ahstream_worker_restarts Worker processes started again after dying\n"
        "# TYPE ahstream_worker_restarts counter\n"
        f"ahstream_worker_restarts_total {restarts}\n"
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def from_any_worker(request: web.Request) -> web.StreamResponse:
    """The browser page and its files, as any ready worker serves them."""
    front: Front = request.app[FRONT]
    ready = [w for w in front.workers if w.ready]
    if not ready:
        raise web.HTTPServiceUnavailable(text="no worker process is ready\n")
    # the ones that answered their last health check first; a hung one is skipped
    for w in sorted(ready, key=lambda w: w.unanswered_since is not None):
        try:
            return await front.forward(request, w, timeout=QUICK_TIMEOUT)
        except web.HTTPBadGateway:
            continue
    raise web.HTTPBadGateway(text="no worker process answers\n")


async def static(request: web.Request) -> web.StreamResponse:
    """A file of the browser page from any ready worker; a name no worker could serve
    (a path, a NUL byte, another type) is 404 here, never forwarded."""
    if not static_name_ok(request.match_info["name"]):
        raise web.HTTPNotFound()
    return await from_any_worker(request)


def make_front_app(front: Front, ws_max_msg: int = 4096) -> web.Application:
    """The front's aiohttp application (workers are started on startup, stopped on shutdown)."""
    app = web.Application(client_max_size=256 * 1024)
    app[FRONT] = front
    app[WS_MAX_MSG] = ws_max_msg
    add_routes(
        app,
        {
            "index": from_any_worker,
            "static": static,
            "healthz": healthz,
            "metrics": metrics,
            "whip_post": whip_post,
            "whip_delete": whip_delete,
            "events": events_ws,
        },
    )

    async def on_startup(app: web.Application) -> None:
        await front.start()

    async def on_shutdown(app: web.Application) -> None:
        await front.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def run_front(
    worker_args: Sequence[str],
    processes: int,
    host: str,
    port: int,
    ssl_context: Any = None,
    ws_max_msg: int = 4096,
    max_sessions: int | None = None,
    tokens: Sequence[str] = (),
) -> None:
    """Serve on ``host:port`` in front of ``processes`` workers until interrupted
    (at most ``max_sessions`` live sessions over all of them; ``tokens``: the service
    tokens the workers were given, checked on offers before the session limit)."""
    redact_server_log()
    front = Front(worker_args, processes, max_sessions, tokens=tokens)
    web.run_app(
        make_front_app(front, ws_max_msg=ws_max_msg),
        host=host,
        port=port,
        print=None,
        access_log_class=AccessLogger,
        ssl_context=ssl_context,
        loop=new_event_loop(),
    )
