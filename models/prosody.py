"""Voice channel: prosodic features of one speaker, relative to their own running baseline.

`ProsodyTracker` (one per session, stateful) is fed successive contiguous hops of
16 kHz mono float32 audio in media order (e.g. every 0.1 s), the ASR words newly
committed since the last call, and the session's VAD timeline. Per hop it:

- cuts 40 ms frames every 10 ms and computes per frame the RMS level (dBFS) and
  F0 with a YIN-style cumulative-mean-normalised difference function (60–400 Hz,
  FFT autocorrelation, parabolic interpolation) and a voiced/unvoiced decision;
- marks each frame speech/non-speech from the VAD (or, without a VAD, from an
  energy gate) and keeps the last `HISTORY_S` seconds of frames;
- summarises the trailing windows into a `VoiceFeatures` vector (order below),
  with z-scores against adaptive per-speaker baselines (`RunningBaseline`: a
  cumulative mean/variance that becomes an exponential one after `BASELINE_TAU_S`
  of speech; no z-score before `BASELINE_WARMUP_S` of speech, `RATE_WARMUP_S` of
  words for the rates);
- keeps a baseline of the speaker's completed pause lengths (log seconds): a pause
  completes when speech resumes after it, and counts if it lasted `PAUSE_MIN_S` to
  `PAUSE_MAX_S`. It is updated once per pause, so its warm-up (`PAUSE_WARMUP_N`) and
  time constant (`PAUSE_TAU_N`) count pauses, not seconds.

`update` returns a `VoiceFeatures` for every hop once any audio frame has been
analysed (None before that). ``VoiceFeatures.speaking`` says whether the last
`CURRENT_S` seconds had speech. Without speech the speech-dependent entries (level,
pitch, voicing, rates) are NaN, i.e. *masked*, not zero, and only the pause entries
(speech_fraction, pause_s, pause_z, silence_s, silence_z) are real, so a silence is
seen growing. Individual entries can also be unavailable while speaking (unvoiced
window: no F0; too few words: no rate; baseline still warming up: no z):
`VoiceFeatures.mask()` says which; `vector()` fills them with 0.

Feature vector (`FEATURE_NAMES`, float32):

====  ===============  ===================================================================
 idx  name             meaning (windows end at the hop's end time ``t``)
====  ===============  ===================================================================
 0    energy_db        level of the speech frames of the last 0.5 s (mean power, dBFS)
 1    energy_z         z-score of energy_db vs the speaker's baseline
 2    f0_st            median F0 of voiced speech frames, last 0.5 s (semitones re 100 Hz)
 3    f0_z             z-score of f0_st
 4    f0_std_st        pitch variability: std of F0 in semitones over the last 1.5 s
 5    f0_std_z         z-score of f0_std_st
 6    f0_slope_st      F0 trend over the last 0.5 s (semitones per second; > 0 rising)
 7    voicing_ratio    voiced / speech frames over the last 1.0 s
 8    voicing_z        z-score of voicing_ratio
 9    speech_fraction  speech / all frames over the last 1.0 s
 10   pause_s          length of the most recent gap between two speech runs, if it ended in
                       the last 5 s (0: none; capped at 5 s)
 11   pause_z          z-score of log(pause_s) vs the speaker's earlier pauses (the baseline
                       as it was when this pause completed; NaN: no pause, one under 0.15 s or
                       over 5 s, or fewer than 5 pauses so far)
 12   silence_s        time since speech last ended (0 while speaking; capped at 5 s)
 13   silence_z        z-score of log(silence_s) vs the pause baseline: the ongoing silence
                       against the speaker's pauses (NaN under 0.15 s, before any speech, or
                       fewer than 5 pauses so far)
 14   word_rate        ASR words per second of talking time over the latest 4 s of words
 15   word_rate_z      z-score of word_rate
 16   syl_rate         syllables (spelling estimate) per second of talking time, same words
 17   syl_rate_z       z-score of syl_rate
====  ===============  ===================================================================

Entries 0-8 and 14-17 need speech in the last 0.5 s (``speaking``); 9-13 are real on
every hop (pause_z and silence_z once the pause baseline is ready). Pauses are gaps
between speech runs; with a VAD its hold-over is inside the runs, so a pause reads
about 0.25 s shorter than the silence heard and shorter silences do not split a run.

Talking time for the rates is the span of the words minus the part of every
inter-word gap beyond `RATE_MAX_GAP_S`, so pauses do not read as slow speech.
`VoiceFeatures.rate_span` says which speech the rates were measured on (the first
word's start, the last word's end): words arrive with the ASR's commit lag, so the
rates describe speech that ended well before ``t``.
Not thread-safe: call from one thread, in media order.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from models.whisper import Word

__all__ = [
    "FEATURE_NAMES",
    "N_FEATURES",
    "PAUSE_FEATURES",
    "SpeechTimeline",
    "RunningBaseline",
    "VoiceFeatures",
    "ProsodyTracker",
    "estimate_f0",
    "count_syllables",
    "hz_to_semitones",
    "semitones_to_hz",
]

SAMPLE_RATE = 16000
FRAME_S = 0.040  # analysis frame: holds >= 2 periods at 60 Hz for the YIN lag search
STEP_S = 0.010  # frame step (100 frames/s)
FRAME_LEN = int(SAMPLE_RATE * FRAME_S)
STEP_LEN = int(SAMPLE_RATE * STEP_S)
F0_MIN_HZ = 60.0
F0_MAX_HZ = 400.0
TAU_MIN = int(SAMPLE_RATE / F0_MAX_HZ)  # 40 samples
TAU_MAX = int(math.ceil(SAMPLE_RATE / F0_MIN_HZ))  # 267 samples
TAU_LOW = TAU_MIN // 2  # lags searched below the range, to refuse F0 above it (800 Hz)
YIN_WIN = FRAME_LEN - TAU_MAX  # difference-function integration window (373 samples, 23 ms)
_NFFT = 1024  # >= FRAME_LEN + TAU_MAX: no circular wrap into the lags we read
# YIN's absolute threshold: the first CMNDF dip below it is the period (the paper uses
# 0.1-0.15 on clean speech; 0.2 keeps breathy and noisy microphone speech).
YIN_PICK = 0.2
# A frame is voiced when its best CMNDF dip is below this: aperiodic frames (fricatives,
# noise) stay near 1, voiced speech is well below 0.35.
YIN_VOICED = 0.35
# Frames quieter than this are never voiced (below a typical 16-bit microphone noise floor).
SILENCE_DB = -55.0
# Without a VAD, frames louder than this count as speech (room tone is usually < -50 dBFS).
ENERGY_GATE_DB = -45.0
F0_REF_HZ = 100.0  # semitone reference

CURRENT_S = 0.5  # window of the "current" level/pitch; no speech in it -> masked update
# Level needs this many speech frames in the current window (0.2 s): the last few quiet
# frames at the end of an utterance do not make a level.
MIN_LEVEL_FRAMES = 20
PITCH_VAR_S = 1.5  # pitch variability window: a few syllables
VOICING_S = 1.0
HISTORY_S = 5.0  # frames kept (pause lookback)
F0_OUTLIER_ST = 6.0  # F0 frames this far from the window median are octave errors
RATE_WINDOW_S = 4.0  # words whose end lies in the latest 4 s of words (5+ words at 80 wpm)
RATE_MIN_WORDS = 3
RATE_MIN_TALK_S = 1.0
RATE_MAX_GAP_S = 0.3  # inter-word silence beyond this is a pause, not slow articulation
# No rate when the newest word ended this long before the time up to which the words are
# complete (the ASR's horizon, `update(words_until=...)`): the speaker stopped talking. Measured
# from the horizon, not the audio, so a commit lag longer than this does not hide the rate.
RATE_STALE_S = 3.0

BASELINE_WARMUP_S = 3.0  # "after a few seconds of speech" the z-scores start
# Rates are measured over 4 s of words, so the first windows overlap almost entirely:
# 6 s of words give the rate baselines a spread from more than one window.
RATE_WARMUP_S = 6.0
# A speaker's local (phrase-level) speech rate varies by ~15-25 % (coefficient of
# variation) in fluent speech: the rate std is never taken below 20 % of the mean rate.
RATE_REL_STD_FLOOR = 0.2
BASELINE_TAU_S = 60.0  # cumulative mean for the first minute of speech, then an EMA of 1 min
BASELINE_CLIP_Z = 3.0  # after warm-up, outliers update the baseline as if at +-3 std
# Pauses: a gap between speech runs counts as a pause of the speaker from 0.15 s (shorter
# gaps are within a phrase) up to 5 s (longer is a turn: the other side spoke, as
# `models.voice_cues.MAX_HESITATION_PAUSE_S`; also the longest silence_s reported).
PAUSE_MIN_S = 0.15
PAUSE_MAX_S = HISTORY_S
# The pause baseline counts pauses, not seconds: z-scores after 5 pauses, a cumulative
# mean for the first 50 pauses, then an EMA over ~50 pauses. Through the VAD, read speech
# has about one pause every 8 s (the LibriVox test clip: 3 in 25 s; spontaneous, hesitant
# speech has more), so the z-scores may take a minute of talking to appear.
PAUSE_WARMUP_N = 5
PAUSE_TAU_N = 50
# SD floor of log pause length: a speaker whose pauses are all alike (synthetic speech)
# gets z = 1 for a pause 28 % longer (e^0.25) than usual, z = 2.8 for a twice as long one.
PAUSE_LOG_STD_FLOOR = 0.25

FEATURE_NAMES: tuple[str, ...] = (
    "energy_db",
    "energy_z",
    "f0_st",
    "f0_z",
    "f0_std_st",
    "f0_std_z",
    "f0_slope_st",
    "voicing_ratio",
    "voicing_z",
    "speech_fraction",
    "pause_s",
    "pause_z",
    "silence_s",
    "silence_z",
    "word_rate",
    "word_rate_z",
    "syl_rate",
    "syl_rate_z",
)
N_FEATURES = len(FEATURE_NAMES)
#: The entries that are real without speech too (a silence is seen growing); every other
#: entry needs speech in the last `CURRENT_S` (``VoiceFeatures.speaking``).
PAUSE_FEATURES: tuple[str, ...] = (
    "speech_fraction",
    "pause_s",
    "pause_z",
    "silence_s",
    "silence_z",
)
_IDX = {n: i for i, n in enumerate(FEATURE_NAMES)}

# Smallest standard deviation used for a z-score: the natural within-speaker spread
# below which a difference is not perceptible (a steady synthetic signal has none).
_STD_FLOOR = {
    "energy_db": 2.0,  # dB: loudness differences under ~2 dB are hardly heard
    "f0_st": 1.0,  # semitone
    "f0_std_st": 0.5,
    "voicing_ratio": 0.05,
    "word_rate": 0.3,  # words/s
    "syl_rate": 0.5,  # syllables/s
}


class SpeechTimeline(Protocol):
    """What the voice code needs from a VAD timeline (`stream.vad.VadTimeline` has it)."""

    @property
    def end_time(self) -> float: ...

    def segments(self, t0: float, t1: float) -> list[tuple[float, float]]: ...

    def lost(self, t0: float, t1: float) -> float:
        """Seconds of (t0, t1) whose audio was missing (never arrived)."""
        ...


def hz_to_semitones(f0: np.ndarray | float) -> np.ndarray | float:
    """F0 in Hz to semitones relative to 100 Hz."""
    return 12.0 * np.log2(np.asarray(f0, dtype=np.float64) / F0_REF_HZ)


def semitones_to_hz(st: np.ndarray | float) -> np.ndarray | float:
    """Semitones relative to 100 Hz back to Hz."""
    return F0_REF_HZ * 2.0 ** (np.asarray(st, dtype=np.float64) / 12.0)


_VOWELS = re.compile(r"[aeiouy]+")


@lru_cache(maxsize=4096)
def count_syllables(word: str) -> int:
    """Rough syllable count of an English word from its spelling (vowel groups)."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 1  # numbers, symbols: at least one syllable was spoken
    n = len(_VOWELS.findall(w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ye")):
        n -= 1  # silent final e ("make", "time")
    return max(1, n)


def estimate_f0(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YIN-style F0 of frames (n, FRAME_LEN): (rms_db, f0_hz with NaN if unvoiced, voiced)."""
    x = np.asarray(frames, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    sq = x * x
    rms_db = 10.0 * np.log10(sq.mean(axis=1) + 1e-12)
    n = x.shape[0]
    # r[tau] = sum_{j < YIN_WIN} x[j] x[j + tau], by FFT.
    spec = np.fft.rfft(x, _NFFT)
    spec_w = np.fft.rfft(x[:, :YIN_WIN], _NFFT)
    r = np.fft.irfft(np.conj(spec_w) * spec, _NFFT)[:, : TAU_MAX + 1]
    cs = np.concatenate([np.zeros((n, 1)), np.cumsum(sq, axis=1)], axis=1)
    taus = np.arange(TAU_MAX + 1)
    energy_tau = cs[:, YIN_WIN + taus] - cs[:, taus]
    d = cs[:, YIN_WIN : YIN_WIN + 1] + energy_tau - 2.0 * r
    d[:, 0] = 0.0
    np.maximum(d, 0.0, out=d)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmndf = np.ones_like(d)
    cmndf[:, 1:] = d[:, 1:] * taus[1:] / np.maximum(cum, 1e-12)
    dm = cmndf[:, TAU_MIN : TAU_MAX + 1]
    below = dm < YIN_PICK
    has = below.any(axis=1)
    first = np.argmax(below, axis=1)
    rising = dm[:, 1:] >= dm[:, :-1]
    # A dip below the threshold that bottoms out at a lag under the range is a period
    # above F0_MAX_HZ (whose double period would otherwise read an octave low): unvoiced.
    low = cmndf[:, TAU_LOW : TAU_MIN + 1]
    too_high = ((low[:, :-1] < YIN_PICK) & (low[:, 1:] >= low[:, :-1])).any(axis=1)
    m = dm.shape[1]
    f0 = np.full(n, np.nan)
    voiced = np.zeros(n, dtype=bool)
    for k in range(n):
        if has[k]:
            i0 = int(first[k])
            rise = rising[k, i0:]
            i = i0 + int(np.argmax(rise)) if rise.any() else m - 1
        else:
            i = int(np.argmin(dm[k]))
        best = dm[k, i]
        if best >= YIN_VOICED or rms_db[k] <= SILENCE_DB or too_high[k]:
            continue
        if i == m - 1 and dm[k, i] < dm[k, i - 1]:
            continue  # still falling at the longest lag: a period below F0_MIN_HZ
        shift = 0.0
        if 0 < i < m - 1:
            a, b, c = dm[k, i - 1], best, dm[k, i + 1]
            den = a - 2.0 * b + c
            if den > 1e-12:
                shift = min(0.5, max(-0.5, 0.5 * (a - c) / den))  # the vertex lies between
        f0[k] = SAMPLE_RATE / (TAU_MIN + i + shift)
        voiced[k] = True
    return rms_db, f0, voiced


class RunningBaseline:
    """Adaptive mean/variance of one feature: cumulative, then exponential after ``tau_s``.

    ``weight``, ``warmup_s`` and ``tau_s`` are in the unit of ``update``'s ``dt``: seconds
    for the level, pitch, voicing and rate baselines, pauses for the pause baseline (dt 1).
    """

    def __init__(
        self,
        std_floor: float,
        warmup_s: float = BASELINE_WARMUP_S,
        tau_s: float = BASELINE_TAU_S,
        rel_floor: float = 0.0,
    ) -> None:
        self.std_floor = std_floor
        self.rel_floor = rel_floor
        self.warmup_s = warmup_s
        self.tau_s = tau_s
        self.weight = 0.0  # seconds of data seen (pauses, for the pause baseline)
        self.mean = 0.0
        self.var = 0.0

    @property
    def ready(self) -> bool:
        """Whether enough data was seen for z-scores."""
        return self.weight >= self.warmup_s - 1e-9

    @property
    def std(self) -> float:
        """Baseline standard deviation, floored."""
        return max(math.sqrt(self.var), self.std_floor, self.rel_floor * abs(self.mean))

    def z(self, x: float) -> float:
        """z-score of ``x`` (NaN while warming up or if ``x`` is NaN)."""
        if not self.ready or not math.isfinite(x):
            return math.nan
        return (x - self.mean) / self.std

    def update(self, x: float, dt: float) -> None:
        """Add ``dt`` seconds' worth of observation ``x`` (NaN is ignored)."""
        if not math.isfinite(x) or dt <= 0:
            return
        if self.ready:
            lim = BASELINE_CLIP_Z * self.std
            x = min(max(x, self.mean - lim), self.mean + lim)
        self.weight += dt
        alpha = dt / min(self.weight, self.tau_s)
        delta = x - self.mean
        self.mean += alpha * delta
        self.var = (1.0 - alpha) * (self.var + alpha * delta * delta)


@dataclass(frozen=True)
class VoiceFeatures:
    """Voice features at media time ``t``; ``values`` is float32 with NaN where unavailable.
    ``rate_span``: media times (first word t0, last word t1) of the words the rates were
    measured on (None without a rate). ``speaking``: the last `CURRENT_S` had speech; if
    not, only the pause entries are real (the others NaN, ``rate_span`` None)."""

    t: float
    values: np.ndarray
    rate_span: tuple[float, float] | None = None
    speaking: bool = True

    def get(self, name: str) -> float:
        """One feature by name (NaN if unavailable)."""
        return float(self.values[_IDX[name]])

    def vector(self) -> np.ndarray:
        """Features in `FEATURE_NAMES` order, float32, unavailable entries set to 0."""
        return np.nan_to_num(self.values, nan=0.0).astype(np.float32)

    def mask(self) -> np.ndarray:
        """Float32 1/0 per feature: 1 where the entry of `vector` is a real value."""
        return np.isfinite(self.values).astype(np.float32)

    def as_dict(self) -> dict[str, float | None]:
        """Name -> value (None where unavailable)."""
        return {
            n: (float(v) if np.isfinite(v) else None)
            for n, v in zip(FEATURE_NAMES, self.values, strict=True)
        }


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index runs of True in a boolean array."""
    if mask.size == 0:
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


class ProsodyTracker:
    """Per-session prosody: feed contiguous audio hops (+ new words, + VAD) in media order."""

    def __init__(self, t0: float = 0.0, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"ProsodyTracker needs {SAMPLE_RATE} Hz audio, got {sample_rate}")
        self._i0 = int(round(t0 * SAMPLE_RATE))  # absolute index of sample 0 of the stream
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = self._i0  # absolute index of _buf[0]
        self._next = self._i0  # absolute start index of the next frame to analyse
        n_hist = int(round(HISTORY_S / STEP_S))
        self._hist_len = n_hist
        self._times = np.zeros(0)  # frame centre times
        self._db = np.zeros(0)
        self._f0_st = np.zeros(0)
        self._voiced = np.zeros(0, dtype=bool)
        self._speech = np.zeros(0, dtype=bool)
        self._words: deque[Word] = deque()
        self._last_word_end: float | None = None
        self._t = t0
        self._words_until = t0  # committed words are complete up to here
        self.baselines = {name: RunningBaseline(floor) for name, floor in _STD_FLOOR.items()}
        for name in ("word_rate", "syl_rate"):
            self.baselines[name] = RunningBaseline(
                _STD_FLOOR[name], warmup_s=RATE_WARMUP_S, rel_floor=RATE_REL_STD_FLOOR
            )
        # log pause length, one update per completed pause (weight counts pauses)
        self.baselines["pause"] = RunningBaseline(
            PAUSE_LOG_STD_FLOOR, warmup_s=PAUSE_WARMUP_N, tau_s=PAUSE_TAU_N
        )
        self._n_frames = 0  # frames analysed since the start
        self._speech_end: int | None = None  # frame number just past the last speech frame
        # the latest completed gap between speech runs: (length s, media time it ended, z)
        self._pause: tuple[float, float, float] | None = None

    @property
    def t(self) -> float:
        """Media time just after the last sample fed."""
        return self._t

    def add_words(self, words: Iterable[Word]) -> None:
        """Add newly committed ASR words (in order); kept while inside the rate window."""
        for w in words:
            self._words.append(w)
        if self._words:
            newest = self._words[-1].t1
            while self._words and self._words[0].t1 < newest - RATE_WINDOW_S:
                self._words.popleft()

    def frame_track(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Held frames (last `HISTORY_S`): centre times, RMS dBFS, F0 Hz (NaN unvoiced), speech."""
        return (
            self._times.copy(),
            self._db.copy(),
            np.asarray(semitones_to_hz(self._f0_st)),
            self._speech.copy(),
        )

    def update(
        self,
        samples: np.ndarray,
        words: Sequence[Word] = (),
        vad: SpeechTimeline | None = None,
        words_until: float | None = None,
    ) -> VoiceFeatures | None:
        """Feed the next contiguous samples; features at their end time (see
        ``VoiceFeatures.speaking``), None while no audio frame has been analysed yet.
        ``words``: newly committed words; ``words_until``: the media time up to which the
        committed words are complete (default: the end of the samples)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        hop_s = x.size / SAMPLE_RATE
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        buf_end = self._buf_start + self._buf.size
        self._t = buf_end / SAMPLE_RATE
        self._words_until = self._t if words_until is None else min(self._t, words_until)
        if words:
            self.add_words(words)
        n_new = max(0, (buf_end - self._next - FRAME_LEN) // STEP_LEN + 1)
        if n_new:
            off = self._next - self._buf_start
            view = np.lib.stride_tricks.sliding_window_view(self._buf[off:], FRAME_LEN)
            frames = view[: n_new * STEP_LEN : STEP_LEN]
            db, f0, voiced = estimate_f0(frames)
            starts = self._next + STEP_LEN * np.arange(n_new)
            times = (starts + FRAME_LEN / 2) / SAMPLE_RATE
            speech = self._speech_flags(times, db, vad)
            self._track_pauses(times, speech, vad)
            self._append(times, db, np.asarray(hz_to_semitones(f0)), voiced & speech, speech)
            self._next += n_new * STEP_LEN
        # keep only what the next frame needs
        drop = self._next - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = self._next
        return self._features(hop_s, bool(words))

    # ------------------------------------------------------------------ internals

    def _speech_flags(
        self, times: np.ndarray, db: np.ndarray, vad: SpeechTimeline | None
    ) -> np.ndarray:
        if vad is None:
            return db > ENERGY_GATE_DB
        segs = vad.segments(float(times[0]) - 0.05, float(times[-1]) + 0.05)
        flags = np.zeros(times.size, dtype=bool)
        for s, e in segs:
            flags |= (times >= s) & (times < e)
        # frames past what the VAD has decided keep the last decided state
        vad_end = vad.end_time
        late = times >= vad_end
        if late.any():
            prev = bool(self._speech[-1]) if self._speech.size else False
            decided = flags[~late]
            flags[late] = bool(decided[-1]) if decided.size else prev
        return flags

    def _track_pauses(
        self, times: np.ndarray, speech: np.ndarray, vad: SpeechTimeline | None
    ) -> None:
        """Complete the pauses that the new frames' speech flags end (before `_append`).
        Audio that never arrived (lost packets) inside a silence is not the speaker's
        pause: a pause is the silence heard."""
        prev = bool(self._speech[-1]) if self._speech.size else False
        for s, e in _runs(speech):
            if (s > 0 or not prev) and self._speech_end is not None:
                t_on = float(times[s])
                gap_s = (self._n_frames + s - self._speech_end) * STEP_S
                if vad is not None:
                    gap_s = max(0.0, gap_s - vad.lost(t_on - gap_s, t_on))
                z = math.nan
                if PAUSE_MIN_S - 1e-9 <= gap_s <= PAUSE_MAX_S + 1e-9:
                    # vs the earlier pauses, then into the baseline: one update per pause
                    base = self.baselines["pause"]
                    z = base.z(math.log(gap_s))
                    base.update(math.log(gap_s), 1.0)
                self._pause = (min(gap_s, PAUSE_MAX_S), t_on, z)
            self._speech_end = self._n_frames + e
        self._n_frames += speech.size

    def _append(
        self,
        times: np.ndarray,
        db: np.ndarray,
        f0_st: np.ndarray,
        voiced: np.ndarray,
        speech: np.ndarray,
    ) -> None:
        h = self._hist_len
        self._times = np.concatenate([self._times, times])[-h:]
        self._db = np.concatenate([self._db, db])[-h:]
        self._f0_st = np.concatenate([self._f0_st, f0_st])[-h:]
        self._voiced = np.concatenate([self._voiced, voiced])[-h:]
        self._speech = np.concatenate([self._speech, speech])[-h:]

    def _last(self, seconds: float) -> slice:
        n = min(self._times.size, int(round(seconds / STEP_S)))
        return slice(self._times.size - n, self._times.size)

    def _rates(self) -> tuple[float, float, tuple[float, float] | None]:
        """Word and syllable rates of the rate window, and its span (NaN, NaN, None: none)."""
        none = math.nan, math.nan, None
        if not self._words or self._words_until - self._words[-1].t1 > RATE_STALE_S:
            return none
        ws = list(self._words)
        if len(ws) < RATE_MIN_WORDS:
            return none
        talk = ws[-1].t1 - ws[0].t0
        for a, b in zip(ws[:-1], ws[1:], strict=True):
            talk -= max(0.0, b.t0 - a.t1 - RATE_MAX_GAP_S)
        if talk < RATE_MIN_TALK_S:
            return none
        syl = sum(count_syllables(w.w) for w in ws)
        return len(ws) / talk, syl / talk, (float(ws[0].t0), float(ws[-1].t1))

    def _features(self, hop_s: float, new_words: bool) -> VoiceFeatures | None:
        t = self._t
        speech = self._speech
        if not speech.size:
            return None  # no audio frame analysed yet
        v = np.full(N_FEATURES, np.nan)
        b = self.baselines
        # pauses: on every hop, with or without speech now
        pause, pause_z = 0.0, math.nan
        if self._pause is not None and t - self._pause[1] < HISTORY_S:
            pause, _, pause_z = self._pause
        silence = 0.0
        if not speech[-1]:
            since = self._n_frames - (self._speech_end or 0)
            silence = min(since * STEP_S, HISTORY_S)
        silence_z = math.nan
        if self._speech_end is not None and silence >= PAUSE_MIN_S - 1e-9:
            silence_z = b["pause"].z(math.log(silence))
        vs = self._last(VOICING_S)
        v[_IDX["speech_fraction"]] = float(speech[vs].mean())
        v[_IDX["pause_s"]] = pause
        v[_IDX["pause_z"]] = pause_z
        v[_IDX["silence_s"]] = silence
        v[_IDX["silence_z"]] = silence_z
        wr, sr, span = self._rates()
        wr_z, sr_z = b["word_rate"].z(wr), b["syl_rate"].z(sr)
        if new_words and self._words:
            # one rate observation per batch of new words, weighted by the speech it adds
            newest = self._words[-1].t1
            prev = self._last_word_end if self._last_word_end is not None else self._words[0].t0
            dt_words = min(max(0.0, newest - prev), RATE_WINDOW_S)
            b["word_rate"].update(wr, dt_words)
            b["syl_rate"].update(sr, dt_words)
            self._last_word_end = newest

        cur = self._last(CURRENT_S)
        # VAD hangover can cover digital silence: frames under the noise floor are not speech
        sp_cur = speech[cur] & (self._db[cur] > SILENCE_DB)
        if not sp_cur.any():
            # no speech now: level, pitch, voicing and rates masked (and no baseline update)
            return VoiceFeatures(t=t, values=v.astype(np.float32), speaking=False)
        db_cur = self._db[cur][sp_cur]
        energy_db = math.nan
        if db_cur.size >= MIN_LEVEL_FRAMES:
            energy_db = float(10.0 * np.log10(np.mean(10.0 ** (db_cur / 10.0))))
        voiced_cur = self._voiced[cur]
        f0_cur = self._f0_st[cur][voiced_cur]
        f0_st = float(np.median(f0_cur)) if f0_cur.size >= 3 else math.nan
        slope = math.nan
        if f0_cur.size >= 5:
            tt = self._times[cur][voiced_cur]
            keep = np.abs(f0_cur - np.median(f0_cur)) <= F0_OUTLIER_ST
            if keep.sum() >= 5 and np.ptp(tt[keep]) >= 0.2:
                tk, fk = tt[keep] - tt[keep].mean(), f0_cur[keep]
                slope = float(np.dot(tk, fk - fk.mean()) / np.dot(tk, tk))  # least squares
        var = self._last(PITCH_VAR_S)
        f0_var = self._f0_st[var][self._voiced[var]]
        f0_std = math.nan
        if f0_var.size >= 10:
            f0_var = f0_var[np.abs(f0_var - np.median(f0_var)) <= F0_OUTLIER_ST]
            if f0_var.size >= 10:
                f0_std = float(np.std(f0_var))
        n_sp = int(speech[vs].sum())
        voicing = float(self._voiced[vs].sum()) / n_sp if n_sp >= 5 else math.nan

        current = {
            "energy_db": energy_db,
            "f0_st": f0_st,
            "f0_std_st": f0_std,
            "voicing_ratio": voicing,
        }
        for name, x in current.items():
            v[_IDX[name]] = x
            v[_IDX[name] + 1] = b[name].z(x)
            b[name].update(x, hop_s)
        v[_IDX["f0_slope_st"]] = slope
        v[_IDX["word_rate"]] = wr
        v[_IDX["word_rate_z"]] = wr_z
        v[_IDX["syl_rate"]] = sr
        v[_IDX["syl_rate_z"]] = sr_z
        return VoiceFeatures(t=t, values=v.astype(np.float32), rate_span=span)
