"""Per-tick analysis shared by live sessions, `analyze` and `evaluate`.

An `Analyzer` turns what a session knows at media time ``t`` (the words so
far, new audio, the newest video frame) into the frame-level A/H probability,
codebook cues and modality features. It is synchronous and stateful: the
session calls it from its worker through an executor, one call at a time, in
media order; `evaluate` calls it directly on simulated word streams. Keeping
one code path is what makes the evaluated numbers the served ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.cues import CueHit
from models.face import FaceAnalyzer, FaceFeatures
from models.face_cues import FaceCueDetector
from models.prosody import ProsodyTracker, VoiceFeatures
from models.voice_cues import VoiceCueDetector
from models.word_cues import WordCueDetector
from stream.buffers import AudioRing, VideoFrame
from stream.vad import VadTimeline

__all__ = ["Analyzer", "TickResult"]


@dataclass
class TickResult:
    """What one analysis tick produced."""

    t: float
    p: float
    evidence: str  # "text" (the model saw words) or "prior" (too few words yet)
    n_words: int
    cues: list[CueHit] = field(default_factory=list)
    voice: VoiceFeatures | None = None
    face: FaceFeatures | None = None


# Frames are scaled down to this width before face analysis (the mesh needs no more).
MAX_FACE_WIDTH = 640


def frame_rgb(frame: VideoFrame) -> np.ndarray:
    """RGB pixels of a frame, scaled down to at most MAX_FACE_WIDTH wide."""
    image = frame.image
    if isinstance(image, np.ndarray):
        return image
    width, height = image.width, image.height
    if width > MAX_FACE_WIDTH:
        height = int(round(height * MAX_FACE_WIDTH / width / 2)) * 2
        width = MAX_FACE_WIDTH
    return image.to_ndarray(format="rgb24", width=width, height=height)


def join_words(words: list[Any]) -> str:
    """The transcript text of ASR words."""
    return " ".join(w.w.strip() for w in words if w.w.strip())


class Analyzer:
    """The frame-level model and cue detectors of one session."""

    def __init__(
        self,
        models: Any,
        context: str | None = None,
        ring: AudioRing | None = None,
        vad: VadTimeline | None = None,
    ) -> None:
        self.text_model = models.text
        self.context = context
        self.ring = ring
        self.vad = vad
        self.threshold = self.text_model.threshold_for(context)
        self.words: list[Any] = []  # committed words so far
        self._text_cache: tuple[str, float, str] | None = None
        self.word_cues = WordCueDetector()
        self.voice_cues = VoiceCueDetector()
        self.prosody: ProsodyTracker | None = ProsodyTracker() if ring is not None else None
        self._pending_words: list[Any] = []
        self._expression = getattr(models, "expression", None)
        self.face: FaceAnalyzer | None = None  # created on the first video frame
        self.face_cues = FaceCueDetector()

    def text_p(self, text: str) -> tuple[float, str]:
        """The text model's p of the transcript so far, or its no-evidence prior."""
        if self._text_cache is not None and self._text_cache[0] == text:
            return self._text_cache[1], self._text_cache[2]
        p = self.text_model.predict_one(text, context=self.context)
        result = (self.text_model.prior(self.context), "prior") if p is None else (p, "text")
        self._text_cache = (text, *result)
        return result

    def tick(
        self,
        t: float,
        committed: list[Any],
        utterance_final: bool,
        tentative: list[Any],
        frame: VideoFrame | None = None,
    ) -> TickResult:
        """Analyse media time ``t`` given words newly committed since the last tick
        and the newest video frame not analysed yet (None if there is none)."""
        cues: list[CueHit] = []
        if committed or utterance_final:
            self.words.extend(committed)
            self._pending_words.extend(committed)
            cues.extend(self.word_cues.update(committed, final=utterance_final))
        words = self.words + list(tentative)
        p, evidence = self.text_p(join_words(words))
        voice = None
        if self.prosody is not None and self.ring is not None:
            audio = self.ring.read_time(self.prosody.t, t)
            if audio.size:
                voice = self.prosody.update(audio, self._pending_words, self.vad)
                self._pending_words = []
            cues.extend(self.voice_cues.update(t, voice, self.vad))
        face = None
        if frame is not None:
            if self.face is None:
                self.face = FaceAnalyzer(self._expression)
            face = self.face.analyze(frame_rgb(frame), frame.t)
            cues.extend(self.face_cues.update(frame.t, face))
        return TickResult(
            t=t,
            p=float(np.clip(p, 0.0, 1.0)),
            evidence=evidence,
            n_words=len(words),
            cues=cues,
            voice=voice,
            face=face,
        )

    def flush(self) -> list[CueHit]:
        """Cues still pending at the end of the session; releases the face graph."""
        hits = self.word_cues.flush() + self.face_cues.flush()
        if self.face is not None:
            self.face.close()
            self.face = None
        return hits
