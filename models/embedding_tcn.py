"""Frame-level causal TCN over per-tick modality embeddings (full profile, streaming path).

Each analysis tick brings one embedding per modality (video v, audio a, text t, each with
its own width) and their presence (0/1). Per tick, independently of the past:

1. standardise each embedding with statistics of the training set (buffers);
2. project each to width ``d`` (linear + LayerNorm) and zero it where the modality is
   missing; append the conflict features ``|v-a|``, ``|v-t|``, ``|a-t|`` (each zeroed
   unless both sides are present) and the three presences: ``6*d + 3`` channels;
3. residual blocks, one per dilation: two causal dilated convolutions (kernel 3,
   weight-normalised) with ReLU and dropout, plus a 1x1 convolution on the skip path
   where the width changes; then a linear head gives one logit per tick.

``forward`` runs a whole sequence with zero left padding. ``step`` runs one tick and
carries, per convolution, the last ``(kernel - 1) * dilation`` inputs; a fresh state is
zeros, i.e. the same left padding, so stepping a sequence equals ``forward`` of it (up to
float32 rounding; tests hold it to 1e-5). `TCNStream` wraps a model and its state for a
live session. `export_onnx` writes the full-sequence forward (dynamic batch and time);
`export_step_onnx` one `step` with the causal state as explicit inputs and outputs
(`step_state_specs`), which `RunnerTCNStream` steps through any `models.runner.Runner`
(ONNX Runtime, TensorRT) as `TCNStream` steps the torch model.

An untrained model must never serve a probability: only `models.train_full` produces
weights for this class; nothing wires a fresh instance into the server.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "ONNX_INPUTS",
    "ONNX_OUTPUTS",
    "STEP_INPUTS",
    "StateSpec",
    "RunnerTCNStream",
    "export_step_onnx",
    "step_state_specs",
    "EmbeddingTCNConfig",
    "EmbeddingTCN",
    "TCNState",
    "TCNStream",
    "export_onnx",
    "load",
]

ONNX_INPUTS: tuple[str, ...] = ("video", "audio", "text", "present")
ONNX_OUTPUTS: tuple[str, ...] = ("logit",)
#: The step graph's inputs before the state ones (`step_state_specs`); its first output is
#: ``logit`` [B], then the next state.
STEP_INPUTS: tuple[str, ...] = ("video", "audio", "text", "present")
_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))  # |v-a|, |v-t|, |a-t|


@dataclass(frozen=True)
class EmbeddingTCNConfig:
    """Sizes of an `EmbeddingTCN`."""

    video_dim: int
    audio_dim: int
    text_dim: int
    d: int = 64
    channels: int = 64
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    dropout: float = 0.1

    @property
    def in_dims(self) -> tuple[int, int, int]:
        """(video, audio, text) embedding widths."""
        return (self.video_dim, self.audio_dim, self.text_dim)

    @property
    def fused_dim(self) -> int:
        """Channels entering the first convolution."""
        return 6 * self.d + 3

    @property
    def receptive_field(self) -> int:
        """Number of ticks one output sees (two convolutions per block)."""
        return 1 + 2 * (self.kernel - 1) * sum(self.dilations)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["dilations"] = list(self.dilations)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingTCNConfig:
        """Inverse of `as_dict`."""
        return cls(**{**d, "dilations": tuple(int(x) for x in d["dilations"])})


class _CausalConv(nn.Module):
    """Weight-normalised dilated conv1d, causal: left padding in `forward`, a cache in `step`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation))
        self.pad = (kernel - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, T] -> [B, C_out, T]."""
        return self.conv(F.pad(x, (self.pad, 0)))

    def step(self, x: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """One tick [B, C_in] with the past [B, C_in, pad] -> (output [B, C_out], new past)."""
        window = torch.cat([past, x.unsqueeze(-1)], dim=-1)  # [B, C_in, pad + 1]
        out = self.conv(window).squeeze(-1)
        return out, window[:, :, 1:]


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = _CausalConv(c_in, c_out, kernel, dilation)
        self.conv2 = _CausalConv(c_out, c_out, kernel, dilation)
        self.drop = nn.Dropout(dropout)
        self.res = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, h: Tensor) -> Tensor:
        a = self.drop(torch.relu(self.conv1(h)))
        b = self.drop(torch.relu(self.conv2(a)))
        return torch.relu(b + (h if self.res is None else self.res(h)))

    def step(self, h: Tensor, past: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        a, p1 = self.conv1.step(h, past[0])
        a = self.drop(torch.relu(a))
        b, p2 = self.conv2.step(a, past[1])
        b = self.drop(torch.relu(b))
        skip = h if self.res is None else self.res(h.unsqueeze(-1)).squeeze(-1)
        return torch.relu(b + skip), [p1, p2]


@dataclass
class TCNState:
    """The causal cache of a batch of streams: per block, the past inputs of both convs."""

    past: list[list[Tensor]]


class EmbeddingTCN(nn.Module):
    """Causal TCN giving one A/H logit per tick from the three modality embeddings."""

    def __init__(self, cfg: EmbeddingTCNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        for name, dim in zip(("video", "audio", "text"), cfg.in_dims, strict=True):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, cfg.d), nn.LayerNorm(cfg.d)) for dim in cfg.in_dims
        )
        blocks = []
        c_in = cfg.fused_dim
        for dil in cfg.dilations:
            blocks.append(_Block(c_in, cfg.channels, cfg.kernel, dil, cfg.dropout))
            c_in = cfg.channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(cfg.channels, 1)

    def set_normalization(self, stats: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Set (mean, std) per modality (video, audio, text); std is floored at 1e-6."""
        for name, (mean, std) in zip(("video", "audio", "text"), stats, strict=True):
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
            s = torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-6)
            getattr(self, f"{name}_std").copy_(s)

    def fuse(self, v: Tensor, a: Tensor, t: Tensor, present: Tensor) -> Tensor:
        """Per-tick fused features [..., 6d+3] from embeddings [..., D_m] and presence [..., 3]."""
        present = present.to(v.dtype)
        stats = (
            (self.video_mean, self.video_std),
            (self.audio_mean, self.audio_std),
            (self.text_mean, self.text_std),
        )
        ps = []
        for i, (x, proj, (mean, std)) in enumerate(zip((v, a, t), self.proj, stats, strict=True)):
            m = present[..., i : i + 1]
            # where, not a product: a missing modality may hold anything, NaN included.
            xn = torch.where(m > 0.5, (x - mean) / std, torch.zeros_like(x))
            ps.append(proj(xn) * m)
        conflicts = [
            torch.abs(ps[i] - ps[j]) * present[..., i : i + 1] * present[..., j : j + 1]
            for i, j in _PAIRS
        ]
        return torch.cat(ps + conflicts + [present], dim=-1)

    def forward(self, v: Tensor, a: Tensor, t: Tensor, present: Tensor) -> Tensor:
        """Logits [B, T] of whole sequences: v/a/t [B, T, D_m], present [B, T, 3] (0/1)."""
        h = self.fuse(v, a, t, present).transpose(1, 2)  # [B, C, T]
        for block in self.blocks:
            h = block(h)
        return self.head(h.transpose(1, 2)).squeeze(-1)

    def init_state(self, batch: int = 1) -> TCNState:
        """A fresh causal state (zeros: the left padding of `forward`)."""
        past = []
        c_in = self.cfg.fused_dim
        ref = self.head.weight
        for block in self.blocks:
            p1 = ref.new_zeros(batch, c_in, block.conv1.pad)
            p2 = ref.new_zeros(batch, self.cfg.channels, block.conv2.pad)
            past.append([p1, p2])
            c_in = self.cfg.channels
        return TCNState(past)

    def step(
        self, v: Tensor, a: Tensor, t: Tensor, present: Tensor, state: TCNState
    ) -> tuple[Tensor, TCNState]:
        """One tick: v/a/t [B, D_m], present [B, 3] -> (logit [B], next state)."""
        h = self.fuse(v, a, t, present)
        new = []
        for block, past in zip(self.blocks, state.past, strict=True):
            h, p = block.step(h, past)
            new.append(p)
        return self.head(h).squeeze(-1), TCNState(new)

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Save config, weights (incl. normalisation) and JSON-able extras to one file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.cfg.as_dict(), "state": self.state_dict(), "extra": extra}, path)
        return path


def load(path: str | Path) -> tuple[EmbeddingTCN, dict[str, Any]]:
    """Load a model saved by `EmbeddingTCN.save` (eval mode) and its extras."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = EmbeddingTCN(EmbeddingTCNConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state"], strict=True)
    return model.eval(), dict(ckpt.get("extra", {}))


class TCNStream:
    """One live stream through a trained model: ``step(v, a, t, present) -> p``."""

    def __init__(self, model: EmbeddingTCN) -> None:
        self.model = model.eval()
        self.state = model.init_state(1)

    def reset(self) -> None:
        """Start a new stream."""
        self.state = self.model.init_state(1)

    @torch.no_grad()
    def step(self, v: np.ndarray, a: np.ndarray, t: np.ndarray, present: Sequence[float]) -> float:
        """A/H probability of this tick (1-D embeddings; ``present`` = (video, audio, text))."""

        def row(x: Any) -> Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(1, -1)

        logit, self.state = self.model.step(row(v), row(a), row(t), row(present), self.state)
        return float(torch.sigmoid(logit)[0])


def export_onnx(model: EmbeddingTCN, path: str | Path, opset: int = 17) -> Path:
    """Export the full-sequence forward to ONNX: inputs video/audio/text [B, T, D_m] and
    present [B, T, 3] (float 0/1), output logit [B, T]; batch and time are dynamic."""
    from models.runner import export_onnx_module

    gen = np.random.default_rng(0)
    b, t = 2, 5  # > 1 so the tracer cannot specialise on either
    sample = {
        name: gen.standard_normal((b, t, dim)).astype(np.float32)
        for name, dim in zip(ONNX_INPUTS[:3], model.cfg.in_dims, strict=True)
    }
    sample["present"] = np.ones((b, t, 3), np.float32)
    axes = {n: {0: "batch", 1: "time"} for n in ONNX_INPUTS + ONNX_OUTPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx_module(model, sample, ONNX_OUTPUTS, path, axes, opset)


@dataclass(frozen=True)
class StateSpec:
    """One causal cache of the step graph: input ``past_<block>_<conv>`` [B, channels, rows]
    and the output ``next_<block>_<conv>`` that replaces it after the tick."""

    input: str
    output: str
    channels: int
    rows: int


def step_state_specs(cfg: EmbeddingTCNConfig) -> list[StateSpec]:
    """The state tensors of the step graph of a model of ``cfg``, in graph order."""
    if cfg.kernel < 2:
        raise ValueError("a step graph needs kernel >= 2 (kernel 1 keeps no state)")
    specs = []
    c_in = cfg.fused_dim
    for i, dil in enumerate(cfg.dilations):
        pad = (cfg.kernel - 1) * dil
        specs.append(StateSpec(f"past_{i}_0", f"next_{i}_0", c_in, pad))
        specs.append(StateSpec(f"past_{i}_1", f"next_{i}_1", cfg.channels, pad))
        c_in = cfg.channels
    return specs


class _StepGraph(nn.Module):
    """`EmbeddingTCN.step` with the state flattened into tensors (for export)."""

    def __init__(self, model: EmbeddingTCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, v: Tensor, a: Tensor, t: Tensor, present: Tensor, *past: Tensor) -> Any:
        state = TCNState([[past[2 * i], past[2 * i + 1]] for i in range(len(past) // 2)])
        logit, new = self.model.step(v, a, t, present, state)
        return (logit, *(x for pair in new.past for x in pair))


def export_step_onnx(model: EmbeddingTCN, path: str | Path, opset: int = 17) -> Path:
    """Export one `EmbeddingTCN.step` to ONNX: inputs video/audio/text [B, D_m], present
    [B, 3] and the states of `step_state_specs`; outputs logit [B] and the next states.
    The batch is dynamic (streams side by side); fresh states are zeros."""
    from models.runner import export_onnx_module

    specs = step_state_specs(model.cfg)
    gen = np.random.default_rng(0)
    b = 2
    sample = {
        name: gen.standard_normal((b, dim)).astype(np.float32)
        for name, dim in zip(STEP_INPUTS[:3], model.cfg.in_dims, strict=True)
    }
    sample["present"] = np.ones((b, 3), np.float32)
    for s in specs:
        sample[s.input] = gen.standard_normal((b, s.channels, s.rows)).astype(np.float32)
    outputs = ["logit", *(s.output for s in specs)]
    axes = {n: {0: "batch"} for n in [*sample, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx_module(_StepGraph(model).eval(), sample, outputs, path, axes, opset)


class RunnerTCNStream:
    """`TCNStream` over an exported step graph: ``runner`` is a `models.runner.Runner` of
    `export_step_onnx`'s graph (ONNX Runtime, TensorRT); the state is kept here."""

    def __init__(self, runner: Any, cfg: EmbeddingTCNConfig) -> None:
        self.runner = runner
        self.specs = step_state_specs(cfg)
        self.reset()

    def reset(self) -> None:
        """Start a new stream (zero states: the left padding of the forward)."""
        self.state = {s.input: np.zeros((1, s.channels, s.rows), np.float32) for s in self.specs}

    def step(self, v: np.ndarray, a: np.ndarray, t: np.ndarray, present: Sequence[float]) -> float:
        """A/H probability of this tick (1-D embeddings; ``present`` = (video, audio, text))."""

        def row(x: Any) -> np.ndarray:
            return np.asarray(x, dtype=np.float32).reshape(1, -1)

        feeds = {"video": row(v), "audio": row(a), "text": row(t), "present": row(present)}
        out = self.runner.run({**feeds, **self.state})
        self.state = {
            s.input: np.asarray(out[s.output], np.float32).reshape(1, s.channels, s.rows)
            for s in self.specs
        }
        logit = float(np.asarray(out["logit"]).reshape(-1)[0])
        return float(1.0 / (1.0 + np.exp(-logit)))
