"""ASR benchmark: feed a recording at real-time pace, step the incremental ASR, measure.

The harness has two coroutines sharing an `AudioRing` and a `VadTimeline`:

- the **feeder** pushes 20 ms chunks (at real-time pace when ``realtime``) and
  records, per chunk, the wall time at which the media time of its end arrived;
- the **worker** runs ``asr.step(t)`` in an executor thread for t on the hop grid,
  as soon as the ring and VAD reach t, then ``asr.flush`` at the end.

Commit latency of a word = wall time its step returned minus the wall time at
which the audio up to the word's end was fed. rtf = summed wall time of the ASR
steps (each in its executor thread) / audio seconds: the compute time on an idle
machine, more on a loaded one (the results record the load average).

Run: ``python -m benchmarks.asr --librivox --out benchmarks/results/asr_librivox.json``
or ``python -m benchmarks.asr FILE.wav --reference REF.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.live import machine
from benchmarks.output import finite, mark_start, run_info, write_json
from models.wer import wer as word_error_rate
from models.whisper import load_whisper
from stream.asr import ASROptions, IncrementalASR
from stream.buffers import AudioRing
from stream.vad import VadTimeline

__all__ = ["clean_reference", "librivox_clip", "load_audio", "plot_commit_latency", "run_asr_bench"]

SAMPLE_RATE = 16000
CHUNK_S = 0.02
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")

AudioSource = str | Path | Sequence[str | Path] | np.ndarray


def load_audio(source: AudioSource) -> np.ndarray:
    """16 kHz mono float32 of a file, of several files concatenated, or of an array as is."""
    if isinstance(source, np.ndarray):
        return np.asarray(source, dtype=np.float32).reshape(-1)
    paths = [source] if isinstance(source, str | Path) else list(source)
    parts: list[np.ndarray] = []
    for path in paths:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"{path}: no audio stream")
            for frame in container.decode(audio=0):
                parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def clean_reference(text: str) -> str:
    """Reference text without sphinx markup (``<s>``, ``</s>``, trailing ``(utterance-id)``)."""
    lines = [re.sub(r"</?s>|\([^)]*\)\s*$", " ", ln) for ln in text.splitlines()]
    return " ".join(" ".join(lines).split())


def librivox_clip(directory: Path = LIBRIVOX_DIR) -> tuple[list[Path], str]:
    """The 5 LibriVox wavs (sorted) and their reference text (no <s>, </s>, ids)."""
    wavs = sorted(directory.glob("*.wav"))
    if not wavs or not (directory / "transcription").is_file():
        raise FileNotFoundError(
            f"no LibriVox clip in {directory}: install Debian's pocketsphinx-testdata"
        )
    return wavs, clean_reference((directory / "transcription").read_text())


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    a = np.asarray(xs, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


async def _bench(audio: np.ndarray, asr: IncrementalASR, realtime: bool) -> dict[str, Any]:
    """Feed ``audio`` into ``asr.ring``/``asr.vad`` and step ``asr``; return raw measurements."""
    loop = asyncio.get_running_loop()
    ring, vad = asr.ring, asr.vad
    duration = audio.size / SAMPLE_RATE
    arrived = asyncio.Condition()
    fed_t: list[float] = []  # media time reached after each chunk
    fed_wall: list[float] = []  # wall time at which it was reached
    compute: list[float] = []
    latencies: list[float] = []
    words: list[Any] = []
    wall0 = time.perf_counter()

    async def feeder() -> None:
        chunk = int(round(CHUNK_S * SAMPLE_RATE))
        for i0 in range(0, audio.size, chunk):
            x = audio[i0 : i0 + chunk]
            t_end = (i0 + x.size) / SAMPLE_RATE
            if realtime:
                await asyncio.sleep(max(0.0, wall0 + t_end - time.perf_counter()))
            ring.write(x)
            vad.push(x)
            fed_t.append(ring.end_time)
            fed_wall.append(time.perf_counter())
            async with arrived:
                arrived.notify_all()
            if not realtime and i0 % (chunk * 50) == 0:
                await asyncio.sleep(0)

    def timed(fn: Any, t: float) -> tuple[Any, float]:
        c0 = time.perf_counter()
        out = fn(t)
        return out, time.perf_counter() - c0

    def record(update: Any) -> None:
        done = time.perf_counter()
        for w in update.committed if update else []:
            k = min(bisect.bisect_left(fed_t, w.t1 - 1e-6), len(fed_wall) - 1)
            latencies.append(done - fed_wall[k])
            words.append(w)

    async def worker() -> None:
        k = 1
        while k * asr.hop_s <= duration + 1e-9:
            t = round(k * asr.hop_s, 6)
            async with arrived:
                await arrived.wait_for(
                    lambda t=t: ring.end_time >= t and vad.end_time >= t - 0.03 - 1e-9
                )
            update, dt = await loop.run_in_executor(None, timed, asr.step, t)
            compute.append(dt)
            record(update)
            k += 1
        async with arrived:
            await arrived.wait_for(lambda: ring.end_time >= duration - 1e-9)
        update, dt = await loop.run_in_executor(None, timed, asr.flush, duration)
        compute.append(dt)
        record(update)

    await asyncio.gather(feeder(), worker())
    return {
        "wall_s": time.perf_counter() - wall0,
        "compute": compute,
        "latencies": latencies,
        "words": words,
    }


def _name(source: AudioSource) -> str:
    """How to name ``source`` in a message."""
    if isinstance(source, np.ndarray):
        return "the audio"
    if isinstance(source, str | Path):
        return str(source)
    return ", ".join(str(s) for s in source)


def parse_options(settings: Sequence[str]) -> dict[str, Any]:
    """`IncrementalASR` option overrides from ``KEY=VALUE`` strings (VALUE in JSON, of the
    option's type); ValueError naming the first that is not ``KEY=VALUE`` of a known option."""
    defaults = ASROptions()
    known = {f.name for f in fields(ASROptions)}
    opts: dict[str, Any] = {}
    for item in settings:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            raise ValueError(f"--set {key}: no such option (options: {', '.join(sorted(known))})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"--set {key}={text}: the value is not JSON") from None
        default = getattr(defaults, key)
        kinds = (int, float) if isinstance(default, float) else (type(default),)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValueError(f"--set {key}={text}: {key} takes a {type(default).__name__}")
        opts[key] = value
    return opts


def run_asr_bench(
    wav_path: AudioSource,
    reference_text: str | None,
    realtime: bool = True,
    model: Any = None,
    return_hypothesis: bool = False,
    **asr_options: Any,
) -> dict[str, Any]:
    """Feed a recording through IncrementalASR (real-time pace by default) and measure it.

    ``wer`` is None without a reference. The transcript itself is only returned with
    ``return_hypothesis`` (results files must not hold transcripts).
    """
    audio = load_audio(wav_path)
    if audio.size == 0:
        raise ValueError(f"{_name(wav_path)}: no audio samples")
    model = model if model is not None else load_whisper()
    asr = IncrementalASR(model, AudioRing(), VadTimeline(), **asr_options)
    raw = asyncio.run(_bench(audio, asr, realtime))
    duration = audio.size / SAMPLE_RATE
    hypothesis = " ".join(w.w for w in raw["words"])
    result = {
        "wer": (
            round(word_error_rate(clean_reference(reference_text), hypothesis), 4)
            if reference_text
            else None
        ),
        "rtf": round(sum(raw["compute"]) / duration, 3),
        "commit_latency_s": _stats(raw["latencies"]),
        "words": len(raw["words"]),
        "audio_s": round(duration, 3),
        "realtime": realtime,
        "steps": len(raw["compute"]),
        "decode_calls": asr.decode_calls,
        "step_compute_s": _stats(raw["compute"]),
        "hop_s": asr.hop_s,
        "options": dict(vars(asr.opts)),
    }
    result["commit_timeline"] = [
        [round(w.t1, 3), round(lat, 3)]
        for w, lat in zip(raw["words"], raw["latencies"], strict=True)
    ]  # (word end in media s, commit latency s): times only, never the words
    if return_hypothesis:
        result["hypothesis"] = hypothesis
    return result


def plot_commit_latency(result: dict[str, Any], png: str | Path) -> Path:
    """PNG of each committed word's latency against its end time in the clip."""
    from benchmarks.output import pyplot

    plt = pyplot()
    pts = np.asarray(result["commit_timeline"], dtype=np.float64).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(pts[:, 0], pts[:, 1], "o", ms=3, label="committed word")
    lat = result["commit_latency_s"]
    for key, color in (("p50", "tab:green"), ("p95", "tab:red")):
        if lat[key] is not None:
            ax.axhline(lat[key], color=color, lw=1, label=f"{key} {lat[key]:.3f} s")
    ax.set_xlabel("word end (media s)")
    ax.set_ylabel("commit latency (s)")
    wer = result.get("wer")
    ax.set_title(
        f"incremental ASR, hop {result['hop_s']} s: RTF {result['rtf']}"
        + (f", WER {wer * 100:.1f} %" if wer is not None else "")
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def main(argv: list[str] | None = None) -> int:
    """CLI: run the benchmark and print (and optionally write) its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wav", nargs="*", help="audio file(s), concatenated in the given order")
    p.add_argument("--reference", help="reference text file")
    p.add_argument("--librivox", action="store_true", help="use the pocketsphinx LibriVox clip")
    p.add_argument("--offline", action="store_true", help="feed as fast as possible")
    p.add_argument("--out", help="also write the JSON (never the transcript) here")
    p.add_argument("--show", action="store_true", help="print the transcript to stderr")
    p.add_argument("--threads", type=int, default=2, help="CTranslate2 CPU threads")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="IncrementalASR option override (JSON value)",
    )
    a = p.parse_args(argv)
    if not a.librivox and (not a.wav or not a.reference):
        p.error("give WAV files and --reference, or --librivox")
    for path in [] if a.librivox else [*a.wav, a.reference]:
        if not Path(path).is_file():
            p.error(f"no such file: {path}")
    if a.out and not Path(a.out).resolve().parent.is_dir():
        p.error(f"--out {a.out}: no such directory {Path(a.out).parent}")
    try:
        opts = parse_options(a.set)
    except ValueError as exc:
        p.error(str(exc))
    try:
        if a.librivox:
            wavs, ref = librivox_clip()
            audio = load_audio(wavs)
        else:
            ref = Path(a.reference).read_text()
            audio = load_audio(a.wav)
        if audio.size == 0:
            raise ValueError(f"{', '.join(a.wav) or 'the LibriVox clip'}: no audio samples")
        model = load_whisper(cpu_threads=a.threads)
        load_before = os.getloadavg()[0]
        mark_start()
        result = run_asr_bench(
            audio, ref, realtime=not a.offline, model=model, return_hypothesis=True, **opts
        )
    except (OSError, ValueError, av.error.FFmpegError) as exc:
        p.exit(1, f"{p.prog}: {exc}\n")
    hypothesis = result.pop("hypothesis")
    if a.show:
        print(hypothesis, file=sys.stderr)
    result["cpu_threads"] = a.threads
    result["load_avg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    result["machine"] = machine()
    args = argv if argv is not None else sys.argv[1:]
    result["command"] = "python -m benchmarks.asr " + " ".join(args)
    result["run"] = run_info(result["command"])
    if a.out:
        write_json(result, a.out)
        plot_commit_latency(result, Path(a.out).with_suffix(".png"))
    print(json.dumps(finite(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
