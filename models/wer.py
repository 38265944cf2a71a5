"""Word error rate with a small, documented text normalisation.

`normalize_words` makes a Whisper hypothesis comparable to a plain lowercase
reference such as the LibriVox/pocketsphinx transcriptions:

1. lowercase; curly quotes become straight apostrophes;
2. a few abbreviations Whisper writes with a period are spelled out
   ("mr." -> "mister", "mrs." -> "missus", "dr." -> "doctor", "st." -> "saint");
3. hyphens and dashes separate words ("ill-disposed" -> "ill disposed");
4. every other character that is not a letter, digit or in-word apostrophe is
   removed; leading/trailing apostrophes are stripped.

Numbers, contractions ("it's" vs "it is") and British/American spellings are
left alone on purpose: the reference and the hypothesis should use the same
conventions, and this keeps the measure simple. Filler words ("um", "uh") are
kept, so a filler the reference lacks counts as an insertion.
"""

from __future__ import annotations

import re

__all__ = ["edit_distance", "normalize_words", "wer"]

_ABBREV = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_ABBREV_RE = re.compile(r"\b(" + "|".join(_ABBREV) + r")\.")
_DASH_RE = re.compile(r"[-\u2010-\u2015]")
_DROP_RE = re.compile(r"[^a-z0-9' ]")


def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, with common abbreviations spelled out."""
    s = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    s = _ABBREV_RE.sub(lambda m: _ABBREV[m.group(1)] + " ", s)
    s = _DASH_RE.sub(" ", s)
    s = _DROP_RE.sub(" ", s)
    words = [w.strip("'") for w in s.split()]
    return [w for w in words if w]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance between two word lists (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` after `normalize_words`."""
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
