"""The aiohttp application: WHIP ingest, event websockets, the browser page, health."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import WSMsgType, web

from models.profile import Models
from stream.auth import Auth
from stream.batching import SharedRunners
from stream.ingest import MediaLimits
from stream.metrics import ServerMetrics, metrics_endpoint
from stream.publisher import Publisher
from stream.redaction import log_failure, redact_server_log
from stream.serving import (
    SEND_TIMEOUT_S,
    SERVER,
    AccessLogger,
    add_routes,
    close_subscriber,
    ice_configuration,
    new_event_loop,
    send_to_subscriber,
    static_name_ok,
    tls_context,
    trim_heap,
)
from stream.session import Session
from stream.whip import LiveSession, whip_delete, whip_post

__all__ = ["Server", "ServerConfig", "make_app", "page_html", "run_server", "tls_context"]

log = logging.getLogger(__name__)


ASR_WORKERS = 2  # concurrent Whisper decodes (models.profile.load_models asr_workers)
ASR_NICE = 10  # Whisper's threads yield the CPU to frame analysis, decoding and the loop
#: Event websockets per session at once (more get 503): each costs a queue and, on joining,
#: a replay of the session's critical events.
MAX_SUBSCRIBERS = 32
#: Messages sent in a row before the handler lets the event loop run other work (a late
#: joiner's replay is thousands of messages, each sent without waiting while the socket
#: takes them).
SEND_BURST = 64


@dataclass
class ServerConfig:
    """Settings of `ahstream serve` (see README, Configuration)."""

    host: str = "127.0.0.1"
    port: int = 8080
    profile: str = "lite"
    analysis_hz: float = 10.0
    idle_timeout_s: float = 3.0
    max_sessions: int = 8
    max_duration_s: float = 3600.0
    linger_s: float = 120.0
    subscriber_queue: int = 256
    workers: int = 4
    tokens: tuple[str, ...] = ()
    limits: MediaLimits = field(default_factory=MediaLimits)
    ws_max_msg: int = 4096  # bytes a subscriber may send in one websocket message
    record_dir: str | None = None  # --record: write each session's audio and events here
    tls_cert: str | None = None
    tls_key: str | None = None
    batch_max: int = 8  # cross-session batching of model runs (stream.batching); 1: off
    batch_wait_ms: float = 2.0  # longest a request is held for a batch; 0: off
    ice_servers: tuple[str, ...] = ()  # --ice-server URLs; none: host candidates only
    asr_skip: bool = True  # --no-asr-skip: False (a session behind decodes every ASR hop)


class Server:
    """Sessions of one server process, sharing one set of loaded models."""

    def __init__(self, models: Models, config: ServerConfig) -> None:
        self.models = models
        self.config = config
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="infer")
        # Whisper runs two decodes at a time (CTranslate2 workers), on threads of its own.
        self.asr_executor = ThreadPoolExecutor(ASR_WORKERS, thread_name_prefix="asr")
        if models.face_pool is not None:
            models.face_pool.fill()  # the first session's face graph, built before it comes
        self.live: dict[str, LiveSession] = {}
        self.pending_offers = 0  # WHIP offers being negotiated: they hold a session slot
        self.publishers: dict[str, Publisher] = {}
        self.auth = Auth(config.tokens)
        # Every peer connection's ICE servers: only the configured ones (aiortc's default
        # would send a STUN request to Google with every offer).
        self.rtc_configuration = ice_configuration(config.ice_servers)
        self._reapers: set[asyncio.Task[None]] = set()
        self.watchers: Counter[str] = Counter()  # event websockets open, per session
        self.metrics = ServerMetrics(
            active_sessions=lambda: self.active_sessions,
            subscribers=lambda: sum(p.subscribers for p in self.publishers.values()),
        )
        # One runner per model for all sessions, micro-batching their requests.
        self.batching = SharedRunners(models, config.batch_max, config.batch_wait_ms)
        self.metrics.registry.register(self.batching.collector())

    def new_session(self, session_id: str, context: str | None = None) -> Session:
        """A session whose events subscribers can find by id."""
        publisher = Publisher(session_id, queue_size=self.config.subscriber_queue)
        publisher.listeners.append(self.metrics.observe)
        session = Session(
            session_id,
            self.models,
            publisher,
            analysis_hz=self.config.analysis_hz,
            context=context,
            executor=self.executor,
            asr_executor=self.asr_executor,
            live=True,
            asr_skip=self.config.asr_skip,
        )
        self.publishers[session_id] = publisher
        return session

    def register(self, live: LiveSession) -> None:
        """Track a live session until it ends, then keep its events for late subscribers."""
        self.live[live.session.id] = live
        task = asyncio.get_running_loop().create_task(self._reap(live))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    @property
    def active_sessions(self) -> int:
        """Sessions that have not ended yet."""
        return sum(not live.session.done for live in self.live.values())

    def discard(self, session_id: str) -> None:
        """Forget a session that never started."""
        self.live.pop(session_id, None)
        self.publishers.pop(session_id, None)
        self.auth.forget(session_id)

    async def _reap(self, live: LiveSession) -> None:
        sid = live.session.id
        try:
            while not live.session.done:
                await asyncio.sleep(0.5)
            try:
                await live.close("ended")
            except Exception as exc:  # its connection is gone anyway; the rest must go too
                log_failure(log, exc, "session %s: closing the ended session failed", sid)
            self.live.pop(sid, None)
            del live  # only its publisher lingers (late subscribers): the session is freed
            # Hand the session's freed heap back to the system (about 15 ms, off the loop).
            await asyncio.get_running_loop().run_in_executor(None, trim_heap)
            await asyncio.sleep(self.config.linger_s)
        finally:  # also when cancelled (shutdown): nothing of the session is kept
            self.live.pop(sid, None)
            self.publishers.pop(sid, None)
            self.auth.forget(sid)

    async def shutdown(self) -> None:
        """Finalize every live session (final events flushed) and stop the executor."""
        await asyncio.gather(
            *(live.close("server shutdown") for live in list(self.live.values())),
            return_exceptions=True,
        )
        for task in list(self._reapers):
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.asr_executor.shutdown(wait=False, cancel_futures=True)
        self.batching.close()
        if self.models.face_pool is not None:
            self.models.face_pool.close()  # the face graph built ahead for the next session


async def events_ws(request: web.Request) -> web.StreamResponse:
    """Websocket stream of one session's events (critical ones replayed on join).

    At most `MAX_SUBSCRIBERS` per session (503 beyond); a subscriber that reads nothing
    for `SEND_TIMEOUT_S` while its buffers are full is cut off (its connection aborted);
    the sends yield to the event loop every `SEND_BURST` messages."""
    server: Server = request.app[SERVER]
    session_id = request.match_info["session"]
    publisher = server.publishers.get(session_id)
    if publisher is None:
        raise web.HTTPNotFound(text="unknown session\n")
    server.auth.require_read(request, session_id, query=True)
    if server.watchers[session_id] >= MAX_SUBSCRIBERS:
        raise web.HTTPServiceUnavailable(
            text=f"this session has {MAX_SUBSCRIBERS} subscribers already\n",
            headers={"Retry-After": "10"},
        )
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=server.config.ws_max_msg)
    await ws.prepare(request)
    server.watchers[session_id] += 1
    sub = publisher.subscribe()

    async def read() -> None:
        async for msg in ws:  # subscribers have nothing to say; ignore what they send
            if msg.type == WSMsgType.ERROR:
                break
        sub.close()

    reader = asyncio.get_running_loop().create_task(read())
    try:
        sent = 0
        while (msg := await sub.get()) is not None:
            if not await send_to_subscriber(ws, request, msg):
                log.info("session %s: a subscriber read nothing for %.0f s: disconnected",
                         session_id, SEND_TIMEOUT_S)  # fmt: skip
                break
            sent += 1
            if sent % SEND_BURST == 0:
                await asyncio.sleep(0)
    except ConnectionResetError:
        pass
    finally:
        publisher.unsubscribe(sub)
        server.metrics.subscriber_left(sub.dropped)
        server.watchers[session_id] -= 1
        if server.watchers[session_id] <= 0:
            del server.watchers[session_id]
        reader.cancel()
        await close_subscriber(ws, request)
    return ws


#: The page's placeholder for what this server keeps of a call (filled in by `index`).
RECORDING_SLOT = '<span id="recording"></span>'
RECORDING_NOTE = {
    True: "· this server records each session's audio and events",
    False: "· nothing is recorded",
}


def page_html(record: bool) -> str:
    """The browser page, telling the truth about recording (``serve --record``)."""
    page = resources.files("clients").joinpath("web/index.html").read_text(encoding="utf-8")
    note = f'<span id="recording" data-records="{str(record).lower()}">{RECORDING_NOTE[record]}'
    return page.replace(RECORDING_SLOT, note + "</span>", 1)


async def index(request: web.Request) -> web.StreamResponse:
    """The browser page (a front serves it from a worker, whose --record it states)."""
    server: Server = request.app[SERVER]
    page = page_html(bool(server.config.record_dir))
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})


STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}


async def static(request: web.Request) -> web.StreamResponse:
    """A script or stylesheet of the browser page (``clients/web/<name>``, no subfolders)."""
    name = request.match_info["name"]
    if not static_name_ok(name):  # a path, a NUL byte, a hidden file, another type
        raise web.HTTPNotFound()
    ctype = STATIC_TYPES[name[name.rfind(".") :]]
    try:
        body = resources.files("clients").joinpath("web", name).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    return web.Response(text=body, content_type=ctype, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.StreamResponse:
    server: Server = request.app[SERVER]
    body = {
        "status": "ok",
        "profile": server.models.profile,
        "sessions": server.active_sessions,
        "max_sessions": server.config.max_sessions,
    }
    return web.Response(text=json.dumps(body), content_type="application/json")


def make_app(server: Server) -> web.Application:
    """The aiohttp application for ``server``."""
    app = web.Application(client_max_size=256 * 1024)
    app[SERVER] = server
    add_routes(
        app,
        {
            "index": index,
            "static": static,
            "healthz": healthz,
            "metrics": metrics_endpoint,
            "whip_post": whip_post,
            "whip_delete": whip_delete,
            "events": events_ws,
        },
    )

    async def on_shutdown(app: web.Application) -> None:
        await server.shutdown()

    app.on_shutdown.append(on_shutdown)
    return app


def run_server(models: Models, config: ServerConfig) -> None:
    """Serve until interrupted (SIGINT/SIGTERM finalize live sessions first)."""
    redact_server_log()
    server = Server(models, config)
    ssl_context = tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None
    scheme = "https" if ssl_context else "http"
    log.info(
        "ahstream serving on %s://%s:%d (profile %s)",
        scheme,
        config.host,
        config.port,
        config.profile,
    )
    web.run_app(
        make_app(server),
        host=config.host,
        port=config.port,
        print=None,
        access_log_class=AccessLogger,
        ssl_context=ssl_context,
        loop=new_event_loop(),
    )
