"""Reader for the BAH dataset as distributed to licensed users, and a feature cache.

Layout under the dataset root::

    Videos/<pid>/Visite_1/<file>.mp4
    cropped-aligned-faces/<pid>/Visite_1/<file>.mp4/frame-<N>.jpg   (N = raw frame index)
    transcription/<pid>/Visite_1/<stem>.yml                         (Whisper chunks)
    split/{train,val,test}.txt          video_id,label,transcript (split on the first two commas)
    split-frames/{train,val,test}.txt   frame_id,label
    video_annotation_transcript.yaml    per video: global_ah, fr_detailed_ah, time_detailed_ah,
                                        frame_annotation, all_cues

Transcript chunk timestamps are ``!!python/tuple [start, end]`` relative to a decoding
window that restarts about every 30 s; `read_transcript` unrolls them to absolute times.
Every malformed input raises `BahLayoutError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from models.bah import BahFormatError, participant_of, question_of, read_split

__all__ = [
    "AUDIO_RATE",
    "BahLayout",
    "BahLayoutError",
    "FaceFrame",
    "FeatureCache",
    "FrameLabel",
    "Utterance",
    "Video",
    "VideoAnnotation",
    "extract_audio",
    "parse_clock",
    "read_annotations",
    "read_frame_split",
    "read_transcript",
    "video_fps",
]

AUDIO_RATE = 16000
SPLITS = ("train", "val", "test")
_FRAME_RE = re.compile(r"^frame-(\d+)\.jpg$")
_FRAME_ID_RE = re.compile(r"^(?P<video>.+?)/frame-(?P<n>\d+)\.jpg$")
_CLOCK_RE = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")
# A chunk that starts this much before the previous one ended opens a new decoding window.
_RESTART_TOLERANCE_S = 0.05


class BahLayoutError(BahFormatError):
    """A missing or malformed file of the BAH layout (the message names the file)."""


# --- data types --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Utterance:
    """One transcript chunk in absolute seconds of the video (``end`` None if unknown)."""

    start: float
    end: float | None
    text: str


@dataclass(frozen=True, slots=True)
class FaceFrame:
    """A cropped, aligned face: raw frame index in the video, its time and jpg path."""

    frame: int
    t: float
    path: Path


@dataclass(frozen=True, slots=True)
class FrameLabel:
    """One line of a frame split; ``video``/``frame`` are parsed from ``frame_id`` if possible."""

    frame_id: str
    label: int
    video: str | None
    frame: int | None


@dataclass(frozen=True, slots=True)
class VideoAnnotation:
    """Per-video entry of ``video_annotation_transcript.yaml``."""

    key: str
    global_ah: int
    fr_detailed_ah: tuple[tuple[int, int], ...]
    time_detailed_ah: tuple[tuple[float, float], ...]
    frame_annotation: Mapping[int, int]
    all_cues: tuple[str, ...]

    def frame_labels(self, n_frames: int) -> np.ndarray:
        """Per-frame 0/1 labels (int8) from the inclusive ``fr_detailed_ah`` segments."""
        out = np.zeros(n_frames, dtype=np.int8)
        for a, b in self.fr_detailed_ah:
            out[max(a, 0) : max(min(b + 1, n_frames), 0)] = 1
        return out


@dataclass(frozen=True, slots=True)
class Video:
    """One video of a split with the paths of everything the layout has for it."""

    video_id: str
    label: int
    transcript_text: str
    path: Path
    faces_dir: Path
    transcript_path: Path
    participant: str | None = None
    question: int | None = None


# --- parsers -----------------------------------------------------------------------------


class _TranscriptLoader(yaml.SafeLoader):
    """SafeLoader that also accepts ``!!python/tuple`` (as a list); nothing else unsafe."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> list[Any]:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!!python/tuple must be a sequence", node.start_mark
        )
    return loader.construct_sequence(node, deep=True)


_TranscriptLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


def _load_yaml(path: Path) -> Any:
    if not path.is_file():
        raise BahLayoutError(f"{path}: file not found")
    try:
        with path.open("r", encoding="utf-8-sig") as f:
            return yaml.load(f, Loader=_TranscriptLoader)  # noqa: S506 - safe subclass
    except yaml.YAMLError as e:
        raise BahLayoutError(f"{path}: invalid YAML: {e}") from e


def _number(value: Any, path: Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BahLayoutError(f"{path}: {what} must be a number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise BahLayoutError(f"{path}: {what} must be finite and >= 0, got {value!r}")
    return float(value)


def read_transcript(path: str | Path, duration: float | None = None) -> list[Utterance]:
    """Read a Whisper transcript YAML and return its chunks with absolute, unrolled times.

    Accepts ``{text, chunks: [{timestamp: (s, e), text}]}`` or a bare list of chunks. A new
    decoding window starts when a chunk begins before the previous one ended; its times are
    then offset by the previous chunk's absolute end (Whisper seeks to the last timestamp).
    A null end is the next chunk's start, or ``duration`` (if given) for the last chunk.
    """
    p = Path(path)
    data = _load_yaml(p)
    chunks = data.get("chunks") if isinstance(data, dict) else data
    if data is None or chunks is None:
        return []
    if not isinstance(chunks, list):
        raise BahLayoutError(f"{p}: expected a list of chunks, got {type(chunks).__name__}")
    raw: list[tuple[float, float | None, str]] = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or "timestamp" not in chunk:
            raise BahLayoutError(f"{p}: chunk {i} has no 'timestamp'")
        ts = chunk["timestamp"]
        if not isinstance(ts, list) or len(ts) != 2:
            raise BahLayoutError(f"{p}: chunk {i}: timestamp must be a (start, end) pair")
        start = _number(ts[0], p, f"chunk {i} start")
        end = None if ts[1] is None else _number(ts[1], p, f"chunk {i} end")
        if end is not None and end < start:
            raise BahLayoutError(f"{p}: chunk {i}: end {end} before start {start}")
        text = chunk.get("text", "")
        if not isinstance(text, str):
            raise BahLayoutError(f"{p}: chunk {i}: text must be a string")
        raw.append((start, end, text.strip()))

    out: list[tuple[float, float | None, str]] = []
    offset = 0.0
    prev_rel_end = 0.0
    prev_abs_end = 0.0
    for start, end, text in raw:
        if out and start < prev_rel_end - _RESTART_TOLERANCE_S:
            offset = prev_abs_end
        abs_start = offset + start
        abs_end = None if end is None else offset + end
        out.append((abs_start, abs_end, text))
        prev_rel_end = end if end is not None else start
        prev_abs_end = abs_end if abs_end is not None else abs_start
    result: list[Utterance] = []
    for i, (start, end, text) in enumerate(out):
        if end is None:
            if i + 1 < len(out):
                end = max(start, out[i + 1][0])
            elif duration is not None:
                end = max(start, float(duration))
        result.append(Utterance(start=start, end=end, text=text))
    return result


def parse_clock(value: Any, *, where: str = "<value>") -> float:
    """Parse 'HH:MM:SS.mmm' (or a number of seconds) into seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = _CLOCK_RE.match(str(value).strip()) if isinstance(value, str) else None
    if m is None:
        raise BahLayoutError(f"{where}: expected a time 'HH:MM:SS.mmm', got {value!r}")
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _pairs(value: Any, where: str, conv: Callable[[Any, str], Any]) -> tuple[tuple[Any, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BahLayoutError(f"{where}: expected a list of [start, end] pairs")
    out = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise BahLayoutError(f"{where}: expected [start, end], got {pair!r}")
        a, b = conv(pair[0], where), conv(pair[1], where)
        if b < a:
            raise BahLayoutError(f"{where}: segment end before start in {pair!r}")
        out.append((a, b))
    return tuple(out)


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise BahLayoutError(f"{where}: expected an integer, got {value!r}")


def _frame_annotation(value: Any, where: str) -> dict[int, int]:
    if value is None:
        return {}
    if isinstance(value, list):  # one label per frame, from frame 0
        return {i: _as_int(v, where) for i, v in enumerate(value)}
    if isinstance(value, dict):
        return {_as_int(k, where): _as_int(v, where) for k, v in value.items()}
    raise BahLayoutError(f"{where}: frame_annotation must be a list or a mapping")


def _cues(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(c.strip() for c in re.split(r"[,;]", value) if c.strip())
    if isinstance(value, dict):
        return tuple(str(k) for k, v in value.items() if v)
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return tuple(c.strip() for c in value if c.strip())
    raise BahLayoutError(f"{where}: all_cues must be a list of strings")


def read_annotations(path: str | Path) -> dict[str, VideoAnnotation]:
    """Read ``video_annotation_transcript.yaml`` into annotations keyed as in the file."""
    p = Path(path)
    data = _load_yaml(p)
    if not isinstance(data, dict):
        raise BahLayoutError(f"{p}: expected a mapping of video -> annotation")
    out: dict[str, VideoAnnotation] = {}
    for key, entry in data.items():
        where = f"{p}: {key}"
        if not isinstance(entry, dict):
            raise BahLayoutError(f"{where}: expected a mapping")
        if "global_ah" not in entry:
            raise BahLayoutError(f"{where}: missing 'global_ah'")
        g = _as_int(entry["global_ah"], f"{where}: global_ah")
        if g not in (0, 1):
            raise BahLayoutError(f"{where}: global_ah must be 0 or 1, got {g}")
        out[str(key)] = VideoAnnotation(
            key=str(key),
            global_ah=g,
            fr_detailed_ah=_pairs(
                entry.get("fr_detailed_ah"),
                f"{where}: fr_detailed_ah",
                _as_int,
            ),
            time_detailed_ah=_pairs(
                entry.get("time_detailed_ah"),
                f"{where}: time_detailed_ah",
                lambda v, w: parse_clock(v, where=w),
            ),
            frame_annotation=_frame_annotation(
                entry.get("frame_annotation"), f"{where}: frame_annotation"
            ),
            all_cues=_cues(entry.get("all_cues"), f"{where}: all_cues"),
        )
    return out


def read_frame_split(path: str | Path) -> list[FrameLabel]:
    """Read a ``split-frames`` file (``frame_id,label`` per line, blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise BahLayoutError(f"{p}: file not found")
    out: list[FrameLabel] = []
    with p.open("r", encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            frame_id, sep, label_s = line.rpartition(",")
            if not sep or not frame_id.strip() or label_s.strip() not in ("0", "1"):
                raise BahLayoutError(
                    f"{p}:{lineno}: expected 'frame_id,label' with label 0 or 1, got {line[:80]!r}"
                )
            frame_id = frame_id.strip()
            m = _FRAME_ID_RE.match(frame_id)
            out.append(
                FrameLabel(
                    frame_id=frame_id,
                    label=int(label_s),
                    video=m.group("video") if m else None,
                    frame=int(m.group("n")) if m else None,
                )
            )
    return out


# --- media -------------------------------------------------------------------------------


def video_fps(path: str | Path) -> float:
    """Frame rate of the first video stream, read from the container with PyAV."""
    import av

    p = Path(path)
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise BahLayoutError(f"{p}: no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise BahLayoutError(f"{p}: frame rate unknown")
            return float(rate)
    except av.error.FFmpegError as e:
        raise BahLayoutError(f"{p}: cannot read video: {e}") from e


def extract_audio(path: str | Path, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """Decode the audio track of a media file to mono float32 at ``sample_rate`` (PyAV)."""
    import av

    p = Path(path)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    limit: int | None = None
    try:
        with av.open(str(p)) as container:
            if not container.streams.audio:
                raise BahLayoutError(f"{p}: no audio stream")
            stream = container.streams.audio[0]
            # AAC pads its last frame; the container's stream duration says where audio ends.
            if stream.duration and stream.time_base:
                limit = int(round(float(stream.duration * stream.time_base) * sample_rate))
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise BahLayoutError(f"{p}: cannot decode audio: {e}") from e
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    return audio[:limit] if limit is not None else audio


# --- the layout --------------------------------------------------------------------------


def _inner(video_id: str) -> Path:
    """``<pid>/Visite_1/<file>.mp4`` of a video id (drops a leading ``Videos/``)."""
    parts = Path(video_id).parts
    return Path(*parts[1:]) if parts and parts[0] == "Videos" and len(parts) > 1 else Path(*parts)


class BahLayout:
    """The distributed BAH layout under ``root``: splits, annotations, faces, transcripts, media."""

    def __init__(self, root: str | Path) -> None:
        """Point at a dataset root; nothing is read until asked for."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise BahLayoutError(f"{self.root}: dataset root is not a directory")
        self._annotations: dict[str, VideoAnnotation] | None = None

    def video(self, video_id: str, label: int = 0, transcript_text: str = "") -> Video:
        """The `Video` of a video id with the paths of its mp4, faces and transcript."""
        inner = _inner(video_id)
        path = self.root / video_id
        if not path.is_file() and (self.root / "Videos" / inner).is_file():
            path = self.root / "Videos" / inner
        return Video(
            video_id=video_id,
            label=label,
            transcript_text=transcript_text,
            path=path,
            faces_dir=self.root / "cropped-aligned-faces" / inner,
            transcript_path=self.root / "transcription" / inner.with_suffix(".yml"),
            participant=participant_of(video_id),
            question=question_of(video_id),
        )

    def split(self, name: str) -> list[Video]:
        """Videos of ``split/<name>.txt`` (name: train, val or test)."""
        path = self.root / "split" / f"{name}.txt"
        if not path.is_file():
            raise BahLayoutError(f"{path}: split file not found")
        try:
            items = read_split(path)
        except BahFormatError as e:
            raise BahLayoutError(str(e)) from e
        return [self.video(i.video_id, i.label, i.transcript) for i in items]

    def frame_split(self, name: str) -> list[FrameLabel]:
        """Frame labels of ``split-frames/<name>.txt``."""
        return read_frame_split(self.root / "split-frames" / f"{name}.txt")

    def annotations(self) -> dict[str, VideoAnnotation]:
        """All entries of ``video_annotation_transcript.yaml`` (read once)."""
        if self._annotations is None:
            self._annotations = read_annotations(self.root / "video_annotation_transcript.yaml")
        return self._annotations

    def annotation(self, video: Video | str) -> VideoAnnotation | None:
        """The annotation of a video, matched by id, inner path, file name or stem."""
        vid = video.video_id if isinstance(video, Video) else video
        ann = self.annotations()
        inner = _inner(vid)
        for key in (vid, str(inner), inner.name, inner.stem):
            if key in ann:
                return ann[key]
        return None

    def faces(self, video: Video, fps: float | None = None) -> list[FaceFrame]:
        """Face crops sorted by raw frame index (gaps where no face was found)."""
        if not video.faces_dir.is_dir():
            raise BahLayoutError(f"{video.faces_dir}: face directory not found")
        rate = fps if fps is not None else self.fps(video)
        frames = []
        for p in video.faces_dir.iterdir():
            m = _FRAME_RE.match(p.name)
            if m:
                n = int(m.group(1))
                frames.append(FaceFrame(frame=n, t=n / rate, path=p))
        return sorted(frames, key=lambda f: f.frame)

    def utterances(self, video: Video, duration: float | None = None) -> list[Utterance]:
        """The transcript chunks of a video, in absolute seconds."""
        return read_transcript(video.transcript_path, duration=duration)

    def fps(self, video: Video) -> float:
        """Frame rate of the video (≈ 24 in BAH, read per file)."""
        if not video.path.is_file():
            raise BahLayoutError(f"{video.path}: video file not found")
        return video_fps(video.path)

    def audio(self, video: Video, sample_rate: int = AUDIO_RATE) -> np.ndarray:
        """The video's audio as mono float32 at ``sample_rate``."""
        if not video.path.is_file():
            raise BahLayoutError(f"{video.path}: video file not found")
        return extract_audio(video.path, sample_rate)

    def splits(self) -> dict[str, list[Video]]:
        """Every split present under ``split/``."""
        return {s: self.split(s) for s in SPLITS if (self.root / "split" / f"{s}.txt").is_file()}


# --- feature cache -----------------------------------------------------------------------


_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")


class FeatureCache:
    """Numpy features per (model id, video id), stored as ``.npz`` under ``cache_dir``."""

    def __init__(self, cache_dir: str | Path) -> None:
        """Use (and create on first write) ``cache_dir``."""
        self.cache_dir = Path(cache_dir)

    def path(self, model_id: str, video_id: str) -> Path:
        """File of one entry: readable names plus a hash so distinct ids never collide."""
        digest = hashlib.sha1(f"{model_id}\0{video_id}".encode()).hexdigest()[:16]
        model = _SAFE_RE.sub("_", model_id)[:60] or "model"
        stem = _SAFE_RE.sub("_", Path(video_id).stem)[:60] or "video"
        return self.cache_dir / model / f"{stem}-{digest}.npz"

    def get(self, model_id: str, video_id: str) -> dict[str, np.ndarray] | None:
        """Cached arrays, or None if absent."""
        p = self.path(model_id, video_id)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise BahLayoutError(f"{p}: unreadable cache entry: {e}") from e

    def put(self, model_id: str, video_id: str, arrays: Mapping[str, np.ndarray]) -> Path:
        """Store arrays atomically (a reader never sees a half-written file)."""
        p = self.path(model_id, video_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def get_or_compute(
        self,
        model_id: str,
        video_id: str,
        compute: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """Cached arrays, computing and storing them on a miss."""
        cached = self.get(model_id, video_id)
        if cached is not None:
            return cached
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        self.put(model_id, video_id, arrays)
        return arrays
