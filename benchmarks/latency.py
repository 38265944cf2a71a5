"""Latency benchmark: frame leaving the publisher -> its `frame` event at a websocket subscriber.

One session: the clip is published over WHIP on loopback in real time
(`benchmarks.live.publish`, packets passed through without re-encoding) to an
`ahstream serve` child process (or ``--url``). For every analysed frame
(``video_t`` of a frame event) the wall time from that video packet leaving
the sender to the event reaching the subscriber is measured. Stages, from the
``lags`` the server puts on each frame event:

- ``transport``: network, jitter buffer, decode and websocket delivery
  (total minus the server's frame-arrival-to-publish time);
- ``wait``: the frame waiting in the session before its tick starts (the tick
  waits until no newer frame for it can come, and for its audio);
- ``face`` and ``model``: the tick's face analysis and the rest of the models;
- ``publish``: tick end to event publish (``frame - wait - face - model``).

The latency and the stages are over the same frames: the frame events matched
to a sent video packet (`benchmarks.live.Publication.matched_frames`), without
the session's closing tick after the clip ran out, whose frame waits for the
publisher to close the session (a harness artifact, not a server latency).

The ASR is not in a frame's path: a tick uses the words of ASR steps at least
``text_delay_s`` of media before it; ``asr_age_s`` reports how old they were.

``server_rss_peak_mb`` is the server's resident memory (all its processes, in MB),
the peak sampled every 0.5 s during the measured session (None with ``--url``).

A 3 s warm-up session runs first and is not measured (the first session of a
fresh server builds graphs and caches).

Run: ``ahstream bench latency FILE --json`` (writes benchmarks/results/latency.json, .png).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.live import (
    RESULTS,
    MatchedFrame,
    PeakRss,
    Publication,
    ServerProcess,
    machine,
    percentiles,
    prepare_clip,
    publish,
)
from benchmarks.output import finite, pyplot, save_result

__all__ = ["run_latency_bench"]

WARMUP_S = 3.0  # a first, unmeasured session: model warm-up is not a steady-state latency
STAGES = ("transport", "wait", "face", "model", "publish")


def _stages(pub: Publication, matched: list[MatchedFrame]) -> dict[str, list[float]]:
    """Seconds per stage of each matched frame (``transport``, ``wait`` and ``publish`` where
    the server knew the frame's arrival), and ``asr_age_s`` of every frame event."""
    stages: dict[str, list[float]] = {k: [] for k in (*STAGES, "asr_age_s")}
    for m in matched:
        lags = m.lags
        if "frame" in lags:
            wait = lags.get("wait", 0.0)
            stages["transport"].append(m.latency - lags["frame"])
            stages["wait"].append(wait)
            compute = lags.get("face", 0.0) + lags.get("model", 0.0)
            stages["publish"].append(max(0.0, lags["frame"] - wait - compute))
        for k in ("face", "model"):
            if k in lags:
                stages[k].append(lags[k])
    for _, e in pub.frames():
        if e.get("asr_t") is not None:
            stages["asr_age_s"].append(e["t"] - e["asr_t"])
    return stages


async def _measured(
    clip: Path, url: str, server: ServerProcess | None
) -> tuple[Publication, float | None]:
    async with PeakRss(server) as rss:
        pub = await publish(clip, url)
    return pub, rss.peak_mb


def _run(clip: Path, url: str, server: ServerProcess | None) -> tuple[Publication, float | None]:
    """A warm-up session, then the measured one with the server's peak RSS (MB) during it."""
    warm_up = asyncio.run(publish(clip, url, duration_s=WARMUP_S))
    if warm_up.error:  # the measured session would fail the same way
        return warm_up, None
    return asyncio.run(_measured(clip, url, server))


def run_latency_bench(
    path: str | Path, url: str | None = None, out_dir: str | Path | None = RESULTS
) -> dict[str, Any]:
    """Publish ``path`` once in real time and measure frame->event latency."""
    with tempfile.TemporaryDirectory(prefix="ahstream-bench-") as tmp:
        clip = prepare_clip(path, tmp)
        if url is None:
            with ServerProcess() as server:
                pub, rss = _run(clip, server.url, server)
        else:
            pub, rss = _run(clip, url, None)
    if pub.error:
        raise RuntimeError(pub.error)
    matched = pub.matched_frames()
    stages = _stages(pub, matched)
    result: dict[str, Any] = {
        "bench": "latency",
        "file": Path(path).name,
        # With --url the server may run elsewhere: this is the measuring client's machine.
        "machine": {**machine(), "runs": "server and client" if url is None else "client"},
        "models": pub.models(),
        "frame_to_event_ms": percentiles([m.latency for m in matched]),
        "stages_ms": {k: percentiles(stages[k]) for k in STAGES},
        "asr_age_s": percentiles(stages["asr_age_s"], scale=1.0),
        "frame_events": len(pub.frames()),
        "analysed_frames": len(matched),
        "video_frames_sent": len(pub.sent),
        "server_rss_peak_mb": None if rss is None else round(rss, 1),
    }
    result = finite(result)
    save_result(result, out_dir, "latency", lambda r, png: _plot(matched, png, r))
    return result


def _plot(matched: list[MatchedFrame], png: Path, result: dict[str, Any]) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    ax1.plot([m.t for m in matched], [m.latency * 1000 for m in matched], ".", ms=3)
    p95 = result["frame_to_event_ms"]["p95"]
    if p95 is not None:
        ax1.axhline(p95, color="tab:red", lw=1, label=f"p95 {p95:.0f} ms")
    ax1.axhline(100, color="grey", lw=1, ls="--", label="target 100 ms")
    ax1.set_xlabel("media time (s)")
    ax1.set_ylabel("frame -> event (ms)")
    ax1.legend(loc="upper right")
    ax1.set_title(f"{result['file']}: analysed frame leaving the sender -> frame event")
    stages = result["stages_ms"]
    names = [k for k in STAGES if stages[k]["p50"]]
    ax2.barh(names, [stages[k]["p50"] for k in names], color="tab:blue", label="p50")
    ax2.set_xlabel("ms (p50)")
    ax2.invert_yaxis()
    ax2.set_title("stages")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
