"""Fusion input of one analysis tick: text, face and voice features with masks.

One row per analysis tick (``FusionLayout`` gives the order):

====================  =====  ==========================================================
block                  dims  content
====================  =====  ==========================================================
text                     20  `TEXT_FEATURES` from `TextStream` (always present)
face                     46  `models.face.FaceFeatures.vector()` (NaN -> 0)
face_mask                 1  1 if the newest analysed frame (<= `FACE_MAX_AGE_S` old) had a face
voice                    18  `models.prosody.VoiceFeatures.vector()`
voice_mask               18  `VoiceFeatures.mask()` (all 0 without new audio; during silence
                             only the pause entries, see `models.prosody`)
====================  =====  ==========================================================

103 values in all. Face: 17 raw measures (pose, gaze, eyes, blinks, mouth, brows, size),
7 expression probabilities, valence, 20 values relative to the person's running baseline
(`models.face.BASELINE_FEATURES`) and the baseline flag. Voice: level, pitch, pitch
variability and slope, voicing, speech fraction, pause and silence lengths, speech rates,
with z-scores against the speaker's baselines (`models.prosody.FEATURE_NAMES`).

The pairwise conflict features (|difference| of learned projections of the
text, face and voice blocks, masked when either side is missing; the voice is
missing during a silence, whose row holds only the pause entries) need learned
weights, so they are computed inside the network (`models.tcn.FusionTCN`).

A modality that is not *active* for a set of weights (the lite weights are
trained on text only, see the model card) is always presented as missing:
zero values and zero mask, whatever was observed. Face and voice still drive
the cue detectors; they only stay out of the probability.

Every text feature is computed from the words visible at tick time ``t`` and
their times, identically in a live session and in a simulated replay
(`models.simulate`):

- ``z_p``: logit of the text model's probability of the transcript so far
  (its no-evidence prior below ``min_words``), with the context when one is known;
- ``z_text``, ``z_q``: the text model's A/H logit and inferred-question-prior logit;
- ``has_context``: 1 if the session context matched a BAH prompt;
- ``usable``: 1 once the transcript has ``min_words`` words;
- ``log_words``: log(1 + number of words);
- ``cue_<name>``: log(1 + count) of each lexical cue (`models.text_ah.CUE_NAMES`)
  in the last `RECENT_WORDS` words;
- ``since_word``: seconds since the newest word ended, capped at `SINCE_CAP_S`,
  divided by it (1 before any word);
- ``word_rate``: words ending in the last `RATE_WINDOW_S` seconds per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.face import FEATURE_NAMES as FACE_FEATURES
from models.prosody import FEATURE_NAMES as VOICE_FEATURES
from models.prosody import PAUSE_FEATURES
from models.text_ah import (
    CUE_NAMES,
    content_tokens,
    context_question,
    count_words,
    lexical_cues,
)

__all__ = [
    "TEXT_FEATURES",
    "MODALITIES",
    "RECENT_WORDS",
    "RATE_WINDOW_S",
    "SINCE_CAP_S",
    "FACE_MAX_AGE_S",
    "FusionLayout",
    "LAYOUT",
    "join_words",
    "TextStream",
    "fusion_input",
]

RECENT_WORDS = 20
RATE_WINDOW_S = 5.0
SINCE_CAP_S = 5.0
FACE_MAX_AGE_S = 0.5  # face features older than this are treated as missing
Z_CLIP = 8.0

TEXT_FEATURES: tuple[str, ...] = (
    "z_p",
    "z_text",
    "z_q",
    "has_context",
    "usable",
    "log_words",
    *(f"cue_{c}" for c in CUE_NAMES),
    "since_word",
    "word_rate",
)
MODALITIES: tuple[str, ...] = ("text", "face", "voice")


@dataclass(frozen=True)
class FusionLayout:
    """Positions of the blocks in a fusion input row."""

    text_dim: int = len(TEXT_FEATURES)
    face_dim: int = len(FACE_FEATURES)
    voice_dim: int = len(VOICE_FEATURES)

    @property
    def text(self) -> slice:
        """Slice of the text features."""
        return slice(0, self.text_dim)

    @property
    def face(self) -> slice:
        """Slice of the face features."""
        return slice(self.text_dim, self.text_dim + self.face_dim)

    @property
    def face_mask(self) -> int:
        """Index of the face presence flag."""
        return self.text_dim + self.face_dim

    @property
    def voice(self) -> slice:
        """Slice of the voice features."""
        start = self.face_mask + 1
        return slice(start, start + self.voice_dim)

    @property
    def voice_mask(self) -> slice:
        """Slice of the per-feature voice masks."""
        start = self.voice.stop
        return slice(start, start + self.voice_dim)

    @property
    def voice_speech_masks(self) -> list[int]:
        """Indices of the masks of the voice entries that need speech: the voice counts as
        present (for the conflict features) when one of them is set, not for the pause
        entries alone, which a silence also has."""
        start = self.voice_mask.start
        return [start + i for i, n in enumerate(VOICE_FEATURES) if n not in PAUSE_FEATURES]

    @property
    def dim(self) -> int:
        """Width of a fusion input row."""
        return self.voice_mask.stop

    def index(self, name: str) -> int:
        """Index of a text feature by name."""
        return TEXT_FEATURES.index(name)

    def as_dict(self) -> dict[str, int]:
        """Block sizes (stored with the weights to catch layout changes)."""
        return {"text": self.text_dim, "face": self.face_dim, "voice": self.voice_dim}


LAYOUT = FusionLayout()


def join_words(words: Sequence[Any]) -> str:
    """The transcript text of ASR words (``Word.w``), as the analysis sees it."""
    return " ".join(w.w.strip() for w in words if w.w.strip())


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1.0 - 1e-6)
    return max(-Z_CLIP, min(Z_CLIP, math.log(p / (1.0 - p))))


class TextStream:
    """Text features of the transcript so far, tick by tick (one per session, stateful).

    ``features(t, words)`` takes every word visible at media time ``t``
    (committed and tentative, in order). The text model is only re-run when
    the text changes.
    """

    def __init__(self, text_model: Any, context: str | None = None) -> None:
        self.model = text_model
        q = context_question(context)
        self.question = q if q is not None and q in text_model.ctx_offsets else None
        self._empty = text_model.scores("")
        self._text: str | None = None
        self._static: np.ndarray | None = None
        self.p_text = 0.0
        self.usable = False

    def _text_block(self, text: str) -> np.ndarray:
        # The words the text model reads: without fillers when its weights drop them (the
        # live Whisper writes "um" the training transcripts almost never have), so they
        # move neither model (one "um" put the TCN's filler cue 11 SD out).
        drop = self.model.spec.drop_fillers
        toks = content_tokens(text, drop)
        n = len(toks) if drop else count_words(text)
        usable = self.model.usable(text)
        z_text, z_q = self.model.scores(text) if usable else self._empty
        p = self.model.combine(z_text, z_q, self.question)
        cues = lexical_cues(toks[-RECENT_WORDS:])
        self.p_text, self.usable = p, usable
        return np.array(
            [
                _logit(p),
                max(-Z_CLIP, min(Z_CLIP, z_text)),
                max(-Z_CLIP, min(Z_CLIP, z_q)),
                float(self.question is not None),
                float(usable),
                math.log1p(n),
                *(math.log1p(cues[c]) for c in CUE_NAMES),
            ],
            dtype=np.float64,
        )

    def features(self, t: float, words: Sequence[Any]) -> np.ndarray:
        """Text features (`TEXT_FEATURES` order) at media time ``t`` given the visible words."""
        text = join_words(words)
        if text != self._text or self._static is None:
            self._static = self._text_block(text)
            self._text = text
        if words:
            since = min(max(t - float(words[-1].t1), 0.0), SINCE_CAP_S) / SINCE_CAP_S
            recent = 0
            for w in reversed(words):
                if w.t1 <= t - RATE_WINDOW_S:
                    break
                if w.t1 <= t:
                    recent += 1
            rate = recent / RATE_WINDOW_S
        else:
            since, rate = 1.0, 0.0
        return np.concatenate([self._static, [since, rate]])


def fusion_input(
    text: np.ndarray,
    face: Any | None = None,
    voice: Any | None = None,
    active: Sequence[str] = MODALITIES,
    layout: FusionLayout = LAYOUT,
) -> np.ndarray:
    """One fusion input row; face/voice missing or not in ``active`` are masked (zeros)."""
    row = np.zeros(layout.dim, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    if text.shape != (layout.text_dim,):
        raise ValueError(f"text features have shape {text.shape}, expected ({layout.text_dim},)")
    row[layout.text] = text
    if face is not None and "face" in active:
        row[layout.face] = np.nan_to_num(np.asarray(face.vector(), dtype=np.float64), nan=0.0)
        row[layout.face_mask] = 1.0
    if voice is not None and "voice" in active:
        mask = np.asarray(voice.mask(), dtype=np.float64)
        row[layout.voice] = np.asarray(voice.vector(), dtype=np.float64) * mask
        row[layout.voice_mask] = mask
    return row
