"""Shared fixtures: a real `ahstream serve` process on loopback and media built at run time."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "bah-transcripts"


@contextlib.asynccontextmanager
async def app_on_loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp ``app`` on a free loopback port while the block runs; yields its
    base URL (``http://127.0.0.1:PORT``)."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(
    url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """(status, headers) of one plain HTTP request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def post_in_parts(
    url: str, path: str, body: bytes, headers: dict[str, str], pause_s: float = 0.3
) -> tuple[int, dict[str, str]]:
    """POST ``body`` as a slow network delivers it: headers and the first half in one TCP
    segment, the rest ``pause_s`` later. Returns (status, response headers)."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close", "", ""]
    half = len(body) // 2
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall("\r\n".join(lines).encode() + body[:half])
        time.sleep(pause_s)
        s.sendall(body[half:])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), fields


class ServeProcess:
    """`ahstream serve` in a subprocess, so the tests talk to it as any client would."""

    def __init__(
        self,
        *extra: str,
        cafile: str | Path | None = None,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start the server; ``cafile`` (a CA in PEM) means it serves https with that CA."""
        import ssl

        if "--processes" not in extra:
            extra = (*extra, "--processes", "1")  # one process unless a test asks for more
        self.port = free_port()
        scheme = "https" if cafile else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ssl = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream.cli",
                "--log-level",
                "INFO",
                "serve",
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Read the log as it comes: a full pipe would block the server.
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"server exited: {self.output}")
            try:
                with urllib.request.urlopen(
                    self.url + "/healthz", timeout=1, context=self.ssl
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(self.url + "/healthz", timeout=5, context=self.ssl) as r:
            return json.loads(r.read())

    def _read_log(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        """What the server has written to stdout/stderr so far."""
        return "".join(self.lines)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_log()
        return self.output

    def _close_log(self) -> None:
        """Read the log to its end and close the pipe (left to the garbage collector, it
        warns in whichever test happens to run then)."""
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="session")
def server():
    # Decoding every ASR hop however late: the live-vs-analyze comparisons need the same
    # step schedule, and a loaded test machine must not skip hops (the skipping itself is
    # tested on a session, tests/test_session_faults.py).
    srv = ServeProcess("--no-asr-skip")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def speech():
    """(16 kHz float32 read speech, reference text) from Debian's pocketsphinx-testdata."""
    from tests.media import librivox_speech

    return librivox_speech()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def talking_face_mp4(media_dir, speech):
    """A real face moving across frames, with read speech: the shape of a call."""
    from tests.mediafiles import astronaut_frames, write_media

    audio, _ = speech
    fps = 15
    frames = astronaut_frames(int(len(audio) / 16000 * fps) + 1)
    return write_media(media_dir / "talking_face.mp4", audio, frames, fps=fps)


@pytest.fixture(scope="session")
def video_only_mp4(media_dir):
    from tests.mediafiles import astronaut_frames, write_media

    return write_media(media_dir / "video_only.mp4", None, astronaut_frames(15 * 4), fps=15)


@pytest.fixture(scope="session")
def audio_only_wav(media_dir, speech):
    """The first ~7 s of the speech as a 16 kHz WAV (audio-only publisher)."""
    import wave

    import numpy as np

    audio, _ = speech
    path = media_dir / "audio_only.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio[: 16000 * 7], -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="session")
def live_call_events(server, talking_face_mp4):
    """Every event of one live call of `talking_face_mp4` published over WHIP."""
    import asyncio

    from clients.send import send_file

    return asyncio.run(send_file(talking_face_mp4, server.url))


@pytest.fixture(scope="session")
def analyzed_call(tmp_path_factory, talking_face_mp4):
    """`ahstream analyze talking_face.mp4 --out-dir D --report D` run once: (D, the process)."""
    out = tmp_path_factory.mktemp("analyzed")
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "analyze", str(talking_face_mp4)]
        + ["--out-dir", str(out), "--report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


@pytest.fixture(scope="session")
def bah_fx(tmp_path_factory):
    """The XOR BAH-layout fixture of the full profile (tests.full_training)."""
    from tests.full_training import make_fixture

    return make_fixture(tmp_path_factory.mktemp("bah"))


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    """Tiny random VideoMAE / HuBERT / RoBERTa models on disk: {"video", "audio", "text"}."""
    from tests.tiny_models import make_tiny_encoders

    return make_tiny_encoders(tmp_path_factory.mktemp("encoders"))


@pytest.fixture(scope="session")
def full_trained(bah_fx, tiny_encoders, tmp_path_factory):
    """`ahstream train --profile full` on `bah_fx` run once: {"out": weights dir, "summary"}."""
    import json

    from stream.cli import main
    from tests.full_training import train_argv

    out = tmp_path_factory.mktemp("weights")
    assert main(train_argv(bah_fx, tiny_encoders, out)) == 0
    return {"out": out, "summary": json.loads((out / "full_profile.json").read_text())}
