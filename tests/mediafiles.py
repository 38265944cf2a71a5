"""Video and container builders for tests: a real face (scikit-image's astronaut photo)
moving across frames, muxed with test speech into an mp4. Built at run time, in tmp dirs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def astronaut_frames(n: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """``n`` RGB frames of a real face whose crop window drifts left and right."""
    from skimage import data

    img = data.astronaut()  # 512x512, face around rows 30-230, cols 150-330
    out = []
    for i in range(n):
        dx = int(40 * np.sin(2 * np.pi * i / max(n, 60)))
        x0 = int(np.clip(100 + dx, 0, img.shape[1] - width))
        out.append(np.ascontiguousarray(img[0:height, x0 : x0 + width]))
    return out


def write_media(
    path: Path,
    audio: np.ndarray | None,
    frames: list[np.ndarray] | None,
    fps: int = 15,
    sample_rate: int = 16000,
    audio_start_s: float = 0.0,
) -> Path:
    """Mux 16 kHz float audio (AAC) and RGB frames (H.264) into ``path`` (mp4); the audio
    starts ``audio_start_s`` after the video."""
    container = av.open(str(path), "w")
    vstream = astream = None
    if frames:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height = frames[0].shape[1], frames[0].shape[0]
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"preset": "ultrafast"}
    if audio is not None:
        astream = container.add_stream("aac", rate=48000)
        astream.layout = "mono"
    if astream is not None and audio is not None:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=48000)
        pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
        step = 1024
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = i + int(round(audio_start_s * sample_rate))
            frame.time_base = Fraction(1, sample_rate)
            for rf in resampler.resample(frame):
                for packet in astream.encode(rf):
                    container.mux(packet)
        for rf in resampler.resample(None):
            for packet in astream.encode(rf):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    if vstream is not None and frames:
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            for packet in vstream.encode(vf):
                container.mux(packet)
        for packet in vstream.encode(None):
            container.mux(packet)
    container.close()
    return path


# The display matrices (16.16 fixed point a, b, u, c, d, v, and 2.30 x, y, w) of an mp4
# track header that show the stored frames turned by a quarter turn: what phones write
# (FFmpeg's "rotate" metadata: clockwise degrees).
_DISPLAY_MATRIX = {
    90: (0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30),
    180: (-(1 << 16), 0, 0, 0, -(1 << 16), 0, 0, 0, 1 << 30),
    270: (0, -(1 << 16), 0, 1 << 16, 0, 0, 0, 0, 1 << 30),
}


def tag_rotation(path: Path, clockwise: int) -> Path:
    """Mark the video track of an mp4 written by `write_media` to be shown turned
    ``clockwise`` degrees (90, 180, 270), as a phone's recording is: its track header's
    display matrix is rewritten in place (PyAV cannot write one)."""
    import struct

    data = bytearray(path.read_bytes())
    i = data.find(b"tkhd")
    tagged = 0
    while i > 0:
        version = data[i + 4]
        matrix = i + 4 + (40 if version == 0 else 52)  # after the fields before it
        width, height = struct.unpack(">II", data[matrix + 36 : matrix + 44])
        if width and height:  # the video track (an audio track has no size)
            data[matrix : matrix + 36] = struct.pack(">9i", *_DISPLAY_MATRIX[clockwise])
            tagged += 1
        i = data.find(b"tkhd", i + 4)
    assert tagged == 1, f"{path}: {tagged} video track headers"
    path.write_bytes(data)
    return path
