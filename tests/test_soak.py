"""Soak: one session on an hour of media, fed as fast as it is analysed, keeps memory flat.

An hour of audio (silence with a short espeak-ng sentence every five minutes,
so the ASR, the transcript and the word/voice cues all work) and video frames of a
real face (scikit-image's astronaut, so the face mesh, the expression model, the
face baselines and the face and cross-modal cues all work) at 1 fps go through one
`Session` with the lite models at 2 analysis ticks per second. After a 10-minute
warm-up the process RSS must stay flat to the end; the Python heap allocated during
the last 20 minutes (tracemalloc, on only then: it doubles the run time) and still
held at the end must be small; and every per-session buffer must stay within its bound.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from models.cross_cues import FACE_HISTORY_S, FACE_WINDOW_S
from models.face import BLINK_RATE_WINDOW_S
from models.face_cues import OSC_WINDOW_S
from models.word_cues import CONTEXT_BEFORE, CONTRAST_LOOKAHEAD
from stream.buffers import VideoFrame
from stream.publisher import Publisher
from stream.session import Session
from tests.mediafiles import astronaut_frames

HOUR_S = 3600
WARMUP_S = 600
SPEECH_EVERY_S = 300
SAMPLE_EVERY_S = 300
TRACE_FROM_S = 2400


def rss_mb() -> float:
    """Resident set size of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.fixture(scope="module")
def models():
    from models.profile import load_models

    return load_models("lite")


def sizes(session: Session) -> dict[str, int]:
    """Lengths of the session's growing structures."""
    az = session.analyzer
    face = az.face
    return {
        "vad_flags": session.vad.held,
        "slot": len(session.slot),
        "arrivals": len(session.clock._arrivals),
        "history": len(session.publisher._history),
        "analyzer_words": len(az.words),
        "asr_words": len(session.asr.committed_words),
        "word_cue_tokens": len(az.word_cues._toks),
        "prosody_words": len(az.prosody._words) if az.prosody is not None else 0,
        "face_blinks": len(face._blinks) if face is not None else 0,
        "face_seen": len(face._seen) if face is not None else 0,
        "shake_samples": len(az.face_cues._shake.samples),
        "nod_samples": len(az.face_cues._nod.samples),
        "cross_words": len(az.cross_cues._words),
        "cross_pending": len(az.cross_cues._pending) + len(az.cross_cues._recent),
    }


MAX_WALL_S = 400.0  # a stalled worker fails the test instead of hanging the suite


async def _pause(started: float) -> None:
    if time.perf_counter() - started > MAX_WALL_S:
        pytest.fail(f"the session stopped making progress (over {MAX_WALL_S:.0f} s)")
    await asyncio.sleep(0.001)


async def test_one_hour_session_keeps_memory_flat(models):
    from tests.media import espeak_speech

    sentence = espeak_speech("Well, um, I guess I could try to walk a bit more, maybe.")
    counts: dict[str, int] = {}
    publisher = Publisher("soak")

    def count(event: Any) -> None:
        counts[event.type] = counts.get(event.type, 0) + 1
        if event.type == "frame" and event.modalities.get("face"):
            counts["face"] = counts.get("face", 0) + 1

    publisher.listeners.append(count)
    session = Session("soak", models, publisher, analysis_hz=2.0)
    session.add_track("audio")
    session.add_track("video")
    session.start()
    image = astronaut_frames(1)[0]  # 320 x 240
    silence = np.zeros(16000, dtype=np.float32)
    samples: list[tuple[int, float, int, dict[str, int]]] = []
    started = time.perf_counter()
    try:
        for sec in range(HOUR_S):
            if sec % SPEECH_EVERY_S == SPEECH_EVERY_S // 2:
                session.push_audio(sentence, None)  # a short sentence, then silence
                session.push_audio(silence[: 16000 - sentence.size % 16000], None)
            else:
                session.push_audio(silence, None)
            t_video = session.ring.end_time - 1.0
            session.push_video(VideoFrame(t=t_video, image=image.copy(), width=320, height=240))
            while session.ring.end_time - session.processed_t > 3.0 and not session.done:
                await _pause(started)
            if sec == TRACE_FROM_S:
                gc.collect()
                tracemalloc.start(1)
            if sec % SAMPLE_EVERY_S == 0 and sec >= WARMUP_S or sec == HOUR_S - 1:
                # sample with the worker idle (waiting for media), not mid-tick
                while t_video - session.processed_t > 0.5 and not session.done:
                    await _pause(started)
                await asyncio.sleep(0.05)
                gc.collect()
                heap, _ = tracemalloc.get_traced_memory()
                samples.append((sec, rss_mb(), heap, sizes(session)))
                if sec == HOUR_S - 1 and os.environ.get("SOAK_DEBUG"):
                    snap = tracemalloc.take_snapshot()
                    for stat in snap.statistics("lineno")[:12]:
                        print("  ", stat)
        session.track_ended("audio")
        session.track_ended("video")
        await asyncio.wait_for(session.finish(), timeout=60)
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"soak: {HOUR_S} s of media in {elapsed:.1f} s; events {counts}")
    for sec, rss, heap, size in samples:
        print(f"  t={sec:5d}s rss={rss:7.1f} MB heap={heap / 1e6:6.2f} MB {size}")

    assert session.media_end >= HOUR_S
    assert counts["session.ended"] == 1 and counts.get("error", 0) == 0
    assert counts["frame"] >= HOUR_S * 2 - 2
    assert counts.get("transcript", 0) >= HOUR_S // SPEECH_EVERY_S  # the speech was heard
    assert counts.get("face", 0) >= 0.9 * counts["frame"]  # and the face seen
    first, last = samples[0], samples[-1]
    # Python heap allocated in the last 20 minutes and still held: the newest transcript
    # words and the entries that replaced old ones in bounded deques, well under 1 MB
    assert last[2] < 1.0e6, f"heap grew {last[2] / 1e6:.2f} MB"
    # process memory (numpy buffers, native libraries): flat too
    assert last[1] - first[1] < 25.0, f"RSS grew {last[1] - first[1]:.1f} MB"
    size = last[3]
    assert size["vad_flags"] <= 600 / 0.03 + 1
    assert size["slot"] <= session.slot.max_intervals
    assert size["arrivals"] <= 2048
    assert size["history"] <= 5000
    assert size["prosody_words"] <= 200
    # the word cues keep the words their rules can still look back at, not the session's
    assert size["word_cue_tokens"] <= 64 + CONTEXT_BEFORE + 8 + CONTRAST_LOOKAHEAD + 20
    # the face's windows hold their seconds of frames (1 per second here), not the session's
    assert size["face_seen"] <= BLINK_RATE_WINDOW_S + 2 and size["face_blinks"] <= size["face_seen"]
    assert max(size["shake_samples"], size["nod_samples"]) <= OSC_WINDOW_S + 2
    assert size["cross_pending"] <= 2 * (FACE_HISTORY_S + FACE_WINDOW_S) + 4
    assert size["cross_words"] <= 40  # the words of the last sentence at most
