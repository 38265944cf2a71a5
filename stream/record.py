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

The event loop carries every session's media, so it never touches the disk:
`SessionRecorder` only queues what is to be written, and a thread of its own
writes it. Audio is queued in chunks of ``AUDIO_CHUNK_S`` (one write and one
WAV header update each), not per 20 ms frame; the rest at close. Between
writes the file on disk is a valid WAV of the chunks written so far: a process
that dies loses at most the last chunk and what was queued. The queue is
bounded (``MAX_QUEUED``, about a minute of a call); a disk that falls that far
behind, or fails, stops the recording (never the session), and the log says
how much audio was not written.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import wave
from pathlib import Path
from typing import IO, Any

import numpy as np

from stream.events import Event, SessionEnded
from stream.redaction import log_failure

__all__ = ["SessionRecorder", "create_private"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Silence for a timestamp gap is written in pieces of at most this many samples (a paused
# microphone leaves a gap as long as the pause; the session's duration limit bounds it).
MAX_GAP_SAMPLES = SAMPLE_RATE * 60
AUDIO_CHUNK_S = 1.0  # audio held before it is queued (32 KB)
# Writes queued for the writer thread: a call queues ~15 events and one audio chunk a
# second, so this is over a minute of a call (a few MB). Drop policy: none is dropped; a
# full queue stops the recording, and the log says so.
MAX_QUEUED = 1000
_END = ("end", None)


def create_private(path: str | Path, binary: bool = False) -> IO[Any]:
    """Open ``path`` for writing, created readable by its owner only (0600): every file
    ahstream writes on request (recordings, events, reports) may hold health data. An
    existing file is truncated and keeps its mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if binary:
        return os.fdopen(fd, "wb")
    return os.fdopen(fd, "w", encoding="utf-8")


class SessionRecorder:
    """Writes one session's 16 kHz audio and events under ``root/<session_id>/``.

    `event`, `audio` and `close` are called on the event loop and never block: a writer
    thread (one per recording session, started at its first write) does the disk I/O.
    """

    def __init__(self, root: str | Path, session_id: str) -> None:
        if not session_id or not all(c.isalnum() or c in "-_" for c in session_id):
            raise ValueError(f"unusable session id for a directory name: {session_id!r}")
        self.dir = Path(root) / session_id
        self.session_id = session_id
        self.closed = False  # no more input taken (the writer may still be writing)
        self._written = 0  # audio samples placed on the timeline so far
        self._pending: list[bytes] = []  # 16-bit PCM not queued yet
        self._pending_samples = 0
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._end_queued = False  # close queued the writer's end (else it ends when drained)
        self._dropped = 0  # audio samples not queued: the queue was full
        # written by the writer thread only
        self._wav: wave.Wave_write | None = None
        self._wav_file: IO[bytes] | None = None
        self._events: IO[str] | None = None
        self._on_disk = 0  # audio samples written
        self._lost = 0  # audio samples not written (the disk failed or fell behind)
        self._failed = False

    # ---- the event loop's side: queue, never block

    def event(self, event: Event) -> None:
        """Append one published event (a `Publisher` listener); closes on `session.ended`."""
        if self.closed:
            return
        self._put(("event", event.to_json() + "\n"))
        if isinstance(event, SessionEnded):
            self.close()

    def audio(self, samples: np.ndarray, t: float | None) -> None:
        """Append 16 kHz mono float32 samples starting at media time ``t`` (None: contiguous)."""
        if self.closed:
            return
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if t is not None:
            start = int(round(t * SAMPLE_RATE))
            gap = start - self._written
            if gap > 0:  # written as silence by the writer, in pieces
                self._flush_pending()
                self._put(("silence", gap))
                self._written += gap
            if start < self._written:
                x = x[self._written - start :]  # overlap: the session drops it too
        if x.size:
            pcm = (np.clip(x, -1.0, 1.0) * 32767).astype("<i2")
            self._pending.append(pcm.tobytes())
            self._pending_samples += int(x.size)
            self._written += int(x.size)
            if self._pending_samples >= AUDIO_CHUNK_S * SAMPLE_RATE:
                self._flush_pending()

    def close(self) -> None:
        """Take no more input; the writer finishes the files (idempotent; see `join`)."""
        if self.closed:
            return
        self._flush_pending()
        if self._thread is not None:
            try:
                self._queue.put_nowait(_END)
                self._end_queued = True
            except queue.Full:  # the writer ends once it has drained the queue
                pass
        self.closed = True  # after the end is queued: the writer reads the two in this order

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the files are finished (after `close`); False on timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def drain(self) -> None:
        """Wait until everything queued so far is on disk (blocks: for tests)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def _flush_pending(self) -> None:
        if self._pending:
            self._put(("audio", b"".join(self._pending)))
            self._pending.clear()
            self._pending_samples = 0

    def _put(self, item: tuple[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_all, name=f"record-{self.session_id}", daemon=False
            )
            self._thread.start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the disk is a minute behind: stop rather than hold the loop
            log.error(
                "session %s: the disk fell %d writes behind; recording stopped",
                self.session_id,
                MAX_QUEUED,
            )
            self._dropped += _samples(*item)
            self._failed = True  # the writer drops what is queued and finishes the files
            self.closed = True

    # ---- the writer thread

    def _write_all(self) -> None:
        while True:
            try:
                kind, item = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.closed and not self._end_queued:
                    break  # stopped with a full queue: close could not queue the end
                continue
            try:
                if kind == "end":
                    break
                if self._failed:
                    self._lost += _samples(kind, item)
                    continue
                try:
                    self._write(kind, item)
                except OSError as exc:  # a full disk stops the recording, never the session
                    log_failure(
                        log, exc, "session %s: recording failed; recording stopped", self.session_id
                    )
                    self._failed = True
                    self._lost += _samples(kind, item)
            finally:
                self._queue.task_done()
        self._finish()

    def _write(self, kind: str, item: Any) -> None:
        self._open()
        if kind == "event":
            assert self._events is not None
            self._events.write(item)
            if self._queue.empty():  # whole lines on disk, without a write per event
                self._events.flush()
        elif kind == "audio":
            self._write_pcm(item)
        elif kind == "silence":
            n = int(item)
            while n > 0:  # the whole gap, at most a minute of silence per write
                k = min(n, MAX_GAP_SAMPLES)
                self._write_pcm(b"\0\0" * k)
                n -= k

    def _write_pcm(self, pcm: bytes) -> None:
        assert self._wav is not None
        self._wav.writeframes(pcm)  # data, then one header update
        self._on_disk += len(pcm) // 2

    def _open(self) -> None:
        if self._events is not None:
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
        return create_private(self.dir / name, binary)

    def _finish(self) -> None:
        """Close the files (each on its own: a failing one must not leave the others open)."""
        while True:  # what a stopped recording still had queued
            try:
                kind, item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._lost += _samples(kind, item)
            self._queue.task_done()
        for f in (self._wav, self._wav_file, self._events):  # the wav first: its header
            try:
                if f is not None:
                    f.close()
            except OSError as exc:
                log_failure(log, exc, "session %s: closing the recording failed", self.session_id)
        # what a stop left unqueued counts too (the loop no longer touches it then)
        lost = (self._lost + self._dropped + self._pending_samples) / SAMPLE_RATE
        log.info(
            "session %s: recorded %.1f s of audio under %s%s",
            self.session_id,
            self._on_disk / SAMPLE_RATE,
            self.dir,
            f" ({lost:.1f} s not written: the disk failed or fell behind)" if lost else "",
        )


def _samples(kind: str, item: Any) -> int:
    """Audio samples a queued write holds."""
    if kind == "audio":
        return len(item) // 2
    if kind == "silence":
        return int(item)
    return 0
