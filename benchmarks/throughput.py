"""Throughput benchmark: how many sessions one server keeps in real time.

For n = 1, 2, 3, ... the clip is published n times at once over WHIP in real
time (`benchmarks.live.publish`, packets passed through, so the publishers
cost little) to one `ahstream serve` child process. A round is **real time**
when every session:

- gets its frame events without lag growing: frame->event p95 <= 1 s, and the
  median of the last third of the clip at most 0.25 s above the first third's;
- drops at most 5 % of frames: of the ticks the clip should give
  (duration x analysis rate), at most 5 % are missing or analysed no video
  frame while the clip had video;
- keeps its transcript from lagging without bound: the median commit latency
  (a committed word's transcript event reaching the subscriber, minus the time
  its audio was sent) of the last third at most 1 s above the first third's.
  Under load the ASR of a live session decodes less often (``asr_skipped``
  hops) rather than fall behind; the commit latency and, with a reference
  transcript (``--reference``), the word error rate of every session show what
  that costs.

A clip without video is judged by the criteria that apply to it (dropped ticks
and commit latency); its frame measures are null. Frame latencies are those of
`benchmarks.live.Publication.matched_frames`, each with the media time of its
own frame event. Commit latencies use the wall times of the sent video packets
(audio packets for a clip without video). A value that does not exist is null:
the JSON holds no NaN or infinity.

The rounds stop at the first n that is not real time (reported) or at
``max_sessions``. Server memory (RSS, peak per round) and CPU seconds per
media second are read from /proc; memory per extra session is the slope of
peak RSS over the real-time rounds.

Run: ``ahstream bench throughput FILE --json`` (writes benchmarks/results/throughput.json, .png).
"""

from __future__ import annotations

import asyncio
import bisect
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.live import (
    RESULTS,
    PeakRss,
    Publication,
    ServerProcess,
    machine,
    percentiles,
    prepare_clip,
    publish,
)
from benchmarks.output import finite, pyplot, save_result
from models.wer import wer

__all__ = ["run_throughput_bench", "session_report"]

MAX_P95_S = 1.0
MAX_DRIFT_S = 0.25
MAX_DROP = 0.05
MAX_COMMIT_DRIFT_S = 1.0


def _wall_at(pub: Publication, t: float) -> float | None:
    """Wall time the sender reached media time ``t`` (from its video packets, or its audio
    packets when it sent no video)."""
    sent = pub.sent or pub.sent_audio
    ts = [m for m, _ in sent]
    i = bisect.bisect_left(ts, t)
    if i >= len(ts):
        return None
    return sent[i][1]


def _drift(pairs: list[tuple[float, float]], third: float, after: float) -> float | None:
    """Median value of the last third of the clip minus that of the first third (media times
    above ``after``); None unless both thirds have values."""
    first = [v for t, v in pairs if after < t <= third]
    last = [v for t, v in pairs if t > 2 * third]
    if not first or not last:
        return None
    return float(np.median(last) - np.median(first))


def _commits(pub: Publication) -> tuple[list[tuple[float, float]], list[str]]:
    """(media t1, commit latency) of each committed transcript event, and the words."""
    commits: list[tuple[float, float]] = []
    words: list[str] = []
    for wall, e in pub.events:
        if e.get("type") == "transcript" and e.get("final"):
            words += [w["w"] for w in e.get("words", [])]
            sent = _wall_at(pub, e["t1"])
            if sent is not None:
                commits.append((e["t1"], wall - sent))
    return commits, words


def _dropped(pub: Publication, duration: float, hz: float, has_video: bool) -> float:
    """Fraction of the clip's ticks missing, or without a video frame when it had video."""
    frames = pub.frames()
    expected = int(duration * hz) - 1
    got = len([e for _, e in frames if e["t"] <= duration])
    with_video = len([e for _, e in frames if e.get("video_t") is not None])
    return 1.0 - min(got, with_video if has_video else got) / max(1, expected)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _within(value: float | None, limit: float) -> bool:
    """A measure that does not exist (too short a clip) does not fail its criterion."""
    return value is None or value <= limit


def session_report(
    pub: Publication,
    duration: float,
    hz: float,
    has_video: bool,
    reference: str | None = None,
) -> dict:
    """Real-time measures of one published session (WER with a ``reference`` text).

    Without video (``has_video`` False) the frame criteria do not apply and the frame
    measures are None."""
    third = duration / 3
    pairs = [(m.t, m.latency) for m in pub.matched_frames()]
    lat = [v for _, v in pairs]
    p95 = float(np.percentile(lat, 95)) if lat else None
    drift = _drift(pairs, third, after=1.0) if has_video else None
    drop = _dropped(pub, duration, hz, has_video)
    commits, words = _commits(pub)
    c_drift = _drift(commits, third, after=float("-inf"))
    statuses = [e for _, e in pub.events if e.get("type") == "status"]
    skipped = statuses[-1].get("asr_skipped", 0) if statuses else 0
    video_ok = not has_video or (
        p95 is not None and p95 <= MAX_P95_S and _within(drift, MAX_DRIFT_S)
    )
    ok = (
        pub.error is None and video_ok and drop <= MAX_DROP and _within(c_drift, MAX_COMMIT_DRIFT_S)
    )
    return {
        "realtime": ok,
        "frame_to_event_ms": percentiles(lat),
        "lag_drift_ms": _ms(drift),
        "frames_dropped": round(max(0.0, drop), 4),
        "commit_latency_ms": percentiles([c for _, c in commits]),
        "commit_drift_ms": _ms(c_drift),
        "wer": None if reference is None else round(wer(reference, " ".join(words)), 4),
        "asr_skipped_hops": skipped,
        "error": pub.error,
    }


def _clip_facts(clip: Path) -> tuple[float, bool]:
    with av.open(str(clip)) as c:
        duration = float(c.duration / av.time_base) if c.duration else 0.0
        return duration, bool(c.streams.video)


async def _round(clip: Path, url: str, n: int, server: ServerProcess) -> dict[str, Any]:
    async with PeakRss(server) as rss:
        cpu0, wall0 = server.cpu_s(), time.monotonic()
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.get_running_loop().create_task(publish(clip, url)))
            await asyncio.sleep(0.2)
        pubs = await asyncio.gather(*tasks)
        cpu, wall = server.cpu_s() - cpu0, time.monotonic() - wall0
    return {"pubs": pubs, "rss_peak_mb": rss.peak_mb, "cpu_s": cpu, "wall_s": wall}


def _max(values: list[float | None]) -> float | None:
    """The largest value that exists, or None."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _round1(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _round_summary(
    n: int, measured: dict[str, Any], sessions: list[dict[str, Any]], reference: str | None
) -> dict[str, Any]:
    """One round of the result: ``n`` sessions, the worst of each measure over them."""
    return {
        "sessions": n,
        "realtime": all(s["realtime"] for s in sessions),
        "rss_peak_mb": _round1(measured["rss_peak_mb"]),
        "cpu_cores": round(measured["cpu_s"] / measured["wall_s"], 2),
        "frame_to_event_p95_ms": _max([s["frame_to_event_ms"]["p95"] for s in sessions]),
        "commit_latency_p95_ms": _max([s["commit_latency_ms"]["p95"] for s in sessions]),
        "frames_dropped_max": max(s["frames_dropped"] for s in sessions),
        "wer_max": None if reference is None else _max([s["wer"] for s in sessions]),
        "asr_skipped_hops": [s["asr_skipped_hops"] for s in sessions],
        "per_session": sessions,
    }


def _rss_slope(rounds: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of peak RSS over the real-time rounds (MB per extra session)."""
    rt = [(r["sessions"], r["rss_peak_mb"]) for r in rounds if r["realtime"]]
    rt = [(n, mb) for n, mb in rt if mb is not None]
    return float(np.polyfit(*zip(*rt, strict=True), 1)[0]) if len(rt) >= 2 else None


def run_throughput_bench(
    path: str | Path,
    max_sessions: int = 8,
    out_dir: str | Path | None = RESULTS,
    analysis_hz: float = 10.0,
    reference: str | None = None,
) -> dict[str, Any]:
    """Add concurrent real-time sessions until one round is not real time; with the
    clip's ``reference`` transcript, each session's WER is reported too."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ahstream-bench-") as tmp:
        clip = prepare_clip(path, tmp)
        duration, has_video = _clip_facts(clip)
        with ServerProcess("--max-sessions", str(max_sessions + 1)) as server:
            idle_rss = server.rss_mb()
            asyncio.run(publish(clip, server.url, duration_s=3.0))  # warm-up, not measured
            for n in range(1, max_sessions + 1):
                r = asyncio.run(_round(clip, server.url, n, server))
                sessions = [
                    session_report(p, duration, analysis_hz, has_video, reference)
                    for p in r["pubs"]
                ]
                rounds.append(_round_summary(n, r, sessions, reference))
                if not rounds[-1]["realtime"]:
                    break
    ok = [r["sessions"] for r in rounds if r["realtime"]]
    max_rt = max(ok) if ok else 0
    one = rounds[0]
    # Memory per extra session: the least-squares slope of peak RSS over the real-time
    # rounds (one-off costs, such as the second Whisper worker's buffers when two sessions
    # first decode at once, spread over the rounds instead of being charged to one).
    slope = _rss_slope(rounds)
    result = {
        "bench": "throughput",
        "file": Path(path).name,
        "clip_s": round(duration, 2),
        "machine": machine(),
        "max_realtime_sessions": max_rt,
        "rss_mb_idle": _round1(idle_rss),
        "rss_mb_one_session": one["rss_peak_mb"],
        "rss_mb_per_extra_session": _round1(slope),
        "rss_mb_peak_by_sessions": {r["sessions"]: r["rss_peak_mb"] for r in rounds},
        "cpu_per_session": round(one["cpu_cores"], 2),
        "criteria": {
            "frame_to_event_p95_s": MAX_P95_S,
            "lag_drift_s": MAX_DRIFT_S,
            "frames_dropped": MAX_DROP,
            "commit_latency_drift_s": MAX_COMMIT_DRIFT_S,
        },
        "rounds": rounds,
    }
    result = finite(result)
    save_result(result, out_dir, "throughput", _plot)
    return result


def _nan(values: list[float | None]) -> list[float]:
    """Values to plot: a missing one is a gap."""
    return [float("nan") if v is None else v for v in values]


def _plot(result: dict[str, Any], png: Path) -> None:
    """Frame->event p95 against its real-time limit, commit p95 (judged on its drift, no
    limit) on an axis of its own, server CPU and peak RSS, per number of sessions."""
    plt = pyplot()

    rounds = result["rounds"]
    n = [r["sessions"] for r in rounds]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
    axes[0].plot(n, _nan([r["frame_to_event_p95_ms"] for r in rounds]), "o-")
    axes[0].axhline(
        MAX_P95_S * 1000, color="grey", ls="--", lw=1, label=f"limit {MAX_P95_S * 1000:.0f} ms"
    )
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("frame -> event p95 (ms)")
    axes[0].legend()
    axes[1].plot(n, _nan([r["commit_latency_p95_ms"] for r in rounds]), "s-", color="tab:orange")
    axes[1].set_ylim(bottom=0)
    axes[1].set_ylabel("transcript commit p95 (ms)")
    axes[1].set_title("judged on its drift", fontsize="small")
    axes[2].plot(n, [r["cpu_cores"] for r in rounds], "o-")
    axes[2].axhline(result["machine"]["cores"] or 0, color="grey", ls="--", lw=1)
    axes[2].set_ylabel("server CPU (cores)")
    axes[3].plot(n, _nan([r["rss_peak_mb"] for r in rounds]), "o-")
    axes[3].set_ylabel("server RSS peak (MB)")
    for ax in axes:
        ax.set_xlabel("concurrent sessions")
        ax.set_xticks(n)
    for r in rounds:
        if not r["realtime"]:
            for ax in axes:
                ax.axvspan(r["sessions"] - 0.5, r["sessions"] + 0.5, color="tab:red", alpha=0.1)
    fig.suptitle(
        f"{result['file']}: max real-time sessions {result['max_realtime_sessions']} "
        f"({result['machine']['cores']} cores)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
