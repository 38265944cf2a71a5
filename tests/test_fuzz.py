"""Bad input never crashes anything.

Against a running server (property-based, hypothesis): random and mutated SDP
offers never get a 5xx and leave /healthz at 200; garbage websocket messages
(text, binary, oversized) to /sessions/<id>/events close or are ignored, and the
session and server go on. At the ingest/session level: corrupted, zero-size,
non-finite and oddly shaped media frames, timestamps jumping backwards or far
forwards, extreme resolutions and frame rates give an `error` event or are
coped with, and the session always ends with its final events.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.ingest import AudioIngest, MediaLimits, VideoIngest, drain_track
from stream.publisher import Publisher
from stream.serving import ice_configuration
from stream.session import Session
from tests.conftest import ServeProcess, post_in_parts

FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,  # nothing written into the work tree; failures print their example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def strict_json(text: str) -> Any:
    """Parse JSON as a browser does (no NaN/Infinity)."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------- running server


@pytest.fixture(scope="module")
def fuzz_server():
    # a long idle timeout keeps the media-less session of `live_session` open throughout
    srv = ServeProcess("--max-sessions", "64", "--ws-max-msg", "1024", "--idle-timeout", "300")
    yield srv
    srv.stop()


async def _offer(kinds: tuple[str, ...] = ("audio",)) -> str:
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(ice_configuration())
    for kind in kinds:
        pc.addTransceiver(kind, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture(scope="module")
def valid_offer() -> str:
    return asyncio.run(_offer(("audio", "video")))


def _request(
    srv: ServeProcess,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    ctype: str = "application/sdp",
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        srv.url + path, data=body, method=method, headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post_offer(srv: ServeProcess, body: bytes, ctype: str = "application/sdp") -> int:
    status, headers, _ = _request(srv, "/whip", "POST", body, ctype)
    if status == 201:  # a mutation that is still a usable offer: end that session at once
        assert _request(srv, headers["Location"], "DELETE")[0] == 200
    return status


def _mutate(sdp: str, rnd: random.Random, n: int) -> bytes:
    """``n`` random line-level and byte-level edits of a real offer."""
    lines = sdp.split("\r\n")
    for _ in range(n):
        op = rnd.randrange(7)
        i = rnd.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rnd.randrange(len(lines))])
        elif op == 2:
            lines[i] = lines[i][: rnd.randrange(len(lines[i]) + 1)]
        elif op == 3:
            lines[i] = lines[i] + rnd.choice([" 99999999999", " -1", "\x00", "é", " " * 50, ":"])
        elif op == 4:
            key = rnd.choice(["m=", "a=rtpmap:", "a=fingerprint:", "c=", "a=ice-ufrag:"])
            lines.insert(i, key + "".join(rnd.choice("0123456789 /abc:-") for _ in range(12)))
        elif op == 5:
            lines[i] = lines[i].replace(rnd.choice("0123456789"), rnd.choice("x/ -"), 1)
        else:
            rnd.shuffle(lines)
    data = bytearray("\r\n".join(lines).encode("utf-8"))
    if data and rnd.random() < 0.3:
        data[rnd.randrange(len(data))] = rnd.randrange(256)
    return bytes(data)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8))
def test_mutated_offers_never_5xx(fuzz_server, valid_offer, seed, n):
    status = _post_offer(fuzz_server, _mutate(valid_offer, random.Random(seed), n))
    assert status in (201, 400, 413, 415), status
    assert fuzz_server.health()["status"] == "ok"


@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=2048),
        st.text(max_size=2048).map(lambda s: s.encode("utf-8")),
        st.text(max_size=512).map(lambda s: ("v=0\r\n" + s).encode("utf-8")),
        st.lists(
            st.sampled_from(
                [
                    "v=0",
                    "o=- 0 0 IN IP4 127.0.0.1",
                    "s=-",
                    "t=0 0",
                    "m=audio 9 UDP/TLS/RTP/SAVPF 0",
                    "m=video 0 RTP/AVP 96",
                    "a=rtpmap:96 H264/90000",
                    "a=sendonly",
                    "c=IN IP4 0.0.0.0",
                    "a=fingerprint:sha-256 00",
                    "a=setup:actpass",
                    "a=mid:0",
                    "a=ice-ufrag:x",
                    "a=ice-pwd:y",
                    "m=application 9 DTLS/SCTP 5000",
                    "a=group:BUNDLE 0 1",
                ]
            ),
            max_size=30,
        ).map(lambda ls: "\r\n".join(ls).encode("utf-8")),
    ),
    ctype=st.sampled_from(["application/sdp", "text/plain", "application/json", ""]),
)
def test_random_bodies_never_5xx(fuzz_server, body, ctype):
    status = _post_offer(fuzz_server, body, ctype)
    assert status in (201, 400, 413, 415), status
    assert fuzz_server.health()["status"] == "ok"


def test_oversized_and_offers_without_codecs(fuzz_server, valid_offer):
    assert _post_offer(fuzz_server, valid_offer.encode() + b"a=x\r\n" * 20000) == 413
    data_only = "\r\n".join(
        line
        for line in valid_offer.split("\r\n")
        if not line.startswith(("m=", "a=rtpmap", "a=fmtp", "a=rtcp-fb"))
    ).encode()
    assert _post_offer(fuzz_server, data_only) == 400
    no_codecs = "\r\n".join(
        line.split(" UDP/TLS/RTP/SAVPF")[0] + " UDP/TLS/RTP/SAVPF 120"
        if line.startswith("m=")
        else line
        for line in valid_offer.split("\r\n")
        if not line.startswith(("a=rtpmap", "a=fmtp", "a=rtcp-fb"))
    ).encode()
    assert _post_offer(fuzz_server, no_codecs) == 400
    assert fuzz_server.health() == {**fuzz_server.health(), "status": "ok", "sessions": 0}


def test_an_offer_split_across_tcp_segments_is_read_whole(fuzz_server, valid_offer):
    # A browser's offer is several kB: on a real network it arrives in more than one
    # segment, and the server must wait for all of it (Content-Length), not parse a part.
    status, headers = post_in_parts(
        fuzz_server.url, "/whip", valid_offer.encode(), {"Content-Type": "application/sdp"}
    )
    assert status == 201, status
    assert _request(fuzz_server, headers["Location"], "DELETE")[0] == 200


def test_concurrent_offers_do_not_pass_the_session_limit(valid_offer):
    srv = ServeProcess("--max-sessions", "2", "--idle-timeout", "300")
    try:

        async def post() -> tuple[int, str | None]:
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    srv.url + "/whip",
                    data=valid_offer.encode(),
                    headers={"Content-Type": "application/sdp"},
                ) as r:
                    return r.status, r.headers.get("Location")

        async def burst() -> list[tuple[int, str | None]]:
            return list(await asyncio.gather(*(post() for _ in range(6))))

        got = asyncio.run(burst())
        assert sorted(s for s, _ in got) == [201, 201, 503, 503, 503, 503], got
        assert srv.health()["sessions"] == 2
        for status, location in got:
            if status == 201:
                assert _request(srv, location, "DELETE")[0] == 200
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def live_session(fuzz_server):
    """A session created by a real offer (no media ever flows): (id, location)."""
    status, headers, _ = _request(fuzz_server, "/whip", "POST", asyncio.run(_offer()).encode())
    assert status == 201
    yield headers["X-Ahstream-Session"], headers["Location"]
    _request(fuzz_server, headers["Location"], "DELETE")


def _ws_url(srv: ServeProcess, session_id: str) -> str:
    return srv.url.replace("http://", "ws://") + f"/sessions/{session_id}/events"


WS_MESSAGES = st.one_of(
    st.text(max_size=900),
    st.binary(max_size=900),
    st.sampled_from(['{"type":"session.ended"}', "null", "[]" * 400, "\x00" * 900]),
    st.integers(1025, 50_000).map(lambda n: "x" * n),  # above --ws-max-msg 1024
    st.integers(1025, 50_000).map(lambda n: b"\xff" * n),
)


@FUZZ
@given(messages=st.lists(WS_MESSAGES, min_size=1, max_size=6))
def test_garbage_websocket_messages(fuzz_server, live_session, messages):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    session_id, _ = live_session
    with connect(_ws_url(fuzz_server, session_id), max_size=None, open_timeout=10) as ws:
        first = strict_json(ws.recv(timeout=10))
        assert first["type"] == "session.started" and first["session"] == session_id
        sizes = [len(m.encode() if isinstance(m, str) else m) for m in messages]
        try:
            for msg in messages:
                ws.send(msg)
        except ConnectionClosed:
            assert max(sizes) > 1024
        if max(sizes) <= 1024:
            ws.ping().wait(timeout=10)  # ignored, and the subscription is still served
        else:
            with pytest.raises(ConnectionClosed):  # 1009, or dropped if it kept sending
                ws.recv(timeout=10)
    assert fuzz_server.health()["status"] == "ok"
    with connect(_ws_url(fuzz_server, session_id), open_timeout=10) as ws:
        assert strict_json(ws.recv(timeout=10))["type"] == "session.started"


def test_ws_max_msg_is_configurable(fuzz_server, live_session):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    session_id, _ = live_session
    with connect(_ws_url(fuzz_server, session_id), open_timeout=10) as ws:
        ws.recv(timeout=10)
        ws.send("y" * 1000)
        ws.ping().wait(timeout=10)
        ws.send("y" * 1100)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1009  # message too big
    with connect(_ws_url(fuzz_server, session_id), max_size=None, open_timeout=10) as ws:
        ws.recv(timeout=10)
        with pytest.raises(ConnectionClosed):
            ws.send(os.urandom(8 << 20))  # 8 MiB: refused without being buffered
            ws.recv(timeout=10)
    assert fuzz_server.health()["status"] == "ok"


# ------------------------------------------------------------ ingest / session level


@pytest.fixture(scope="module")
def models():
    from models.profile import load_models

    return load_models("lite")


class Run:
    """One `Session` fed through the ingest classes, collecting its events."""

    def __init__(self, models: Any, limits: MediaLimits | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        publisher = Publisher("fuzz")
        publisher.listeners.append(lambda e: self.events.append(strict_json(e.to_json())))
        self.session = Session("fuzz", models, publisher)
        self.audio = AudioIngest(self.session, limits)
        self.video = VideoIngest(self.session, limits)
        self.kinds: list[str] = []

    def start(self, *kinds: str) -> None:
        self.kinds = list(kinds)
        for kind in kinds:
            self.session.add_track(kind)
        self.session.start()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def codes(self) -> set[str]:
        return {e["code"] for e in self.of("error")}

    async def push(self, kind: str, frame: Any, t: float | None) -> None:
        """Push as `drain_track` does: a frame that raises becomes a `bad_media` error."""
        ingest = self.audio if kind == "audio" else self.video
        try:
            ingest.push(frame, t)
        except Exception as exc:
            self.session.report_error("bad_media", f"{kind} frame rejected: {exc}")
        # Let the worker catch up with what it can reach (the slowest track), as a feeder
        # that does not run ahead of the analysis would.
        s = self.session
        ends = {"audio": s.ring.end_time, "video": self.video._last_t or 0.0}
        while not s.done and min(ends[k] for k in self.kinds) - s.processed_t > 1.0:
            await asyncio.sleep(0.002)

    async def finish(self) -> None:
        for kind in self.kinds:
            self.session.track_ended(kind)
        await asyncio.wait_for(self.session.finish(), timeout=120)
        assert self.events[0]["type"] == "session.started"
        assert self.events[-1]["type"] == "session.ended"
        assert self.session.media_end < 120  # timelines stay bounded


def audio_frame(
    n: int = 960, rate: int = 48000, layout: str = "mono", fmt: str = "s16", value: float = 0.0
) -> av.AudioFrame:
    channels = av.AudioLayout(layout).nb_channels
    dtype = {"s16": np.int16, "flt": np.float32, "s32": np.int32, "u8": np.uint8}[fmt]
    data = np.full((1, n * channels), value, dtype=dtype)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def video_frame(width: int = 64, height: int = 48, fmt: str = "rgb24") -> av.VideoFrame:
    rng = np.random.default_rng(width * 7 + height)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame if fmt == "rgb24" else frame.reformat(format=fmt)


async def test_odd_and_corrupt_audio_frames(models):
    run = Run(models)
    run.start("audio")
    t = 0.0
    frames = [
        audio_frame(0),  # zero-size
        audio_frame(960, value=np.nan, fmt="flt"),  # not finite
        audio_frame(960, value=np.inf, fmt="flt"),
        audio_frame(960, value=1e30, fmt="flt"),  # far outside [-1, 1]
        audio_frame(480, rate=8000, layout="stereo"),
        audio_frame(960, rate=96000, layout="5.1", fmt="s32"),
        audio_frame(960, fmt="u8", value=255),
        audio_frame(960, rate=1),  # 960 samples would be 16 minutes
        audio_frame(960, rate=10_000_000),
    ]
    for frame in frames[-2:]:  # the ingest refuses impossible rates itself ...
        with pytest.raises(ValueError, match="sample rate"):
            AudioIngest(run.session).push(frame, 0.0)
    for frame in frames * 3:  # ... and `drain_track` turns that into a `bad_media` error
        await run.push("audio", frame, t)
        if 8000 <= frame.sample_rate <= 192000:
            t += frame.samples / frame.sample_rate
    # Exactly the frames of impossible rates are refused, each time, with their rate named.
    refused = [f"audio frame rejected: unsupported sample rate {r} Hz" for r in (1, 10_000_000)]
    assert [e["message"] for e in run.of("error")] == refused * 3
    assert run.codes() == {"bad_media"}
    ring = run.session.ring
    kept = ring.read(ring.start_index, ring.end_index)
    assert kept.size > 0 and np.isfinite(kept).all() and np.abs(kept).max() <= 1.0
    # Every other frame is kept whole, resampled to 16 kHz: the ring holds their summed
    # durations (zero-size frames add nothing), less only the resampler's filter tail of
    # the newest frame (held until the next frame or the end; 16 samples, 1 ms, here).
    valid = [f for f in frames if 8000 <= f.sample_rate <= 192000]
    expected = 3 * sum(f.samples / f.sample_rate for f in valid)  # 0.45 s
    assert ring.start_index == 0 and ring.gap_samples == 0
    assert expected - 0.002 <= ring.end_time <= expected + 1 / ring.sample_rate
    for _ in range(100):  # then 2 s of ordinary silence
        await run.push("audio", audio_frame(), t)
        t += 0.02
    await run.finish()
    assert len(run.of("frame")) >= 20
    assert all(0.0 <= f["p"] <= 1.0 for f in run.of("frame"))
    assert run.events[-1]["duration"] < 10


async def test_pts_jumps_backwards_and_far_forwards(models):
    run = Run(models)
    run.start("audio", "video")
    # audio 20 ms frames and video at 25 fps on garbage timelines:
    # 1 s in order, back 30 s, forward 1e6 s, back to 0, forward 3 s (a gap, kept)
    ta = tv = 0.0
    for offset in (0.0, -30.0, 1e6, -1e6, 3.0):
        ta += offset
        tv += offset
        for i in range(50):
            await run.push("audio", audio_frame(), ta)
            ta += 0.02
            if i % 2 == 0:
                await run.push("video", video_frame(), tv)
                tv += 0.04
    await run.finish()
    jumps = [e for e in run.of("error") if e["code"] == "pts_jump"]
    assert jumps and any("backwards" in e["message"] for e in jumps)
    assert any("forwards" in e["message"] for e in jumps)
    assert len(jumps) <= 6  # at most MAX_JUMP_REPORTS per track
    # 5 s of media and the kept 3 s gap; the 1e6 s jump did not stretch the timeline
    assert 5.0 <= run.events[-1]["duration"] < 10.0
    assert run.session.ring.gap_samples <= 16000 * 4
    assert len(run.of("frame")) >= 50


async def test_extreme_resolutions_and_frame_rates(models):
    limits = MediaLimits(max_width=640, max_height=360, max_fps=30)
    run = Run(models, limits)
    run.start("video")
    sizes = [(2, 2), (1, 4000), (4000, 8), (3840, 2160), (1000, 3000), (8, 8), (64, 48)]
    analysed = []
    orig_push = run.session.push_video

    def spy(frame: Any) -> None:
        analysed.append((frame.width, frame.height))
        orig_push(frame)

    run.session.push_video = spy  # type: ignore[method-assign]
    t = 0.0
    for k in range(240):  # 2 s at 120 fps, sizes cycling
        w, h = sizes[k % len(sizes)]
        await run.push("video", video_frame(w, h, "yuv420p" if w % 2 == h % 2 == 0 else "rgb24"), t)
        t += 1 / 120
    for _ in range(30):  # then 1 s at 30 fps of an ordinary size
        await run.push("video", video_frame(), t)
        t += 1 / 30
    await run.finish()
    assert analysed and all(w <= 640 and h <= 360 for w, h in analysed)
    assert all(w >= 2 and h >= 2 for w, h in analysed)
    assert run.video.refused > 0 and "bad_media" in run.codes()
    kept = 240 - run.video.refused - run.video.over_fps
    assert 2 * 30 - 2 <= kept <= 2 * 30 + 2  # 120 fps offered, 30 fps kept
    assert run.video.scaled > 0
    status = run.of("status")
    assert run.session.slot.dropped >= run.video.over_fps + run.video.refused
    assert status and status[-1]["dropped_video_frames"] > 0
    assert any(f["modalities"]["video"] for f in run.of("frame"))


async def test_corrupted_file_is_reported_not_fatal(models, tmp_path):
    from stream.replay import replay_file
    from tests.media import silence
    from tests.mediafiles import astronaut_frames, write_media

    path = write_media(tmp_path / "ok.mp4", silence(3.0, -40), astronaut_frames(45), fps=15)
    data = bytearray(path.read_bytes())
    rnd = random.Random(0)
    for _ in range(400):  # scribble over the media data, keep the header
        i = rnd.randrange(len(data) // 4, len(data))
        data[i] = rnd.randrange(256)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    run = Run(models)
    run.session.start()
    await asyncio.wait_for(replay_file(bad, run.session), timeout=120)
    assert run.events[-1]["type"] == "session.ended"
    assert 0 < run.events[-1]["duration"] < 10
    assert run.of("frame")


def _audio_track(frame_of: Callable[[int], av.AudioFrame]) -> Any:
    """A real aiortc track (a MediaStreamTrack subclass, as aiortc apps write them) whose
    n-th `recv` (from 1) returns ``frame_of(n)``, or raises what it raises."""
    from aiortc.mediastreams import MediaStreamTrack

    class Track(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        async def recv(self) -> av.AudioFrame:
            self.n += 1
            frame = frame_of(self.n)
            await asyncio.sleep(0)
            return frame

    return Track()


async def test_drain_track_survives_frames_that_raise(models):
    from aiortc.mediastreams import MediaStreamError

    def garbage(n: int) -> av.AudioFrame:
        if n > 150:
            raise MediaStreamError
        frame = audio_frame(960, rate=1 if n % 10 == 0 else 48000)
        # in order, except now and then back to 0 or 10**12 ticks ahead
        frame.pts = 960 * n if n % 7 else [0, 10**12][n % 2]
        frame.time_base = Fraction(1, 48000)
        return frame

    run = Run(models)
    run.session.start()
    await asyncio.wait_for(drain_track(_audio_track(garbage), "audio", run.session), timeout=60)
    await run.finish()
    assert {"bad_media", "pts_jump"} <= run.codes()
    assert run.events[-1]["duration"] < 30


async def test_a_track_whose_transport_fails_ends_with_an_error_event(models):
    def failing(n: int) -> av.AudioFrame:
        if n > 50:  # 1 s of audio, then the decoder dies
            raise RuntimeError("decoder state lost")
        frame = audio_frame(960)
        frame.pts, frame.time_base = 960 * n, Fraction(1, 48000)
        return frame

    run = Run(models)
    run.session.start()
    await asyncio.wait_for(drain_track(_audio_track(failing), "audio", run.session), timeout=60)
    await run.finish()
    failed = [e for e in run.of("error") if e["code"] == "bad_media"]
    assert [e["message"] for e in failed] == ["audio track failed: RuntimeError"]
    assert run.events[-1]["type"] == "session.ended"
    assert 0.9 <= run.events[-1]["duration"] < 2
