"""Throughput benchmark: how many sessions one server keeps in real time.

For n = 1, 2, 3, ... the clip is published n times at once over WHIP in real
time (`benchmarks.live.publish`, packets passed through, so the publishers
cost little) to one `ahstream serve` child process. A round is **real time**
when every session meets every criterion that could be judged:

- its frame events come without lag growing: frame->event p95 <= 1 s, and the
  median of the last third of the clip at most 0.25 s above the first third's;
- at most 5 % of the clip's analysis ticks (duration x analysis rate) are
  missing or analysed no video frame while the clip had video
  (``ticks_without_frame``; not the server's ``status.dropped_video_frames``, the
  frames it received and discarded, reported beside it as
  ``server_dropped_video_frames``);
- its transcript does not lag more and more: the median commit latency of the
  last third of the speech at most 1 s above that of its first third. A committed
  word's commit latency is its transcript event reaching the subscriber minus the
  time the audio of its end (its own ``t1``) was sent, as `bench asr` measures it
  per word; the thirds are over the span of the committed words (first to last
  ``t1``), not over the clip, so speech that ends early is judged too.
  Under load the ASR of a live session decodes less often (``asr_skipped``
  hops) rather than fall behind; the commit latency and, with a reference
  transcript (``--reference``), the word error rate of every session show what
  that costs.

A drift that cannot be measured (fewer than ``MIN_THIRD_VALUES`` values in the
first or the last third: too short a clip, too little speech) is **not judged**:
it is neither a pass nor a fail, and the session, its round and the result list
it under ``not_judged``. A clip without video is judged by the criteria that apply
to it (ticks and commit latency); its frame measures are null. Frame latencies
are those of `benchmarks.live.Publication.matched_frames`, each with the media
time of its own frame event. Commit latencies use the wall times of the sent
video packets (audio packets for a clip without video). A value that does not
exist is null: the JSON holds no NaN or infinity.

The rounds stop at the first n that is not real time (reported) or at
``max_sessions`` (``capped``: the server may keep more). Server memory is read
from /proc: idle once it has settled after start (`ServerProcess.settled_rss_mb`),
then the peak per round; memory per extra session is the slope of peak RSS over
the real-time rounds. CPU is the server's CPU seconds per media second
(``cpu_s_per_media_s``: CPU seconds of the round / (clip duration x sessions),
so 0.5 is half a core per real-time session; ``cpu_per_session`` is that of the
one-session round).

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

__all__ = ["run_throughput_bench", "session_report", "summarize"]

MAX_P95_S = 1.0
MAX_DRIFT_S = 0.25
MAX_DROP = 0.05
MAX_COMMIT_DRIFT_S = 1.0
MIN_THIRD_VALUES = 3  # a drift needs at least this many values in each of its thirds
NOT_JUDGED = "not judged"


def _wall_at(pub: Publication, t: float) -> float | None:
    """Wall time the sender reached media time ``t`` (from its video packets, or its audio
    packets when it sent no video)."""
    sent = pub.sent or pub.sent_audio
    ts = [m for m, _ in sent]
    i = bisect.bisect_left(ts, t)
    if i >= len(ts):
        return None
    return sent[i][1]


def _drift(
    pairs: list[tuple[float, float]], start: float, end: float, after: float = float("-inf")
) -> float | None:
    """Median value of the last third of [``start``, ``end``] (media times) minus that of the
    first third (leaving out times up to ``after``); None (not judged) unless each third has
    ``MIN_THIRD_VALUES`` values."""
    third = (end - start) / 3
    first = [v for t, v in pairs if after < t and start <= t <= start + third]
    last = [v for t, v in pairs if t > end - third]
    if third <= 0 or min(len(first), len(last)) < MIN_THIRD_VALUES:
        return None
    return float(np.median(last) - np.median(first))


def _commits(pub: Publication) -> tuple[list[tuple[float, float]], list[str]]:
    """(media t1, commit latency) of each committed word, and the words.

    A word's commit latency is the wall time its transcript event arrived minus the wall
    time the sender reached the word's own end ``t1`` (the event's ``t1`` for a word
    without one)."""
    commits: list[tuple[float, float]] = []
    words: list[str] = []
    for wall, e in pub.events:
        if e.get("type") == "transcript" and e.get("final"):
            for w in e.get("words", []):
                words.append(w["w"])
                t1 = float(w.get("t1", e["t1"]))
                sent = _wall_at(pub, t1)
                if sent is not None:
                    commits.append((t1, wall - sent))
    return commits, words


def _ticks_without_frame(pub: Publication, duration: float, hz: float, has_video: bool) -> float:
    """Fraction of the clip's ticks missing, or without a video frame when it had video."""
    frames = pub.frames()
    expected = int(duration * hz) - 1
    got = len([e for _, e in frames if e["t"] <= duration])
    with_video = len([e for _, e in frames if e.get("video_t") is not None])
    return 1.0 - min(got, with_video if has_video else got) / max(1, expected)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _verdict(value: float | None, limit: float) -> bool | str:
    """True/False for a measured value against its limit; ``NOT_JUDGED`` when there is none."""
    return NOT_JUDGED if value is None else value <= limit


def session_report(
    pub: Publication,
    duration: float,
    hz: float,
    has_video: bool,
    reference: str | None = None,
) -> dict:
    """Real-time measures of one published session (WER with a ``reference`` text).

    Without video (``has_video`` False) the frame criteria do not apply and the frame
    measures are None. ``criteria`` holds each criterion's verdict (True, False or
    ``NOT_JUDGED``); ``realtime`` is True when no judged criterion failed."""
    pairs = [(m.t, m.latency) for m in pub.matched_frames()]
    lat = [v for _, v in pairs]
    p95 = float(np.percentile(lat, 95)) if lat else None
    drift = _drift(pairs, 0.0, duration, after=1.0) if has_video else None
    missing = _ticks_without_frame(pub, duration, hz, has_video)
    commits, words = _commits(pub)
    ends = [t for t, _ in commits]
    c_drift = _drift(commits, min(ends), max(ends)) if ends else None  # over the speech
    statuses = [e for _, e in pub.events if e.get("type") == "status"]
    last = statuses[-1] if statuses else {}
    criteria: dict[str, bool | str] = {"error": pub.error is None}
    if has_video:
        criteria["frame_to_event_p95"] = p95 is not None and p95 <= MAX_P95_S
        criteria["lag_drift"] = _verdict(drift, MAX_DRIFT_S)
    criteria["ticks_without_frame"] = missing <= MAX_DROP
    criteria["commit_drift"] = _verdict(c_drift, MAX_COMMIT_DRIFT_S)
    return {
        "realtime": all(v is not False for v in criteria.values()),
        "criteria": criteria,
        "not_judged": [k for k, v in criteria.items() if v == NOT_JUDGED],
        "frame_to_event_ms": percentiles(lat),
        "lag_drift_ms": _ms(drift),
        "ticks_without_frame": round(max(0.0, missing), 4),
        "server_dropped_video_frames": last.get("dropped_video_frames"),
        "server_received_video_frames": last.get("received_video_frames"),
        "commit_latency_ms": percentiles([c for _, c in commits]),
        "commit_drift_ms": _ms(c_drift),
        "wer": None if reference is None else round(wer(reference, " ".join(words)), 4),
        "asr_skipped_hops": last.get("asr_skipped", 0),
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
    n: int,
    measured: dict[str, Any],
    sessions: list[dict[str, Any]],
    reference: str | None,
    duration: float,
) -> dict[str, Any]:
    """One round of the result: ``n`` sessions of a ``duration`` s clip, the worst of each
    measure over them; CPU per media second (``duration`` x ``n``), not per wall second of the
    round (which also holds the WHIP set-up, the stagger and the close)."""
    media_s = duration * n
    cpu = measured["cpu_s"]
    return {
        "sessions": n,
        "realtime": all(s["realtime"] for s in sessions),
        "not_judged": sorted({k for s in sessions for k in s.get("not_judged", [])}),
        "rss_peak_mb": _round1(measured["rss_peak_mb"]),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_media_s": round(cpu / media_s, 3) if media_s > 0 else None,
        "frame_to_event_p95_ms": _max([s["frame_to_event_ms"]["p95"] for s in sessions]),
        "commit_latency_p95_ms": _max([s["commit_latency_ms"]["p95"] for s in sessions]),
        "ticks_without_frame_max": max(s["ticks_without_frame"] for s in sessions),
        "server_dropped_video_frames": [s.get("server_dropped_video_frames") for s in sessions],
        "wer_max": None if reference is None else _max([s["wer"] for s in sessions]),
        "asr_skipped_hops": [s["asr_skipped_hops"] for s in sessions],
        "per_session": sessions,
    }


def _rss_slope(rounds: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of peak RSS over the real-time rounds (MB per extra session)."""
    rt = [(r["sessions"], r["rss_peak_mb"]) for r in rounds if r["realtime"]]
    rt = [(n, mb) for n, mb in rt if mb is not None]
    return float(np.polyfit(*zip(*rt, strict=True), 1)[0]) if len(rt) >= 2 else None


def summarize(
    file: str,
    duration: float,
    rounds: list[dict[str, Any]],
    max_sessions: int,
    idle_rss: float | None,
    models: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result of the rounds (`_round_summary`) of a ``duration`` s clip.

    ``capped`` is True when the last round allowed (``max_sessions``) was still real time:
    ``max_realtime_sessions`` is then a lower bound, not the server's limit."""
    ok = [r["sessions"] for r in rounds if r["realtime"]]
    max_rt = max(ok) if ok else 0
    one = rounds[0]
    # Memory per extra session: the least-squares slope of peak RSS over the real-time
    # rounds (one-off costs, such as the second Whisper worker's buffers when two sessions
    # first decode at once, spread over the rounds instead of being charged to one).
    slope = _rss_slope(rounds)
    return finite(
        {
            "bench": "throughput",
            "file": file,
            "clip_s": round(duration, 2),
            "machine": machine(),
            "models": models,  # as the server named them in session.started
            "max_realtime_sessions": max_rt,
            "max_sessions": max_sessions,
            "capped": max_rt >= max_sessions,
            "not_judged": sorted({k for r in rounds for k in r["not_judged"]}),
            "rss_mb_idle": _round1(idle_rss),
            "rss_mb_one_session": one["rss_peak_mb"],
            "rss_mb_per_extra_session": _round1(slope),
            "rss_mb_peak_by_sessions": {r["sessions"]: r["rss_peak_mb"] for r in rounds},
            "cpu_per_session": one["cpu_s_per_media_s"],  # CPU s per media s, one session
            "criteria": {
                "frame_to_event_p95_s": MAX_P95_S,
                "lag_drift_s": MAX_DRIFT_S,
                "ticks_without_frame": MAX_DROP,
                "commit_latency_drift_s": MAX_COMMIT_DRIFT_S,
                "min_values_per_third": MIN_THIRD_VALUES,
            },
            "rounds": rounds,
        }
    )


def run_throughput_bench(
    path: str | Path,
    max_sessions: int = 8,
    out_dir: str | Path | None = RESULTS,
    analysis_hz: float = 10.0,
    reference: str | None = None,
) -> dict[str, Any]:
    """Add concurrent real-time sessions until one round is not real time; with the
    clip's ``reference`` transcript, each session's WER is reported too."""
    if max_sessions < 1:
        raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
    rounds: list[dict[str, Any]] = []
    models = None
    with tempfile.TemporaryDirectory(prefix="ahstream-bench-") as tmp:
        clip = prepare_clip(path, tmp)
        duration, has_video = _clip_facts(clip)
        with ServerProcess("--max-sessions", str(max_sessions + 1)) as server:
            idle_rss = server.settled_rss_mb()  # the workers finish starting after /healthz
            warm_up = asyncio.run(publish(clip, server.url, duration_s=3.0))  # not measured
            if warm_up.error:  # every round would fail the same way
                raise RuntimeError(warm_up.error)
            models = warm_up.models()
            for n in range(1, max_sessions + 1):
                r = asyncio.run(_round(clip, server.url, n, server))
                sessions = [
                    session_report(p, duration, analysis_hz, has_video, reference)
                    for p in r["pubs"]
                ]
                rounds.append(_round_summary(n, r, sessions, reference, duration))
                if not rounds[-1]["realtime"]:
                    break
    result = summarize(Path(path).name, duration, rounds, max_sessions, idle_rss, models)
    save_result(result, out_dir, "throughput", _plot)
    return result


def _cores(result: dict[str, Any], r: dict[str, Any]) -> float | None:
    """Server cores busy while round ``r``'s media played: CPU s / clip s (a result written
    before ``cpu_s_per_media_s`` has ``cpu_cores``, CPU s per wall second of the round)."""
    if r.get("cpu_s") is not None and result.get("clip_s"):
        return r["cpu_s"] / result["clip_s"]
    return r.get("cpu_cores")


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
    axes[2].plot(n, _nan([_cores(result, r) for r in rounds]), "o-")
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
        f"{result['file']}: max real-time sessions {result['max_realtime_sessions']}"
        f"{' (capped: the last round allowed)' if result.get('capped') else ''} "
        f"({result['machine']['cores']} cores)"
    )
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
