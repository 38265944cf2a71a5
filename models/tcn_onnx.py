"""The fusion TCN over its exported ONNX graphs: a drop-in twin of `models.tcn.FusionTCN`.

Sessions use the same interface (``fresh``, ``reset``, ``step``, ``forward``, ``active``,
``decision``): ``step`` runs ``tcn_step.onnx`` on one row with this stream's state arrays
and keeps the new state; ``forward`` runs ``tcn_seq.onnx`` over a whole sequence. The
architecture, decision rule and metadata come from the numpy model the graphs were exported
from (`models.export`), so the two agree on everything but float32 rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.runner import Runner
from models.tcn import FusionTCN

__all__ = ["OnnxFusionTCN"]


class OnnxFusionTCN:
    """`FusionTCN` twin running under `Runner`s (ONNX Runtime or TensorRT)."""

    backend = "onnxruntime"

    def __init__(
        self,
        source: FusionTCN,
        step_runner: Runner,
        seq_runner: Runner | None,
        states: list[dict[str, Any]],
    ) -> None:
        self.source = source
        self.config = source.config
        self.metadata = source.metadata
        self.layout = source.layout
        self.step_runner = step_runner
        self.seq_runner = seq_runner
        self.backend = step_runner.backend
        self._states = [
            (s["input"], s["output"], int(s["rows"]), int(s["channels"])) for s in states
        ]
        self._state: dict[str, np.ndarray] = {}
        self.reset()

    @classmethod
    def from_graphs(
        cls,
        source: FusionTCN,
        manifest: dict[str, Any],
        graphs: dict[str, bytes],
        threads: int = 1,
    ) -> OnnxFusionTCN:
        """Twin of ``source`` over the ``tcn_step``/``tcn_seq`` graphs of an export."""
        from models.runner import OrtRunner

        m = manifest["models"]
        step = OrtRunner(graphs["tcn_step"], "tcn_step", threads=threads)
        seq = (
            OrtRunner(graphs["tcn_seq"], "tcn_seq", threads=threads)
            if "tcn_seq" in graphs
            else None
        )
        return cls(source, step, seq, m["tcn_step"]["states"])

    # ---- step by step

    def fresh(self) -> OnnxFusionTCN:
        """A new stream over the same graphs (runners are shared), with zero state."""
        states = [
            {"input": i, "output": o, "rows": r, "channels": c} for i, o, r, c in self._states
        ]
        return OnnxFusionTCN(self.source, self.step_runner, self.seq_runner, states)

    def reset(self) -> None:
        """Start a new stream (zero state, as the left padding of `forward`)."""
        self._state = {i: np.zeros((1, r, c), np.float32) for i, _, r, c in self._states}

    def step(self, x: np.ndarray) -> float:
        """Frame probability after one more fusion row (D,); keeps the causal state."""
        feeds = {"x": np.asarray(x, np.float32).reshape(1, -1), **self._state}
        out = self.step_runner.run(feeds)
        self._state = {i: out[o] for i, o, _, _ in self._states}
        return float(out["p"][0])

    # ---- full sequence

    def forward(self, seq: np.ndarray) -> np.ndarray:
        """Frame probabilities (T,) of a full sequence (T, D); stateless."""
        x = np.atleast_2d(np.asarray(seq, np.float32))
        if self.seq_runner is not None:
            return np.asarray(self.seq_runner.run({"seq": x[None]})["p"][0], np.float64)
        twin = self.fresh()
        return np.array([twin.step(row) for row in x])

    # ---- what the session reads

    @property
    def active(self) -> tuple[str, ...]:
        """Modalities that carry learned weight."""
        return self.config.active

    def decision(self) -> dict[str, Any]:
        """The video-level rule stored with the weights."""
        return self.source.decision()
