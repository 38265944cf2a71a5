"""Word-level BAH codebook cues from committed ASR words (fillers, hedges, corrections, "but").

`WordCueDetector` (one per session) is fed the newly committed words in order
(``update(words, final=...)``) and returns `CueHit`s (modality ``"text"``) whose
times come from the words. The vocabulary is `models.text_ah.CUE_LEXICON` (the one
lexicon of the project); this module adds only the context rules that decide when
an entry is used as a cue, and a few function-word lists those rules need.

Rules (strengths in [0, 1]):

- ``filler_sound``: a ``filler`` entry (um, uh, er, hmm, ...; elongations such as
  "ummm" folded), not a backchannel ("uh-huh", "mm-hmm"). 0.5, growing to 1.0 for a
  filler lasting >= 1 s.
- ``filler_word``: a ``discourse`` entry used as a filler:
  "like" when set off (punctuation or >= 0.3 s pause after it, or next to a filler
  sound, or clause-initial) and not a verb/preposition ("I like", "would like",
  "feel like", ...) 0.5; "you know" not after an auxiliary ("do you know") and
  clause-initial or set off 0.5; "well" clause-initial 0.4; "i mean" at the start of
  an utterance 0.4; "so" at the start of a sentence 0.3; others (actually,
  basically) clause-initial and set off 0.3.
- ``hedge``: a ``hedge`` or ``uncertainty`` entry (longest match wins); uncertainty
  ("i don't know", "not sure", ...) 0.7, maybe/probably/perhaps/possibly/i guess/
  i suppose 0.5, i think/kind of/sort of 0.4, weak ones (might, a bit, sometimes,
  ...) 0.3. Not "what kind of", not "i think about", not "made up my mind" without
  a negation before it.
- ``correction_repetition``: an immediately repeated word ("I I", "to to"; not
  "that that", "very very", two numbers, ...) 0.5, one hit over a whole run ("the the
  the the"); a repeated 2-3 word phrase ("I want I want")
  0.7; a restart -- a clause opener ("I", "we", "it", "the", ...) repeated after a
  1-3 word fragment with a break before it (cut mark "want-", comma, >= 0.25 s
  pause, a filler) -- 0.6 (0.7 with a cut mark); "i mean" after a word in the same
  utterance 0.6; "or rather" 0.6; "sorry"/"wait"/"actually" set off mid-utterance
  0.4; any other cut word ("wan-", also one that ends the utterance) 0.5.
  Overlapping corrections are reported once.
- ``but_excuse``: a ``contrast`` entry ("but" alone: 0.3; "yet"/"still" only
  clause-initially; not "nothing but", "all but") or "because" after an intention;
  +0.3 when the clause before states an intention or something positive
  (wish/obligation entries, "yes", "love", "try", ...), +0.2 when the next few words
  bring a negation, uncertainty, obligation or effort ("but I can't").

Decisions may need up to 4 following words; a word is decided once they are
committed, or when the utterance ends (``final=True``, a >= 1 s gap between words,
or `flush`). Whole tokens only: "butter" is not "but".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from models.cues import CueHit
from models.text_ah import CUE_LEXICON, lexical_cues, tokenize
from models.whisper import Word

__all__ = ["WORD_CUES", "WordCueDetector"]

WORD_CUES: tuple[str, ...] = (
    "filler_sound",
    "filler_word",
    "hedge",
    "correction_repetition",
    "but_excuse",
)
MODALITY = "text"

UTTERANCE_GAP_S = 1.0  # a silence this long between words ends the utterance (a new turn)
PAUSE_S = 0.3  # a pause this long around a word sets it off like a comma would
RESTART_PAUSE_S = 0.25  # a break this long before a repeated clause opener marks a restart
REPEAT_MAX_GAP_S = 1.0  # "I ... I" further apart than this is not a repetition
FILLER_LONG_S = 1.0  # a filler sound this long gets full strength
CONTRAST_LOOKAHEAD = 4  # words after "but" inspected for the excuse ("but I don't have time")
CONTEXT_BEFORE = 12  # words before "but" inspected for the positive statement

_SENT_END = re.compile(r"[.?!]")
_CLAUSE_PUNCT = re.compile(r"[,;:.?!\u2014\u2013\u2026-]")
_CUT = re.compile(r"[\w'][-\u2014\u2013]+$")  # "want-", "I—": a word cut off
_TRAILING = re.compile(r"[^\w']+$")

# ---- the lexicon, split into what each rule needs ------------------------------------------


def _phrases(*cues: str) -> list[tuple[str, ...]]:
    out = [tuple(e.split()) for c in cues for e in CUE_LEXICON[c] if not e.endswith("*")]
    return sorted(set(out), key=len, reverse=True)  # longest first


_FILLERS = frozenset(CUE_LEXICON["filler"])
_FILLERS_FOLDED = frozenset(re.sub(r"(.)\1+", r"\1", f) for f in _FILLERS)
_DISCOURSE = _phrases("discourse")
_HEDGES = _phrases("hedge", "uncertainty")
_UNCERTAINTY = frozenset(tuple(e.split()) for e in CUE_LEXICON["uncertainty"])
_CORRECTIONS = _phrases("correction")
_CONTRAST = frozenset(CUE_LEXICON["contrast"])
# Longest phrase starting with a word: how many words after it a decision needs.
_PHRASE_LEN: dict[str, int] = {}
for _p in (*_DISCOURSE, *_HEDGES, *_CORRECTIONS):
    _PHRASE_LEN[_p[0]] = max(_PHRASE_LEN.get(_p[0], 1), len(_p))

# Strengths of hedge entries (default 0.4); uncertainty entries are 0.7.
_HEDGE_STRENGTH = {
    "maybe": 0.5,
    "probably": 0.5,
    "perhaps": 0.5,
    "possibly": 0.5,
    "i guess": 0.5,
    "i suppose": 0.5,
    "might": 0.3,
    "somewhat": 0.3,
    "a little": 0.3,
    "a bit": 0.3,
    "sometimes": 0.3,
    "depends": 0.3,
}
_FILLER_WORD_STRENGTH = {"like": 0.5, "you know": 0.5, "well": 0.4, "i mean": 0.4, "so": 0.3}

# ---- function-word context used by the rules (grammar, not cue vocabulary) -----------------

# "like" is a verb or preposition after these ("I like", "would like", "feel like").
_LIKE_NOT_FILLER_BEFORE = frozenset(
    "i you we they he she would i'd we'd you'd they'd don't didn't doesn't do does did "
    "to might may also really feel feels felt look looks looked looking sound sounds "
    "sounded seem seems seemed something anything nothing more less just much things "
    "stuff exactly".split()
)
_YOU_KNOW_NOT_AFTER = frozenset(
    "do does did don't didn't if would will can could as what how whether".split()
)
_I_MEAN_NOT_AFTER = frozenset("what that which if you do don't did didn't".split())
_I_MEAN_NOT_BEFORE = frozenset("it to".split())  # "I mean it", "I mean to"
_SO_NOT_FILLER_BEFORE = frozenset("much many far long good great bad sorry that".split())
_KIND_OF_NOT_AFTER = frozenset(
    "what this that the a an any some every which same one no other these those".split()
)
# Legitimate immediate repetitions ("that that", "very very", "bye bye").
_LEGIT_REPEAT = frozenset(
    "that had very really no yes yeah bye so much many ha haha more far long again "
    "okay ok well now blah knock".split()
    + ["0"]  # every number reads "0" ("10, 15 minutes"): two numbers are not a repetition
)
# Clause openers whose repetition after a short fragment is a restart ("I want- I need").
_RESTART_OPENERS = frozenset(
    "i i'm i've i'd i'll we we're it it's you he she they that this my the there".split()
)
# Fragments with these are complete clauses, not restarts ("I think I", "I said that I").
_RESTART_BLOCKERS = frozenset(
    "and but or so because that if when then think thought know knew said say says guess "
    "hope feel felt believe mean meant wish told bet suppose realized realize".split()
)
# Function words/phrases that make a statement before "but" positive or intentional.
_AFFIRMATIVE = frozenset(
    "yes yeah yep sure definitely absolutely okay ok good great love like enjoy agree "
    "important try tried trying will".split()
)
# Excuse conjunctions absent from the lexicon's contrast entries.
_EXCUSE_CONJ = frozenset(("because", "cause"))  # not "since": mostly temporal
_BACKCHANNELS = frozenset({("uh", "huh"), ("mm", "hmm"), ("uh", "uh"), ("mhm",), ("mm", "mm")})


def _fold(tok: str) -> str:
    return re.sub(r"(.)\1+", r"\1", tok)


def _is_filler(tok: str) -> bool:
    return tok in _FILLERS or (tok.isalpha() and _fold(tok) in _FILLERS_FOLDED)


@dataclass
class _Tok:
    text: str
    t0: float
    t1: float
    n: int  # global token index
    utt: int  # utterance id
    boundary: str  # before this token: "utt", "sent", "clause" or ""
    punct: str  # punctuation after this token ("" inside a word)
    cut: bool  # the word was cut off ("want-")
    backchannel: bool
    gap_before: float
    utt_end: bool = False


class WordCueDetector:
    """Per-session word cue detector: feed committed words in order, get `CueHit`s."""

    def __init__(self) -> None:
        self._toks: list[_Tok] = []
        self._base = 0  # global index of self._toks[0]
        self._cursor = 0  # global index of the next token to decide
        self._n = 0
        self._utt = 0
        self._pending_boundary = "utt"
        self._last_word: Word | None = None
        self._hedge_until = -1  # last global token index covered by a hedge hit
        self._corr_until = -1  # last global token index covered by a correction hit

    # ----------------------------------------------------------------- public

    def update(self, words: Iterable[Word], final: bool = False) -> list[CueHit]:
        """Add newly committed words (in order); ``final``: the utterance ended after them."""
        for w in words:
            self._add_word(w)
        if final:
            self._end_utterance()
        return self._decide(flush=False)

    def flush(self) -> list[CueHit]:
        """Decide every pending word (end of session or of an utterance)."""
        self._end_utterance()
        return self._decide(flush=True)

    # ----------------------------------------------------------------- tokens

    def _end_utterance(self) -> None:
        if self._toks and not self._toks[-1].utt_end:
            self._toks[-1].utt_end = True
            self._utt += 1
            self._pending_boundary = "utt"

    def _add_word(self, w: Word) -> None:
        raw = w.w.strip()
        toks = tokenize(raw)
        if not toks:  # pure punctuation ("—", "..."): attach to the previous word
            if self._toks and not self._toks[-1].utt_end:
                last = self._toks[-1]
                last.punct += raw
                last.cut = last.cut or bool(re.fullmatch(r"[-\u2014\u2013]+", raw))
                if _SENT_END.search(raw):
                    self._pending_boundary = "sent"
                elif _CLAUSE_PUNCT.search(raw) and self._pending_boundary == "":
                    self._pending_boundary = "clause"
            return
        gap = w.t0 - self._last_word.t1 if self._last_word is not None else 0.0
        if self._last_word is not None and gap >= UTTERANCE_GAP_S:
            self._end_utterance()
        boundary = self._pending_boundary
        if not boundary and gap >= PAUSE_S:
            boundary = "clause"
        m = _TRAILING.search(raw)
        punct = m.group(0) if m else ""
        cut = bool(_CUT.search(raw))
        backchannel = tuple(toks) in _BACKCHANNELS
        for k, t in enumerate(toks):
            last = k == len(toks) - 1
            self._toks.append(
                _Tok(
                    text=t,
                    t0=w.t0,
                    t1=w.t1,
                    n=self._n,
                    utt=self._utt,
                    boundary=boundary if k == 0 else "",
                    punct=punct if last else "",
                    cut=cut and last,
                    backchannel=backchannel,
                    gap_before=gap if k == 0 else 0.0,
                )
            )
            self._n += 1
        self._last_word = w
        if _SENT_END.search(punct):
            self._pending_boundary = "sent"
        elif _CLAUSE_PUNCT.search(punct):
            self._pending_boundary = "clause"
        else:
            self._pending_boundary = ""

    def _tok(self, n: int, utt: int) -> _Tok | None:
        """Token with global index ``n`` if held and in utterance ``utt``."""
        i = n - self._base
        if 0 <= i < len(self._toks) and self._toks[i].utt == utt:
            return self._toks[i]
        return None

    def _texts(self, n: int, k: int, utt: int) -> tuple[str, ...] | None:
        out = []
        for j in range(n, n + k):
            t = self._tok(j, utt)
            if t is None:
                return None
            out.append(t.text)
        return tuple(out)

    def _need(self, tk: _Tok) -> int:
        if tk.text in _CONTRAST or tk.text in _EXCUSE_CONJ:
            return CONTRAST_LOOKAHEAD
        # the phrase, the word after it; the word after a restart opener (see _correction)
        return max(2, _PHRASE_LEN.get(tk.text, 1))

    def _decidable(self, tk: _Tok, flush: bool) -> bool:
        if flush:
            return True
        for j in range(tk.n, tk.n + self._need(tk) + 1):
            t = self._tok(j, tk.utt)
            if t is None:
                # past the held tokens: wait; in another utterance: this one has ended
                return j - self._base < len(self._toks)
            if t.utt_end:
                return True
        return True

    def _decide(self, flush: bool) -> list[CueHit]:
        hits: list[CueHit] = []
        while self._cursor - self._base < len(self._toks):
            tk = self._toks[self._cursor - self._base]
            if not self._decidable(tk, flush):
                break
            hits.extend(self._rules(tk))
            self._cursor += 1
        keep_from = self._cursor - CONTEXT_BEFORE - 8
        if keep_from - self._base > 64:
            del self._toks[: keep_from - self._base]
            self._base = keep_from
        return hits

    # ----------------------------------------------------------------- context helpers

    def _prev(self, tk: _Tok) -> _Tok | None:
        return self._tok(tk.n - 1, tk.utt)

    def _next(self, tk: _Tok) -> _Tok | None:
        return self._tok(tk.n + 1, tk.utt)

    def _clause_initial(self, tk: _Tok) -> bool:
        if tk.boundary:
            return True
        prev = self._prev(tk)
        return prev is None or _is_filler(prev.text)

    def _sentence_initial(self, tk: _Tok) -> bool:
        cur: _Tok | None = tk
        while cur is not None:
            if cur.boundary in ("utt", "sent"):
                return True
            prev = self._prev(cur)
            if prev is None:
                return True
            if not (_is_filler(prev.text) or (prev.text,) in _DISCOURSE):
                return False
            cur = prev
        return True

    def _set_off_after(self, tk: _Tok) -> bool:
        if _CLAUSE_PUNCT.search(tk.punct) or tk.utt_end:
            return True
        nxt = self._next(tk)
        if nxt is None:
            return True
        return nxt.gap_before >= PAUSE_S or _is_filler(nxt.text)

    def _hit(self, cue: str, a: _Tok, b: _Tok, strength: float, detail: str) -> CueHit:
        return CueHit(
            cue=cue,
            t0=a.t0,
            t1=max(a.t1, b.t1),
            strength=round(min(1.0, max(0.0, strength)), 3),
            modality=MODALITY,
            detail=detail,
        )

    def _span_text(self, a: int, b: int, utt: int) -> str:
        return " ".join(t.text for j in range(a, b + 1) if (t := self._tok(j, utt)) is not None)

    # ----------------------------------------------------------------- rules

    def _rules(self, tk: _Tok) -> list[CueHit]:
        out: list[CueHit] = []
        for rule in (self._filler_sound, self._filler_word, self._hedge):
            h = rule(tk)
            if h is not None:
                out.append(h)
        corr = self._correction(tk)
        if corr is not None:
            out.append(corr)
        h = self._but_excuse(tk)
        if h is not None:
            out.append(h)
        return out

    def _filler_sound(self, tk: _Tok) -> CueHit | None:
        if tk.backchannel or not _is_filler(tk.text):
            return None
        dur = max(0.0, tk.t1 - tk.t0)
        strength = 0.5 + 0.5 * min(1.0, max(0.0, (dur - 0.2) / (FILLER_LONG_S - 0.2)))
        return self._hit("filler_sound", tk, tk, strength, tk.text)

    def _filler_word(self, tk: _Tok) -> CueHit | None:
        for entry in _DISCOURSE:
            k = len(entry)
            if self._texts(tk.n, k, tk.utt) != entry:
                continue
            last = self._tok(tk.n + k - 1, tk.utt)
            assert last is not None
            phrase = " ".join(entry)
            prev = self._prev(tk)
            ok = False
            if phrase == "like":
                nxt = self._next(tk)
                ok = (prev is None or prev.text not in _LIKE_NOT_FILLER_BEFORE) and (
                    self._clause_initial(tk)
                    or bool(_CLAUSE_PUNCT.search(tk.punct))
                    or (nxt is not None and (nxt.gap_before >= PAUSE_S or _is_filler(nxt.text)))
                    or (prev is not None and prev.text == "like")
                )
            elif phrase == "you know":
                ok = (prev is None or prev.text not in _YOU_KNOW_NOT_AFTER) and (
                    self._clause_initial(tk) or self._set_off_after(last)
                )
            elif phrase == "i mean":
                ok = self._sentence_initial(tk)  # after a word it is a correction
            elif phrase == "well":
                ok = self._clause_initial(tk)
            elif phrase == "so":
                nxt = self._next(tk)
                ok = self._sentence_initial(tk) and (
                    nxt is None or nxt.text not in _SO_NOT_FILLER_BEFORE
                )
            elif entry in _CORRECTIONS:  # "actually" mid-sentence is a correction
                ok = self._sentence_initial(tk) and self._set_off_after(last)
            else:
                ok = self._clause_initial(tk) and self._set_off_after(last)
            if ok:
                strength = _FILLER_WORD_STRENGTH.get(phrase, 0.3)
                return self._hit("filler_word", tk, last, strength, phrase)
            return None
        return None

    def _hedge(self, tk: _Tok) -> CueHit | None:
        if tk.n <= self._hedge_until:
            return None
        prev = self._prev(tk)
        for entry in _HEDGES:
            k = len(entry)
            if self._texts(tk.n, k, tk.utt) != entry:
                continue
            phrase = " ".join(entry)
            nxt = self._tok(tk.n + k, tk.utt)
            if entry[-1] == "of" and entry[0] in ("kind", "sort"):
                if prev is not None and prev.text in _KIND_OF_NOT_AFTER:
                    continue
            if phrase == "i think" and nxt is not None and nxt.text in ("about", "of"):
                continue
            if entry[0] == "made":  # "I made up my mind" is a decision, not a hedge
                before = [t.text for t in self._before(tk, 3)]
                if not before or lexical_cues(before)["negation"] == 0:
                    continue
            last = self._tok(tk.n + k - 1, tk.utt)
            assert last is not None
            self._hedge_until = last.n
            strength = 0.7 if entry in _UNCERTAINTY else _HEDGE_STRENGTH.get(phrase, 0.4)
            return self._hit("hedge", tk, last, strength, phrase)
        return None

    def _before(self, tk: _Tok, k: int) -> list[_Tok]:
        """Up to ``k`` tokens of the same sentence before ``tk`` (oldest first)."""
        out: list[_Tok] = []
        cur = tk
        while len(out) < k and cur.boundary not in ("utt", "sent"):
            prev = self._prev(cur)
            if prev is None:
                break
            out.append(prev)
            cur = prev
        return out[::-1]

    def _content_before(self, tk: _Tok, k: int) -> list[_Tok]:
        """Up to ``k`` non-filler tokens of the sentence ending with ``tk`` (oldest first)."""
        out = [t for t in self._before(tk, 3 * k) if not _is_filler(t.text)]
        return [*out[-(k - 1) :], tk] if k > 1 else [tk]

    def _correction(self, tk: _Tok) -> CueHit | None:
        h = self._correction_candidate(tk)
        if h is None:
            return None
        start, end, hit = h
        if start <= self._corr_until:
            return None  # overlaps the previous correction: one event
        self._corr_until = end
        return hit

    def _correction_candidate(self, tk: _Tok) -> tuple[int, int, CueHit] | None:
        """(first token index, last token index, hit) of a correction at ``tk``, if any."""
        if _is_filler(tk.text):
            return None
        prev = self._prev(tk)
        # "i mean" after a word of the same sentence
        if self._texts(tk.n, 2, tk.utt) == ("i", "mean") and not self._sentence_initial(tk):
            nxt = self._tok(tk.n + 2, tk.utt)
            if (prev is None or prev.text not in _I_MEAN_NOT_AFTER) and (
                nxt is None or nxt.text not in _I_MEAN_NOT_BEFORE
            ):
                last = self._next(tk)
                assert last is not None
                return tk.n, last.n, self._hit("correction_repetition", tk, last, 0.6, "i mean")
        # other correction entries: "or rather" anywhere, single words when set off
        for entry in _CORRECTIONS:
            if entry == ("i", "mean") or self._texts(tk.n, len(entry), tk.utt) != entry:
                continue
            last = self._tok(tk.n + len(entry) - 1, tk.utt)
            assert last is not None
            if len(entry) > 1:
                hit = self._hit("correction_repetition", tk, last, 0.6, " ".join(entry))
                return tk.n, last.n, hit
            if (
                prev is not None
                and _CLAUSE_PUNCT.search(prev.punct)
                and not last.utt_end
                and self._next(last) is not None
                and self._set_off_after(last)
            ):
                return tk.n, last.n, self._hit("correction_repetition", tk, last, 0.4, entry[0])
        content = self._content_before(tk, 8)
        seq = [t.text for t in content]
        # repeated 3- or 2-word phrase ending here
        for k in (3, 2):
            if len(seq) >= 2 * k and seq[-2 * k : -k] == seq[-k:]:
                if all(s in _LEGIT_REPEAT for s in seq[-k:]) or len(set(seq[-k:])) == 1:
                    continue  # (one word over and over is a run of that word: below)
                first = content[-2 * k]
                if tk.t0 - content[-k - 1].t1 > REPEAT_MAX_GAP_S:
                    continue
                text = " ".join(seq[-2 * k :])
                return first.n, tk.n, self._hit("correction_repetition", first, tk, 0.7, text)
        # immediately repeated word ("I I", "to- to"), reported once at the end of its run
        # ("the the the the dog": one hit over the four)
        if (
            len(content) >= 2
            and content[-2].text == tk.text
            and tk.text not in _LEGIT_REPEAT
            and tk.t0 - content[-2].t1 <= REPEAT_MAX_GAP_S
        ):
            nxt = self._next(tk)
            if nxt is not None and nxt.text == tk.text and nxt.t0 - tk.t1 <= REPEAT_MAX_GAP_S:
                return None  # the run goes on
            run = [tk]
            while (p := self._prev(run[-1])) is not None:
                while p is not None and _is_filler(p.text):
                    p = self._prev(p)
                if p is None or p.text != tk.text or run[-1].t0 - p.t1 > REPEAT_MAX_GAP_S:
                    break
                run.append(p)
            first, n, w = run[-1], len(run), tk.text
            text = " ".join([w] * n) if n <= 4 else f"{w} {w} {w} ... ({n} times)"
            return first.n, tk.n, self._hit("correction_repetition", first, tk, 0.5, text)
        # restart: clause opener repeated after a short fragment, with a break before it
        if tk.text in _RESTART_OPENERS and prev is not None:
            for m in (2, 3, 4):
                if len(content) <= m:
                    break
                first = content[-1 - m]
                frag = content[-m:-1]
                if first.text != tk.text or any(f.text in _RESTART_BLOCKERS for f in frag):
                    continue
                a_next, b_next = self._next(first), self._next(tk)
                if a_next is not None and b_next is not None and a_next.text == b_next.text:
                    break  # a phrase repetition: reported when it completes
                between = [
                    t for j in range(first.n + 1, tk.n) if (t := self._tok(j, tk.utt)) is not None
                ]
                cut = prev.cut
                broke = (
                    cut
                    or bool(_CLAUSE_PUNCT.search(prev.punct))
                    or tk.gap_before >= RESTART_PAUSE_S
                    or any(_is_filler(t.text) for t in between)
                )
                if broke:
                    text = self._span_text(first.n, tk.n, tk.utt)
                    strength = 0.7 if cut else 0.6
                    hit = self._hit(
                        "correction_repetition", first, tk, strength, f"restart: {text}"
                    )
                    return first.n, tk.n, hit
                break
        # a word cut off and not repeated/restarted
        if prev is not None and prev.cut and prev.n > self._corr_until:
            hit = self._hit("correction_repetition", prev, prev, 0.5, f"cut: {prev.text}")
            return prev.n, prev.n, hit
        # ... also the last word of an utterance that trails off ("I was going to-")
        if tk.cut and tk.utt_end:
            return tk.n, tk.n, self._hit("correction_repetition", tk, tk, 0.5, f"cut: {tk.text}")
        return None

    def _but_excuse(self, tk: _Tok) -> CueHit | None:
        word = tk.text
        if word not in _CONTRAST and word not in _EXCUSE_CONJ:
            return None
        prev = self._prev(tk)
        if word == "but" and prev is not None and prev.text in ("nothing", "anything", "all"):
            return None
        if word in ("yet", "still") and not self._clause_initial(tk):
            return None
        before = [t.text for t in self._before(tk, CONTEXT_BEFORE)]
        after = [
            t.text
            for j in range(tk.n + 1, tk.n + 1 + CONTRAST_LOOKAHEAD)
            if (t := self._tok(j, tk.utt)) is not None
        ]
        cb = lexical_cues(before) if before else None
        positive = cb is not None and (
            cb["wish"] + cb["obligation"] > 0 or any(w in _AFFIRMATIVE for w in before)
        )
        ca = lexical_cues(after) if after else None
        excuse = ca is not None and (
            ca["negation"] + ca["uncertainty"] + ca["obligation"] + ca["effort"] > 0
        )
        if word in _EXCUSE_CONJ:
            if not positive and not (cb is not None and cb["negation"] > 0):
                return None
            strength = 0.4 + (0.2 if positive else 0.0) + (0.2 if excuse else 0.0)
        else:
            strength = 0.3 + (0.3 if positive else 0.0) + (0.2 if excuse else 0.0)
        detail = " ".join([*before[-4:], word.upper(), *after])
        return self._hit("but_excuse", tk, tk, strength, detail)
