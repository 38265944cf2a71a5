"""Publish a media file over WHIP at real-time pace and collect the session's events.

This is `ahstream send`: aiortc's MediaPlayer decodes the file and paces its
frames in real time; the sender POSTs the offer to ``<url>/whip``, subscribes
to ``<url>/sessions/<id>/events``, writes every event, sends ``DELETE`` to the
session's ``Location`` when the file is done and returns after `session.ended`.
Once the server has created the session, a failure or a cancellation (Ctrl-C)
still ends it with a short, best-effort DELETE, unless `session.ended` came.
With ``token`` (a service token) the offer carries ``Authorization: Bearer``;
the websocket and the DELETE then use the session's read token from the
``X-Ahstream-Read-Token`` response header (or the service token without one).
The offer carries host candidates only, unless ICE servers are given: no STUN
request goes anywhere by default. A context goes as ``?context=`` (as the browser
page sends it), its whitespace collapsed to single spaces.

If the events websocket drops before `session.ended`, it is reopened with the same
token after ``RESUBSCRIBE_S`` back-off (the file keeps being published); the server
replays the session's critical events, and those already received are skipped, so
nothing is written or handled twice (what was published meanwhile that is never
replayed, frames and status, is missing). When reopening fails that many times in a
row, or is refused (401, 403, 404), the call ends with DELETE and SendError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from stream.ingest import upright
from stream.record import create_private
from stream.serving import ice_configuration

__all__ = ["SendError", "clean_context", "send_file", "ws_url"]

#: Seconds granted to a best-effort DELETE, and then to the final events, when the
#: sender stops early (an error, Ctrl-C): short, so that an interrupt stays prompt.
CLEANUP_TIMEOUT_S = 5.0
#: Websocket ping interval: a half-open connection is noticed instead of waited on forever.
HEARTBEAT_S = 30.0
#: HTTP requests and websocket handshakes: a server that accepts the connection but never
#: answers is given up on (aiohttp's default waits 5 minutes). Once a websocket is open,
#: aiohttp lifts the read limit and the heartbeat watches it instead.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=30.0)
#: Back-off before each attempt to reopen a dropped events websocket (then SendError).
RESUBSCRIBE_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Refusals of a resubscription that another attempt would not change.
FINAL_REFUSALS = frozenset((401, 403, 404))
#: Event types the server replays to a new subscriber (with `final`: only final ones).
REPLAYED = frozenset(("session.started", "cue", "segment", "error", "session.ended"))
REPLAYED_WHEN_FINAL = frozenset(("transcript", "video"))


class SendError(Exception):
    """Publishing failed (unreachable server, refused offer, unreadable file)."""


class SentAudio(MediaStreamTrack):
    """A file's audio as `send` publishes it.

    - **At its own level.** aiortc's MediaPlayer makes every file's audio stereo, a mono
      channel at -3 dB in each (libswresample's upmix); the server averages the channels it
      receives (what a browser's mono voice, decoded to two equal channels, needs), so a
      mono file is sent with ``gain`` sqrt(2) to arrive as `analyze` reads it.
    - **Whole.** The receiver's audio jitter buffer (aiortc: 4 packets) releases a packet
      only when later ones come, so the file's last 80 ms never arrived: ``pad_s`` of
      silence follows the file, at its pace, to push them through.
    """

    kind = "audio"

    def __init__(self, source: MediaStreamTrack, gain: float = 1.0, pad_s: float = 0.1) -> None:
        super().__init__()
        self.source = source
        self.gain = gain
        self._pad = pad_s
        self._last: av.AudioFrame | None = None
        self._next_pts: int | None = None

    async def recv(self) -> av.AudioFrame:
        try:
            frame = await self.source.recv()
        except MediaStreamError:
            if self._last is None or self._pad <= 1e-9:  # (0.1 - 5 x 0.02 > 0 in floats)
                self.stop()
                raise
            return await self._silence()
        if self.gain != 1.0:
            x = frame.to_ndarray().astype(np.float32) * self.gain
            pcm = np.clip(np.rint(x), -32768, 32767).astype(np.int16)
            out = av.AudioFrame.from_ndarray(pcm, format="s16", layout=frame.layout.name)
            out.sample_rate, out.pts, out.time_base = frame.sample_rate, frame.pts, frame.time_base
            frame = out
        self._last = frame
        self._next_pts = (frame.pts or 0) + frame.samples
        return frame

    async def _silence(self) -> av.AudioFrame:
        last = self._last
        assert last is not None and self._next_pts is not None
        shape = last.to_ndarray().shape
        out = av.AudioFrame.from_ndarray(
            np.zeros(shape, np.int16), format="s16", layout=last.layout.name
        )
        out.sample_rate, out.pts, out.time_base = last.sample_rate, self._next_pts, last.time_base
        self._next_pts += last.samples
        duration = last.samples / last.sample_rate
        self._pad -= duration
        await asyncio.sleep(duration)  # at the file's pace
        return out

    def stop(self) -> None:
        self.source.stop()
        super().stop()


class SentVideo(MediaStreamTrack):
    """A file's video as `send` publishes it: upright. A phone's recording stores its
    frames sideways or upside down with a display rotation that players apply; WebRTC
    carries no such tag, so the frames are turned before they are sent."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> av.VideoFrame:
        try:
            frame = await self.source.recv()
        except MediaStreamError:
            self.stop()
            raise
        if int(round(frame.rotation / 90.0)) % 4 == 0:
            return frame
        rgb = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
        out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def stop(self) -> None:
        self.source.stop()
        super().stop()


def _is_mono(path: Path) -> bool:
    """Whether the file's first audio stream has one channel."""
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            return bool(streams) and streams[0].codec_context.channels == 1
    except (av.FFmpegError, OSError):
        return False


def ws_url(base: str, path: str) -> str:
    """Websocket URL for ``path`` on the server at http(s) ``base``."""
    base = base.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + path


def _status(code: int) -> str:
    """``403 Forbidden``: an HTTP status with its reason phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def clean_context(context: str | None) -> str | None:
    """``context`` on one line (runs of whitespace, newlines included, become one space);
    None when nothing is left. The server matches it by its words, so none is lost."""
    text = " ".join((context or "").split())
    return text or None


def _replayed(event: dict[str, Any]) -> bool:
    """Whether the server replays ``event`` to a new subscriber (a critical event)."""
    kind = event.get("type")
    return kind in REPLAYED or (kind in REPLAYED_WHEN_FINAL and bool(event.get("final")))


async def _read_events(
    ws: aiohttp.ClientWebSocketResponse,
    out: TextIO | None,
    events: list[dict[str, Any]],
    on_event: Callable[[dict[str, Any]], None] | None,
    seen: Counter[str],
) -> int:
    """Handle the events of ``ws`` until `session.ended` or the socket closes; returns how
    many were new. ``seen`` counts the critical messages handled so far, on every socket:
    a new socket's replay repeats each of them once (identical messages, e.g. the same
    error twice, as often as they came), and that many copies are skipped; nothing else."""
    replay = Counter(seen)  # still to come again on this socket (empty on the first one)
    new = 0
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        if replay[msg.data] > 0:  # a resubscription's replay of what was already handled
            replay[msg.data] -= 1
            continue
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            raise SendError("the server sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise SendError("the server sent an event that is not a JSON object")
        if _replayed(event):
            seen[msg.data] += 1
        new += 1
        events.append(event)
        if out is not None:
            try:
                out.write(msg.data + "\n")
                out.flush()
            except OSError as exc:
                raise SendError(f"cannot write the events file: {exc}") from exc
        if on_event is not None:
            try:
                on_event(event)
            except Exception as exc:
                kind = event.get("type")
                raise SendError(f"the event handler failed on a {kind} event: {exc!r}") from exc
        if event.get("type") == "session.ended":
            break
    return new


class _Call:
    """A session the server accepted: its events subscription and its end (DELETE)."""

    def __init__(self, http: aiohttp.ClientSession, delete_url: str, auth: dict[str, str]) -> None:
        self.http = http
        self.delete_url = delete_url
        self.auth = auth
        self.events: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None
        self.delete_sent = False
        self.seen: Counter[str] = Counter()  # critical messages handled (a replay repeats them)

    @property
    def ended(self) -> bool:
        """Whether `session.ended` was received."""
        return any(e.get("type") == "session.ended" for e in self.events)

    async def subscribe(self, url: str) -> aiohttp.ClientWebSocketResponse:
        """Open the events websocket; SendError with a plain reason when that fails."""
        try:
            self.ws = await self.http.ws_connect(url, headers=self.auth, heartbeat=HEARTBEAT_S)
        except aiohttp.WSServerHandshakeError as exc:
            raise SendError(f"events websocket refused: {_status(exc.status)}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"events websocket failed: {str(exc) or type(exc).__name__}") from None
        return self.ws

    async def follow(
        self,
        url: str,
        out: TextIO | None,
        on_event: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        """Read the events until `session.ended`, reopening a websocket that drops before
        it (``RESUBSCRIBE_S`` back-off); SendError when that keeps failing or is refused."""
        failures = 0
        while True:
            assert self.ws is not None
            if await _read_events(self.ws, out, self.events, on_event, self.seen):
                failures = 0  # the socket brought something new: a fresh run of attempts
            if self.ended:
                return
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), CLEANUP_TIMEOUT_S)
            why = "it closed again with nothing new"
            while True:
                if failures >= len(RESUBSCRIBE_S):
                    raise SendError(
                        "the events websocket closed before session.ended and could not be "
                        f"reopened ({failures} attempts; last: {why})"
                    )
                await asyncio.sleep(RESUBSCRIBE_S[failures])
                failures += 1
                try:
                    self.ws = await self.http.ws_connect(
                        url, headers=self.auth, heartbeat=HEARTBEAT_S
                    )
                    break
                except aiohttp.WSServerHandshakeError as exc:
                    why = f"refused: {_status(exc.status)}"
                    if exc.status in FINAL_REFUSALS:
                        raise SendError(
                            "the events websocket closed before session.ended and reopening "
                            f"it was {why}"
                        ) from None
                except (aiohttp.ClientError, TimeoutError) as exc:
                    why = str(exc) or type(exc).__name__

    def check_reader(self) -> None:
        """Raise the reader's failure (as SendError) if it stopped on one."""
        if self.reader is None or not self.reader.done() or self.reader.cancelled():
            return
        exc = self.reader.exception()
        if isinstance(exc, SendError):
            raise exc
        if exc is not None:
            raise SendError(f"reading the events failed: {exc!r}") from exc

    async def delete(self, timeout_s: float) -> None:
        """End the session with DELETE; SendError when the server does not confirm it."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self.http.delete(
                self.delete_url, headers=self.auth, timeout=timeout
            ) as resp:
                body = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.delete_sent = True
            reason = str(exc) or type(exc).__name__
            raise SendError(f"ending the session (DELETE) failed: {reason}") from None
        self.delete_sent = True  # not set when cancelled: the cleanup then sends it again
        if resp.status >= 300:
            text = body.strip()
            raise SendError(
                f"ending the session (DELETE) failed: {_status(resp.status)}"
                + (f": {text}" if text else "")
            )

    async def finish(self, end_timeout_s: float) -> None:
        """After publishing: DELETE unless the session ended, then wait for `session.ended`."""
        assert self.reader is not None
        if self.reader.done():  # ended, failed, or the websocket closed
            self.check_reader()
            return
        problem: SendError | None = None
        try:
            await self.delete(end_timeout_s)
        except SendError as exc:
            problem = exc
        # A refused DELETE (say 404: the session ended meanwhile) matters only if no
        # session.ended follows; without a confirmed DELETE, wait for it only briefly.
        wait_s = CLEANUP_TIMEOUT_S if problem else end_timeout_s
        await asyncio.wait({self.reader}, timeout=wait_s)
        self.check_reader()
        if self.ended:
            return
        if problem is not None:
            raise problem
        if not self.reader.done():
            raise SendError("no session.ended received in time")

    async def end_quietly(self) -> None:
        """Best-effort DELETE (short timeout), then a short wait for the final events."""
        with contextlib.suppress(SendError):
            await self.delete(CLEANUP_TIMEOUT_S)
        if self.reader is not None and not self.reader.done():
            await asyncio.wait({self.reader}, timeout=CLEANUP_TIMEOUT_S)

    async def close(self) -> None:
        """Stop reading and close the websocket (nothing raised: this runs on every path)."""
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.wait({self.reader})
            if not self.reader.cancelled():
                self.reader.exception()  # retrieved: no "exception was never retrieved"
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), CLEANUP_TIMEOUT_S)


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
    ice_servers: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Publish ``path`` to the server at ``url``; returns every event received.

    ``duration_s`` stops publishing early (the session is then ended with DELETE);
    ``on_session`` is called with the session id and its read token once created;
    ``ice_servers`` are STUN/TURN URLs (``stream.serving.ice_server``; default none).
    Once the server has created the session, any failure or cancellation ends it
    with a best-effort DELETE (unless `session.ended` already came); failures raise
    SendError. ``events_out`` is written only once the events subscription is open.
    """
    try:
        configuration = ice_configuration(ice_servers)
    except ValueError as exc:
        raise SendError(f"unusable ICE server: {exc}") from None
    path = Path(path)
    if not path.is_file():
        raise SendError(f"no such file: {path}")
    try:
        player = MediaPlayer(str(path))
    except Exception as exc:
        raise SendError(f"cannot read {path}: {exc}") from exc
    audio = player.audio
    if audio is not None:
        audio = SentAudio(audio, gain=2**0.5 if _is_mono(path) else 1.0)
    video = None if player.video is None else SentVideo(player.video)
    tracks = [t for t in (audio, video) if t is not None]
    if not tracks:
        raise SendError(f"{path} has no audio or video")
    pc = RTCPeerConnection(configuration)
    finished = asyncio.Event()
    remaining = {id(t) for t in tracks}

    for track in tracks:
        pc.addTransceiver(track, direction="sendonly")

        def _ended(track: Any = track) -> None:
            remaining.discard(id(track))
            if not remaining:
                finished.set()

        track.on("ended", _ended)

    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    context = clean_context(context)
    params = {"context": context} if context else None  # as the page sends it
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as http:
            post_url = url.rstrip("/") + "/whip"
            try:
                async with http.post(
                    post_url, data=pc.localDescription.sdp, headers=headers, params=params
                ) as resp:
                    answer = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = str(exc) or f"no answer ({type(exc).__name__})"
                raise SendError(f"cannot reach {url}: {why}") from exc
            if resp.status != 201:
                raise SendError(f"server refused the offer: HTTP {resp.status}: {answer.strip()}")
            location = resp.headers.get("Location")
            session_id = (
                resp.headers.get("X-Ahstream-Session")
                or (location or "").rstrip("/").rsplit("/", 1)[-1]
            )
            if not session_id:
                raise SendError("the server accepted the offer but named no session")
            # RFC 9725: Location may be relative (to the POST URL) or absolute.
            delete_url = urljoin(post_url, location or f"{post_url}/{session_id}")
            read_token = resp.headers.get("X-Ahstream-Read-Token")
            sub_token = read_token or token
            auth = {"Authorization": f"Bearer {sub_token}"} if sub_token else {}
            call = _Call(http, delete_url, auth)
            out: TextIO | None = None
            try:
                if on_session is not None:
                    on_session(session_id, read_token)
                events_url = ws_url(url, f"/sessions/{session_id}/events")
                await call.subscribe(events_url)
                if events_out:  # opened only now: a refused call leaves an old file alone
                    try:
                        out = create_private(events_out)
                    except OSError as exc:
                        raise SendError(f"cannot write {events_out}: {exc}") from None
                call.reader = asyncio.create_task(call.follow(events_url, out, on_event))
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                except Exception as exc:
                    raise SendError(
                        f"unusable SDP answer: {str(exc) or type(exc).__name__}"
                    ) from None
                done = asyncio.create_task(finished.wait())
                try:
                    await asyncio.wait(
                        [done, call.reader], timeout=duration_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    done.cancel()
                await call.finish(end_timeout_s)
            finally:  # also on cancellation (Ctrl-C): shielded, so the DELETE goes out
                try:
                    if not call.ended and not call.delete_sent:
                        await asyncio.shield(call.end_quietly())
                finally:
                    await call.close()
                    if out is not None:
                        out.close()
            return call.events
    finally:
        await pc.close()
        for track in tracks:
            track.stop()
