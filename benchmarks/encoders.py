"""Encoder benchmark: milliseconds per item of each model x backend x batch size.

Lite profile models, on the backends present: Whisper tiny.en's encoder
(CTranslate2 int8, 8 s windows as the live ASR feeds it), the MediaPipe face
mesh (TFLite/XNNPACK, one frame per call), the FER mini-Xception (torch, and
the shipped ONNX graph of the same weights under ONNX Runtime; outputs are
checked equal), the fusion TCN step (numpy), the text model (TF-IDF + logistic
regression) and the voice features (numpy, per 0.1 s hop). TensorRT rows are
reported as skipped, with the reason, when no NVIDIA GPU or no ``tensorrt``
package is present.

Face frames come from ``FILE`` when given (e.g. the benchmark clip; it must have a
video stream), else from a blank frame (detection only: reported as ``"faces": 0``).
Whisper is timed at batch sizes up to ``WHISPER_MAX_BATCH``; larger ones get a
skipped row with the reason.

Run: ``ahstream bench encoders [FILE] --json`` (writes benchmarks/results/encoders.json, .png).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import RESULTS, machine
from benchmarks.output import pyplot, save_result
from models.runner import max_abs_diff

__all__ = ["run_encoders_bench"]

# The live ASR encodes one 8 s window per session step; batches beyond 4 windows take
# seconds per call on a CPU and say nothing about serving.
WHISPER_MAX_BATCH = 4


def _time(fn: Callable[[], Any], items: int, min_s: float = 0.5, warmup: int = 2) -> float:
    """Median ms per item of ``fn`` (which processes ``items`` items)."""
    for _ in range(warmup):
        fn()
    runs: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_s or len(runs) < 5:
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000 / items)
        if len(runs) >= 200:
            break
    return round(float(np.median(runs)), 3)


def _row(model: str, backend: str, batch: int, ms: float | None, **extra: Any) -> dict[str, Any]:
    return {"model": model, "backend": backend, "batch": batch, "ms_per_item": ms, **extra}


def _whisper_rows(batches: list[int]) -> list[dict[str, Any]]:
    import ctranslate2

    from models.whisper import load_whisper, log_mel

    model = load_whisper(cpu_threads=2)
    rng = np.random.default_rng(0)
    mel, _ = log_mel(model, rng.normal(0, 0.05, 6 * 16000).astype(np.float32), pad_s=2.0)
    rows = []
    for b in batches:
        feats = ctranslate2.StorageView.from_array(np.repeat(mel[None], b, axis=0))
        ms = _time(lambda feats=feats: model.model.encode(feats, to_cpu=True), b)
        rows.append(_row("whisper-tiny.en encoder (8 s)", "ctranslate2-int8", b, ms))
    return rows


def _fer_rows(batches: list[int]) -> list[dict[str, Any]]:
    from models.expression import ExpressionModel

    served = ExpressionModel(backend="onnxruntime")  # the shipped graph, dynamic batch
    reference = ExpressionModel.load(backend="torch")
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        x = {"x": rng.normal(0, 1, (b, 1, 64, 64)).astype(np.float32)}
        diff = max_abs_diff(served.runner.run(x), reference.runner.run(x))
        rows.append(
            _row("fer-mini-xception", "torch", b, _time(lambda x=x: reference.runner.run(x), b))
        )
        rows.append(
            _row(
                "fer-mini-xception",
                "onnxruntime",
                b,
                _time(lambda x=x: served.runner.run(x), b),
                max_abs_diff_vs_torch=diff,
            )
        )
    return rows


def _face_rows(file: str | Path | None) -> list[dict[str, Any]]:
    from models.expression import ExpressionModel
    from models.face import FaceAnalyzer

    frames = _video_frames(file) if file is not None else []
    if not frames:
        frames = [np.zeros((360, 640, 3), np.uint8)]
    with FaceAnalyzer(ExpressionModel.load(backend="onnxruntime")) as face:  # as served
        faces = sum(face.landmarks(f) is not None for f in frames)
        k = iter(range(10**9))
        ms = _time(lambda: face.landmarks(frames[next(k) % len(frames)]), 1)
        k2 = iter(range(10**9))
        full = _time(lambda: face.analyze(frames[(j := next(k2)) % len(frames)], j * 0.1), 1)
    size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
    return [
        _row("face mesh 478 + irises", "mediapipe-tflite", 1, ms, frame=size, faces=faces),
        _row("face features (mesh + FER + baseline)", "mediapipe+onnxruntime", 1, full, frame=size),
    ]


def _video_frames(file: str | Path, every: int = 3, most: int = 60) -> list[np.ndarray]:
    """Every ``every``-th RGB frame of ``file``'s video, at most ``most``; ValueError if it
    has no video stream."""
    import av

    frames: list[np.ndarray] = []
    with av.open(str(file)) as c:
        if not c.streams.video:
            raise ValueError(f"{file}: no video stream (face frames are read from it)")
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                frames.append(f.to_ndarray(format="rgb24"))
            if len(frames) >= most:
                break
    return frames


def _small_rows() -> list[dict[str, Any]]:
    from models.fusion import LAYOUT
    from models.tcn import FusionTCN
    from models.text_ah import TextAHModel

    rows = []
    tcn = FusionTCN.load().fresh()
    x = np.zeros(LAYOUT.dim, dtype=np.float32)
    rows.append(_row("fusion TCN step", "numpy", 1, _time(lambda: tcn.step(x), 1)))
    text = TextAHModel.load()
    answer = (
        "I mean I want to, but um, I don't know, it's hard with work and everything, "
        "maybe I could try walking more, I guess, if I find the time"
    )
    rows.append(
        _row(
            "text A/H (TF-IDF + LR)", "scikit-learn", 1, _time(lambda: text.predict_one(answer), 1)
        )
    )
    rows.append(_row("voice features (0.1 s hop)", "numpy", 1, _time(_prosody_run(), 60)))
    return rows


def _prosody_run() -> Callable[[], None]:
    """6 s of a gliding harmonic tone, VAD-gated, fed to a fresh tracker in 0.1 s hops."""
    from models.prosody import SAMPLE_RATE, ProsodyTracker
    from stream.vad import VadTimeline

    f0 = np.linspace(90.0, 200.0, 6 * SAMPLE_RATE)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    audio = sum(0.1 / k * np.sin(k * phase) for k in range(1, 6)).astype(np.float32)
    vad = VadTimeline()
    vad.push(audio)
    hop = SAMPLE_RATE // 10

    def run() -> None:
        tr = ProsodyTracker()
        for i in range(0, audio.size, hop):
            tr.update(audio[i : i + hop], (), vad)

    return run


def _tensorrt_rows() -> list[dict[str, Any]]:
    import importlib.util
    import shutil

    if importlib.util.find_spec("tensorrt") is None:
        reason = "tensorrt is not installed (pip install '.[gpu]' on an NVIDIA machine)"
    elif shutil.which("nvidia-smi") is None:
        reason = "no NVIDIA GPU on this machine"
    else:
        reason = "TensorRT engines come with the full profile's export (not built here)"
    return [_row("all", "tensorrt", 0, None, skipped=reason)]


def run_encoders_bench(
    file: str | Path | None = None,
    batch_sizes: list[int] | None = None,
    out_dir: str | Path | None = RESULTS,
) -> dict[str, Any]:
    """Time every lite model on the backends present."""
    import torch

    if file is not None:
        _video_frames(file, most=1)  # no video: say so before minutes of timing
    torch.set_num_threads(1)
    batches = batch_sizes or [1, 4, 16]
    rows = _whisper_rows([b for b in batches if b <= WHISPER_MAX_BATCH])
    rows += [
        _row(
            "whisper-tiny.en encoder (8 s)",
            "ctranslate2-int8",
            b,
            None,
            skipped=f"timed at batch <= {WHISPER_MAX_BATCH} only (the live ASR encodes one "
            "window per step)",
        )
        for b in batches
        if b > WHISPER_MAX_BATCH
    ]
    rows += _fer_rows(batches)
    rows += _face_rows(file) + _small_rows() + _tensorrt_rows()
    result = {
        "bench": "encoders",
        "machine": machine(),
        "file": None if file is None else Path(file).name,
        "threads": {"torch": 1, "onnxruntime": 1, "ctranslate2": 2},
        "rows": rows,
    }
    save_result(result, out_dir, "encoders", _plot)
    return result


def _plot(result: dict[str, Any], png: Path) -> None:
    plt = pyplot()

    rows = [r for r in result["rows"] if r["ms_per_item"] is not None]
    labels = [f"{r['model']} | {r['backend']} | b{r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    ax.barh(labels, [r["ms_per_item"] for r in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("ms per item (log)")
    ax.invert_yaxis()
    ax.set_title(f"lite models, {result['machine']['cores']} cores: {result['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
