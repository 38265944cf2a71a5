"""Cross-modal codebook cue: face–words valence inconsistency.

The most frequent cross-modal cue annotated in BAH (42.6 % of cross-modal
annotations) is a face that does not match the words: smiling while saying
something negative ("I hate doing it" with a grin), or a negative face while
the words are positive. Word valence comes from a small lexicon over the
words of the last few seconds (with negation flipping the next two words);
face valence is the FER expression valence relative to the person's own
baseline (`FaceFeatures.valence_dev`), so a naturally smiling face is not an
inconsistency by itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from models.cues import CueHit
from models.text_ah import CUE_LEXICON, tokenize

__all__ = ["POSITIVE", "NEGATIVE", "words_valence", "ValenceInconsistencyDetector"]

# Evaluative words people use about activities (the BAH prompts ask about likes/dislikes).
POSITIVE: frozenset[str] = frozenset(
    "love loved loving enjoy enjoyed enjoying enjoyable fun happy glad great good nice "
    "amazing awesome wonderful fantastic favorite favourite relaxing relaxed calm excited "
    "exciting joy pleasure peaceful best beautiful proud satisfying interesting".split()
)
NEGATIVE: frozenset[str] = frozenset(
    "hate hated hating dislike disliked boring bored annoying annoyed awful terrible bad "
    "worst sad angry upset stressful stressed tired tiring hard difficult painful hurt "
    "afraid scared anxious worried guilty frustrating frustrated lazy ugly sick".split()
)
_NEGATORS = frozenset(CUE_LEXICON["negation"]) | {"never", "not", "no"}

WORD_WINDOW_S = 4.0  # words of the last few seconds: about one clause at 150 wpm
MIN_WORD_VALENCE = 0.5  # |valence| of the words needed (net of positive vs negative words)
FACE_WINDOW_S = 1.5  # face valence averaged over this window (expressions last ~0.5-4 s)
MIN_FACE_DEV = 0.35  # face valence this far from baseline, opposite to the words
MIN_DURATION_S = 0.5  # sustained, not a single frame
MAX_GAP_S = 0.3  # a longer gap without a face ends an episode


def words_valence(tokens: list[str]) -> float | None:
    """Net valence in [-1, 1] of normalised tokens (None: no evaluative word)."""
    pos = neg = 0
    flip_left = 0
    for tok in tokens:
        if tok in _NEGATORS:
            flip_left = 2
            continue
        sign = 1 if tok in POSITIVE else -1 if tok in NEGATIVE else 0
        if sign and flip_left:
            sign = -sign
        flip_left = max(0, flip_left - 1)
        pos += sign > 0
        neg += sign < 0
    if pos + neg == 0:
        return None
    return (pos - neg) / (pos + neg)


class ValenceInconsistencyDetector:
    """Streaming face–words valence inconsistency over committed words and face features."""

    def __init__(self) -> None:
        self._words: deque[Any] = deque()
        self._faces: deque[tuple[float, float]] = deque()
        self._start: float | None = None
        self._last: float | None = None
        self._peak = 0.0
        self._detail = ""

    def update(self, t: float, words: Iterable[Any], face: Any | None) -> list[CueHit]:
        """Feed newly committed words and the face features analysed at ``t`` (or None)."""
        for w in words:
            self._words.append(w)
        while self._words and self._words[0].t1 < t - WORD_WINDOW_S:
            self._words.popleft()
        if face is not None:
            self._faces.append((t, float(face.valence_dev)))
        while self._faces and self._faces[0][0] < t - FACE_WINDOW_S:
            self._faces.popleft()
        hit = self._inconsistency(face is not None)
        out: list[CueHit] = []
        if hit is not None:
            strength, detail = hit
            if self._start is None:
                self._start = t
            self._last = t
            if strength >= self._peak:
                self._peak, self._detail = strength, detail
        elif self._start is not None and self._last is not None and t - self._last > MAX_GAP_S:
            out.extend(self.flush())
        return out

    def flush(self) -> list[CueHit]:
        """Report the open episode if it lasted long enough."""
        out: list[CueHit] = []
        if self._start is not None and self._last is not None:
            if self._last - self._start >= MIN_DURATION_S - 1e-9:
                out.append(
                    CueHit(
                        "valence_inconsistency",
                        self._start,
                        self._last,
                        round(min(1.0, self._peak), 3),
                        "cross",
                        self._detail,
                    )
                )
        self._start = self._last = None
        self._peak, self._detail = 0.0, ""
        return out

    def _inconsistency(self, have_face: bool) -> tuple[float, str] | None:
        if not have_face or not self._faces or not self._words:
            return None
        wv = words_valence(tokenize(" ".join(w.w for w in self._words)))
        if wv is None or abs(wv) < MIN_WORD_VALENCE:
            return None
        fv = sum(v for _, v in self._faces) / len(self._faces)
        if abs(fv) < MIN_FACE_DEV or (fv > 0) == (wv > 0):
            return None
        strength = min(1.0, abs(wv - fv) / 2.0)
        words = "positive" if wv > 0 else "negative"
        faces = "smiling/positive" if fv > 0 else "negative"
        return strength, f"{words} words, {faces} face ({fv:+.2f} vs baseline)"
