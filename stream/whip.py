"""WHIP ingest (RFC 9725): one aiortc RTCPeerConnection per session.

`POST /whip` takes an SDP offer and answers 201 with the SDP answer and
``Location: /whip/<id>`` and the session's read token (``X-Ahstream-Read-Token``);
an offer must send (sendonly/sendrecv) one audio or one video section, or one of each,
else 400. The peer connection uses only the ICE servers of ``serve --ice-server`` (none
by default: host candidates). `DELETE /whip/<id>` ends the session. A session also
ends when the peer connection fails or closes, or when no media has arrived
for ``idle_timeout_s`` (a publisher that vanished), always with its final
events.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from stream.auth import READ_TOKEN_HEADER
from stream.ingest import MediaLimits, drain_track
from stream.record import SessionRecorder
from stream.redaction import log_failure
from stream.rtpreceiver import tune_receivers
from stream.serving import SERVER, read_body
from stream.session import Session

if TYPE_CHECKING:
    from stream.server import Server

__all__ = ["LiveSession", "sent_media_problem", "whip_delete", "whip_post"]

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
CONTEXT_HEADER = "X-Ahstream-Context"
SESSION_HEADER = "X-Ahstream-Session"


class LiveSession:
    """A session fed by a WebRTC peer connection."""

    def __init__(
        self,
        session: Session,
        pc: RTCPeerConnection,
        idle_timeout_s: float,
        max_duration_s: float = float("inf"),
        limits: MediaLimits | None = None,
        recorder: SessionRecorder | None = None,
    ) -> None:
        self.session = session
        self.pc = pc
        self.idle_timeout_s = idle_timeout_s
        self.max_duration_s = max_duration_s
        self.limits = limits
        self.recorder = recorder  # --record: the session's audio goes here too
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.created = time.monotonic()

    def start(self) -> None:
        """Start the session and its watchdog."""
        self.session.start()
        self._watchdog = asyncio.get_running_loop().create_task(self.watchdog())
        self._watchdog.add_done_callback(self._watchdog_done)

    def _watchdog_done(self, task: asyncio.Task[None]) -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log_failure(log, exc, "session %s: watchdog failed", self.session.id)
            self.close("internal error")

    def add_track(self, track: Any) -> None:
        """Start draining a remote track into the session."""
        task = asyncio.get_running_loop().create_task(
            drain_track(track, track.kind, self.session, self.limits, self.recorder),
            name=f"drain-{track.kind}",
        )
        self._tasks.append(task)

    def close(self, reason: str) -> asyncio.Task[None]:
        """End the session (idempotent); returns the task that finalizes it."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(reason))
        return self._closing

    async def _close(self, reason: str) -> None:
        log.info("session %s: closing (%s)", self.session.id, reason)
        # Before the peer connection closes: its tracks ending may finish the session first.
        self.session.note_end_reason(reason)
        try:
            await self.pc.close()
        except Exception:  # a broken transport must not stop finalization
            log.exception("session %s: peer connection close failed", self.session.id)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.session.finish(reason)
        # Nothing may keep the ended session in a reference cycle, which only Python's full
        # garbage collection (rare on a server) frees: a cancelled task's exception holds
        # its frame (the watchdog's holds this object), the connection's handlers hold it.
        self._tasks, self._watchdog = [], None
        self.pc.remove_all_listeners()

    async def watchdog(self) -> None:
        """End the session when media stops arriving or it reaches its maximum duration."""
        while not self.session.done and self._closing is None:
            await asyncio.sleep(0.5)
            if self.session.media_end >= self.max_duration_s:
                self.close("max duration")
                return
            last = self.session.clock.last_arrival_wall
            since = time.monotonic() - (last if last is not None else self.created)
            limit = self.idle_timeout_s if last is not None else max(self.idle_timeout_s, 15.0)
            if since > limit:
                self.close("idle")
                return


class OfferRefused(ValueError):
    """An offer that parses but cannot be a session (the message is ours, no client text)."""


def sent_media_problem(kinds: list[str]) -> str | None:
    """Why an offer whose sending media sections (sendonly/sendrecv) are of ``kinds``
    cannot be a session: a session analyses one audio and/or one video track (two audio
    tracks would feed one buffer, their media time running twice as fast). None: it can."""
    audio, video = kinds.count("audio"), kinds.count("video")
    if audio + video == 0:
        return (
            "the offer sends no audio or video: a publisher needs an audio or video "
            "section that is sendonly or sendrecv"
        )
    for kind, n in (("audio", audio), ("video", video)):
        if n > 1:
            return (
                f"the offer sends {n} {kind} tracks; a session takes one audio and one video "
                "track at most (publish the others as sessions of their own)"
            )
    return None


async def whip_post(request: web.Request) -> web.StreamResponse:
    """Create a session from an SDP offer (a service token is required when auth is on)."""
    server: Server = request.app[SERVER]
    server.auth.require_service(request)
    # The body first (within BODY_TIMEOUT_S): a client that sends its headers and stalls
    # must not hold a session slot meanwhile.
    body = await read_body(request, MAX_SDP_BYTES)
    if server.active_sessions + server.pending_offers >= server.config.max_sessions:
        raise web.HTTPServiceUnavailable(
            text="the server is at its session limit; retry later\n",
            headers={"Retry-After": "10"},
        )
    # The offer holds a slot from here (no await since the check), so concurrent offers
    # cannot all pass the limit while each is still being negotiated.
    server.pending_offers += 1
    try:
        return await _answer_offer(request, server, body)
    finally:
        server.pending_offers -= 1


async def _answer_offer(request: web.Request, server: Server, body: bytes) -> web.StreamResponse:
    ctype = request.content_type
    if ctype not in ("application/sdp", "application/octet-stream", "text/plain"):
        raise web.HTTPUnsupportedMediaType(text="WHIP offers must be sent as application/sdp\n")
    try:
        sdp = body.decode("utf-8")
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the SDP offer is not UTF-8\n") from None
    if not sdp.lstrip().startswith("v=0"):
        raise web.HTTPBadRequest(text="the body is not an SDP offer (must start with v=0)\n")

    session_id = uuid.uuid4().hex[:16]
    context = request.query.get("context") or request.headers.get(CONTEXT_HEADER)
    session = server.new_session(session_id, context=context)
    pc = RTCPeerConnection(server.rtc_configuration)
    recorder = None
    if server.config.record_dir:
        recorder = SessionRecorder(server.config.record_dir, session_id)
        session.publisher.listeners.append(recorder.event)
    live = LiveSession(
        session,
        pc,
        server.config.idle_timeout_s,
        server.config.max_duration_s,
        limits=server.config.limits,
        recorder=recorder,
    )

    tracks: list[Any] = []  # one per media section the client sends in
    pc.on("track", tracks.append)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            live.close(f"connection {pc.connectionState}")

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        tune_receivers(pc)  # frames decoded at their last packet; REMB at most every 0.5 s
        problem = sent_media_problem([t.kind for t in tracks])
        if problem:
            raise OfferRefused(problem)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as exc:
        # Not a session: its close must not run when the connection closes (it was
        # never started, and would log a close and end a session nobody had).
        pc.remove_listener("connectionstatechange", on_state)
        try:
            await pc.close()
        except Exception as close_exc:  # aiortc cannot close every half-negotiated connection
            log_failure(
                log, close_exc, "closing a refused peer connection failed", level=logging.INFO
            )
        server.discard(session_id)
        # Our own reasons are said as they are; a parser's error quotes the client's SDP
        # (addresses, names in it), which goes neither to the log nor back: its type only.
        if isinstance(exc, OfferRefused):
            reason = str(exc)
        else:
            reason = f"the SDP could not be used ({type(exc).__name__})"
        log.info("rejected WHIP offer: %s", reason)
        raise web.HTTPBadRequest(text=f"unusable SDP offer: {reason}\n") from None

    for track in tracks:
        live.add_track(track)
    read_token = server.auth.issue(session_id)
    server.register(live)
    live.start()
    return web.Response(
        status=201,
        content_type="application/sdp",
        text=pc.localDescription.sdp,
        headers={
            "Location": f"/whip/{session_id}",
            SESSION_HEADER: session_id,
            READ_TOKEN_HEADER: read_token,
            "Link": f'</sessions/{session_id}/events>; rel="urn:ahstream:events"',
        },
    )


async def whip_delete(request: web.Request) -> web.StreamResponse:
    """End a session (service or its read token); its final events still reach subscribers."""
    server: Server = request.app[SERVER]
    session_id = request.match_info["session"]
    live = server.live.get(session_id)
    if live is None:
        raise web.HTTPNotFound(text="unknown session\n")
    server.auth.require_read(request, session_id)
    await live.close("deleted")
    return web.Response(status=200)
