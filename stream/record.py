"""Opt-in recording of sessions (`ahstream serve --record DIR`).

Without ``--record`` nothing of a call reaches disk. With it, each session
writes under ``DIR/<session-id>/``:

- ``audio.wav``: the audio the session analysed, 16 kHz mono 16-bit, on the
  session's media timeline (timestamp gaps are written as silence);
- ``events.jsonl``: every event published, one JSON object per line (the
  same messages subscribers receive, none dropped).

Video is not recorded (its analysis is in the events: face cues, modality
flags). Directories are created ``0700`` and files ``0600`` (health data),
lazily, on the session's first event, so refused offers leave nothing behind.
Files are closed when the session publishes ``session.ended``.

Audio is written on the event loop that carries every session's media, so it
is written in chunks of ``AUDIO_CHUNK_S`` (one write and one WAV header update
each), not per 20 ms frame; the rest is written at close. On disk the file is
a valid WAV of the chunks written so far at any moment: a process that dies
loses at most the last chunk. Nothing is dropped: if the disk fails, the
recording stops and the log says how much audio was not written.
"""

from __future__ import annotations

import logging
import os
import wave
from pathlib import Path
from typing import IO, Any

import numpy as np

from stream.events import Event, SessionEnded

__all__ = ["SessionRecorder"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Silence for a timestamp gap is written in pieces of at most this many samples (a paused
# microphone leaves a gap as long as the pause; the session's duration limit bounds it).
MAX_GAP_SAMPLES = SAMPLE_RATE * 60
AUDIO_CHUNK_S = 1.0  # audio held in memory before it is written (32 KB)


class SessionRecorder:
    """Writes one session's 16 kHz audio and events under ``root/<session_id>/``."""

    def __init__(self, root: str | Path, session_id: str) -> None:
        if not session_id or not all(c.isalnum() or c in "-_" for c in session_id):
            raise ValueError(f"unusable session id for a directory name: {session_id!r}")
        self.dir = Path(root) / session_id
        self.session_id = session_id
        self._wav: wave.Wave_write | None = None
        self._wav_file: IO[bytes] | None = None
        self._events: IO[str] | None = None
        self._written = 0  # audio samples recorded so far (on disk or pending)
        self._pending: list[bytes] = []  # 16-bit PCM not written yet
        self._pending_samples = 0
        self.closed = False

    def _open(self) -> None:
        if self._events is not None or self.closed:
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._events = self._create("events.jsonl")
        self._wav_file = self._create("audio.wav", binary=True)
        self._wav = wave.open(self._wav_file, "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(SAMPLE_RATE)
        self._wav.writeframes(b"")  # the header: a valid (empty) WAV from the start
        self._wav_file.flush()

    def _create(self, name: str, binary: bool = False) -> IO[Any]:
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        if binary:
            return os.fdopen(fd, "wb")
        return os.fdopen(fd, "w", encoding="utf-8", buffering=1)

    def event(self, event: Event) -> None:
        """Append one published event (a `Publisher` listener); closes on `session.ended`."""
        if self.closed:
            return
        try:
            self._open()
            assert self._events is not None
            self._events.write(event.to_json() + "\n")
        except OSError:  # a full disk stops the recording, never the session
            log.exception("session %s: recording events failed; recording stopped", self.session_id)
            self.close()
        if isinstance(event, SessionEnded):
            self.close()

    def audio(self, samples: np.ndarray, t: float | None) -> None:
        """Append 16 kHz mono float32 samples starting at media time ``t`` (None: contiguous)."""
        if self.closed:
            return
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        try:
            self._open()
            if t is not None:
                start = int(round(t * SAMPLE_RATE))
                gap = start - self._written
                while gap > 0:  # the whole gap, at most a minute of silence per write
                    n = min(gap, MAX_GAP_SAMPLES)
                    self._write(np.zeros(n, dtype=np.float32))
                    gap -= n
                if start < self._written:
                    x = x[self._written - start :]  # overlap: the session drops it too
            self._write(x)
        except OSError:
            log.exception("session %s: recording audio failed; recording stopped", self.session_id)
            self.close()

    def _write(self, x: np.ndarray) -> None:
        if x.size and self._wav is not None:
            pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2")
            self._pending.append(pcm.tobytes())
            self._pending_samples += int(x.size)
            self._written += int(x.size)
            if self._pending_samples >= AUDIO_CHUNK_S * SAMPLE_RATE:
                self._flush_audio()

    def _flush_audio(self) -> None:
        """Write the pending audio; `writeframes` then updates the header once."""
        if self._pending and self._wav is not None:
            self._wav.writeframes(b"".join(self._pending))
            self._pending.clear()
            self._pending_samples = 0

    def close(self) -> None:
        """Finish the files (idempotent)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._flush_audio()
        except OSError:
            log.exception("session %s: writing the recorded audio failed", self.session_id)
        # Each closed on its own: a failing one must not leave the others open.
        for f in (self._wav, self._wav_file, self._events):  # the wav first: its header
            try:
                if f is not None:
                    f.close()
            except OSError:
                log.exception("session %s: closing the recording failed", self.session_id)
        lost = self._pending_samples / SAMPLE_RATE
        log.info(
            "session %s: recorded %.1f s of audio under %s%s",
            self.session_id,
            (self._written - self._pending_samples) / SAMPLE_RATE,
            self.dir,
            f" ({lost:.1f} s not written: the disk failed)" if lost else "",
        )
