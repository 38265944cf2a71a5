"""The full profile's streaming path: per-tick embeddings of a live session -> causal TCN -> p.

A trained full-profile weights directory (`models.train_full`) holds the encoders' names,
the tick settings and the frame-level `models.embedding_tcn.EmbeddingTCN` with its tuned
thresholds (frame level, and of the video decision, `FULL_METHOD`). `load_full_profile`
loads them; `FullStream` is the per-session tick model (no asyncio, called from the
session's analysis ticks in media order).

Per tick at media time ``t`` it featurizes what the session has by then with the rules
`models.bah_features` trains on (its helpers, not copies: `clip_indices`, `newest_frame`,
`audio_span`, `transcript_so_far`):

- **video**: the face clip of the last ``num_frames`` frame positions ending at the newest
  frame ``floor(t * CLIP_FPS)``. Frame positions are at ``CLIP_FPS`` (BAH videos are about
  24 fps), so a live clip spans the media time a training clip spans whatever the camera
  rate. A position without a crop takes the nearest earlier crop inside the window (the
  rule for frames without a crop in BAH); a window without any crop is masked. A session
  hands one frame per analysis tick to the analyzer (its latest-frame slot), so the other
  positions of the window repeat the crops of the frames the ticks saw.
  Crops, by ``face_crop``: ``"mesh"`` (default) is the lite face mesh's landmark box,
  rotated upright (`models.face.face_crop`, RGB, the encoder's ``image_size``); a frame
  without a face found gives no crop. ``"centre"`` takes the centred square of the whole
  frame, for media that are already face crops (e.g. BAH's ``cropped-aligned-faces`` or
  the tests' drawn faces, which the face mesh does not find).
- **audio**: the speech embedding of the last ``audio_window_s`` seconds of the session's
  16 kHz audio ring up to the tick's audio time; masked while shorter than the encoder
  needs.
- **text**: the text embedding of the committed transcript so far (its last
  ``text_max_words`` words); masked before the first word.

Modalities the weights were trained without are presented as missing, as in training.
The TCN steps once per tick (`TCNStream.step`, equal to the offline forward over the same
embeddings), so the session must tick at the checkpoint's rate (``FullProfile.hz``).

Backends (`load_full_profile`): ``"native"`` runs the encoders in torch on ``device`` and the
TCN in torch on the CPU (it is tiny, one row per tick); ``"onnxruntime"`` and ``"tensorrt"``
run the three encoders and the TCN's step graph (`RunnerTCNStream`) from an ``ahstream export
--profile full --weights-dir CKPT --out DIR`` of the same checkpoint (``engine_dir``; checked
by `models.export.read_full_export`); TensorRT engines come from ``DIR/engines`` (built there
when absent) and each is checked against ONNX Runtime before use. The numpy pre-processing
around the encoders (resizing, normalisation, tokenisation) is the same for every backend.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.bah_features import (
    MODALITIES,
    Encoders,
    TickConfig,
    audio_span,
    clip_indices,
    newest_frame,
    transcript_so_far,
)
from models.bah_layout import AUDIO_RATE
from models.embedding_tcn import EmbeddingTCN, RunnerTCNStream, TCNStream

__all__ = [
    "BACKENDS",
    "CLIP_FPS",
    "FACE_CROPS",
    "AudioSource",
    "FullProfile",
    "FullStream",
    "FullTick",
    "centre_crop",
    "load_full_profile",
]

#: Frame positions of a live face clip, per media second (BAH videos are about 24 fps).
CLIP_FPS = 24.0
#: What runs the encoders and the TCN (see the module docstring).
BACKENDS: tuple[str, ...] = ("native", "onnxruntime", "tensorrt")
#: How a live frame becomes a face crop (see the module docstring).
FACE_CROPS: tuple[str, ...] = ("mesh", "centre")
#: The video-level aggregation of the TCN's frame probabilities (`stream.aggregate`): the
#: maximum of a 1 s moving average (the BAH paper's), i.e. a video is A/H when it holds an
#: A/H stretch, as BAH's ``global_ah`` is defined (the mean would dilute a short segment).
#: Its threshold is tuned on val videos on this aggregate (`models.train_full`), so
#: `ahstream evaluate` reports the decision served; checkpoints from before that use the
#: frame-level threshold, with a warning.
FULL_METHOD = "max_ma1s"


class AudioSource(Protocol):
    """What a tick reads audio from (`stream.buffers.AudioRing`: 16 kHz, absolute indices)."""

    @property
    def start_index(self) -> int: ...

    @property
    def end_index(self) -> int: ...

    def read(self, i0: int, i1: int) -> np.ndarray: ...


@dataclass
class FullProfile:
    """A trained full-profile checkpoint, loaded: encoders, TCN, tick settings, threshold."""

    encoders: Encoders
    tcn: EmbeddingTCN
    ticks: TickConfig
    threshold: float  # of the video decision (`method`), tuned at video level on val
    frame_threshold: float  # of the frame probabilities, tuned on val frames
    modalities: tuple[str, ...]
    weights_dir: Path
    meta: dict[str, Any] = field(repr=False)
    face_crop: str = "mesh"
    method: str = FULL_METHOD
    backend: str = "native"  # one of BACKENDS
    device: str = "cpu"  # where the encoders run ("cpu" or "cuda")
    tcn_runner: Any = None  # a Runner of the TCN's step graph (None: the torch TCN)
    engine_dir: Path | None = None

    @property
    def hz(self) -> float:
        """Analysis ticks per media second the TCN was trained on."""
        return float(self.ticks.hz)

    def describe(self) -> dict[str, Any]:
        """Names of the models for `session.started`."""
        from models.hub_encoders import public_name

        names = {k: public_name(v) for k, v in self.encoders.names().items()}
        runs = f"{self.backend}, {self.device}" if self.backend != "tensorrt" else "tensorrt fp16"
        tcn_runs = "torch, cpu" if self.tcn_runner is None else runs
        out = {
            "video": f"{names['video']} (face crops: {self.face_crop}; {runs})",
            "audio": f"{names['audio']} ({runs})",
            "text": f"{names['text']} ({runs})",
            "tcn": f"causal embedding TCN ({public_name(self.weights_dir)}, learned inputs: "
            f"{', '.join(self.modalities)}; {tcn_runs})",
            "decision": {"source": "tcn", "method": self.method, "threshold": self.threshold},
            "analysis_hz": self.hz,
            "device": self.device,
        }
        if self.engine_dir is not None:
            out["engine_dir"] = public_name(self.engine_dir)
        return out


def load_full_profile(
    weights_dir: str | Path | None,
    *,
    device: str = "cpu",
    encoders: Encoders | None = None,
    face_crop: str = "mesh",
    backend: str = "native",
    engine_dir: str | Path | None = None,
) -> FullProfile:
    """Load a weights directory written by `models.train_full.train_full` (``ahstream train
    --profile full``) with the encoders it names (or ``encoders``, whose widths must match).

    ``backend`` "native" runs the encoders in torch on ``device``; "onnxruntime" (on
    ``device``) or "tensorrt" run them and the TCN's step graph from ``engine_dir``, an
    ``ahstream export --profile full --weights-dir`` of these weights.

    Raises `models.train_full.FullProfileError` (a ValueError) without a trained directory
    or for unusable weights, ValueError for an unknown ``face_crop``/``backend`` or a
    missing ``engine_dir``, `models.export.ExportError` for an export of other weights,
    `models.tensorrt.TensorRTUnavailable` for "tensorrt" without TensorRT or a GPU."""
    from models.train_full import (
        FullProfileError,
        read_tcn,
        read_weights,
        served_threshold,
        weights_encoders,
    )

    if face_crop not in FACE_CROPS:
        raise ValueError(f"unknown face crop {face_crop!r}; available: {', '.join(FACE_CROPS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend == "native" and engine_dir is not None:
        raise ValueError("an engine directory needs backend 'onnxruntime' or 'tensorrt'")
    if backend != "native" and engine_dir is None:
        raise ValueError(
            f"backend {backend!r} needs --engine-dir DIR (engine_dir=), an `ahstream export "
            "--profile full --weights-dir CKPT --out DIR` of these weights"
        )
    if weights_dir is None:
        raise FullProfileError(
            "the full profile needs trained weights: give --weights-dir DIR (weights_dir=), "
            "a directory written by `ahstream train --profile full --bah-root DIR --out-dir DIR`"
        )
    if backend == "tensorrt":  # fail before loading anything
        from models.tensorrt import gpu_name, import_tensorrt

        import_tensorrt()
        gpu_name()
    meta = read_weights(weights_dir)
    manifest: dict[str, Any] | None = None
    if engine_dir is not None:
        from models.export import read_full_export

        manifest, _ = read_full_export(engine_dir, weights_dir)
    # With exported graphs the torch encoders only give their settings and pre-processing:
    # they stay on the CPU, off the GPU the graphs run on.
    encoders = weights_encoders(meta, encoders, device if backend == "native" else "cpu")
    wd = Path(weights_dir)
    tcn, extra = read_tcn(wd, meta)
    ticks = TickConfig(**meta["ticks"])
    tcn_runner = None
    if manifest is not None and engine_dir is not None:
        tcn_runner = _use_exported(encoders, manifest, Path(engine_dir), backend, device)
    return FullProfile(
        encoders=encoders,
        tcn=tcn,
        ticks=ticks,
        threshold=served_threshold(extra),
        frame_threshold=float(extra["threshold"]),
        modalities=tuple(meta.get("modalities", MODALITIES)),
        weights_dir=wd,
        meta=meta,
        face_crop=face_crop,
        backend=backend,
        device=device,
        tcn_runner=tcn_runner,
        engine_dir=None if engine_dir is None else Path(engine_dir),
    )


def _use_exported(
    encoders: Encoders, manifest: dict[str, Any], engine_dir: Path, backend: str, device: str
) -> Any:
    """Switch the encoders to runners of their exported graphs; the TCN step graph's runner."""
    from models.runner import graph_runner

    def runner(name: str) -> Any:
        m = manifest["models"][name]
        return graph_runner(backend, engine_dir / m["file"], name, device, m["inputs"])

    for kind in MODALITIES:
        # the torch weights are not needed again: free them (GBs for the base models)
        getattr(encoders, kind).use_runner(runner(f"{kind}_encoder"), release=True)
    return runner("embedding_tcn_step")


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The centred square of an RGB frame, resized to ``size`` x ``size`` (uint8 RGB)."""
    import cv2

    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    square = np.ascontiguousarray(rgb[y : y + side, x : x + side])
    if side == size:
        return square
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


@dataclass
class FullTick:
    """One tick of a full-profile stream: the TCN's p and the inputs it stepped on."""

    t: float
    p: float
    video: np.ndarray  # [Dv]
    audio: np.ndarray  # [Da]
    text: np.ndarray  # [Dt]
    present: np.ndarray  # [3] float32 0/1 (video, audio, text), after the modality mask


class FullStream:
    """The full profile's model of one session: frames, audio and words -> p per tick."""

    def __init__(self, profile: FullProfile) -> None:
        self.profile = profile
        self.tcn: TCNStream | RunnerTCNStream = (
            TCNStream(profile.tcn)
            if profile.tcn_runner is None
            else RunnerTCNStream(profile.tcn_runner, profile.tcn.cfg)
        )
        enc = profile.encoders
        self.num_frames = int(getattr(enc.video, "num_frames", 16))
        self.crop_size = int(getattr(enc.video, "image_size", 224))
        self._crops: deque[tuple[int, np.ndarray]] = deque()  # (frame position, crop)
        self._text: tuple[str, np.ndarray] | None = None  # the last text and its embedding
        self._use = np.array([float(m in profile.modalities) for m in MODALITIES], np.float32)

    def add_frame(self, t: float, rgb: np.ndarray, landmarks: np.ndarray | None) -> bool:
        """Keep the face crop of the frame at media time ``t`` at frame position
        ``newest_frame(t, CLIP_FPS)`` (``landmarks``: the face mesh's, None if no face was
        found). Returns whether a crop was kept."""
        if self.profile.face_crop == "centre":
            crop = centre_crop(rgb, self.crop_size)
        elif landmarks is None:
            return False
        else:
            from models.face import face_crop

            crop = face_crop(rgb, landmarks, size=self.crop_size, grey=False)
        # The clip of a tick at t ends at newest_frame(t) (training's rule): floor, not
        # round, or a frame between two positions would sit after the tick that saw it.
        n = newest_frame(t, CLIP_FPS)
        while self._crops and self._crops[-1][0] >= n:  # a frame replaces a later/equal one
            self._crops.pop()
        self._crops.append((n, crop))
        return True

    def _clip(self, t: float) -> np.ndarray | None:
        end = newest_frame(t, CLIP_FPS)
        lo = end - self.num_frames + 1
        while self._crops and self._crops[0][0] < lo:  # older than any window to come
            self._crops.popleft()
        crops = {n: c for n, c in self._crops if n <= end}
        idx = clip_indices(end, self.num_frames, list(crops))
        return None if idx is None else np.stack([crops[n] for n in idx])

    def _audio(self, audio: AudioSource | None, audio_t: float) -> np.ndarray | None:
        if audio is None:
            return None
        end = min(int(round(audio_t * AUDIO_RATE)), audio.end_index)
        span = audio_span(end, self.profile.ticks, self.profile.encoders.audio)
        if span is None or span[0] < audio.start_index:
            return None
        return audio.read(span[0], span[1])

    def step(
        self,
        t: float,
        audio: AudioSource | None,
        audio_t: float,
        texts: Sequence[str],
    ) -> FullTick:
        """Tick at media time ``t``: the clip of the kept crops, the audio up to ``audio_t``
        and the transcript ``texts`` (committed words so far) -> embeddings -> TCN step."""
        enc = self.profile.encoders
        dims = enc.dims
        present = np.zeros(3, np.float32)
        rows = [np.zeros(d, np.float32) for d in dims]
        clip = self._clip(t)
        if clip is not None:
            rows[0] = np.asarray(enc.video.encode([clip]), np.float32)[0]
            present[0] = 1.0
        window = self._audio(audio, audio_t)
        if window is not None:
            rows[1] = np.asarray(enc.audio.encode([window]), np.float32)[0]
            present[1] = 1.0
        text = transcript_so_far(texts, self.profile.ticks.text_max_words)
        if text:
            if self._text is None or self._text[0] != text:
                self._text = (text, np.asarray(enc.text.encode([text]), np.float32)[0])
            rows[2] = self._text[1]
            present[2] = 1.0
        present *= self._use
        p = self.tcn.step(rows[0], rows[1], rows[2], present)
        return FullTick(t=t, p=p, video=rows[0], audio=rows[1], text=rows[2], present=present)
