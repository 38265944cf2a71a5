"""Incremental, VAD-gated Whisper ASR with a LocalAgreement-2 commit policy.

The session calls `IncrementalASR.step(t)` for t on a fixed media-time grid
(``hop_s``, ``2*hop_s``, ...) from one executor thread, in order, once the ring
holds audio up to t and VAD has decided up to t - 0.03; `flush` at the end.
Each step that has speech decodes one short window of the current utterance
(`models.whisper.decode_window`: greedy, encoder over the window plus >= 2 s of
silence padded to >= 6 s instead of Whisper's 30 s, word times by alignment):

- **Window.** From the utterance start (first VAD speech minus ``onset_pad_s``)
  to ``t``. Committed words inside the window are given to Whisper as a forced
  prefix, so it continues after them with their audio as context. Once more than
  ``keep_committed_s`` of committed audio is in the window, the window start moves
  up to a committed word boundary and those words join the text prompt.
- **Prompt.** A disfluent style prompt (`FILLER_PROMPT`: keeps "um"/"uh") followed
  by the last ``prompt_words`` committed words that are no longer in the window.
- **Commit rule (LocalAgreement-2).** The longest common prefix (on normalised
  text) of this step's hypothesis and the previous step's is committed, except
  words ending within ``edge_s`` of ``t`` (a word still being spoken, e.g. "cold"
  of "cold-hearted", often agrees twice). Words ending ``force_commit_s`` before
  ``t`` are committed even without agreement (bounded latency).
- **Finalisation.** When VAD shows no speech for ``end_pause_s`` after the last
  speech, the utterance is decoded once more up to the pause (+ ``tail_pad_s``)
  and every word is committed (``final=True``), none ending after the speech;
  then the ASR idles until VAD shows at least ``min_speech_s`` of speech again.
  A pause of ``step_pause_s`` (0.8 s, which the live 0.4 s hop always sees) that
  lies wholly between two steps (`analyze`'s 2 s hop) ends the utterance the same
  way at the next step. No word starts before its utterance's first VAD speech.
- **Silence is never decoded.** Idle steps only read VAD flags. Noise that VAD
  lets through is caught by an unprompted no-speech check until the utterance
  has committed words; Whisper's loops and repeats at the end of the audio are
  cut from the hypothesis (`models.whisper.cut_collapsed_tail`).
- **Early end.** A decode left with no new words (not judged no speech) keeps the
  previous step's hypothesis: tentative (it does not count as agreement), committed by
  the age rule or when the utterance ends. Greedy Whisper sometimes emits end-of-text
  first after a forced prefix although the steps before heard words after it (also
  covered: a tail cut whole as a loop). The price: such a decode cannot take back a
  wrong tentative tail; words starting after the speech are still dropped at the end,
  and a window judged to hold no speech still empties the hypothesis.

Everything depends only on the audio and VAD up to ``t``: no wall clock, no
threads, so live and offline runs commit the same words at the same steps
(given the same model, ``cpu_threads`` and options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from models.whisper import FILLER_PROMPT, Word, decode_window

from .buffers import AudioRing
from .vad import VadTimeline

__all__ = ["ASRUpdate", "IncrementalASR", "Word"]

_NORM_RE = re.compile(r"[^a-z0-9']+")


def _loop_period(words: list[str], max_unit: int = 3) -> int | None:
    """The length of the word or phrase (up to ``max_unit`` words) that ``words`` are
    nothing but, said at least twice over (the last copy may be cut short); None if they
    are not such a loop."""
    keys = [_norm(w) for w in words]
    if not all(keys):
        return None
    for n in range(1, max_unit + 1):
        if len(keys) >= 2 * n and all(k == keys[i % n] for i, k in enumerate(keys)):
            return n
    return None


def _norm(w: str) -> str:
    """Comparison key of a word: lowercase alphanumerics (punctuation ignored)."""
    return _NORM_RE.sub("", w.lower())


@dataclass
class ASRUpdate:
    """What one step changed: newly committed words, the tentative tail, end of utterance."""

    committed: list[Word]  # words newly committed by this step, times in media seconds
    tentative: list[Word]  # the current uncommitted hypothesis tail (media times)
    final: bool  # an utterance just ended (end of speech): all its words are committed
    t: float = 0.0  # media time of the step
    decoded: bool = False  # whether this step ran the model
    window: tuple[float, float] = (0.0, 0.0)  # media span decoded (if decoded)


@dataclass
class ASROptions:
    """Tunable policy parameters (defaults measured on the LibriVox clip, see benchmarks)."""

    hop_s: float = 0.4
    onset_pad_s: float = 0.2  # audio kept before the first VAD speech frame
    end_pause_s: float = 0.4  # silence after speech that ends an utterance
    # A pause between two steps ends the utterance from this long: one the live 0.4 s hop
    # always sees (end_pause_s + hop), so that hop finalises as without the rule.
    step_pause_s: float = 0.8
    tail_pad_s: float = 0.25  # audio kept after the last speech frame when finalising
    min_speech_s: float = 0.3  # VAD speech (hangover included) that starts an utterance
    keep_committed_s: float = 3.0  # committed audio kept in the window as forced prefix
    max_window_s: float = 12.0  # hard cap on the decoded window
    edge_s: float = 0.3  # words ending this close to t are never committed by agreement
    force_commit_s: float = 2.0  # hypothesis words ending this long before t are committed
    pad_s: float = 2.0  # digital silence appended to the window before the encoder ...
    min_input_s: float = 6.0  # ... and more, up to this encoder input length (fewer loops)
    prompt_words: int = 20  # committed words (before the window) used as prompt
    filler_prompt: str = FILLER_PROMPT  # style prompt; "" disables it
    max_new_tokens: int = 64
    tokens_per_s: float = 6.0  # cap on new tokens per second of not-yet-committed audio
    no_speech_threshold: float = 0.6  # with a low logprob, the window is treated as no speech
    logprob_threshold: float = -1.0
    # Until an utterance has committed words, a plain (unprompted) no-speech probability above
    # this marks VAD-passed noise: speech, fillers alone included, measured <= 0.8; noise >= 0.9.
    plain_no_speech_threshold: float = 0.85


@dataclass
class _Utterance:
    start: float  # media time of the window start
    onset: float = 0.0  # media time of its first VAD speech (no word starts before it)
    in_window: list[Word] = field(default_factory=list)  # committed words inside the window
    prev_hyp: list[Word] = field(default_factory=list)  # last step's uncommitted hypothesis


class IncrementalASR:
    """Streaming Whisper over an AudioRing, VAD-gated, committing by LocalAgreement-2."""

    def __init__(self, model: Any, ring: AudioRing, vad: VadTimeline, **options: Any) -> None:
        """Bind to the session's ring and VAD; ``options`` override `ASROptions` fields."""
        self.model = model
        self.ring = ring
        self.vad = vad
        self.opts = ASROptions(**options)
        self.hop_s = self.opts.hop_s
        self.committed_words: list[Word] = []
        self.decode_calls = 0  # model invocations (silence must not add any)
        self._utt: _Utterance | None = None
        self._idle_from = 0.0  # media time from which to look for the next speech onset
        self._last_tentative: list[str] = []

    # ------------------------------------------------------------------ public

    def step(self, t: float) -> ASRUpdate | None:
        """Advance to media time ``t``; None when nothing changed (e.g. silence)."""
        if self._utt is None:
            self._utt = self._new_utterance(t)
            if self._utt is None:
                return self._report(t, [], [], final=False, decoded=False)
        utt = self._utt
        pause = self._pause_within(utt, t)
        if pause is not None:
            # Speech went on after a pause that ended the utterance between two steps (a
            # hop longer than the pause, as `analyze`'s 2 s): end it there, as a step in the
            # pause would have; the next utterance starts at the next step.
            end = pause + self.opts.tail_pad_s
            return self._finalise(t, end, pause, idle_from=pause + self.opts.end_pause_s)
        last_speech = self.vad.last_speech_end(t)
        if (
            last_speech is not None
            and last_speech > utt.start
            and t - last_speech >= self.opts.end_pause_s
        ):
            return self._finalise(t, min(t, last_speech + self.opts.tail_pad_s), last_speech)
        if last_speech is None or last_speech <= utt.start:
            # VAD no longer shows speech in the window (e.g. a blip): drop it undecoded.
            if t - utt.start >= self.opts.end_pause_s:
                self._close(t)
            return self._report(t, [], [], final=False, decoded=False)

        window = self._window(utt, t)
        hyp, heard = self._hypothesis(utt, t)
        n = 0
        while (
            heard
            and n < len(hyp)
            and hyp[n].t1 <= t - self.opts.edge_s
            and n < len(utt.prev_hyp)
            and _norm(hyp[n].w) == _norm(utt.prev_hyp[n].w)
        ):
            n += 1
        while n < len(hyp) and hyp[n].t1 <= t - self.opts.force_commit_s:
            n += 1
        new = self._commit(hyp[:n])
        utt.in_window.extend(new)
        utt.prev_hyp = hyp[n:]
        self._trim(utt, t)
        return self._report(t, new, utt.prev_hyp, final=False, decoded=True, window=window)

    def flush(self, t: float) -> ASRUpdate | None:
        """End of stream at media time ``t``: decode and commit whatever is left (each
        utterance on its own, as the steps would have)."""
        t = min(t, self.ring.end_time)
        committed: list[Word] = []
        last: ASRUpdate | None = None
        while True:
            if self._utt is None:
                self._utt = self._new_utterance(t)
                if self._utt is None:
                    break
            pause = self._pause_within(self._utt, t)
            if pause is None:
                last_speech = self.vad.last_speech_end(t)
                last = self._finalise(t, t, t if last_speech is None else last_speech)
                if last is not None:
                    committed += last.committed
                break
            end = pause + self.opts.tail_pad_s
            last = self._finalise(t, end, pause, idle_from=pause + self.opts.end_pause_s)
            if last is not None:
                committed += last.committed
        if last is None:
            return self._report(t, [], [], final=False, decoded=False)
        last.committed = committed
        return last

    @property
    def text(self) -> str:
        """The committed transcript as one string."""
        return " ".join(w.w for w in self.committed_words)

    # ----------------------------------------------------------------- helpers

    def _new_utterance(self, t: float) -> _Utterance | None:
        """The utterance that starts since idle, if VAD shows enough speech."""
        start = self._speech_onset(t)
        if start is None:
            return None
        segs = self.vad.segments(start, t)
        return _Utterance(start=start, onset=segs[0][0] if segs else start)

    def _pause_within(self, utt: _Utterance, t: float) -> float | None:
        """End of the utterance's speech before the first pause of at least
        ``step_pause_s`` that speech came after, by ``t`` (None: no such pause)."""
        segs = self.vad.segments(utt.start, t)
        for (_, end), (nxt, _) in zip(segs, segs[1:], strict=False):
            if end > utt.start and nxt - end >= self.opts.step_pause_s - 1e-9:
                return end
        return None

    def _speech_onset(self, t: float) -> float | None:
        """Start of the window for a new utterance, if VAD shows enough speech since idle."""
        segs = self.vad.segments(self._idle_from, t)
        if not segs:
            # Nothing yet: look no further back than the onset pad next time.
            self._idle_from = max(self._idle_from, t - self.opts.onset_pad_s)
            return None
        if sum(b - a for a, b in segs) < self.opts.min_speech_s:
            if t - segs[-1][1] >= self.opts.end_pause_s:
                self._idle_from = segs[-1][1]  # a finished blip (click, noise onset): skip it
            return None
        start = max(self._idle_from, segs[0][0] - self.opts.onset_pad_s)
        return max(start, self.ring.start_index / self.ring.sample_rate)

    def _prompt(self, utt: _Utterance) -> str:
        n_in = len(utt.in_window)
        before = self.committed_words[: len(self.committed_words) - n_in]
        tail = " ".join(w.w for w in before[-self.opts.prompt_words :])
        return " ".join(s for s in (self.opts.filler_prompt, tail) if s)

    def _window(self, utt: _Utterance, t_end: float) -> tuple[float, float]:
        return max(utt.start, t_end - self.opts.max_window_s), t_end

    def _hypothesis(self, utt: _Utterance, t_end: float) -> tuple[list[Word], bool]:
        """The uncommitted words up to ``t_end`` and whether this decode heard them: its own
        words, or the last step's if it was left with none (see "Early end" above; a window
        judged to hold no speech is not such a case)."""
        words = self._decode(utt, t_end)
        if words is None:
            return [], True
        if not words and utt.prev_hyp:
            return utt.prev_hyp, False
        return words, True

    def _decode(self, utt: _Utterance, t_end: float) -> list[Word] | None:
        """Decode [utt.start, t_end]: the new words (media times) after the committed
        prefix; None if the window holds no speech."""
        start, _ = self._window(utt, t_end)
        audio = self.ring.read_time(start, t_end)
        prefix = " ".join(w.w for w in utt.in_window if w.t0 >= start - 1e-6)
        fresh = t_end - (utt.in_window[-1].t1 if utt.in_window else start)
        cap = min(self.opts.max_new_tokens, 4 + int(fresh * self.opts.tokens_per_s))
        self.decode_calls += 1
        res = decode_window(
            self.model,
            audio,
            prompt=self._prompt(utt),
            prefix=prefix,
            pad_s=max(self.opts.pad_s, self.opts.min_input_s - (t_end - start)),
            max_new_tokens=cap,
            check_speech=not utt.in_window,
        )
        if (
            res.no_speech_prob > self.opts.no_speech_threshold
            and res.avg_logprob < self.opts.logprob_threshold
        ) or (
            res.plain_no_speech_prob is not None
            and res.plain_no_speech_prob > self.opts.plain_no_speech_threshold
        ):
            return None
        # No word starts before the utterance's first VAD speech (the window starts
        # onset_pad_s earlier, and the aligner gives the first word that audio too).
        floor = utt.in_window[-1].t1 if utt.in_window else max(start, utt.onset)
        words: list[Word] = []
        for w in res.words:
            t0 = min(max(start + w.t0, floor), t_end)
            t1 = min(max(start + w.t1, t0), t_end)
            words.append(Word(w.w, round(t0, 3), round(t1, 3), w.prob))
            floor = t1
        return words

    def _commit(self, words: list[Word]) -> list[Word]:
        out: list[Word] = []
        floor = self.committed_words[-1].t1 if self.committed_words else 0.0
        for w in words:
            t0 = max(w.t0, floor)
            t1 = max(w.t1, t0)
            out.append(Word(w.w, t0, t1, w.prob))
            floor = t1
        self.committed_words.extend(out)
        return out

    def _trim(self, utt: _Utterance, t: float) -> None:
        """Move the window start up to committed word boundaries to keep the window short."""
        oldest = t - self.opts.max_window_s
        while utt.in_window and (
            utt.in_window[-1].t1 - utt.start > self.opts.keep_committed_s
            or utt.in_window[0].t0 < oldest
        ):
            # Cut after the earliest committed word: it leaves the window for the text prompt.
            utt.start = max(utt.start, utt.in_window.pop(0).t1)
        if utt.start < oldest and not utt.in_window:
            utt.start = oldest  # nothing committed for a long time (e.g. noise): cut blindly

    def _finalise(
        self, t: float, t_end: float, speech_end: float, idle_from: float | None = None
    ) -> ASRUpdate | None:
        """Decode the utterance up to ``t_end`` and commit all of it (words in silence
        dropped, none ending after the speech); look for the next from ``idle_from``
        (default ``t``)."""
        utt = self._utt
        assert utt is not None
        new: list[Word] = []
        decoded = False
        window = (utt.start, t_end)
        if t_end - utt.start > 0.05:
            window = self._window(utt, t_end)
            hyp, _ = self._hypothesis(utt, t_end)
            kept = [w for w in hyp if w.t0 < speech_end]
            period = _loop_period([w.w for w in utt.in_window + kept])
            if period is not None:
                # The whole utterance is one word or phrase over and over: greedy Whisper
                # loops on a lone short answer ("No." -> "No. No. No."), the aligner spreads
                # the copies over the speech. It is said once (a real "no, no, no" alone
                # loses its repeats; copies committed before the end stay).
                kept = kept[: max(0, period - len(utt.in_window))]
            new = self._commit([Word(w.w, w.t0, min(w.t1, speech_end), w.prob) for w in kept])
            decoded = True
        self._close(t if idle_from is None else idle_from)
        return self._report(t, new, [], final=True, decoded=decoded, window=window)

    def _close(self, t: float) -> None:
        self._utt = None
        self._idle_from = t

    def _report(
        self,
        t: float,
        committed: list[Word],
        tentative: list[Word],
        final: bool,
        decoded: bool,
        window: tuple[float, float] = (0.0, 0.0),
    ) -> ASRUpdate | None:
        keys = [w.w for w in tentative]
        if not committed and not final and keys == self._last_tentative:
            return None
        self._last_tentative = keys
        return ASRUpdate(list(committed), list(tentative), final, t, decoded, window)
