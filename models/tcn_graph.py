"""The fusion TCN as torch graphs for ONNX export: a step graph with explicit state and a
full-sequence graph with a dynamic time axis.

Both are built from a numpy `models.tcn.FusionTCN` (its float64 arrays cast to float32) and
compute exactly what it computes (normalisation, conflict features, residual blocks, head,
text skip, mean of the members' sigmoids), so an exported graph can be checked against the
numpy model and then replace it (`models.tcn_onnx.OnnxFusionTCN`).

Step graph: inputs ``x`` [B, D] and one state per causal convolution, ``state_m<m>_b<i>_c<j>``
[B, span - 1, c_in] (the previous ``span - 1`` inputs of that convolution, oldest first; a
fresh stream is all zeros); outputs ``p`` [B], ``logits`` [B, members] and
``new_state_m<m>_b<i>_c<j>`` of the same shapes as the states.

Sequence graph: input ``seq`` [B, T, D]; outputs ``p`` [B, T] and ``logits`` [B, T, members]
(zero left padding, as ``FusionTCN.forward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.fusion import TEXT_FEATURES
from models.tcn import FusionTCN

__all__ = ["StateSpec", "state_specs", "TCNStepGraph", "TCNSequenceGraph"]

_Z_P = TEXT_FEATURES.index("z_p")
_USABLE = TEXT_FEATURES.index("usable")
_PAIRS = (("face", "text"), ("voice", "text"), ("face", "voice"))


@dataclass(frozen=True)
class StateSpec:
    """One causal convolution's state tensor in the step graph."""

    input: str  # graph input name
    output: str  # graph output name (the state after the step)
    rows: int  # span - 1 past inputs
    channels: int  # c_in of the convolution
    dilation: int


def state_specs(tcn: FusionTCN) -> list[StateSpec]:
    """The state tensors of ``tcn``'s step graph, in graph input order."""
    out = []
    for m, member in enumerate(tcn.members):
        for i, block in enumerate(member.blocks):
            for j, conv in enumerate((block.conv1, block.conv2), start=1):
                if conv.span < 2:
                    raise ValueError("a causal convolution of width 1 has no state to export")
                name = f"m{m}_b{i}_c{j}"
                out.append(
                    StateSpec(
                        f"state_{name}",
                        f"new_state_{name}",
                        conv.span - 1,
                        conv.weight.shape[1],
                        conv.dilation,
                    )
                )
    return out


def _dot(h: Tensor, w: Tensor) -> Tensor:
    """``h @ w`` for a vector ``w``, written as a matrix product: ONNX Runtime 1.31 computes
    a transposed input times a 1-D MatMul operand wrongly (found by the export parity check)."""
    return (h @ w.unsqueeze(-1)).squeeze(-1)


def _param(a: Any) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(a, dtype=torch.float32).clone(), requires_grad=False)


class _Conv(nn.Module):
    def __init__(self, weight: Any, bias: Any, dilation: int) -> None:
        super().__init__()
        self.weight = _param(weight)  # (out, in, kernel)
        self.bias = _param(bias)
        self.dilation = int(dilation)
        self.kernel = int(self.weight.shape[2])

    def sequence(self, x: Tensor) -> Tensor:
        """(B, in, T) -> (B, out, T), zero left padding."""
        pad = (self.kernel - 1) * self.dilation
        return F.conv1d(F.pad(x, (pad, 0)), self.weight, self.bias, dilation=self.dilation)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(B, in), (B, span-1, in) -> (B, out), new state."""
        ring = torch.cat([state, x.unsqueeze(1)], dim=1)  # (B, span, in), oldest first
        taps = ring[:, :: self.dilation]  # (B, kernel, in)
        w = self.weight.permute(0, 2, 1).reshape(self.weight.shape[0], -1)  # (out, k*in)
        out = taps.reshape(taps.shape[0], -1) @ w.t() + self.bias
        return out, ring[:, 1:]


class _Block(nn.Module):
    def __init__(self, block: Any) -> None:
        super().__init__()
        self.conv1 = _Conv(block.conv1.weight, block.conv1.bias, block.conv1.dilation)
        self.conv2 = _Conv(block.conv2.weight, block.conv2.bias, block.conv2.dilation)
        self.has_res = block.res_w is not None
        if self.has_res:
            self.res_w = _param(block.res_w)
            self.res_b = _param(block.res_b)

    def res(self, h: Tensor) -> Tensor:
        """1x1 residual over the last axis (channels last)."""
        return h @ self.res_w.t() + self.res_b if self.has_res else h


class _Member(nn.Module):
    def __init__(self, member: Any) -> None:
        super().__init__()
        self.proj_w = nn.ParameterDict({k: _param(v) for k, v in member.proj_w.items()})
        self.proj_b = nn.ParameterDict({k: _param(v) for k, v in member.proj_b.items()})
        self.blocks = nn.ModuleList(_Block(b) for b in member.blocks)
        self.head_w = _param(member.head_w)
        self.head_b = float(member.head_b)
        self.skip = float(member.skip)


class _TCNGraph(nn.Module):
    """Shared pieces: normalisation and conflict features over rows (..., D)."""

    def __init__(self, tcn: FusionTCN) -> None:
        super().__init__()
        self.layout = tcn.layout
        self.in_mean = _param(tcn.in_mean)
        self.in_std = _param(tcn.in_std)
        self.members = nn.ModuleList(_Member(m) for m in tcn.members)

    def _normalize(self, x: Tensor) -> Tensor:
        L = self.layout
        xn = (x - self.in_mean) / self.in_std
        fm = x[..., L.face_mask : L.face_mask + 1]
        vm = x[..., L.voice_mask]
        return torch.cat(
            [
                xn[..., L.text],
                xn[..., L.face] * fm,
                fm,
                xn[..., L.voice] * vm,
                vm,
            ],
            dim=-1,
        )

    def _expand(self, x: Tensor, xn: Tensor, m: _Member) -> Tensor:
        L = self.layout
        pres = {
            "text": x[..., _USABLE],
            "face": x[..., L.face_mask],
            "voice": x[..., L.voice_speech_masks].amax(dim=-1),
        }
        blocks = {"text": L.text, "face": L.face, "voice": L.voice}
        proj = {k: xn[..., s] @ m.proj_w[k].t() + m.proj_b[k] for k, s in blocks.items()}
        parts = [xn]
        pairs = []
        for a, b in _PAIRS:
            both = pres[a] * pres[b]
            parts.append(torch.abs(proj[a] - proj[b]) * both.unsqueeze(-1))
            pairs.append(both)
        parts.append(torch.stack(pairs, dim=-1))
        return torch.cat(parts, dim=-1)


class TCNStepGraph(_TCNGraph):
    """One step of `FusionTCN.step` for a batch of streams, the causal state explicit."""

    def forward(self, x: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """(x, *states) -> (p, logits, *new_states); see the module docstring."""
        xn = self._normalize(x)
        logits = []
        new_states: list[Tensor] = []
        k = 0
        for m in self.members:
            h = self._expand(x, xn, m)
            for b in m.blocks:
                a, s1 = b.conv1.step(h, states[k])
                a = torch.relu(a)
                a, s2 = b.conv2.step(a, states[k + 1])
                a = torch.relu(a)
                h = torch.relu(a + b.res(h))
                new_states += [s1, s2]
                k += 2
            logits.append(_dot(h, m.head_w) + m.head_b + m.skip * x[:, _Z_P])
        z = torch.stack(logits, dim=1)  # (B, members)
        return (torch.sigmoid(z).mean(dim=1), z, *new_states)


class TCNSequenceGraph(_TCNGraph):
    """`FusionTCN.forward` over a batch of whole sequences (B, T, D)."""

    def forward(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """seq -> (p [B, T], logits [B, T, members])."""
        xn = self._normalize(seq)
        logits = []
        for m in self.members:
            h = self._expand(seq, xn, m).transpose(1, 2)  # (B, C, T)
            for b in m.blocks:
                a = torch.relu(b.conv1.sequence(h))
                a = torch.relu(b.conv2.sequence(a))
                h = torch.relu(a + b.res(h.transpose(1, 2)).transpose(1, 2))
            h = h.transpose(1, 2)  # (B, T, C)
            logits.append(_dot(h, m.head_w) + m.head_b + m.skip * seq[..., _Z_P])
        z = torch.stack(logits, dim=-1)  # (B, T, members)
        return torch.sigmoid(z).mean(dim=-1), z
