"""Text-only A/H probability for a (partial) answer transcript.

Features (plain numpy/Python; no scikit-learn or pickle at load time):

- word 1-2-gram TF-IDF (sublinear tf, smoothed idf, L2-normalised),
- lexical cue counts from the BAH codebook (fillers, hedges, "but", negations,
  "I don't know", wishes/obligations, procrastination, repetitions, ...).

Two linear heads share them: an A/H logistic regression, and a 7-way one that
recognises which BAH question is being answered; the A/H base rate of that
question in train (weighted by its probability) is mixed with the A/H score.
Both heads were trained on the full answers *and* on random word prefixes of
them with the video label, so ``predict`` is meant for the transcript so far.

Text is normalised first (lower case, punctuation dropped, curly apostrophes
unified, numbers such as 7, 1.5, 1,000 or 7:30 mapped to ``0``), so the casing
and punctuation of an ASR do not matter.

An optional context (the prompt the avatar just asked) is matched against the
seven BAH prompts (``context_question``); when it matches, the known
question's offset replaces the inferred-question prior, and
``threshold_context`` applies. Any other context is ignored.

``predict`` returns NaN for a text with fewer than ``min_words`` words
(``predict([""])`` is ``array([nan])``): the caller must not publish a
probability then. ``predict_one`` returns None in that case.

Weights: ``models/weights/text_ah_lite.npz`` (float64 arrays; vocabularies as
newline-joined UTF-8 bytes; loaded with ``allow_pickle=False``) and
``text_ah_lite.json`` (config, thresholds, metrics, provenance).
``python -m models.train_text`` reproduces them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bah import QUESTION_PROMPTS
from models.weight_files import WEIGHTS_DIR, arrays_digest, read_weight_pair

__all__ = [
    "WEIGHTS_DIR",
    "DEFAULT_STEM",
    "CUE_LEXICON",
    "CUE_NAMES",
    "QUESTIONS",
    "normalize_text",
    "tokenize",
    "count_words",
    "content_tokens",
    "FILLERS",
    "lexical_cues",
    "word_terms",
    "char_terms",
    "context_question",
    "FeatureSpec",
    "TextAHModel",
    "load",
]

DEFAULT_STEM = "text_ah_lite"
FORMAT_VERSION = 1

# ------------------------------------------------------------------------------- text handling

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_DIGITS = re.compile(r"[0-9]+(?:[.,:][0-9]+)*")  # 7, 1.5, 1,000, 7:30 -> 0
_TOKEN = re.compile(r"[a-z0]+(?:'[a-z]+)*")


def normalize_text(text: str) -> str:
    """Lower-case, unify apostrophes, map numbers to ``0``, keep only word tokens."""
    s = text.lower().translate(_APOSTROPHES)
    s = _DIGITS.sub(" 0 ", s)
    return " ".join(_TOKEN.findall(s))


def tokenize(text: str) -> list[str]:
    """Return the normalised word tokens of a text."""
    return normalize_text(text).split()


def content_tokens(text: str, drop_fillers: bool) -> list[str]:
    """`tokenize`, without the `FILLERS` tokens when ``drop_fillers``."""
    toks = tokenize(text)
    return [t for t in toks if t not in FILLERS] if drop_fillers else toks


def count_words(text: str) -> int:
    """Return the number of word tokens the model sees in a text."""
    return len(_TOKEN.findall(_DIGITS.sub(" 0 ", text.lower().translate(_APOSTROPHES))))


# Lexical cues named by the BAH annotation codebook, as normalised token
# sequences. A trailing ``*`` on a one-word entry matches any word with that
# prefix. Whisper tends to drop fillers, so "filler" is rare in its output.
CUE_LEXICON: dict[str, tuple[str, ...]] = {
    "filler": ("um", "umm", "uh", "uhm", "erm", "er", "hmm", "mm", "ah"),
    "discourse": ("like", "you know", "i mean", "well", "so", "actually", "basically"),
    "hedge": (
        "maybe",
        "probably",
        "perhaps",
        "possibly",
        "kind of",
        "sort of",
        "i guess",
        "i think",
        "i suppose",
        "might",
        "somewhat",
        "a little",
        "a bit",
        "sometimes",
        "depends",
    ),
    "uncertainty": (
        "i don't know",
        "i dont know",
        "not sure",
        "i'm not sure",
        "unsure",
        "hard to say",
        "no idea",
        "i can't decide",
        "made up my mind",
        "make up my mind",
    ),
    "contrast": ("but", "though", "although", "however", "yet", "except", "still", "whereas"),
    "negation": (
        "not",
        "no",
        "never",
        "nothing",
        "don't",
        "doesn't",
        "didn't",
        "can't",
        "cannot",
        "won't",
        "wouldn't",
        "isn't",
        "aren't",
        "wasn't",
        "haven't",
        "hasn't",
        "shouldn't",
        "couldn't",
    ),
    "wish": ("wish", "wished", "hope", "want to", "would like", "i'd like"),
    "obligation": ("should", "ought", "supposed to", "need to", "have to", "must", "could have"),
    "procrastination": ("procrastinat*", "put off", "putting off", "postpon*", "delay*", "someday"),
    "effort": ("try", "trying", "tried", "struggle*", "hard", "difficult", "guilt*", "bad"),
    "correction": ("i mean", "or rather", "actually", "sorry", "wait"),
    "repetition": (),  # computed: immediately repeated word ("i i", "the the")
}
CUE_NAMES: tuple[str, ...] = tuple(CUE_LEXICON)

# Filler sounds. Whisper large-v3 (the training transcripts) mostly drops them, the live
# Whisper tiny.en with its disfluent prompt keeps them, so a model that reads them would
# see a different language live; weights with ``drop_fillers`` ignore them (the filler cue
# events still count them).
FILLERS: frozenset[str] = frozenset(CUE_LEXICON["filler"])


def _compile_lexicon() -> tuple[
    dict[str, list[str]], dict[str, list[tuple[tuple[str, ...], str]]], list[tuple[str, str]]
]:
    unigrams: dict[str, list[str]] = {}
    phrases: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    prefixes: list[tuple[str, str]] = []
    for cue, entries in CUE_LEXICON.items():
        for e in entries:
            if e.endswith("*"):
                prefixes.append((e[:-1], cue))
                continue
            words = tuple(e.split())
            if len(words) == 1:
                unigrams.setdefault(words[0], []).append(cue)
            else:
                phrases.setdefault(words[0], []).append((words, cue))
    return unigrams, phrases, prefixes


_UNIGRAMS, _PHRASES, _PREFIXES = _compile_lexicon()
_PREFIX_TUPLE = tuple(p for p, _ in _PREFIXES)


def lexical_cues(text_or_tokens: str | Sequence[str]) -> dict[str, int]:
    """Count codebook cues (see ``CUE_LEXICON``) in a text or a list of normalised tokens."""
    toks = tokenize(text_or_tokens) if isinstance(text_or_tokens, str) else list(text_or_tokens)
    counts = dict.fromkeys(CUE_NAMES, 0)
    n = len(toks)
    prev = None
    for i, t in enumerate(toks):
        for cue in _UNIGRAMS.get(t, ()):
            counts[cue] += 1
        for words, cue in _PHRASES.get(t, ()):
            k = len(words)
            if i + k <= n and tuple(toks[i : i + k]) == words:
                counts[cue] += 1
        if _PREFIX_TUPLE and t.startswith(_PREFIX_TUPLE):
            for pre, cue in _PREFIXES:
                if t.startswith(pre):
                    counts[cue] += 1
        if t == prev:
            counts["repetition"] += 1
        prev = t
    return counts


def word_terms(tokens: Sequence[str], ngram_range: tuple[int, int]) -> list[str]:
    """Return the word n-grams (joined by spaces) of a token list."""
    lo, hi = ngram_range
    out: list[str] = []
    n = len(tokens)
    for k in range(lo, hi + 1):
        out.extend(" ".join(tokens[i : i + k]) for i in range(n - k + 1))
    return out


def char_terms(tokens: Sequence[str], ngram_range: tuple[int, int]) -> list[str]:
    """Return character n-grams inside space-padded words (like sklearn's ``char_wb``)."""
    lo, hi = ngram_range
    out: list[str] = []
    for tok in tokens:
        w = f" {tok} "
        L = len(w)
        for k in range(lo, hi + 1):
            if k > L:
                break
            out.extend(w[i : i + k] for i in range(L - k + 1))
    return out


def _prompt_tokens() -> dict[int, set[str]]:
    return {q: set(tokenize(p)) for q, p in QUESTION_PROMPTS.items()}


_PROMPT_TOKENS = _prompt_tokens()


def context_question(context: str | None, min_similarity: float = 0.6) -> int | None:
    """Match a context text to one of the seven BAH prompts (word-set Jaccard), or None."""
    if not context:
        return None
    toks = set(tokenize(context))
    if not toks:
        return None
    best_q, best_s = None, 0.0
    for q, ptoks in _PROMPT_TOKENS.items():
        s = len(toks & ptoks) / len(toks | ptoks)
        if s > best_s:
            best_q, best_s = q, s
    return best_q if best_s >= min_similarity else None


# ------------------------------------------------------------------------------- features


@dataclass
class FeatureSpec:
    """Featurisation settings and fitted vocabularies/statistics of the text model.

    Feature vector = [word TF-IDF block | char TF-IDF block (optional) | cue block].
    Each TF-IDF block is L2-normalised and scaled by its weight; the cue block
    is ``(log1p(cue counts) - mean) / std * cue_weight``.
    """

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = None
    char_weight: float = 0.0
    cue_weight: float = 0.1
    word_vocab: dict[str, int] = field(default_factory=dict)
    char_vocab: dict[str, int] = field(default_factory=dict)
    word_idf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    char_idf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cue_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cue_std: np.ndarray = field(default_factory=lambda: np.zeros(0))
    drop_fillers: bool = False  # ignore `FILLERS` tokens (weights before 1.1.0: False)

    @property
    def n_cue(self) -> int:
        """Number of dense cue features."""
        return len(CUE_NAMES) if self.cue_weight > 0 else 0

    @property
    def n_features(self) -> int:
        """Total feature dimension: word block, char block, cue block."""
        return len(self.word_vocab) + len(self.char_vocab) + self.n_cue

    @staticmethod
    def raw_cues(tokens: Sequence[str]) -> np.ndarray:
        """Return unscaled cue features: ``log1p`` of each cue count (``CUE_NAMES`` order)."""
        c = lexical_cues(tokens)
        return np.log1p(np.array([c[k] for k in CUE_NAMES], dtype=np.float64))

    def featurize_tokens(self, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices, values) of the sparse feature vector of normalised tokens."""
        idx_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        idx, val = _tfidf(word_terms(tokens, self.word_ngrams), self.word_vocab, self.word_idf)
        idx_parts.append(idx)
        val_parts.append(val)
        offset = len(self.word_vocab)
        if self.char_ngrams is not None and self.char_vocab:
            idx, val = _tfidf(char_terms(tokens, self.char_ngrams), self.char_vocab, self.char_idf)
            idx_parts.append(idx + offset)
            val_parts.append(val * self.char_weight)
            offset += len(self.char_vocab)
        if self.n_cue:
            cues = (self.raw_cues(tokens) - self.cue_mean) / self.cue_std * self.cue_weight
            idx_parts.append(np.arange(offset, offset + self.n_cue, dtype=np.int64))
            val_parts.append(cues)
        return np.concatenate(idx_parts), np.concatenate(val_parts)

    def tokens(self, text: str) -> list[str]:
        """The normalised tokens of a text the model reads (fillers out if ``drop_fillers``)."""
        return content_tokens(text, self.drop_fillers)

    def featurize(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (indices, values) of the sparse feature vector of one text."""
        return self.featurize_tokens(self.tokens(text))


def _tfidf(
    terms: Iterable[str], vocab: dict[str, int], idf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sublinear-tf TF-IDF of known terms, L2-normalised; (indices, values)."""
    counts = Counter(j for j in (vocab.get(t) for t in terms) if j is not None)
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    val = (1.0 + np.log(tf)) * idf[idx]
    return idx, val / math.sqrt(float(val @ val))


# ------------------------------------------------------------------------------- the model


def _encode_vocab(vocab: dict[str, int]) -> np.ndarray:
    terms = sorted(vocab, key=vocab.__getitem__)
    return np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8).copy()


def _decode_vocab(arr: np.ndarray) -> dict[str, int]:
    if arr.size == 0:
        return {}
    terms = arr.tobytes().decode("utf-8").split("\n")
    return {t: i for i, t in enumerate(terms)}


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


QUESTIONS: tuple[int, ...] = tuple(sorted(QUESTION_PROMPTS))


@dataclass
class TextAHModel:
    """Text-only A/H probability of the transcript so far (see the module docstring).

    Scores of a text x with sparse features f(x):

    - ``z_text = coef . f(x) + intercept`` (the A/H head),
    - ``P(q | x) = softmax(q_coef f(x) + q_intercept)`` (which BAH question is
      being answered) and ``z_q = logit(sum_q P(q | x) * q_rates[q])`` (the A/H
      base rate of that question in train),
    - without a matched context: ``p = sigmoid(mix_a * z_text + mix_b * z_q + mix_c)``,
    - with a context matching BAH prompt q: ``p = sigmoid(ctx_a * z_text + ctx_offsets[q])``.

    ``threshold`` goes with the first, ``threshold_context`` with the second
    (``threshold_for(context)`` picks). Texts below ``min_words`` words get NaN.
    """

    spec: FeatureSpec
    coef: np.ndarray
    intercept: float
    q_coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    q_intercept: np.ndarray = field(default_factory=lambda: np.zeros(0))
    q_rates: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mix_a: float = 1.0
    mix_b: float = 0.0
    mix_c: float = 0.0
    ctx_a: float = 1.0
    ctx_offsets: dict[int, float] = field(default_factory=dict)
    threshold: float = 0.5
    threshold_context: float = 0.5
    min_words: int = 3
    name: str = DEFAULT_STEM
    version: str = "0"
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- inference

    def scores(self, text: str) -> tuple[float, float]:
        """Return (z_text, z_q) of one text: A/H logit and inferred-question prior logit."""
        idx, val = self.spec.featurize(text)
        z_text = float(self.coef[idx] @ val) + self.intercept
        if self.q_coef.size == 0:
            return z_text, 0.0
        qz = self.q_coef[:, idx] @ val + self.q_intercept
        qz = np.exp(qz - qz.max())
        prior = float(qz @ self.q_rates / qz.sum())
        return z_text, _logit(prior)

    def logit(self, text: str) -> float:
        """Return the raw A/H-head logit ``z_text`` of one text (no question prior)."""
        return self.scores(text)[0]

    def question_probs(self, text: str) -> dict[int, float]:
        """Return P(question q | text) for the seven BAH prompts (empty if no question head)."""
        if self.q_coef.size == 0:
            return {}
        idx, val = self.spec.featurize(text)
        qz = self.q_coef[:, idx] @ val + self.q_intercept
        qz = np.exp(qz - qz.max())
        qz /= qz.sum()
        return {q: float(v) for q, v in zip(QUESTIONS, qz, strict=True)}

    def usable(self, text: str) -> bool:
        """True if the text has at least ``min_words`` words the model reads (else no
        probability is given; fillers do not count when the weights drop them)."""
        if self.spec.drop_fillers:
            return len(self.spec.tokens(text)) >= self.min_words
        return count_words(text) >= self.min_words

    def combine(self, z_text: float, z_q: float, question: int | None = None) -> float:
        """Return the probability from the two scores and a known question (or None)."""
        if question is not None and question in self.ctx_offsets:
            return _sigmoid(self.ctx_a * z_text + self.ctx_offsets[question])
        return _sigmoid(self.mix_a * z_text + self.mix_b * z_q + self.mix_c)

    def predict_one(self, text: str, context: str | None = None) -> float | None:
        """Return P(A/H) in [0, 1] for one text, or None below ``min_words`` words."""
        if not self.usable(text):
            return None
        z_text, z_q = self.scores(text)
        return self.combine(z_text, z_q, context_question(context))

    def prior(self, context: str | None = None) -> float:
        """P(A/H) before any evidence: the model applied to a text without words."""
        return self.combine(*self.scores(""), context_question(context))

    def predict(self, texts: list[str] | str, context: str | None = None) -> np.ndarray:
        """Return P(A/H) per text (float64); NaN where a text has < ``min_words`` words."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.full(len(texts), np.nan, dtype=np.float64)
        for i, t in enumerate(texts):
            p = self.predict_one(t, context)
            if p is not None:
                out[i] = p
        return out

    def threshold_for(self, context: str | None) -> float:
        """Return the decision threshold to use with ``predict(..., context)``."""
        q = context_question(context)
        return self.threshold_context if q is not None and q in self.ctx_offsets else self.threshold

    def info(self) -> dict[str, Any]:
        """Return name, version, thresholds and min_words (for ``session.started``)."""
        return {
            "name": self.name,
            "version": self.version,
            "threshold": self.threshold,
            "threshold_context": self.threshold_context,
            "min_words": self.min_words,
        }

    # ---- persistence

    def _arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the ``.npz`` file."""
        s = self.spec
        return {
            "coef": np.asarray(self.coef, dtype=np.float64),
            "q_coef": np.asarray(self.q_coef, dtype=np.float64),
            "q_intercept": np.asarray(self.q_intercept, dtype=np.float64),
            "q_rates": np.asarray(self.q_rates, dtype=np.float64),
            "word_vocab": _encode_vocab(s.word_vocab),
            "char_vocab": _encode_vocab(s.char_vocab),
            "word_idf": np.asarray(s.word_idf, dtype=np.float64),
            "char_idf": np.asarray(s.char_idf, dtype=np.float64),
            "cue_mean": np.asarray(s.cue_mean, dtype=np.float64),
            "cue_std": np.asarray(s.cue_std, dtype=np.float64),
        }

    def _params(self) -> dict[str, Any]:
        """The ``.json`` file's values that change what the model computes or decides."""
        s = self.spec
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "features": {
                "word_ngrams": list(s.word_ngrams),
                "char_ngrams": list(s.char_ngrams) if s.char_ngrams else None,
                "char_weight": s.char_weight,
                "cue_weight": s.cue_weight,
                "cue_names": list(CUE_NAMES),
                "n_word": len(s.word_vocab),
                "n_char": len(s.char_vocab),
                "drop_fillers": s.drop_fillers,
            },
            "intercept": self.intercept,
            "mix": {"a": self.mix_a, "b": self.mix_b, "c": self.mix_c},
            "context": {
                "a": self.ctx_a,
                "offsets": {str(q): v for q, v in sorted(self.ctx_offsets.items())},
            },
            "threshold": self.threshold,
            "threshold_context": self.threshold_context,
            "min_words": self.min_words,
        }

    def fingerprint(self) -> str:
        """SHA-256 of the arrays and parameters (not of the files, whose zip headers
        carry times): the same after a save and load. A TCN records the fingerprint of
        the text model it was trained on (``models.tcn.check_text_model``)."""
        return arrays_digest(self._arrays(), self._params())

    def save(self, out_dir: str | Path, stem: str = DEFAULT_STEM) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` (arrays) and ``<stem>.json`` (config, metadata); return paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        npz_path = out / f"{stem}.npz"
        np.savez_compressed(npz_path, **self._arrays())
        meta = {**self._params(), **self.metadata}
        json_path = out / f"{stem}.json"
        json_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return npz_path, json_path

    @classmethod
    def load(cls, path: str | Path | None = None) -> TextAHModel:
        """Load from a weights dir, a ``.json``/``.npz`` path or stem (default: shipped weights)."""
        meta, json_path, npz_path = read_weight_pair(path, DEFAULT_STEM, "text A/H", FORMAT_VERSION)
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        f = meta["features"]
        spec = FeatureSpec(
            word_ngrams=(int(f["word_ngrams"][0]), int(f["word_ngrams"][1])),
            char_ngrams=(int(f["char_ngrams"][0]), int(f["char_ngrams"][1]))
            if f["char_ngrams"]
            else None,
            char_weight=float(f["char_weight"]),
            cue_weight=float(f["cue_weight"]),
            word_vocab=_decode_vocab(arrays["word_vocab"]),
            char_vocab=_decode_vocab(arrays["char_vocab"]),
            word_idf=arrays["word_idf"],
            char_idf=arrays["char_idf"],
            cue_mean=arrays["cue_mean"],
            cue_std=arrays["cue_std"],
            drop_fillers=bool(f.get("drop_fillers", False)),
        )
        if f["cue_weight"] > 0 and list(f["cue_names"]) != list(CUE_NAMES):
            raise ValueError(f"{json_path}: cue names differ from this code's CUE_LEXICON")
        if len(spec.word_vocab) != f["n_word"] or len(spec.char_vocab) != f["n_char"]:
            raise ValueError(f"{npz_path}: vocabulary sizes do not match {json_path}")
        coef = arrays["coef"]
        if coef.shape != (spec.n_features,):
            raise ValueError(f"{npz_path}: coef shape {coef.shape}, expected {spec.n_features}")
        q_coef = arrays["q_coef"]
        if q_coef.size and q_coef.shape != (len(QUESTIONS), spec.n_features):
            raise ValueError(f"{npz_path}: q_coef shape {q_coef.shape} is inconsistent")
        known = {
            "format",
            "name",
            "version",
            "features",
            "intercept",
            "mix",
            "context",
            "threshold",
            "threshold_context",
            "min_words",
        }
        return cls(
            spec=spec,
            coef=coef,
            intercept=float(meta["intercept"]),
            q_coef=q_coef,
            q_intercept=arrays["q_intercept"],
            q_rates=arrays["q_rates"],
            mix_a=float(meta["mix"]["a"]),
            mix_b=float(meta["mix"]["b"]),
            mix_c=float(meta["mix"]["c"]),
            ctx_a=float(meta["context"]["a"]),
            ctx_offsets={int(q): float(v) for q, v in meta["context"]["offsets"].items()},
            threshold=float(meta["threshold"]),
            threshold_context=float(meta["threshold_context"]),
            min_words=int(meta["min_words"]),
            name=str(meta["name"]),
            version=str(meta["version"]),
            metadata={k: v for k, v in meta.items() if k not in known},
        )


def load(path: str | Path | None = None) -> TextAHModel:
    """Load the text A/H model (default: the shipped weights under ``models/weights/``)."""
    return TextAHModel.load(path)
