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

The ASR is not in a frame's path: a tick uses the words of ASR steps at least
``text_delay_s`` of media before it; ``asr_age_s`` reports how old they were.

A 3 s warm-up session runs first and is not measured (the first session of a
fresh server builds graphs and caches).

Run: ``ahstream bench latency FILE --json`` (writes benchmarks/results/latency.json, .png).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import RESULTS, ServerProcess, machine, percentiles, prepare_clip, publish
from benchmarks.output import pyplot, save_result

__all__ = ["run_latency_bench"]

WARMUP_S = 3.0  # a first, unmeasured session: model warm-up is not a steady-state latency


def _stages(pub: Any) -> dict[str, list[float]]:
    sent = dict(pub.sent)
    stages: dict[str, list[float]] = {
        k: [] for k in ("transport", "wait", "face", "model", "publish", "asr_age_s")
    }
    for wall, e in pub.frames():
        lags = e.get("lags", {})
        vt = e.get("video_t")
        if vt is not None and "frame" in lags and round(vt, 4) in sent:
            stages["transport"].append(wall - sent[round(vt, 4)] - lags["frame"])
            stages["wait"].append(lags.get("wait", 0.0))
            stages["publish"].append(
                max(0.0, lags["frame"] - lags.get("wait", 0.0) - lags["face"] - lags["model"])
            )
        for k in ("face", "model"):
            if k in lags:
                stages[k].append(lags[k])
        if e.get("asr_t") is not None:
            stages["asr_age_s"].append(e["t"] - e["asr_t"])
    return stages


def run_latency_bench(
    path: str | Path, url: str | None = None, out_dir: str | Path | None = RESULTS
) -> dict[str, Any]:
    """Publish ``path`` once in real time and measure frame->event latency."""
    with tempfile.TemporaryDirectory(prefix="ahstream-bench-") as tmp:
        clip = prepare_clip(path, tmp)
        if url is None:
            with ServerProcess() as server:
                asyncio.run(publish(clip, server.url, duration_s=WARMUP_S))
                pub = asyncio.run(publish(clip, server.url))
                rss = server.rss_mb()
        else:
            asyncio.run(publish(clip, url, duration_s=WARMUP_S))
            pub = asyncio.run(publish(clip, url))
            rss = None
    if pub.error:
        raise RuntimeError(pub.error)
    latencies = pub.frame_latencies()
    stages = _stages(pub)
    frames = pub.frames()
    result: dict[str, Any] = {
        "bench": "latency",
        "file": Path(path).name,
        "machine": machine(),
        "frame_to_event_ms": percentiles(latencies),
        "stages_ms": {k: percentiles(v) for k, v in stages.items() if k != "asr_age_s"},
        "asr_age_s": percentiles(stages["asr_age_s"], scale=1.0),
        "frame_events": len(frames),
        "analysed_frames": len(latencies),
        "video_frames_sent": len(pub.sent),
        "server_rss_mb": None if rss is None else round(rss, 1),
    }
    save_result(result, out_dir, "latency", lambda r, png: _plot(pub, latencies, png, r))
    return result


def _plot(pub: Any, latencies: list[float], png: Path, result: dict[str, Any]) -> None:
    plt = pyplot()

    ts = [e["t"] for _, e in pub.frames() if e.get("video_t") is not None]
    ms = np.asarray(latencies) * 1000
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [3, 1]})
    ax1.plot(ts[: len(ms)], ms, ".", ms=3)
    p95 = result["frame_to_event_ms"]["p95"]
    ax1.axhline(p95, color="tab:red", lw=1, label=f"p95 {p95:.0f} ms")
    ax1.axhline(100, color="grey", lw=1, ls="--", label="target 100 ms")
    ax1.set_xlabel("media time (s)")
    ax1.set_ylabel("frame -> event (ms)")
    ax1.legend(loc="upper right")
    ax1.set_title(f"{result['file']}: analysed frame leaving the sender -> frame event")
    stages = result["stages_ms"]
    names = [k for k in ("transport", "wait", "face", "model", "publish") if stages[k]["p50"]]
    ax2.barh(names, [stages[k]["p50"] for k in names], color="tab:blue", label="p50")
    ax2.set_xlabel("ms (p50)")
    ax2.invert_yaxis()
    ax2.set_title("stages")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
