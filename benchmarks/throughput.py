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
    Publication,
    ServerProcess,
    machine,
    percentiles,
    prepare_clip,
    publish,
)
from benchmarks.output import pyplot, save_result
from models.wer import wer

__all__ = ["run_throughput_bench", "session_report"]

MAX_P95_S = 1.0
MAX_DRIFT_S = 0.25
MAX_DROP = 0.05
MAX_COMMIT_DRIFT_S = 1.0


def _wall_at(pub: Publication, t: float) -> float | None:
    """Wall time the sender reached media time ``t`` (from its video packets)."""
    if not pub.sent:
        return None
    ts = [m for m, _ in pub.sent]
    i = bisect.bisect_left(ts, t)
    if i >= len(ts):
        return None
    return pub.sent[i][1]


def session_report(
    pub: Publication,
    duration: float,
    hz: float,
    has_video: bool,
    reference: str | None = None,
) -> dict:
    """Real-time measures of one published session (WER with a ``reference`` text)."""
    lat = pub.frame_latencies()
    frames = pub.frames()
    walls = [w for w, e in frames if e.get("video_t") is not None]
    ts = [e["t"] for w, e in frames if e.get("video_t") is not None]
    third = duration / 3
    first = [v for v, t in zip(lat, ts, strict=False) if 1.0 < t <= third]
    last = [v for v, t in zip(lat, ts, strict=False) if t > 2 * third]
    drift = float(np.median(last) - np.median(first)) if first and last else 0.0
    expected = int(duration * hz) - 1
    got = len([e for _, e in frames if e["t"] <= duration])
    with_video = len(walls) if has_video else got
    drop = 1.0 - min(got, with_video) / max(1, expected)
    commits: list[tuple[float, float]] = []  # (media t1, latency)
    words: list[str] = []
    for wall, e in pub.events:
        if e.get("type") == "transcript" and e.get("final"):
            words += [w["w"] for w in e.get("words", [])]
            sent = _wall_at(pub, e["t1"])
            if sent is not None:
                commits.append((e["t1"], wall - sent))
    c_first = [c for t, c in commits if t <= third]
    c_last = [c for t, c in commits if t > 2 * third]
    c_drift = float(np.median(c_last) - np.median(c_first)) if c_first and c_last else 0.0
    statuses = [e for _, e in pub.events if e.get("type") == "status"]
    skipped = statuses[-1].get("asr_skipped", 0) if statuses else 0
    p95 = float(np.percentile(lat, 95)) if lat else float("inf")
    ok = (
        pub.error is None
        and p95 <= MAX_P95_S
        and drift <= MAX_DRIFT_S
        and drop <= MAX_DROP
        and c_drift <= MAX_COMMIT_DRIFT_S
    )
    return {
        "realtime": ok,
        "frame_to_event_ms": percentiles(lat),
        "lag_drift_ms": round(drift * 1000, 1),
        "frames_dropped": round(max(0.0, drop), 4),
        "commit_latency_ms": percentiles([c for _, c in commits]),
        "commit_drift_ms": round(c_drift * 1000, 1),
        "wer": None if reference is None else round(wer(reference, " ".join(words)), 4),
        "asr_skipped_hops": skipped,
        "error": pub.error,
    }


def _clip_facts(clip: Path) -> tuple[float, bool]:
    with av.open(str(clip)) as c:
        duration = float(c.duration / av.time_base) if c.duration else 0.0
        return duration, bool(c.streams.video)


async def _round(clip: Path, url: str, n: int, server: ServerProcess) -> dict[str, Any]:
    rss: list[float] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            rss.append(server.rss_mb())
            await asyncio.sleep(0.5)

    sampler = asyncio.get_running_loop().create_task(sample())
    cpu0, wall0 = server.cpu_s(), time.monotonic()
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.get_running_loop().create_task(publish(clip, url)))
        await asyncio.sleep(0.2)
    pubs = await asyncio.gather(*tasks)
    cpu, wall = server.cpu_s() - cpu0, time.monotonic() - wall0
    stop.set()
    await sampler
    return {"pubs": pubs, "rss_peak_mb": max(rss), "cpu_s": cpu, "wall_s": wall}


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
                rounds.append(
                    {
                        "sessions": n,
                        "realtime": all(s["realtime"] for s in sessions),
                        "rss_peak_mb": round(r["rss_peak_mb"], 1),
                        "cpu_cores": round(r["cpu_s"] / r["wall_s"], 2),
                        "frame_to_event_p95_ms": max(
                            s["frame_to_event_ms"]["p95"] or float("inf") for s in sessions
                        ),
                        "commit_latency_p95_ms": max(
                            (s["commit_latency_ms"]["p95"] or 0.0) for s in sessions
                        ),
                        "frames_dropped_max": max(s["frames_dropped"] for s in sessions),
                        "wer_max": None if reference is None else max(s["wer"] for s in sessions),
                        "asr_skipped_hops": [s["asr_skipped_hops"] for s in sessions],
                        "per_session": sessions,
                    }
                )
                if not rounds[-1]["realtime"]:
                    break
    ok = [r["sessions"] for r in rounds if r["realtime"]]
    max_rt = max(ok) if ok else 0
    one = rounds[0]
    # Memory per extra session: the least-squares slope of peak RSS over the real-time
    # rounds (one-off costs, such as the second Whisper worker's buffers when two sessions
    # first decode at once, spread over the rounds instead of being charged to one).
    rt = [(r["sessions"], r["rss_peak_mb"]) for r in rounds if r["realtime"]]
    slope = float(np.polyfit(*zip(*rt, strict=True), 1)[0]) if len(rt) >= 2 else None
    result = {
        "bench": "throughput",
        "file": Path(path).name,
        "clip_s": round(duration, 2),
        "machine": machine(),
        "max_realtime_sessions": max_rt,
        "rss_mb_idle": round(idle_rss, 1),
        "rss_mb_one_session": one["rss_peak_mb"],
        "rss_mb_per_extra_session": None if slope is None else round(slope, 1),
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
    save_result(result, out_dir, "throughput", _plot)
    return result


def _plot(result: dict[str, Any], png: Path) -> None:
    plt = pyplot()

    rounds = result["rounds"]
    n = [r["sessions"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(n, [r["frame_to_event_p95_ms"] for r in rounds], "o-", label="frame->event p95")
    axes[0].plot(n, [r["commit_latency_p95_ms"] for r in rounds], "s-", label="commit p95")
    axes[0].axhline(MAX_P95_S * 1000, color="grey", ls="--", lw=1)
    axes[0].set_ylabel("ms")
    axes[0].legend()
    axes[1].plot(n, [r["cpu_cores"] for r in rounds], "o-")
    axes[1].axhline(result["machine"]["cores"] or 0, color="grey", ls="--", lw=1)
    axes[1].set_ylabel("server CPU (cores)")
    axes[2].plot(n, [r["rss_peak_mb"] for r in rounds], "o-")
    axes[2].set_ylabel("server RSS peak (MB)")
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
