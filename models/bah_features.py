"""Per-tick and per-video embeddings of BAH videos for the full profile, with a feature cache.

For each video, analysis ticks fall at ``t_k = k / hz`` seconds of media time
(k = 1..ceil(duration * hz), the last one clamped to the duration). At each tick, from
what a live session would have seen by then:

- **video**: the face-clip embedding of the last ``num_frames`` raw frame positions
  ending at the newest frame ``floor(t * fps)``. Frame indices are the raw ones of the
  ``frame-<N>.jpg`` crops: a position without a crop (no face found) takes the nearest
  earlier crop inside the window (or the first later one); a window without any crop
  is masked (present = 0);
- **audio**: the speech embedding of the last ``audio_window_s`` seconds of 16 kHz audio
  (a shorter prefix at the start; the encoder pools over the real samples only);
- **text**: the text embedding of the transcript so far: the chunks of the transcript
  YAML (unrolled to absolute times) that have ended by ``t`` (their last
  ``text_max_words`` words); masked before the first.

Each modality's array is cached with `models.bah_layout.FeatureCache` under a key made of
the modality, the encoder's name, a hash of its config and of the tick settings, and the
video id with a fingerprint of its files (size, mtime), so a second run (or another head
trained on the same encoders) computes nothing again, and a changed file is recomputed.

Video-level embeddings for `models.conflict_head.ConflictAwareAH` pool the ticks: the mean
of the present video and audio ticks, and the text embedding of the whole transcript
(the last tick's).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.bah_layout import AUDIO_RATE, BahLayout, BahLayoutError, FeatureCache, Video

__all__ = [
    "MODALITIES",
    "TickConfig",
    "ClipEncoder",
    "AudioEncoder",
    "TextEncoder",
    "Encoders",
    "VideoFeatures",
    "CacheStats",
    "FeatureExtractor",
    "tick_times",
    "frame_ticks",
    "clip_indices",
    "newest_frame",
    "audio_span",
    "transcript_so_far",
    "encoder_key",
]

MODALITIES: tuple[str, ...] = ("video", "audio", "text")
_EPS = 1e-9


@dataclass(frozen=True)
class TickConfig:
    """When ticks fall and how much each one sees."""

    hz: float = 2.0
    audio_window_s: float = 2.0
    # The transcript so far, its last words only: the text encoder truncates on the right
    # (512 tokens for RoBERTa) and would otherwise stop seeing new words in long answers.
    text_max_words: int = 256
    batch: int = 8  # clips / windows per encoder call

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class ClipEncoder(Protocol):
    """A face-clip encoder (e.g. `models.hub_encoders.FaceClipEncoder`)."""

    name: str
    dim: int
    num_frames: int

    def encode(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """B clips, each [F, H, W, 3] uint8 RGB crops -> [B, dim]."""
        ...


class AudioEncoder(Protocol):
    """A speech encoder with masked pooling (e.g. `models.hub_encoders.SpeechEncoder`)."""

    name: str
    dim: int
    min_samples: int

    def encode(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """B clips of 16 kHz mono float audio (any lengths) -> [B, dim], pooled over samples."""
        ...


class TextEncoder(Protocol):
    """A text encoder (e.g. `models.hub_encoders.TextEmotionEncoder`)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """B strings -> [B, dim]."""
        ...


@dataclass
class Encoders:
    """The three encoders of the full profile."""

    video: ClipEncoder
    audio: AudioEncoder
    text: TextEncoder

    @property
    def dims(self) -> tuple[int, int, int]:
        """(video, audio, text) embedding widths."""
        return (int(self.video.dim), int(self.audio.dim), int(self.text.dim))

    def names(self) -> dict[str, str]:
        """Model id or path of each encoder."""
        return {m: str(getattr(self, m).name) for m in MODALITIES}

    def fingerprints(self) -> dict[str, str | None]:
        """SHA-256 of each encoder's weights (None: not known)."""
        return {m: getattr(getattr(self, m), "fingerprint", None) for m in MODALITIES}


def _model_config(encoder: Any) -> str:
    """The transformers config of an encoder (on it, or on the network its runner wraps)."""
    for owner in (encoder, getattr(getattr(encoder, "graph", None), "model", None)):
        cfg = getattr(owner, "config", None)
        if cfg is not None and hasattr(cfg, "to_json_string"):
            return str(cfg.to_json_string(use_diff=False))
    return ""


def encoder_key(modality: str, encoder: Any, ticks: TickConfig) -> str:
    """Cache key: modality, encoder name and a hash of its config, its weights and the tick
    settings."""
    plain = {k: getattr(encoder, k, None) for k in ("dim", "num_frames", "image_size", "normalize")}
    body = json.dumps(
        {
            "cfg": _model_config(encoder),
            "plain": plain,
            "name": str(getattr(encoder, "name", "")),
            "weights": getattr(encoder, "fingerprint", None),  # other weights, same name
            "class": type(encoder).__name__,
            "ticks": {k: v for k, v in ticks.as_dict().items() if k != "batch"},
            "v": 1,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha1(body.encode()).hexdigest()[:12]
    name = Path(str(getattr(encoder, "name", "encoder"))).name or "encoder"
    return f"{modality}-{name}-{digest}"


# --- timing -----------------------------------------------------------------------------


def tick_times(duration: float, hz: float) -> np.ndarray:
    """Tick media times ``k / hz`` for k = 1..ceil(duration*hz), the last clamped (>= 1 tick)."""
    if hz <= 0:
        raise ValueError("hz must be > 0")
    k = max(1, math.ceil(duration * hz - _EPS))
    return np.minimum(np.arange(1, k + 1) / hz, max(duration, 0.0))


def frame_ticks(n_frames: int, fps: float, times: np.ndarray) -> np.ndarray:
    """Index of the first tick that has seen each frame (frame n is at ``n / fps``)."""
    t = np.arange(n_frames) / fps
    idx = np.searchsorted(np.asarray(times) + _EPS, t, side="left")
    return np.clip(idx, 0, len(times) - 1)


def clip_indices(end: int, length: int, available: Sequence[int]) -> list[int] | None:
    """Crop indices for the raw frames ``end-length+1 .. end``; None if none is available.

    Each position takes the nearest available crop at or before it inside the window,
    positions before the first crop take that first crop.
    """
    avail = np.asarray(sorted(available), dtype=np.int64)
    lo = end - length + 1
    inside = avail[(avail >= lo) & (avail <= end)]
    if inside.size == 0:
        return None
    out = []
    for n in range(lo, end + 1):
        j = np.searchsorted(inside, n, side="right") - 1
        out.append(int(inside[max(j, 0)]))
    return out


def newest_frame(t: float, fps: float) -> int:
    """Raw index of the newest frame at or before media time ``t`` (frame n is at n / fps)."""
    return int(math.floor(t * fps + _EPS))


def audio_span(end: int, ticks: TickConfig, encoder: Any) -> tuple[int, int] | None:
    """Sample bounds of a tick's audio window ending at sample ``end`` (exclusive): the last
    ``ticks.audio_window_s`` seconds, or None if shorter than 0.1 s or the encoder's
    ``min_samples`` (there is nothing to hear yet)."""
    width = int(round(ticks.audio_window_s * AUDIO_RATE))
    shortest = max(AUDIO_RATE // 10, int(getattr(encoder, "min_samples", 0)))
    start = max(0, end - width)
    return (start, end) if end - start >= shortest else None


def transcript_so_far(texts: Iterable[str], max_words: int) -> str:
    """The text a tick encodes: the last ``max_words`` words of ``texts`` joined ("": none)."""
    return " ".join(" ".join(texts).split()[-max_words:])


# --- features of one video ----------------------------------------------------------------


@dataclass
class VideoFeatures:
    """Per-tick embeddings of one video and what is needed to map ticks to frames."""

    video_id: str
    label: int
    times: np.ndarray  # [K] media seconds
    video: np.ndarray  # [K, Dv]
    audio: np.ndarray  # [K, Da]
    text: np.ndarray  # [K, Dt]
    present: np.ndarray  # [K, 3] float32 0/1 (video, audio, text)
    fps: float
    n_frames: int
    frame_labels: np.ndarray | None = field(default=None, repr=False)  # [n_frames] or None

    def frame_ticks(self) -> np.ndarray:
        """Tick index of each frame (the first tick that has seen it)."""
        return frame_ticks(self.n_frames, self.fps, self.times)

    def tick_labels(self) -> np.ndarray | None:
        """Soft tick labels: the A/H fraction of the frames each tick is the first to see."""
        if self.frame_labels is None:
            return None
        idx = self.frame_ticks()
        k = len(self.times)
        total = np.bincount(idx, minlength=k).astype(np.float64)
        pos = np.bincount(idx, weights=self.frame_labels.astype(np.float64), minlength=k)
        # A tick that sees no new frame (rates above fps) takes the label of its newest frame.
        newest = np.clip(np.floor(self.times * self.fps + _EPS).astype(int), 0, self.n_frames - 1)
        fallback = self.frame_labels[newest].astype(np.float64)
        return np.where(total > 0, pos / np.maximum(total, 1.0), fallback).astype(np.float32)

    def video_level(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(v, a, t, present[3]) for the video-level head: mean of present ticks, last text."""
        out = []
        pres = np.zeros(3, np.float32)
        for i, x in enumerate((self.video, self.audio)):
            m = self.present[:, i] > 0.5
            out.append(x[m].mean(axis=0) if m.any() else np.zeros(x.shape[1], np.float32))
            pres[i] = float(m.any())
        m = np.flatnonzero(self.present[:, 2] > 0.5)
        out.append(self.text[m[-1]] if m.size else np.zeros(self.text.shape[1], np.float32))
        pres[2] = float(m.size > 0)
        return out[0].astype(np.float32), out[1].astype(np.float32), out[2], pres


@dataclass
class CacheStats:
    """How many per-video cache entries were computed and how many were reused."""

    computed: int = 0
    cached: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-ready form."""
        return {"computed": self.computed, "cached": self.cached}


def _video_duration(path: Path) -> float:
    """Container duration in seconds (PyAV)."""
    import av

    try:
        with av.open(str(path)) as c:
            if c.duration:
                return float(c.duration) / 1_000_000
            s = c.streams.video[0] if c.streams.video else None
            if s is not None and s.duration and s.time_base:
                return float(s.duration * s.time_base)
    except av.error.FFmpegError as e:
        raise BahLayoutError(f"{path}: cannot read video: {e}") from e
    raise BahLayoutError(f"{path}: duration unknown")


def _load_face(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class FeatureExtractor:
    """Computes (or reads from the cache) the per-tick features of BAH videos."""

    def __init__(
        self,
        layout: BahLayout,
        encoders: Encoders,
        cache: FeatureCache | None,
        ticks: TickConfig | None = None,
    ) -> None:
        self.layout = layout
        self.encoders = encoders
        self.cache = cache
        self.ticks = ticks or TickConfig()
        self.stats = CacheStats()
        self._keys = {m: encoder_key(m, getattr(encoders, m), self.ticks) for m in MODALITIES}
        self._keys["meta"] = f"meta-{self.ticks.hz:g}hz-v1"

    def _cached(
        self, key: str, video_id: str, compute: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        if self.cache is None:
            self.stats.computed += 1
            return compute()
        hit = self.cache.get(key, video_id)
        if hit is not None:
            self.stats.cached += 1
            return hit
        self.stats.computed += 1
        arrays = compute()
        self.cache.put(key, video_id, arrays)
        return arrays

    @staticmethod
    def _fingerprint(video: Video) -> str:
        """Size and mtime of the video's mp4, face folder and transcript: a changed file is
        a new cache entry, never a stale one."""
        parts = []
        for p in (video.path, video.faces_dir, video.transcript_path):
            try:
                st = p.stat()
                parts.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append("-")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]

    def features(self, video: Video) -> VideoFeatures:
        """Per-tick features of one video (computed once per encoder and tick settings)."""
        vid = f"{video.video_id}#{self._fingerprint(video)}"
        meta = self._cached(self._keys["meta"], vid, lambda: self._meta(video))
        times = meta["times"]
        fps = float(meta["fps"])
        n_frames = int(meta["n_frames"])
        duration = float(meta["duration"])
        v = self._cached(self._keys["video"], vid, lambda: self._video(video, times, fps))
        a = self._cached(self._keys["audio"], vid, lambda: self._audio(video, times))
        t = self._cached(self._keys["text"], vid, lambda: self._text(video, times, duration))
        present = np.stack([v["present"], a["present"], t["present"]], axis=1)
        return VideoFeatures(
            video_id=video.video_id,
            label=video.label,
            times=times,
            video=v["emb"].astype(np.float32),
            audio=a["emb"].astype(np.float32),
            text=t["emb"].astype(np.float32),
            present=present.astype(np.float32),
            fps=fps,
            n_frames=n_frames,
            frame_labels=self._frame_labels(video, n_frames),
        )

    def split(self, videos: Iterable[Video], progress: bool = False) -> list[VideoFeatures]:
        """Features of several videos, in order."""
        videos = list(videos)
        if progress:
            import sys

            from tqdm import tqdm

            videos = tqdm(videos, desc="features", unit="video", file=sys.stderr)
        return [self.features(v) for v in videos]

    # ---- per modality

    def _meta(self, video: Video) -> dict[str, np.ndarray]:
        fps = self.layout.fps(video)
        duration = _video_duration(video.path)
        n_frames = max(1, int(round(duration * fps)))
        return {
            "times": tick_times(duration, self.ticks.hz),
            "fps": np.float64(fps),
            "n_frames": np.int64(n_frames),
            "duration": np.float64(duration),
        }

    def _frame_labels(self, video: Video, n_frames: int) -> np.ndarray | None:
        ann = self.layout.annotation(video)
        if ann is None:
            return None
        if ann.frame_annotation and not ann.fr_detailed_ah:
            out = np.zeros(n_frames, np.int8)
            for n, lab in ann.frame_annotation.items():
                if 0 <= n < n_frames:
                    out[n] = 1 if lab else 0
            return out
        return ann.frame_labels(n_frames)

    def _video(self, video: Video, times: np.ndarray, fps: float) -> dict[str, np.ndarray]:
        enc = self.encoders.video
        length = int(getattr(enc, "num_frames", 16))
        crops = {f.frame: f.path for f in self.layout.faces(video, fps=fps)}
        available = sorted(crops)
        loaded: dict[int, np.ndarray] = {}
        clips, rows = [], []
        for i, t in enumerate(times):
            idx = clip_indices(newest_frame(t, fps), length, available)
            if idx is None:
                continue
            for n in set(idx) - loaded.keys():
                loaded[n] = _load_face(crops[n])
            clips.append(np.stack([loaded[n] for n in idx]))
            rows.append(i)
        emb = np.zeros((len(times), int(enc.dim)), np.float32)
        present = np.zeros(len(times), np.float32)
        b = self.ticks.batch
        for s in range(0, len(clips), b):
            out = np.asarray(enc.encode(clips[s : s + b]), np.float32)
            emb[rows[s : s + b]] = out
        present[rows] = 1.0
        return {"emb": emb, "present": present}

    def _audio(self, video: Video, times: np.ndarray) -> dict[str, np.ndarray]:
        enc = self.encoders.audio
        try:
            audio = self.layout.audio(video, AUDIO_RATE)
        except BahLayoutError as e:
            if "no audio stream" not in str(e):
                raise
            audio = np.zeros(0, np.float32)
        emb = np.zeros((len(times), int(enc.dim)), np.float32)
        present = np.zeros(len(times), np.float32)
        windows, rows = [], []
        for i, t in enumerate(times):
            span = audio_span(min(int(round(t * AUDIO_RATE)), audio.size), self.ticks, enc)
            if span is not None:
                windows.append(audio[span[0] : span[1]])
                rows.append(i)
        b = self.ticks.batch
        for s in range(0, len(windows), b):
            emb[rows[s : s + b]] = np.asarray(enc.encode(windows[s : s + b]), np.float32)
        present[rows] = 1.0
        return {"emb": emb, "present": present}

    def _text(self, video: Video, times: np.ndarray, duration: float) -> dict[str, np.ndarray]:
        enc = self.encoders.text
        utts = self.layout.utterances(video, duration=duration)
        texts = []
        for t in times:
            said = [u.text for u in utts if u.end is not None and u.end <= t + _EPS and u.text]
            texts.append(transcript_so_far(said, self.ticks.text_max_words))
        unique = sorted({s for s in texts if s})
        table: dict[str, np.ndarray] = {}
        b = self.ticks.batch
        for s in range(0, len(unique), b):
            out = np.asarray(enc.encode(unique[s : s + b]), np.float32)
            table.update(zip(unique[s : s + b], out, strict=True))
        emb = np.zeros((len(times), int(enc.dim)), np.float32)
        present = np.zeros(len(times), np.float32)
        for i, s in enumerate(texts):
            if s:
                emb[i] = table[s]
                present[i] = 1.0
        return {"emb": emb, "present": present}
