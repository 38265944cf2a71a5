"""A tiny synthetic BAH dataset in the distributed layout, generated at test time.

`make_bah_fixture(root)` writes, under ``root``, everything `models.bah_layout` reads:
``Videos/<pid>/Visite_1/<file>.mp4`` (H.264 video at 24 fps + AAC tone, a few seconds),
``cropped-aligned-faces/<pid>/Visite_1/<file>.mp4/frame-<N>.jpg``,
``transcription/<pid>/Visite_1/<stem>.yml``, ``split/*.txt``, ``split-frames/*.txt`` and
``video_annotation_transcript.yaml``. Nothing is recorded from people: faces are drawn
(a flat grey face with dark eyes and mouth), audio is a pure tone.

Quirks of the real files are reproduced: transcript timestamps are ``!!python/tuple``
pairs that restart (here every ~1 s instead of ~30 s, the videos being short) and the last
end is null; some face frames are missing (no face found), so frame indices have gaps;
split transcripts contain commas; ``time_detailed_ah`` is 'HH:MM:SS.mmm'.

Planted cross-modal signal (learnable only by combining face and voice):

- each video has one tone, low (``LOW_HZ``) or high (``HIGH_HZ``): its *audio class*;
- each frame has a face brightness, dark (``DARK``) or bright (``BRIGHT``): its *face class*;
- a frame is A/H (label 1) iff its face class disagrees with the video's audio class
  (dark face + high tone, or bright face + low tone);
- positive videos have one A/H segment (about the middle 40 % of frames) where the face
  flips class; negative videos agree throughout. ``global_ah`` = 1 iff a segment exists.

Labels and tone classes are crossed so that neither modality alone predicts the label,
and the transcripts are the same kind of neutral text for both classes. Over time, though,
the face alone gives it away (a positive video's face changes class, a negative's never
does). ``xor_chunk_s`` closes that: the tone class is drawn at random for every chunk of
that many seconds, the face class is the tone class XOR the frame label, and the A/H
segment covers whole chunks, so the face sequence alone and the voice alone are both
independent of the labels (``tone_hz`` is then the first chunk's tone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml
from PIL import Image

__all__ = [
    "BRIGHT",
    "DARK",
    "FPS",
    "HIGH_HZ",
    "LOW_HZ",
    "BahFixture",
    "FixtureVideo",
    "clock",
    "make_bah_fixture",
]

FPS = 24
AUDIO_RATE = 44100  # not 16 kHz, so readers must resample
LOW_HZ = 300.0
HIGH_HZ = 1200.0
DARK = 60
BRIGHT = 190
FACE_SIZE = 48
VIDEO_SIZE = 64
_WORDS = [
    "well, I usually get up",
    "and then, um, I make coffee",
    "I guess I like it",
    "but sometimes I skip it",
    "and go for a walk",
]


@dataclass
class FixtureVideo:
    """Ground truth of one generated video."""

    video_id: str
    split: str
    label: int
    tone_hz: float
    n_frames: int
    segment: tuple[int, int] | None  # inclusive frame range of A/H, None if negative
    missing_frames: tuple[int, ...]
    utterances: list[tuple[float, float | None, str]]  # absolute; last end None
    frame_labels: np.ndarray = field(repr=False)
    transcript: str = ""

    @property
    def stem(self) -> str:
        """File name without ``.mp4``."""
        return Path(self.video_id).stem

    @property
    def inner(self) -> str:
        """``<pid>/Visite_1/<file>.mp4``."""
        return self.video_id.removeprefix("Videos/")


@dataclass
class BahFixture:
    """The generated dataset: its root and the truth of every video."""

    root: Path
    videos: list[FixtureVideo]
    seconds: float
    fps: int = FPS

    def by_split(self, split: str) -> list[FixtureVideo]:
        """Videos of one split in file order."""
        return [v for v in self.videos if v.split == split]


def clock(seconds: float) -> str:
    """Seconds as 'HH:MM:SS.mmm'."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def _face(brightness: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A drawn face: flat grey level, two dark eyes and a mouth, slight noise (RGB uint8)."""
    img = np.full((size, size), float(brightness))
    e, m = size // 8, size // 4
    img[size // 3 : size // 3 + e, m : m + e] *= 0.3
    img[size // 3 : size // 3 + e, size - m - e : size - m] *= 0.3
    img[2 * size // 3 : 2 * size // 3 + e // 2, m : size - m] *= 0.4
    img += rng.normal(0.0, 3.0, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _write_mp4(
    path: Path,
    frames: list[np.ndarray],
    tone_hz: float,
    seconds: float,
    chunk_hz: tuple[float, np.ndarray] | None = None,
) -> None:
    """H.264 video at FPS and an AAC mono tone of ``seconds`` (PyAV); ``chunk_hz`` =
    (chunk seconds, tone of each chunk) switches the tone chunk by chunk instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = VIDEO_SIZE, VIDEO_SIZE, "yuv420p"
        vs.options = {"preset": "ultrafast"}
        as_ = out.add_stream("aac", rate=AUDIO_RATE)
        as_.layout = "mono"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        n = int(round(seconds * AUDIO_RATE))
        t = np.arange(n) / AUDIO_RATE
        tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        if chunk_hz is not None:
            hz = chunk_hz[1][np.minimum((t / chunk_hz[0]).astype(int), chunk_hz[1].size - 1)]
            tone = (0.3 * np.sin(2 * np.pi * np.cumsum(hz) / AUDIO_RATE)).astype(np.float32)
        step = 1024
        for i in range(0, n, step):
            chunk = tone[i : i + step]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
            frame.sample_rate = AUDIO_RATE
            frame.pts = i
            frame.time_base = Fraction(1, AUDIO_RATE)
            for packet in as_.encode(frame):
                out.mux(packet)
        for packet in as_.encode():
            out.mux(packet)


def _utterances(seconds: float, rng: np.random.Generator) -> list[tuple[float, float, str]]:
    """Absolute chunks covering the video: ~0.45 s speech, ~0.1 s gaps."""
    out = []
    t = 0.0
    i = 0
    while t + 0.3 < seconds:
        dur = round(0.35 + 0.1 * rng.random(), 3)
        out.append((round(t, 3), round(min(t + dur, seconds), 3), _WORDS[i % len(_WORDS)]))
        t = round(t + dur + 0.1, 3)
        i += 1
    return out


def _transcript_yaml(chunks: list[tuple[float, float, str]], per_window: int) -> str:
    """Whisper-style YAML: times restart each window (offset = previous end), last end null."""
    records = []
    offset = 0.0
    for i, (start, end, text) in enumerate(chunks):
        if i and i % per_window == 0:
            offset = chunks[i - 1][1]
        rel_end: float | None = round(end - offset, 3)
        if i == len(chunks) - 1:
            rel_end = None
        records.append({"text": " " + text, "timestamp": (round(start - offset, 3), rel_end)})
    doc = {"text": " " + " ".join(c[2] for c in chunks), "chunks": records}
    # yaml.Dumper writes tuples as !!python/tuple, as the distributed files have them.
    return yaml.dump(doc, Dumper=yaml.Dumper, allow_unicode=True, sort_keys=False)


def make_bah_fixture(
    root: str | Path,
    counts: dict[str, int] | None = None,
    seconds: float = 2.0,
    seed: int = 0,
    xor_chunk_s: float | None = None,
) -> BahFixture:
    """Write the synthetic dataset under ``root`` (``counts`` = videos per split;
    ``xor_chunk_s``: a random tone per chunk, see the module docstring)."""
    root = Path(root)
    counts = counts or {"train": 4, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    n_frames = int(round(seconds * FPS))
    videos: list[FixtureVideo] = []
    annotations: dict[str, dict[str, object]] = {}
    index = 0
    for split, count in counts.items():
        for k in range(count):
            pid = f"{90000 + index}"
            question = index % 7 + 1
            label = k % 2
            audio_class = (k // 2) % 2  # crossed with the label
            tone_hz = HIGH_HZ if audio_class else LOW_HZ
            name = f"{pid}_Question_{question}_2024-11-19_15-12-{index:02d}_Video.mp4"
            video_id = f"Videos/{pid}/Visite_1/{name}"
            segment = (int(n_frames * 0.3), int(n_frames * 0.7) - 1) if label else None
            frame_labels = np.zeros(n_frames, dtype=np.int8)
            if segment:
                frame_labels[segment[0] : segment[1] + 1] = 1
            audio_frames = np.full(n_frames, audio_class)
            chunk_hz = None
            if xor_chunk_s is not None:
                size = max(1, int(round(xor_chunk_s * FPS)))
                classes = rng.integers(0, 2, -(-n_frames // size))
                audio_frames = np.repeat(classes, size)[:n_frames]
                chunk_hz = (size / FPS, np.where(classes == 1, HIGH_HZ, LOW_HZ))
                tone_hz = float(chunk_hz[1][0])
                if segment:  # whole chunks, about the middle third
                    first = int(round(n_frames * 0.3 / size))
                    last = max(first + 1, int(round(n_frames * 0.7 / size)))
                    segment = (first * size, min(last * size, n_frames) - 1)
                    frame_labels[:] = 0
                    frame_labels[segment[0] : segment[1] + 1] = 1
            face_class = np.where(frame_labels == 1, 1 - audio_frames, audio_frames)
            missing = (3, 4, 5, n_frames - 2) if index % 2 == 0 else (7,)

            frames, faces_dir = [], root / "cropped-aligned-faces" / pid / "Visite_1" / name
            faces_dir.mkdir(parents=True, exist_ok=True)
            for n in range(n_frames):
                level = BRIGHT if face_class[n] else DARK
                frames.append(_face(level, VIDEO_SIZE, rng))
                if n not in missing:
                    Image.fromarray(_face(level, FACE_SIZE, rng)).save(
                        faces_dir / f"frame-{n}.jpg", quality=90
                    )
            _write_mp4(root / video_id, frames, tone_hz, seconds, chunk_hz)

            chunks = _utterances(seconds, rng)
            ypath = root / "transcription" / pid / "Visite_1" / f"{Path(name).stem}.yml"
            ypath.parent.mkdir(parents=True, exist_ok=True)
            ypath.write_text(_transcript_yaml(chunks, per_window=2), encoding="utf-8")
            text = " ".join(c[2] for c in chunks)

            annotations[name] = {
                "global_ah": label,
                "fr_detailed_ah": [list(segment)] if segment else [],
                "time_detailed_ah": (
                    [[clock(segment[0] / FPS), clock((segment[1] + 1) / FPS)]] if segment else []
                ),
                "frame_annotation": [int(x) for x in frame_labels],
                "all_cues": ["inconsistency face-voice"] if label else [],
            }
            utts: list[tuple[float, float | None, str]] = [(s, e, t) for s, e, t in chunks[:-1]] + [
                (chunks[-1][0], None, chunks[-1][2])
            ]
            videos.append(
                FixtureVideo(
                    video_id=video_id,
                    split=split,
                    label=label,
                    tone_hz=tone_hz,
                    n_frames=n_frames,
                    segment=segment,
                    missing_frames=missing,
                    utterances=utts,
                    frame_labels=frame_labels,
                    transcript=text,
                )
            )
            index += 1

    (root / "split").mkdir(parents=True, exist_ok=True)
    (root / "split-frames").mkdir(parents=True, exist_ok=True)
    for split in counts:
        vids = [v for v in videos if v.split == split]
        lines = [f"{v.video_id},{v.label},{v.transcript}" for v in vids]
        (root / "split" / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        frame_lines = [
            f"{v.inner}/frame-{n}.jpg,{int(v.frame_labels[n])}"
            for v in vids
            for n in range(v.n_frames)
            if n not in v.missing_frames
        ]
        (root / "split-frames" / f"{split}.txt").write_text(
            "\n".join(frame_lines) + "\n", encoding="utf-8"
        )
    (root / "video_annotation_transcript.yaml").write_text(
        yaml.safe_dump(annotations, sort_keys=False), encoding="utf-8"
    )
    return BahFixture(root=root, videos=videos, seconds=seconds)
