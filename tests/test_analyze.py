"""`ahstream analyze`: the same session code on files, as fast as it runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from models.wer import wer
from tests.conftest import ROOT


def _analyze(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "analyze", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _analyzed_to_the_end(clip, duration):
    """Events and frame events of `analyze` on ``clip``, which must finish (in 2 min) with
    ``session.ended`` after at least ``duration`` s of media."""
    out = clip.with_suffix(".jsonl")
    run = _analyze(clip, "--out", out, "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    events = _read(out)
    assert events[-1]["type"] == "session.ended" and events[-1]["duration"] >= duration
    return events, [e for e in events if e["type"] == "frame"]


def _wav(path, pcm, rate=16000):
    """A mono 16-bit WAV of ``pcm`` (bytes) at ``rate`` Hz."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


def _committed(events):
    return [w["w"] for e in events if e["type"] == "transcript" and e["final"] for w in e["words"]]


def test_analyze_matches_the_live_run(
    tmp_path, talking_face_mp4, video_only_mp4, speech, live_call_events, server
):
    out_dir = tmp_path / "out"
    run = _analyze(
        talking_face_mp4,
        video_only_mp4,
        "--out-dir",
        out_dir,
        "--asr-hop",
        "0.4",  # the live service's hop: the same schedule as the live run
        "--json",
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(summary["results"]) == 2
    events = _read(out_dir / "talking_face.jsonl")
    assert events[0]["type"] == "session.started" and events[-1]["type"] == "session.ended"
    # Which weights made the numbers: both learned models by name and version.
    meta = {
        m: json.loads((ROOT / "models" / "weights" / f"{m}.json").read_text())
        for m in ("text_ah_lite", "tcn_lite")
    }
    for run_events in (events, live_call_events):
        described = run_events[0]["models"]
        assert described["text"] == f"text_ah_lite v{meta['text_ah_lite']['version']}"
        assert described["tcn"].startswith(f"tcn_lite v{meta['tcn_lite']['version']} (")
    offline = _committed(events)
    live = _committed(live_call_events)
    assert wer(speech[1], " ".join(offline)) <= 0.15
    # A live session that fell behind would skip ASR hops (status.asr_skipped), and its
    # words differ for that reason, not because the paths differ: the test server decodes
    # every hop (--no-asr-skip), whatever the load of the machine.
    live_status = [e for e in live_call_events if e["type"] == "status"]
    assert live_status and live_status[-1]["asr_skipped"] == 0
    # Same media, same media-time schedule: the same words (Opus coding aside) and decision.
    assert wer(" ".join(offline), " ".join(live)) <= 0.05
    assert events[-1]["decision"]["label"] == live_call_events[-1]["decision"]["label"]
    # ... and the whole media: the file's last 80 ms used to stay in the receiver's audio
    # jitter buffer (the sender now pushes them through with a little silence)
    assert live_call_events[-1]["duration"] == pytest.approx(events[-1]["duration"], abs=0.03)
    frames = [e for e in events if e["type"] == "frame"]
    assert len(frames) >= 8 * (events[-1]["duration"] - 1)
    # The server's INFO log of the call holds no caller address (aioice logged every
    # candidate pair it checked) and nothing of aiortc's.
    log = server.output
    assert "CandidatePair" not in log and " aioice." not in log and " aiortc." not in log


def test_analyze_is_deterministic(tmp_path, audio_only_wav):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert _analyze(audio_only_wav, "--out", a).returncode == 0
    assert _analyze(audio_only_wav, "--out", b).returncode == 0
    ea, eb = _read(a), _read(b)
    assert _committed(ea) and _committed(ea) == _committed(eb)
    assert [e["p"] for e in ea if e["type"] == "frame"] == [
        e["p"] for e in eb if e["type"] == "frame"
    ]
    # One frame per tick: the 7.0 s file ends on the tick grid and the ASR's flush commits
    # its last words after that; the closing tick used to repeat t = 7.0 (a second frame,
    # a second aggregator step).
    times = [e["t"] for e in ea if e["type"] == "frame"]
    assert times == [round(0.1 * k, 4) for k in range(1, 71)], times[-5:]
    assert ea[-1]["decision"]["p"] == next(e for e in reversed(ea) if e["type"] == "frame")["p"]


def test_analyze_reports_bad_files_clearly(tmp_path):
    run = _analyze(tmp_path / "missing.mp4")
    assert run.returncode == 2 and "no such file" in run.stderr
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    run = _analyze(junk, "--json")
    assert run.returncode == 1 and "cannot open" in run.stderr
    assert "Traceback" not in run.stderr  # the session it had started is ended cleanly


def test_analyze_refuses_audio_it_cannot_take_and_goes_on_with_the_next_file(
    tmp_path, audio_only_wav
):
    """A valid 4 kHz WAV (below the 8 kHz the ingest takes) used to end `analyze` with a
    traceback, leaving the next files unanalysed; now it is a one-line error for that
    file, and the next one is analysed."""
    low = _wav(tmp_path / "low.wav", b"\1\0" * 4000 * 2, rate=4000)
    run = _analyze(low, audio_only_wav, "--json")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert f"ahstream analyze: {low}: audio at 4000 Hz is not supported (8000-192000 Hz)" in (
        run.stderr.splitlines()
    )
    results = json.loads(run.stdout.strip().splitlines()[-1])["results"]
    assert "not supported" in results[0]["error"]
    assert results[1]["decision"] is not None and results[1]["transcript"]


def test_analyze_when_the_video_ends_long_before_the_audio(tmp_path, speech):
    """A stalled track stops holding the ticks back: no hang, ticks to the end."""
    from tests.mediafiles import astronaut_frames, write_media

    audio = speech[0][: 16000 * 9]
    clip = write_media(tmp_path / "short_video.mp4", audio, astronaut_frames(30), fps=10)
    events, frames = _analyzed_to_the_end(clip, 8.9)
    assert frames[-1]["t"] >= 8.8 and len(frames) >= 85
    assert any(e["modalities"]["video"] for e in frames if e["t"] < 3)
    assert not any(e["modalities"]["video"] for e in frames if e["t"] > 4.5)
    assert _committed(events)


def test_analyze_when_the_audio_covers_a_few_seconds_of_a_long_video(tmp_path, speech):
    """4 s of speech in 20 s of video, at the start or from 12 s (two files, one run): the
    stalled audio track no longer holds the ticks (which waited for ASR steps past the
    audio) while the file feeder waited for the ticks. Both hung for good; now every tick
    runs, the words are on the speech's own media times, and so is the "audio" modality."""
    from tests.mediafiles import astronaut_frames, write_media

    starts = {"early_end": 0.0, "late_start": 12.0}
    clips = [
        write_media(
            tmp_path / f"{name}.mp4",
            speech[0][: 16000 * 4],
            astronaut_frames(200),
            fps=10,
            audio_start_s=start,
        )
        for name, start in starts.items()
    ]
    out = tmp_path / "out"
    run = _analyze(*clips, "--out-dir", out, "--json", timeout=180)
    assert run.returncode == 0, run.stderr
    for name, start in starts.items():
        events = _read(out / f"{name}.jsonl")
        frames = [e for e in events if e["type"] == "frame"]
        assert events[-1]["type"] == "session.ended" and events[-1]["duration"] >= 19.8
        assert frames[-1]["t"] >= 19.8 and len(frames) >= 195
        words = [w for e in events if e["type"] == "transcript" and e["final"] for w in e["words"]]
        assert len(words) >= 5
        assert all(start - 0.5 <= w["t0"] <= start + 4.1 for w in words), (name, words)
        # "audio" where the speech is (ticks take audio 0.3 s behind them), whenever the
        # ticks ran: the late start's first ticks said "audio" if they ran after it came.
        heard = [f["t"] for f in frames if f["modalities"]["audio"]]
        inside = [f["t"] for f in frames if start + 0.45 <= f["t"] <= start + 4.15]
        assert set(inside) <= set(heard), (name, heard)
        first = start + 0.15 if start else 0.0  # the first ticks' audio time is before 0
        assert all(first <= t <= start + 4.45 for t in heard), (name, heard)


def test_a_decision_without_words_says_it_is_the_prior(tmp_path):
    """Silence after the 'guilty pleasure' prompt (A/H in 95 % of BAH answers): the decision
    is the question's rate, and the final event and the report say no words were heard."""
    from clients.report import _decision_text, summarize
    from models.bah import QUESTION_PROMPTS
    from models.text_ah import TextAHModel

    wav = _wav(tmp_path / "silence.wav", b"\0\0" * 16000 * 3)
    out = tmp_path / "silence.jsonl"
    run = _analyze(wav, "--out", out, "--json", "--context", QUESTION_PROMPTS[4], timeout=120)
    assert run.returncode == 0, run.stderr
    events = _read(out)
    decision = events[-1]["decision"]
    assert decision["evidence"] == "prior" and not _committed(events)
    # The model's value without words for this question (derived from the shipped weights).
    assert decision["p"] == pytest.approx(TextAHModel.load().prior(QUESTION_PROMPTS[4]), abs=1e-6)
    assert decision["label"] == int(decision["p"] >= decision["threshold"])
    assert _decision_text(summarize(events)["decision"]).endswith(
        "from the prior alone: fewer than three words were heard"
    )


def test_ticks_stay_on_the_grid_at_rates_that_do_not_divide_a_second_in_ms(tmp_path):
    """At 30 Hz (33.3 ms) every tick is at k/30 s (to the millisecond), with no drift:
    4 s of media give exactly 120 frames, the last at the media's end."""
    import numpy as np

    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 0.001, 16000 * 4) * 32767).astype("<i2")  # quiet: no speech
    wav = _wav(tmp_path / "quiet.wav", noise.tobytes())
    out = tmp_path / "quiet.jsonl"
    run = _analyze(wav, "--analysis-hz", "30", "--out", out, "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    times = [e["t"] for e in _read(out) if e["type"] == "frame"]
    assert times == [round(k / 30, 3) for k in range(1, 121)]


def _mkv_with_video_at(path, frame_indices, audio_s, fps=10):
    """An MKV of ``audio_s`` s of quiet audio and 64x64 video frames at ``frame_indices``
    (pts in 1/fps units): a camera off between two indices is a gap in the timestamps."""
    from fractions import Fraction

    import av
    import numpy as np

    rate = 16000
    out = av.open(str(path), "w")
    v = out.add_stream("mpeg4", rate=fps)
    v.width, v.height, v.pix_fmt, v.time_base = 64, 64, "yuv420p", Fraction(1, fps)
    a = out.add_stream("pcm_s16le", rate=rate)
    a.layout = "mono"
    items = []
    for i in frame_indices:
        img = np.full((64, 64, 3), (40 + 3 * i) % 255, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        items.append((i / fps, 0, frame))
    noise = (np.random.default_rng(0).normal(0, 30, audio_s * rate)).astype(np.int16)
    for s in range(0, noise.size, 1600):
        frame = av.AudioFrame.from_ndarray(noise[None, s : s + 1600], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, s, Fraction(1, rate)
        items.append((s / rate, 1, frame))
    for _, kind, frame in sorted(items, key=lambda x: (x[0], x[1])):
        for packet in (v, a)[kind].encode(frame):
            out.mux(packet)
    for stream in (v, a):
        for packet in stream.encode(None):
            out.mux(packet)
    out.close()
    return path


def test_a_file_keeps_its_timestamp_gaps(tmp_path):
    """A recording whose camera was off for 15 s: the frames after the gap are analysed at
    their own times, beside the audio that went on (they were moved 15 s earlier, as a
    live sender restarting its clock would be, with a `pts_jump` error). A jump beyond an
    hour is still taken for a broken timestamp and re-based."""
    gap = _mkv_with_video_at(tmp_path / "gap.mkv", [*range(0, 50), *range(200, 250)], 25)
    out = tmp_path / "gap.jsonl"
    run = _analyze(gap, "--out", out, "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    events = _read(out)
    assert not [e for e in events if e["type"] == "error"]
    frames = {e["t"]: e for e in events if e["type"] == "frame"}
    assert frames[4.9]["video_t"] == 4.9 and frames[4.9]["modalities"]["video"]
    assert frames[10.0].get("video_t") is None and not frames[10.0]["modalities"]["video"]
    after = [frames[round(20.0 + k / 10, 1)] for k in range(50)]
    assert [f["video_t"] for f in after] == [f["t"] for f in after]
    assert events[-1]["duration"] == pytest.approx(25.0, abs=0.05)

    broken = _mkv_with_video_at(tmp_path / "broken.mkv", [*range(0, 50), 40000, 40001], 6)
    out = tmp_path / "broken.jsonl"
    run = _analyze(broken, "--out", out, "--json", timeout=120)
    assert run.returncode == 0, run.stderr
    events = _read(out)
    jumps = [e["message"] for e in events if e["type"] == "error" and e["code"] == "pts_jump"]
    assert len(jumps) == 1 and "video timestamps jumped forwards" in jumps[0]
    assert events[-1]["duration"] < 7.0
