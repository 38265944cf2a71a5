"""Test media built at run time (nothing recorded is committed): audio helpers.

Audio comes back as 16 kHz mono float32 in [-1, 1], resampled with PyAV (the
project's one resampler). Helpers raise `MediaUnavailable` (a ``pytest.skip``
exception) with a reason when a system package they need is missing.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

__all__ = [
    "LIBRIVOX_DIR",
    "MediaUnavailable",
    "decode_audio",
    "espeak_speech",
    "librivox_reference",
    "librivox_speech",
    "silence",
]

SAMPLE_RATE = 16000
# Shipped by the Debian package `pocketsphinx-en-us`/`pocketsphinx` test data.
LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")

MediaUnavailable = pytest.skip.Exception


def decode_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio file (path or bytes) to mono float32 at ``sample_rate`` with av."""
    src = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with av.open(src) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def librivox_reference(directory: Path = LIBRIVOX_DIR) -> str:
    """Reference text of the clip: the `transcription` lines without <s>, </s> and ids."""
    lines = (directory / "transcription").read_text().splitlines()
    text = [re.sub(r"</?s>|\([^)]*\)", " ", line) for line in lines if line.strip()]
    return " ".join(" ".join(text).split())


def librivox_speech(directory: Path = LIBRIVOX_DIR) -> tuple[np.ndarray, str]:
    """The ~25 s LibriVox read-speech clip (5 wavs, sorted, concatenated) and its reference."""
    wavs = sorted(directory.glob("*.wav")) if directory.is_dir() else []
    if not wavs or not (directory / "transcription").is_file():
        raise MediaUnavailable(
            f"LibriVox test clip not found in {directory} (Debian package with pocketsphinx "
            "test data not installed)"
        )
    audio = np.concatenate([decode_audio(p) for p in wavs])
    return audio, librivox_reference(directory)


def espeak_speech(
    text: str, rate_wpm: int = 150, voice: str = "en-us", pitch: int | None = None
) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng (Debian `espeak-ng`) as 16 kHz float32."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MediaUnavailable("espeak-ng is not installed (Debian package espeak-ng)")
    cmd = [exe, "--stdout", "-s", str(int(rate_wpm)), "-v", voice]
    if pitch is not None:
        cmd += ["-p", str(int(pitch))]
    proc = subprocess.run(cmd + [text], capture_output=True, check=True, timeout=60)
    return decode_audio(proc.stdout)


def silence(seconds: float, noise_db: float | None = None, seed: int = 0) -> np.ndarray:
    """``seconds`` of digital silence, or of white noise at ``noise_db`` dBFS RMS."""
    n = int(round(seconds * SAMPLE_RATE))
    if noise_db is None:
        return np.zeros(n, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 10 ** (noise_db / 20)).astype(np.float32)
