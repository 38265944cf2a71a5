"""Health data: nothing of a call reaches disk or logs by default; `--record DIR` is opt-in."""

from __future__ import annotations

import json
import re
import stat
import wave
from pathlib import Path

import numpy as np

from clients.send import send_file
from tests.conftest import ServeProcess

# Library caches that are not call data (matplotlib's font list, built on first use).
LIBRARY_CACHES = ("matplotlib",)


def _files(*dirs: Path) -> set[Path]:
    """Files under ``dirs``, library caches left out."""
    return {
        p
        for d in dirs
        for p in d.rglob("*")
        if p.is_file() and not any(c in p.parts for c in LIBRARY_CACHES)
    }


def _sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory, HOME and TMPDIR of the server's own."""
    work, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (work, home, tmp):
        d.mkdir()
    return work, {"HOME": str(home), "TMPDIR": str(tmp)}


def _spoken_words(events: list[dict]) -> set[str]:
    text = " ".join(e["text"] for e in events if e["type"] == "transcript")
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 5}


async def test_nothing_of_a_call_is_written_by_default(tmp_path, audio_only_wav):
    work, env = _sandbox(tmp_path)
    srv = ServeProcess(cwd=work, env=env)
    try:
        before = _files(tmp_path)
        events = await send_file(audio_only_wav, srv.url)
        after = _files(tmp_path)
    finally:
        log = srv.stop()
    assert events[-1]["type"] == "session.ended"
    words = _spoken_words(events)
    assert len(words) >= 5, "the call should have been transcribed"
    assert after == before, f"files appeared: {sorted(map(str, after - before))}"
    # INFO logs carry ids, timings and sizes, never what was said
    logged = set(re.findall(r"[a-z]+", log.lower()))
    assert not words & logged, f"transcript words in the server log: {words & logged}"


async def test_record_writes_audio_and_events(tmp_path, audio_only_wav):
    work, env = _sandbox(tmp_path)
    record = tmp_path / "rec"
    srv = ServeProcess("--record", str(record), cwd=work, env=env)
    try:
        events = await send_file(audio_only_wav, srv.url)
    finally:
        srv.stop()
    session_id = events[0]["session"]
    session_dir = record / session_id
    assert sorted(p.name for p in record.iterdir()) == [session_id]
    assert sorted(p.name for p in session_dir.iterdir()) == ["audio.wav", "events.jsonl"]
    assert stat.S_IMODE(session_dir.stat().st_mode) == 0o700
    for f in session_dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    recorded = [
        json.loads(line) for line in (session_dir / "events.jsonl").read_text().splitlines()
    ]
    assert recorded[0]["type"] == "session.started" and recorded[-1]["type"] == "session.ended"
    critical = [e for e in events if e["type"] not in ("frame", "status")]
    assert [e for e in recorded if e["type"] not in ("frame", "status")] == critical
    with wave.open(str(session_dir / "audio.wav"), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        seconds = w.getnframes() / 16000
        pcm = w.readframes(w.getnframes())
    assert abs(seconds - recorded[-1]["duration"]) < 0.5
    assert 6.0 < seconds < 8.5  # the 7 s file
    # Speech, not silence or codec noise: the sent file is at ~2000 RMS (-24 dBFS) and its
    # recording measured the same; 300 (-41 dBFS) is far below that and far above one LSB.
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert np.sqrt(np.mean(samples**2)) > 300
    assert not _files(work)
    assert not [
        p for p in _files(tmp_path) if p.suffix in (".wav", ".jsonl") and record not in p.parents
    ]
