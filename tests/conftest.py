"""Shared fixtures: a real `ahstream serve` process on loopback and media built at run time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "bah-transcripts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`ahstream serve` in a subprocess, so the tests talk to it as any client would."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
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
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


@pytest.fixture(scope="session")
def server():
    srv = ServeProcess()
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
