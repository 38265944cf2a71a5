"""`--record` disk I/O: the audio of a call reaches disk in chunks, not per 20 ms frame,
written by the recorder's own thread (never the event loop that carries every call's
media), and the WAV is valid and complete when the call breaks off. A disk that falls
behind stops the recording, never the call.

A real session is fed real speech through the real audio ingest, as 20 ms 48 kHz frames
with RTP-like timestamps (one stretch of lost packets), the recorder attached as
`stream.whip` attaches it.
"""

from __future__ import annotations

import asyncio
import struct
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from stream.ingest import AudioIngest
from stream.publisher import Publisher
from stream.record import SessionRecorder
from stream.session import Session
from tests.media import librivox_speech

IN_RATE = 48000
FRAME = 960  # 20 ms at 48 kHz, as WebRTC delivers audio


@pytest.fixture(scope="module")
def models() -> Any:
    from models.profile import load_models

    return load_models("lite")


def wav_on_disk(path: Path) -> tuple[int, int]:
    """(file size, data size the header gives) of a WAV as another reader sees it now."""
    with open(path, "rb") as f:
        head = f.read(44)
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and head[36:40] == b"data"
    return path.stat().st_size, struct.unpack("<I", head[40:44])[0]


async def test_recorded_audio_goes_to_disk_in_chunks_and_is_complete_when_the_call_breaks_off(
    models: Any, tmp_path: Path
) -> None:
    speech, _ = librivox_speech()
    pcm = (np.clip(speech[: 12 * 16000], -1, 1) * 32767).astype(np.int16)
    pcm48 = np.repeat(pcm, 3)  # 48 kHz, as the browser sends it
    session = Session("rec", models, Publisher("rec"), live=True)
    recorder = SessionRecorder(tmp_path, "rec")
    session.publisher.listeners.append(recorder.event)
    ingest = AudioIngest(session, recorder=recorder)
    session.add_track("audio")
    session.start()

    wav = tmp_path / "rec" / "audio.wav"
    seen: list[tuple[int, int]] = []  # the file on disk after each frame
    lost = range(300, 325)  # 0.5 s of packets lost at 6 s: a gap on the timeline
    n_frames = int(10.37 * IN_RATE) // FRAME  # the call breaks off mid-chunk
    for k in range(n_frames):
        if k in lost:
            continue
        frame = av.AudioFrame.from_ndarray(
            pcm48[None, k * FRAME : (k + 1) * FRAME], format="s16", layout="mono"
        )
        frame.sample_rate = IN_RATE
        ingest.push(frame, float(k * FRAME * Fraction(1, IN_RATE)))
        recorder.drain()  # what was queued is on disk (between two writes of the thread)
        if wav.exists():
            seen.append(wav_on_disk(wav))
        if k % 25 == 0:
            await asyncio.sleep(0)  # let the session's worker run
    received = session.ring.end_index  # 16 kHz samples on the timeline, the gap included
    await session.finish("connection closed")  # the peer vanished: no track end

    assert recorder.join(30)
    # On disk the file was a valid WAV between writes, its header matching its size ...
    assert seen and all(size == 44 + data for size, data in seen)
    # ... and it was written a second at a time, not 50 times a second.
    writes = len({size for size, _ in seen})
    assert writes <= 2 * received / 16000
    # Complete at the end: every sample received, the lost packets as silence.
    assert recorder.closed
    with wave.open(str(wav), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == received
        recorded = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    analysed = session.ring.read(0, received)  # what the session analysed
    assert np.abs(recorded / 32767 - analysed).max() <= 1.5 / 32767
    gap = recorded[int(6.0 * 16000) + 200 : int(6.5 * 16000) - 200]
    assert gap.size and not gap.any()
    assert np.abs(recorded[: 6 * 16000]).max() > 1000  # the speech itself


def test_the_disk_is_written_by_the_recorders_thread_and_a_stalled_disk_stops_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every write runs on the recorder's thread. A disk that stalls (its writes block)
    while the call goes on: the recorder takes what it can queue, then stops with an error
    in the log; none of its calls ever waits for the disk; once the disk is back, the
    files are closed and the log says how much audio was not written."""
    import threading

    from stream.events import Frame, SessionEnded, SessionStarted
    from stream.record import AUDIO_CHUNK_S, MAX_QUEUED

    writers: list[str] = []
    stall = threading.Event()
    write = SessionRecorder._write

    def stalled_write(self: SessionRecorder, kind: str, item: Any) -> None:
        writers.append(threading.current_thread().name)
        if kind != "event" or "session.started" not in item:
            stall.wait(30)  # the disk hangs after the first write
        write(self, kind, item)

    monkeypatch.setattr(SessionRecorder, "_write", stalled_write)
    caplog.set_level("INFO", logger="stream.record")
    recorder = SessionRecorder(tmp_path, "stall")
    recorder.event(SessionStarted("stall"))  # written; then the disk hangs
    second = np.full(int(AUDIO_CHUNK_S * 16000), 0.1, dtype=np.float32)
    n = 0
    while not recorder.closed and n < 3 * MAX_QUEUED:  # returns at once, every time
        recorder.event(Frame("stall", t=n / 10, p=0.5))
        if n % 10 == 0:
            recorder.audio(second, None)
        n += 1
    assert recorder.closed and n < 2 * MAX_QUEUED
    assert "the disk fell 1000 writes behind; recording stopped" in caplog.text
    recorder.event(SessionEnded("stall", duration=n / 10))  # after the stop: ignored
    stall.set()
    assert recorder.join(30)
    assert writers and set(writers) == {"record-stall"}  # never the event loop's thread
    lines = (tmp_path / "stall" / "events.jsonl").read_text().splitlines()
    assert len(lines) >= 1 and all(line.startswith("{") for line in lines)
    assert "not written: the disk failed or fell behind" in caplog.text
    with wave.open(str(tmp_path / "stall" / "audio.wav"), "rb") as w:
        assert w.getnframes() % int(AUDIO_CHUNK_S * 16000) == 0  # whole chunks
