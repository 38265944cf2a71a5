"""Cross-modal codebook cue: face–words valence inconsistency.

The most frequent cross-modal cue annotated in BAH (42.6 % of cross-modal
annotations) is a face that does not match the words: smiling while saying
something negative ("I hate doing it" with a grin), or a negative face while
the words are positive. Word valence comes from a small lexicon over the
words of the last few seconds (a negation flips the next two words of its clause);
face valence is the FER expression valence relative to the person's own
baseline (`FaceFeatures.valence_dev`), so a naturally smiling face is not an
inconsistency by itself.

Timing. Words are committed by the ASR 0.5-3+ s after they were spoken, faces are
seen at once. So the condition is judged in media time: the result at a frame's time
``tau`` uses the words spoken up to ``tau`` (``t1 <= tau``, within ``WORD_WINDOW_S``)
and the faces of ``[tau - FACE_WINDOW_S, tau]``, and a frame is judged only once the
committed words are complete up to ``tau`` (the caller says up to when). Until then
its face valence waits, at most ``FACE_HISTORY_S``. The hits carry frame times and do
not depend on the ASR lag: a hit spans the frames whose own face valence disagreed with
the words spoken by then (the window's average, which decides, lags the face).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable
from typing import Any

from models.cues import CueHit, FrameInterval
from models.text_ah import CUE_LEXICON, tokenize

__all__ = [
    "POSITIVE",
    "NEGATIVE",
    "FACE_HISTORY_S",
    "text_valence",
    "words_valence",
    "ValenceInconsistencyDetector",
]

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
# Faces waiting for their words: live commit lags reach 2.3-3.2 s (p95) at full load and
# 4.6 s past it (README, Performance); 30 s of frames (300 at 10 Hz) bounds the memory of a
# session whose ASR stalls. Frames older than this behind the newest are dropped unjudged.
FACE_HISTORY_S = 30.0
_EPS = 1e-9  # media times are sums of floats
# Words kept behind the newest judged frame: an episode's start is looked for among the
# frames of the last FACE_WINDOW_S, each with the words of its own WORD_WINDOW_S.
_WORDS_KEPT_S = WORD_WINDOW_S + FACE_WINDOW_S


def words_valence(tokens: list[str]) -> float | None:
    """Net valence in [-1, 1] of the normalised tokens of one clause (None: no evaluative
    word); a negation flips the next two words."""
    return _net(*_count(tokens))


def text_valence(text: str) -> float | None:
    """Net valence in [-1, 1] of a text (None: no evaluative word). A negation flips the
    next two words of its own clause only: "No, I love it." is positive."""
    pos = neg = 0
    for clause in _CLAUSE_BREAK.split(text):
        p, n = _count(tokenize(clause))
        pos, neg = pos + p, neg + n
    return _net(pos, neg)


_CLAUSE_BREAK = re.compile(r"[,;:.?!\u2014\u2013\u2026]+(?:\s|$)|\s-+\s")


def _count(tokens: list[str]) -> tuple[int, int]:
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
    return pos, neg


def _net(pos: int, neg: int) -> float | None:
    return None if pos + neg == 0 else (pos - neg) / (pos + neg)


class ValenceInconsistencyDetector:
    """Streaming face–words valence inconsistency over committed words and face frames.

    Per analysis tick: `add_face` for every analysed frame, then `update` with the newly
    committed words and the media time up to which the committed words are complete;
    `flush` at the end of the session judges the frames still waiting.
    """

    def __init__(self) -> None:
        self._words: deque[Any] = deque()  # committed words some later frame may still use
        self._pending: deque[tuple[float, float | None]] = deque()  # (t, valence) unjudged
        self._recent: deque[tuple[float, float | None]] = deque()  # judged, in FACE_WINDOW_S
        self._frames = FrameInterval(MAX_GAP_S + _EPS)
        self._done = -math.inf  # time of the newest judged frame
        # The open episode: first and last frame where the condition held (averaged over
        # FACE_WINDOW_S), and the times reported: from the first to the last frame whose own
        # face valence was past the threshold (the average lags the face by up to a window).
        self._start: float | None = None
        self._last: float | None = None
        self._t0: float | None = None
        self._t1: float | None = None
        self._words_positive = False
        self._reported = -math.inf  # end of the last reported episode
        self._peak = 0.0
        self._detail = ""

    def add_face(self, t: float, face: Any | None) -> None:
        """The face features of the frame analysed at media time ``t`` (None: no face)."""
        self._pending.append((t, None if face is None else float(face.valence_dev)))
        self._frames.add(t)
        while self._pending[0][0] < t - FACE_HISTORY_S:
            self._pending.popleft()

    def update(self, words: Iterable[Any], complete_until: float) -> list[CueHit]:
        """Add newly committed words (in time order) and judge the frames up to
        ``complete_until``, the media time up to which the committed words are complete."""
        self._words.extend(words)
        return self._judge(complete_until)

    def flush(self) -> list[CueHit]:
        """At the end of the session (every word committed): judge the waiting frames and
        report the open episode if it lasted long enough."""
        return self._judge(math.inf) + self._close()

    def _judge(self, until: float) -> list[CueHit]:
        out: list[CueHit] = []
        while self._pending and self._pending[0][0] <= until + _EPS:
            tau, valence = self._pending.popleft()
            self._done = tau
            self._recent.append((tau, valence))
            while self._recent[0][0] < tau - FACE_WINDOW_S - _EPS:
                self._recent.popleft()
            while self._words and self._words[0].t1 < tau - _WORDS_KEPT_S - _EPS:
                self._words.popleft()
            out.extend(self._step(tau, valence))
        if not self._pending:  # no frame waits: words older than any later window go
            floor = max(self._done, until - FACE_HISTORY_S) - _WORDS_KEPT_S - _EPS
            while self._words and self._words[0].t1 < floor:
                self._words.popleft()
        return out

    def _step(self, tau: float, valence: float | None) -> list[CueHit]:
        """Advance the episode with the frame at ``tau``."""
        out: list[CueHit] = []
        hit = None if valence is None else self._inconsistency(tau)
        if self._last is not None and tau - self._last > MAX_GAP_S + _EPS:
            out.extend(self._close())  # also before a hit: a longer gap splits episodes
        if hit is not None:
            strength, detail, positive = hit
            if self._start is None:
                self._start, self._words_positive = tau, positive
                # From the first frame of the window where the face already disagreed
                # with the words spoken by then (the average lags by up to a window).
                earlier = (
                    t
                    for t, v in self._recent
                    if t > self._reported
                    and self._opposite(v)
                    and (wv := self._spoken_valence(t)) is not None
                    and (wv > 0) == positive
                )
                self._t0 = min(earlier, default=tau)
            self._last = tau
            if self._opposite(valence):
                self._t1 = tau
            if strength >= self._peak:
                self._peak, self._detail = strength, detail
        return out

    def _spoken_valence(self, tau: float) -> float | None:
        """Valence of the words spoken in the WORD_WINDOW_S up to ``tau``, if at least
        MIN_WORD_VALENCE (None otherwise)."""
        floor = tau - WORD_WINDOW_S - _EPS
        spoken = [w.w for w in self._words if floor <= w.t1 <= tau + _EPS]
        wv = text_valence(" ".join(spoken)) if spoken else None
        return None if wv is None or abs(wv) < MIN_WORD_VALENCE else wv

    def _opposite(self, valence: float | None) -> bool:
        """Whether a frame's own face valence is past the threshold, against the words."""
        if valence is None or abs(valence) < MIN_FACE_DEV:
            return False
        return (valence > 0) != self._words_positive

    def _close(self) -> list[CueHit]:
        """Report the open episode if it covered MIN_DURATION_S; reset it."""
        out: list[CueHit] = []
        if self._start is not None and self._last is not None:
            if self._frames.covered(self._start, self._last) >= MIN_DURATION_S - _EPS:
                t0 = self._start if self._t0 is None else self._t0
                t1 = max(t0, self._last if self._t1 is None else self._t1)
                out.append(
                    CueHit(
                        "valence_inconsistency",
                        t0,
                        t1,
                        round(min(1.0, self._peak), 3),
                        "cross",
                        self._detail,
                    )
                )
                self._reported = t1
        self._start = self._last = self._t0 = self._t1 = None
        self._peak, self._detail = 0.0, ""
        return out

    def _inconsistency(self, tau: float) -> tuple[float, str, bool] | None:
        """Strength, detail and whether the words are positive, of the inconsistency at
        ``tau`` (None: none)."""
        wv = self._spoken_valence(tau)
        if wv is None:
            return None
        faces = [v for _, v in self._recent if v is not None]
        fv = sum(faces) / len(faces)  # the frame at tau has a face
        if abs(fv) < MIN_FACE_DEV or (fv > 0) == (wv > 0):
            return None
        strength = min(1.0, abs(wv - fv) / 2.0)
        words = "positive" if wv > 0 else "negative"
        face = "smiling/positive" if fv > 0 else "negative"
        return strength, f"{words} words, {face} face ({fv:+.2f} vs baseline)", wv > 0
