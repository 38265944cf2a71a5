"""Simulated word streams: a transcript paced as if spoken, for training and evaluation.

The BAH split files hold only whole-answer transcripts, so the streaming path
(`stream.analysis.Analyzer`, the TCN) is trained and evaluated on transcripts
replayed word by word on a simulated clock. The pacing is label-independent
by construction (it depends on the words and a seed only), so timing carries
no A/H information in simulation; what the TCN can learn from it is only how
the text evidence accumulates over time.

Pacing (`PacingConfig`, defaults documented there):

- one overall speaking rate per answer, uniform in 130-170 words per minute
  *including* pauses (conversational English);
- speech starts after a lead-in of 0.5-1.5 s;
- a pause after a word ending a clause (``,;:`` and dashes: 0.15-0.45 s) or a
  sentence (``.?!``: 0.35-0.9 s);
- the rest of the time is shared between words in proportion to
  ``0.4 + 0.6 * syllables / mean syllables`` times log-normal jitter (sigma
  0.25), of which the last 10 % is the gap to the next word;
- a word becomes visible to the analysis ``commit_delay_s`` (0.5 s) after it
  ends (the ASR's latency), and the stream lasts ``tail_s`` (1 s) after the
  last word becomes visible.

The seed of a video is derived from its id (`seed_for`), so replays are
reproducible and independent of the order of a split file.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from models.prosody import count_syllables
from models.whisper import Word

__all__ = [
    "PacingConfig",
    "DEFAULT_PACING",
    "seed_for",
    "simulate_words",
    "SimStream",
    "simulate_stream",
    "tick_times",
    "early_index",
]

_CLAUSE_END = re.compile(r"[,;:\u2014\u2013-]$")
_SENTENCE_END = re.compile(r"[.?!\u2026]+[\"')\]]*$")


@dataclass(frozen=True)
class PacingConfig:
    """Parameters of the simulated speaking clock (seconds unless noted)."""

    wpm: tuple[float, float] = (130.0, 170.0)  # overall rate per answer, pauses included
    lead_in: tuple[float, float] = (0.5, 1.5)
    clause_pause: tuple[float, float] = (0.15, 0.45)
    sentence_pause: tuple[float, float] = (0.35, 0.9)
    jitter_sigma: float = 0.25  # log-normal jitter of word durations
    min_word_s: float = 0.12
    gap_fraction: float = 0.1  # share of a word's slot left silent before the next word
    commit_delay_s: float = 0.5  # a word is visible this long after it ends
    tail_s: float = 1.0  # the stream lasts this long after the last word is visible


DEFAULT_PACING = PacingConfig()


def seed_for(video_id: str, salt: int = 0) -> int:
    """A stable seed for one video (CRC-32 of its id, plus a salt for extra realisations)."""
    return (zlib.crc32(video_id.encode("utf-8")) + 1_000_003 * salt) % (2**32)


def simulate_words(
    transcript: str, rng: np.random.Generator, cfg: PacingConfig = DEFAULT_PACING
) -> list[Word]:
    """Pace the whitespace-separated words of a transcript on a simulated clock."""
    tokens = transcript.split()
    n = len(tokens)
    if n == 0:
        return []
    wpm = rng.uniform(*cfg.wpm)
    lead = rng.uniform(*cfg.lead_in)
    pauses = np.zeros(n)
    for i, tok in enumerate(tokens[:-1]):
        if _SENTENCE_END.search(tok):
            pauses[i] = rng.uniform(*cfg.sentence_pause)
        elif _CLAUSE_END.search(tok):
            pauses[i] = rng.uniform(*cfg.clause_pause)
    syl = np.array([count_syllables(t) for t in tokens], dtype=np.float64)
    weight = (0.4 + 0.6 * syl / syl.mean()) * np.exp(rng.normal(0.0, cfg.jitter_sigma, n))
    total = n * 60.0 / wpm
    budget = max(total - pauses.sum(), n * cfg.min_word_s)
    slots = np.maximum(weight / weight.sum() * budget, cfg.min_word_s)
    words: list[Word] = []
    t = lead
    for tok, slot, pause in zip(tokens, slots, pauses, strict=True):
        t1 = t + slot * (1.0 - cfg.gap_fraction)
        words.append(Word(tok, round(t, 4), round(t1, 4), 1.0))
        t += slot + pause
    return words


@dataclass
class SimStream:
    """A simulated stream: its words, when each becomes visible, and the tick times."""

    words: list[Word]
    visible_at: np.ndarray  # (n_words,) media time at which each word is visible
    ticks: np.ndarray  # (n_ticks,) media times of the analysis ticks

    def batches(self) -> list[tuple[float, list[Word], bool]]:
        """Per tick: (t, words that became visible since the previous tick, utterance end)."""
        out = []
        j = 0
        n = len(self.words)
        for t in self.ticks:
            k = int(np.searchsorted(self.visible_at, t + 1e-9, side="right"))
            new = self.words[j:k]
            final = bool(new) and (
                k == n or bool(_SENTENCE_END.search(self.words[k - 1].w.strip()))
            )
            out.append((float(t), new, final))
            j = k
        return out


def tick_times(n_ticks: int, hz: float = 10.0) -> np.ndarray:
    """Media times of ticks 1..n (a millisecond grid, as the session schedules them)."""
    tick_ms = int(round(1000 / hz))
    return np.arange(1, n_ticks + 1, dtype=np.int64) * tick_ms / 1000.0


def early_index(n_ticks: int, fraction: float, hz: float = 10.0) -> int:
    """Index of the last tick at or before ``fraction`` of a stream of ``n_ticks`` ticks."""
    ticks = tick_times(n_ticks, hz)
    k = int(np.searchsorted(ticks, fraction * ticks[-1] + 1e-9, side="right")) - 1
    return max(k, 0)


def simulate_stream(
    transcript: str, seed: int, hz: float = 10.0, cfg: PacingConfig = DEFAULT_PACING
) -> SimStream:
    """Simulate one answer: paced words and ticks every ``1/hz`` s (see the module doc)."""
    rng = np.random.default_rng(seed)
    words = simulate_words(transcript, rng, cfg)
    visible = np.array([w.t1 + cfg.commit_delay_s for w in words], dtype=np.float64)
    end = (float(visible[-1]) if words else 1.0) + cfg.tail_s
    n_ticks = max(1, int(math.ceil(end * hz - 1e-9)))
    return SimStream(words=words, visible_at=visible, ticks=tick_times(n_ticks, hz))
