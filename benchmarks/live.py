"""Shared harness of the live benchmarks: a server process, passthrough publishers, timings.

The publishers must cost the machine as little as possible, since on one
machine every cycle they spend is taken from the server being measured: the
clip is transcoded once (`prepare_clip`) to H.264 (baseline, no B-frames,
1 s GOP) and Opus in MPEG-TS, and aiortc sends its packets as they are
(``MediaPlayer(decode=False)``), paced in real time, without re-encoding. A
browser publishes the same codecs. Each published video packet's media time
and the wall time it left for the peer connection are recorded, so the
latency of every analysed frame can be measured to the frame event that a
websocket subscriber receives for it (same machine, same monotonic clock).

Clips above ``fps_cap`` are capped by dropping frames, not slowed down: the
prepared video lasts as long as the source and stays in sync with its audio.

When the clip runs out (every one of its tracks has ended: audio shorter than
the video does not cut the video short), the publisher waits 0.5 s for the
last frames in flight and then closes the session. The server cannot know before the close
that no newer frame will come, so the session's closing tick analyses the last
frame only then: that frame event's latency is the publisher's 0.5 s, not the
server's, and `Publication.matched_frames` leaves it out.

Result dicts hold no NaN or infinity (`benchmarks.output.finite`): a value that does not
exist is None.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from clients.send import ws_url
from stream.serving import ice_configuration

__all__ = [
    "MatchedFrame",
    "PeakRss",
    "Publication",
    "ServerProcess",
    "machine",
    "percentiles",
    "prepare_clip",
    "publish",
    "settled",
    "video_offset",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("benchmarks") / "results"  # relative to where the benchmark runs


def machine() -> dict[str, Any]:
    """Cores, CPU and memory of this machine (for the results table). Machines whose CPUs
    share a marketing name ("AMD EPYC") differ in their ``cpu_id`` (family, model, stepping
    and a hash of the instruction-set flags: int8 kernels pick code paths by them) and
    ``host`` (a hash of /etc/machine-id, not the id itself)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping", "flags"):
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:8]
    cpu_id = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    host = None
    try:
        host = hashlib.sha256(Path("/etc/machine-id").read_bytes().strip()).hexdigest()[:12]
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gb = round(kb / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": fields.get("model name", "unknown"),
        "cpu_id": f"{cpu_id} flags {flags}",
        "host": host,
        "memory_gb": mem_gb,
    }


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` times ``scale`` (ms by default); None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64) * scale
    out: dict[str, Any] = {
        k: round(float(np.percentile(a, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))
    }
    out["max"] = round(float(a.max()), 1)
    out["n"] = int(a.size)
    return out


class _FrameGrid:
    """Frame-rate cap by dropping: output frame k is the first source frame at or after
    media time k/rate (within one output interval), so the video keeps its duration."""

    def __init__(self, rate: Fraction) -> None:
        self.rate = rate
        self._t0: float | None = None
        self._next = 0

    def slot(self, t: float) -> int | None:
        """Output index (pts in 1/rate) of the source frame at media time ``t``; None: drop."""
        if self._t0 is None:
            self._t0 = t
        k = math.floor((t - self._t0) * self.rate + 0.01)
        if k < self._next:
            return None
        self._next = k + 1
        return k


def _capped_rate(v_in: Any, fps_cap: float) -> Fraction:
    """The source's frame rate (25 when unknown), at most ``fps_cap``."""
    rate = Fraction(v_in.average_rate or 25)
    return min(rate, Fraction(fps_cap).limit_denominator(1000))


def _video_stream(out: Any, v_in: Any, rate: Fraction) -> Any:
    v_out = out.add_stream("libx264", rate=rate)
    v_out.width = v_in.codec_context.width // 2 * 2
    v_out.height = v_in.codec_context.height // 2 * 2
    v_out.pix_fmt = "yuv420p"
    v_out.options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "profile": "baseline",
        "bf": "0",
        "g": str(int(round(float(rate)))),
        "repeat-headers": "1",
    }
    return v_out


def _audio_stream(out: Any) -> Any:
    a_out = out.add_stream("libopus", rate=48000)
    a_out.layout = "stereo"
    a_out.options = {"frame_duration": "20", "application": "voip"}
    return a_out


def _encode_video(v_out: Any, grid: _FrameGrid, frame: av.VideoFrame, t: float) -> list[Any]:
    """Packets of source frame ``frame`` (media time ``t``) on the output grid; [] if dropped."""
    k = grid.slot(t)
    if k is None:
        return []
    frame = frame.reformat(format="yuv420p", width=v_out.width, height=v_out.height)
    frame.pts = k
    frame.time_base = 1 / grid.rate
    return v_out.encode(frame)


def prepare_clip(src: str | Path, out_dir: str | Path, fps_cap: float = 30.0) -> Path:
    """Transcode ``src`` once to H.264 + Opus in MPEG-TS, ready for packet passthrough.

    Video above ``fps_cap`` frames per second is capped by dropping frames (`_FrameGrid`)."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    dst = Path(out_dir) / (src.stem + ".ts")
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mpegts") as out:
        v_in = next(iter(inp.streams.video), None)
        a_in = next(iter(inp.streams.audio), None)
        if v_in is None and a_in is None:
            raise ValueError(f"{src} has no audio or video")
        v_out = grid = None
        if v_in is not None:
            grid = _FrameGrid(_capped_rate(v_in, fps_cap))
            v_out = _video_stream(out, v_in, grid.rate)
        a_out = None if a_in is None else _audio_stream(out)
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        n_src = 0
        for frame in inp.decode(*[s for s in (v_in, a_in) if s is not None]):
            if isinstance(frame, av.VideoFrame) and v_out is not None and grid is not None:
                t = frame.time if frame.time is not None else n_src / float(v_in.average_rate or 25)
                n_src += 1
                out.mux(_encode_video(v_out, grid, frame, t))
            elif isinstance(frame, av.AudioFrame) and a_out is not None:
                for f in resampler.resample(frame):
                    f.pts = None
                    out.mux(a_out.encode(f))
        for s in (v_out, a_out):
            if s is not None:
                out.mux(s.encode(None))
    return dst


class _TimedTrack(MediaStreamTrack):
    """Relays a player track and records when each of its packets left for the sender."""

    def __init__(self, inner: MediaStreamTrack, sent: list[tuple[float, float]]) -> None:
        super().__init__()
        self.kind = inner.kind
        self._inner = inner
        self._sent = sent
        self._t0: float | None = None

    async def recv(self) -> Any:
        data = await self._inner.recv()
        if data.pts is not None and data.time_base is not None:
            t = float(data.pts * data.time_base)
            if self._t0 is None:
                self._t0 = t
            self._sent.append((round(t - self._t0, 4), time.monotonic()))
        return data

    def stop(self) -> None:
        super().stop()
        self._inner.stop()


@dataclass(frozen=True)
class MatchedFrame:
    """A frame event matched to the video packet it analysed."""

    t: float  # media time of the tick
    latency: float  # seconds from the packet leaving the sender to the event arriving
    lags: dict[str, float]  # the server's stage lags of the event


def _nearest(ts: list[float], t: float, tolerance: float = 1e-3) -> int | None:
    """Index of the value of sorted ``ts`` closest to ``t``, if within ``tolerance``."""
    i = bisect.bisect_left(ts, t)
    near = [j for j in (i - 1, i) if 0 <= j < len(ts) and abs(ts[j] - t) <= tolerance]
    return min(near, key=lambda j: abs(ts[j] - t), default=None)


def video_offset(ts: list[float], vts: list[float], tolerance: float = 1e-3) -> float:
    """The constant shift of the server's video timeline against the sent packets' media
    times: 0 normally; the first video frame's lateness when it reached the server more than
    `stream.clock.START_SKEW_S` after the first audio (a loaded CPU decoding the first
    keyframe), which starts the video track at its arrival. The shift (within 1 s of the
    first analysed frame) that matches the most analysed frames wins; 0 on a tie."""
    if not ts or not vts:
        return 0.0
    candidates = {0.0, *(vts[0] - t for t in ts if abs(vts[0] - t) < 1.0)}

    def matched(d: float) -> int:
        return sum(_nearest(ts, v - d, tolerance) is not None for v in vts)

    return max(sorted(candidates, key=abs), key=matched)


@dataclass
class Publication:
    """One published session: what was sent when, and every event received (with wall time).

    ``ended_at`` is when the clip ran out (None when the publisher stopped it early),
    ``closed_at`` when the publisher closed the session."""

    session_id: str = ""
    sent: list[tuple[float, float]] = field(default_factory=list)  # (video media t, wall)
    sent_audio: list[tuple[float, float]] = field(default_factory=list)  # (audio media t, wall)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (wall, event)
    error: str | None = None
    ended_at: float | None = None
    closed_at: float | None = None

    def frames(self) -> list[tuple[float, dict[str, Any]]]:
        return [(w, e) for w, e in self.events if e.get("type") == "frame"]

    def models(self) -> dict[str, Any] | None:
        """The models the server named in `session.started` (which weights made the
        numbers), None before that event."""
        started = [e for _, e in self.events if e.get("type") == "session.started"]
        return started[0].get("models") if started else None

    def _closing_tick(self, frames: list[tuple[float, dict[str, Any]]]) -> int | None:
        """Index of the session's closing tick when it ran only because the publisher closed
        the session after the clip ran out (its frame waited for the close)."""
        if not frames or self.ended_at is None or self.closed_at is None:
            return None
        return len(frames) - 1 if frames[-1][0] >= self.closed_at else None

    def matched_frames(self) -> list[MatchedFrame]:
        """Every analysed frame event whose ``video_t`` names a sent video packet (within a
        millisecond, after `video_offset`), with its latency; the closing tick after the clip
        ran out is left out (its wait is the publisher's, see the module docstring)."""
        ts = sorted(t for t, _ in self.sent)
        walls = dict(self.sent)
        frames = self.frames()
        closing = self._closing_tick(frames)
        shift = video_offset(ts, [e["video_t"] for _, e in frames if e.get("video_t") is not None])
        out = []
        for i, (wall, e) in enumerate(frames):
            vt = e.get("video_t")
            j = None if vt is None or i == closing else _nearest(ts, vt - shift)
            if j is not None:
                out.append(MatchedFrame(e["t"], wall - walls[ts[j]], e.get("lags", {})))
        return out

    def frame_latencies(self) -> list[float]:
        """Seconds from each matched video frame leaving the sender to its frame event."""
        return [m.latency for m in self.matched_frames()]


def _all_ended(tracks: list[MediaStreamTrack]) -> asyncio.Event:
    """An event set once every one of ``tracks`` has emitted "ended" (a clip whose audio is
    shorter than its video, or the reverse, is published to the end of the longer one)."""
    ended = asyncio.Event()
    live = {id(t) for t in tracks if t.readyState != "ended"}

    def one_ended(track: MediaStreamTrack) -> None:
        live.discard(id(track))
        if not live:
            ended.set()

    for track in tracks:
        track.on("ended", lambda track=track: one_ended(track))
    if not live:
        ended.set()
    return ended


async def publish(
    clip: Path, url: str, duration_s: float | None = None, end_timeout_s: float = 60.0
) -> Publication:
    """Publish ``clip`` (see `prepare_clip`) over WHIP in real time and collect its events."""
    pub = Publication()
    player = MediaPlayer(str(clip), decode=False)
    pc = RTCPeerConnection(ice_configuration())
    tracks = []
    for inner in (player.audio, player.video):
        if inner is not None:
            track = _TimedTrack(inner, pub.sent if inner.kind == "video" else pub.sent_audio)
            tracks.append(track)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if track.kind == "video":  # the packets are H.264: offer only that
                caps = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in caps if c.mimeType == "video/H264"])
    http = aiohttp.ClientSession()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(
            url.rstrip("/") + "/whip",
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as r:
            if r.status != 201:
                pub.error = f"WHIP {r.status}: {(await r.text()).strip()}"
                return pub
            answer = await r.text()
            location = r.headers["Location"]
            pub.session_id = r.headers.get("X-Ahstream-Session", location.rsplit("/", 1)[-1])
        # Location may be relative (this server) or absolute (a proxy in front of it).
        session_url = urljoin(url.rstrip("/") + "/", location)
        try:
            ws = await http.ws_connect(ws_url(url, f"/sessions/{pub.session_id}/events"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = getattr(exc, "status", None)
            pub.error = f"events websocket {'refused: HTTP ' + str(status) if status else exc}"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.delete(session_url):  # the session must not run on unobserved
                    pass
            return pub

        async def read() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                pub.events.append((time.monotonic(), event))
                if event.get("type") == "session.ended":
                    break

        reader = asyncio.get_running_loop().create_task(read())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        ended = _all_ended([track._inner for track in tracks])
        try:
            await asyncio.wait_for(ended.wait(), timeout=duration_s)
            pub.ended_at = time.monotonic()
        except TimeoutError:
            pass
        await asyncio.sleep(0.5)  # the last frames are in flight
        pub.closed_at = time.monotonic()
        async with http.delete(session_url):
            pass
        try:
            await asyncio.wait_for(reader, timeout=end_timeout_s)
        except TimeoutError:
            pub.error = "no session.ended"
        await ws.close()
    finally:
        for track in tracks:
            track.stop()
        await pc.close()
        await http.close()
    return pub


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`ahstream serve` as a child process, with its memory and CPU time readable."""

    def __init__(self, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "serve", "--port", str(self.port), *extra],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError("server exited: " + self._log.read().decode(errors="replace"))
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become healthy in 120 s")

    def pids(self) -> list[int]:
        """The server process and its descendants (the workers of `serve --processes N`)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return out

    def rss_mb(self) -> float | None:
        """Resident memory of the server's processes in MB (summed: pages they share count
        once per process, so this overstates a multi-process server a little); None when
        none can be read."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024 if total else None

    def settled_rss_mb(
        self,
        window_s: float = 3.0,
        tolerance_mb: float = 5.0,
        every_s: float = 0.5,
        timeout_s: float = 60.0,
    ) -> float | None:
        """`rss_mb` once it has settled: the server answers /healthz before its processes
        have finished starting (their memory still grows for a second or more), so an idle
        reading taken then is too low. See `settled`."""
        return settled(self.rss_mb, window_s, tolerance_mb, every_s, timeout_s)

    def cpu_s(self) -> float:
        """User + system CPU seconds the server's live processes have used."""
        ticks = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settled(
    read: Callable[[], float | None],
    window_s: float = 3.0,
    tolerance_mb: float = 5.0,
    every_s: float = 0.5,
    timeout_s: float = 60.0,
) -> float | None:
    """Read ``read()`` every ``every_s`` until the readings of the last ``window_s`` differ by
    at most ``tolerance_mb``, and return the last one (the last reading at ``timeout_s``;
    None when there is none)."""
    need = max(2, round(window_s / every_s) + 1)
    recent: list[float] = []
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value is not None:
            recent = [*recent, value][-need:]
            if len(recent) == need and max(recent) - min(recent) <= tolerance_mb:
                return value
        if time.monotonic() >= deadline:
            return recent[-1] if recent else None
        time.sleep(every_s)


class PeakRss:
    """Peak `ServerProcess.rss_mb` while inside ``async with`` (sampled every ``every_s``
    and once at the end); ``peak_mb`` stays None without a server or a reading."""

    def __init__(self, server: ServerProcess | None, every_s: float = 0.5) -> None:
        self._server = server
        self._every_s = every_s
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.peak_mb: float | None = None

    def _sample(self) -> None:
        mb = None if self._server is None else self._server.rss_mb()
        if mb is not None and (self.peak_mb is None or mb > self.peak_mb):
            self.peak_mb = mb

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._sample()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._every_s)
            except TimeoutError:
                pass

    async def __aenter__(self) -> PeakRss:
        if self._server is not None:
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await self._task
            self._sample()
