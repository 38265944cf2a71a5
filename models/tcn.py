"""Causal fusion TCN, numpy inference: ``step(x) -> p`` live, ``forward(seq)`` offline.

Network (per ensemble member; the output is the mean of the members' p):

1. normalise the fusion row (`models.fusion`): ``(x - in_mean) / in_std``;
   face and voice values are multiplied by their masks, so a missing modality
   is exactly zero;
2. conflict features: projections ``P_m x_m + b_m`` (``proj_dim`` each) of the
   text, face and voice blocks and ``|P_f - P_t|``, ``|P_v - P_t|``,
   ``|P_f - P_v|``, each multiplied by the presence of both sides (text is
   present once the transcript is usable), plus the three pair presences;
3. residual blocks, one per dilation ``d``: ``a = relu(conv1(h))``,
   ``b = relu(conv2(a))``, ``h = relu(b + res(h))`` with causal dilated
   convolutions of width ``kernel`` (weight-normalised in training; the
   normalisation is folded into the shipped weights) and ``res`` a 1x1
   convolution where the width changes;
4. ``logit = head . h + head_b + skip * z_p`` where ``z_p`` is the text
   model's logit (the raw ``z_p`` feature): the network learns a correction
   of the text channel over time.

``step`` keeps, per convolution, a ring of the last ``(kernel - 1) * d + 1``
inputs; a fresh state is all zeros, which is exactly the left zero padding
``forward`` uses, so ``step`` over a sequence equals ``forward`` of it (float64) up to
float rounding (``tests/test_tcn.py`` checks <= 1e-5).

Weights: ``<stem>.npz`` (float32 arrays, ``allow_pickle=False``) and
``<stem>.json`` (architecture, active modalities, decision rule, metrics,
provenance); `models.train_tcn` writes them. Loading checks the two against each
other (ValueError): the npz holds exactly the arrays of ``config.members`` members with
one block per dilation, of the config's kernel, widths and projection size, and the
dilations it stores (``dilations``, written since this check exists) equal the JSON's.
Files written before carry no dilations: for those only their number is checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.fusion import LAYOUT, MODALITIES, TEXT_FEATURES, FusionLayout
from models.weight_files import WEIGHTS_DIR, read_weight_pair

__all__ = [
    "TCN_STEM",
    "WEIGHTS_DIR",
    "TCNConfig",
    "CausalConv",
    "FusionTCN",
    "check_text_model",
    "load",
]

TCN_STEM = "tcn_lite"
FORMAT_VERSION = 1
DILATIONS_KEY = "dilations"  # npz array of the dilations (absent from older files)
_Z_P = TEXT_FEATURES.index("z_p")
_USABLE = TEXT_FEATURES.index("usable")


@dataclass(frozen=True)
class TCNConfig:
    """Architecture of the fusion TCN."""

    proj_dim: int = 8
    channels: int = 16
    kernel: int = 3
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    members: int = 1
    active: tuple[str, ...] = ("text",)  # modalities that carry learned weight

    @property
    def in_dim(self) -> int:
        """Width of the network input after the conflict features are appended."""
        return LAYOUT.dim + 3 * self.proj_dim + 3

    @property
    def receptive_field(self) -> int:
        """Number of ticks one output sees (two convolutions per block)."""
        return 1 + 2 * (self.kernel - 1) * sum(self.dilations)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "proj_dim": self.proj_dim,
            "channels": self.channels,
            "kernel": self.kernel,
            "dilations": list(self.dilations),
            "members": self.members,
            "active": list(self.active),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TCNConfig:
        """Inverse of `as_dict`."""
        active = tuple(d["active"])
        unknown = set(active) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}")
        return cls(
            proj_dim=int(d["proj_dim"]),
            channels=int(d["channels"]),
            kernel=int(d["kernel"]),
            dilations=tuple(int(x) for x in d["dilations"]),
            members=int(d["members"]),
            active=active,
        )


class CausalConv:
    """A causal dilated 1-D convolution with a ring buffer for step-by-step use."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, dilation: int) -> None:
        self.weight = np.asarray(weight, dtype=np.float64)  # (out, in, kernel)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.dilation = int(dilation)
        c_out, c_in, k = self.weight.shape
        self.kernel = k
        self.span = (k - 1) * self.dilation + 1
        # (out, kernel * in): taps oldest first, matching the gathered ring rows.
        self._flat = self.weight.transpose(0, 2, 1).reshape(c_out, k * c_in)
        self._taps = np.arange(k) * self.dilation
        self._ring = np.zeros((self.span, c_in))

    def reset(self) -> None:
        """Forget the past (zeros, as the left padding of `forward`)."""
        self._ring[:] = 0.0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Full sequence (T, in) -> (T, out), zero left padding."""
        T = x.shape[0]
        pad = np.concatenate([np.zeros((self.span - 1, x.shape[1])), x])
        out = np.broadcast_to(self.bias, (T, self.bias.size)).copy()
        for j in range(self.kernel):
            s = j * self.dilation
            out += pad[s : s + T] @ self.weight[:, :, j].T
        return out

    def step(self, x: np.ndarray) -> np.ndarray:
        """One new input (in,) -> output (out,) at that time."""
        self._ring[:-1] = self._ring[1:]
        self._ring[-1] = x
        return self._flat @ self._ring[self._taps].reshape(-1) + self.bias


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class _Block:
    conv1: CausalConv
    conv2: CausalConv
    res_w: np.ndarray | None  # (out, in) 1x1 convolution, None for identity
    res_b: np.ndarray | None

    def _res(self, h: np.ndarray) -> np.ndarray:
        return h if self.res_w is None else h @ self.res_w.T + self.res_b


@dataclass
class _Member:
    proj_w: dict[str, np.ndarray]
    proj_b: dict[str, np.ndarray]
    blocks: list[_Block]
    head_w: np.ndarray
    head_b: float
    skip: float


@dataclass
class FusionTCN:
    """The fusion TCN (an ensemble of `TCNConfig.members` networks), numpy float64."""

    config: TCNConfig
    arrays: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: FusionLayout = LAYOUT

    def __post_init__(self) -> None:
        a = {k: np.asarray(v, dtype=np.float64) for k, v in self.arrays.items()}
        self.arrays = a  # float64 once, so `fresh` copies nothing
        _check_arrays(self.config, a, self.layout)
        self.in_mean, self.in_std = a["in_mean"], a["in_std"]
        self.members: list[_Member] = []
        for m in range(self.config.members):
            p = f"m{m}."
            blocks = []
            for i, d in enumerate(self.config.dilations):
                b = f"{p}block{i}."
                res = f"{b}res_w" in a
                blocks.append(
                    _Block(
                        CausalConv(a[f"{b}conv1_w"], a[f"{b}conv1_b"], d),
                        CausalConv(a[f"{b}conv2_w"], a[f"{b}conv2_b"], d),
                        a[f"{b}res_w"] if res else None,
                        a[f"{b}res_b"] if res else None,
                    )
                )
            self.members.append(
                _Member(
                    proj_w={k: a[f"{p}proj_{k}_w"] for k in MODALITIES},
                    proj_b={k: a[f"{p}proj_{k}_b"] for k in MODALITIES},
                    blocks=blocks,
                    head_w=a[f"{p}head_w"],
                    head_b=float(a[f"{p}head_b"]),
                    skip=float(a[f"{p}skip"]),
                )
            )

    # ---- shared pieces

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Normalised rows (…, D): masked face/voice values are exactly zero."""
        L = self.layout
        x = np.asarray(x, dtype=np.float64)
        xn = (x - self.in_mean) / self.in_std
        xn[..., L.face] *= x[..., L.face_mask : L.face_mask + 1]
        xn[..., L.voice] *= x[..., L.voice_mask]
        xn[..., L.face_mask] = x[..., L.face_mask]
        xn[..., L.voice_mask] = x[..., L.voice_mask]
        return xn

    def _expand(self, x: np.ndarray, xn: np.ndarray, m: _Member) -> np.ndarray:
        """Append the conflict features and pair presences to normalised rows (T, D)."""
        L = self.layout
        pres = {
            "text": x[:, _USABLE],
            "face": x[:, L.face_mask],
            "voice": x[:, L.voice_speech_masks].max(axis=1),
        }
        proj = {
            "text": xn[:, L.text] @ m.proj_w["text"].T + m.proj_b["text"],
            "face": xn[:, L.face] @ m.proj_w["face"].T + m.proj_b["face"],
            "voice": xn[:, L.voice] @ m.proj_w["voice"].T + m.proj_b["voice"],
        }
        parts = [xn]
        pairs = []
        for a, b in (("face", "text"), ("voice", "text"), ("face", "voice")):
            both = pres[a] * pres[b]
            parts.append(np.abs(proj[a] - proj[b]) * both[:, None])
            pairs.append(both)
        parts.append(np.stack(pairs, axis=1))
        return np.concatenate(parts, axis=1)

    # ---- full sequence

    def forward_logits(self, seq: np.ndarray) -> np.ndarray:
        """Per-member logits (members, T) of a full sequence of fusion rows (T, D)."""
        x = np.atleast_2d(np.asarray(seq, dtype=np.float64))
        xn = self.normalize(x)
        out = []
        for m in self.members:
            h = self._expand(x, xn, m)
            for b in m.blocks:
                a = _relu(b.conv1.forward(h))
                a = _relu(b.conv2.forward(a))
                h = _relu(a + b._res(h))
            out.append(h @ m.head_w + m.head_b + m.skip * x[:, _Z_P])
        return np.stack(out)

    def forward(self, seq: np.ndarray) -> np.ndarray:
        """Frame probabilities (T,) of a full sequence of fusion rows (T, D); stateless."""
        return _sigmoid(self.forward_logits(seq)).mean(axis=0)

    # ---- step by step

    def fresh(self) -> FusionTCN:
        """A new instance sharing these weights, with its own (empty) causal state."""
        return FusionTCN(self.config, self.arrays, self.metadata, self.layout)

    def reset(self) -> None:
        """Start a new stream."""
        for m in self.members:
            for b in m.blocks:
                b.conv1.reset()
                b.conv2.reset()

    def step(self, x: np.ndarray) -> float:
        """Frame probability after one more fusion row (D,); keeps the causal state."""
        x1 = np.asarray(x, dtype=np.float64)[None, :]
        xn = self.normalize(x1)
        ps = 0.0
        for m in self.members:
            h = self._expand(x1, xn, m)[0]
            for b in m.blocks:
                a = _relu(b.conv1.step(h))
                a = _relu(b.conv2.step(a))
                h = _relu(a + b._res(h))
            z = float(h @ m.head_w) + m.head_b + m.skip * x1[0, _Z_P]
            ps += float(_sigmoid(np.asarray(z)))
        return ps / len(self.members)

    # ---- decision rule stored with the weights

    @property
    def active(self) -> tuple[str, ...]:
        """Modalities that carry learned weight (others are always presented as missing)."""
        return self.config.active

    def decision(self) -> dict[str, Any]:
        """The video-level rule stored with the weights: source, method, thresholds.

        `models.train_tcn.choose_rule` picks source and method by cross-validation on
        train (not worse on val); the thresholds are tuned on out-of-fold train and val
        scores pooled (`models.metrics.pooled_threshold`).
        """
        return dict(self.metadata.get("decision", {}))

    # ---- persistence

    def save(self, out_dir: str | Path, stem: str = TCN_STEM) -> tuple[Path, Path]:
        """Write ``<stem>.npz`` (float32 arrays) and ``<stem>.json``; return both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        npz = out / f"{stem}.npz"
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in sorted(self.arrays.items())}
        arrays[DILATIONS_KEY] = np.asarray(self.config.dilations, dtype=np.float32)
        np.savez_compressed(npz, **arrays)
        meta = {
            "format": FORMAT_VERSION,
            "layout": self.layout.as_dict(),
            "text_features": list(TEXT_FEATURES),
            "config": self.config.as_dict(),
            **self.metadata,
        }
        js = out / f"{stem}.json"
        js.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return npz, js

    @classmethod
    def load(cls, path: str | Path | None = None) -> FusionTCN:
        """Load from a weights dir or a ``.json``/``.npz`` path (default: shipped weights)."""
        meta, js, npz = read_weight_pair(path, TCN_STEM, "TCN", FORMAT_VERSION)
        if meta["layout"] != LAYOUT.as_dict() or meta["text_features"] != list(TEXT_FEATURES):
            raise ValueError(f"{js}: fusion layout differs from this code's models.fusion")
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        config = TCNConfig.from_dict(meta["config"])
        stored = arrays.pop(DILATIONS_KEY, None)
        if stored is not None and not np.array_equal(stored, config.dilations):
            raise ValueError(
                f"{js}: dilations {list(config.dilations)} differ from the weights' "
                f"{[int(d) for d in stored]} ({npz.name})"
            )
        known = {"format", "layout", "text_features", "config"}
        try:
            return cls(
                config=config,
                arrays=arrays,
                metadata={k: v for k, v in meta.items() if k not in known},
            )
        except ValueError as e:
            raise ValueError(f"{js} / {npz.name}: {e}") from e


def _check_arrays(config: TCNConfig, a: dict[str, np.ndarray], layout: FusionLayout) -> None:
    """ValueError unless ``a`` holds exactly the arrays ``config`` describes, of its shapes."""
    widths = {"text": layout.text_dim, "face": layout.face_dim, "voice": layout.voice_dim}
    c, k = config.channels, config.kernel
    want: dict[str, tuple[int, ...]] = {"in_mean": (layout.dim,), "in_std": (layout.dim,)}
    for m in range(config.members):
        p = f"m{m}."
        for name, width in widths.items():
            want[f"{p}proj_{name}_w"] = (config.proj_dim, width)
            want[f"{p}proj_{name}_b"] = (config.proj_dim,)
        c_in = layout.dim + 3 * config.proj_dim + 3
        for i in range(len(config.dilations)):
            b = f"{p}block{i}."
            want |= {f"{b}conv1_w": (c, c_in, k), f"{b}conv1_b": (c,)}
            want |= {f"{b}conv2_w": (c, c, k), f"{b}conv2_b": (c,)}
            # The 1x1 residual convolution: needed where the width changes, optional elsewhere.
            if c_in != c or f"{b}res_w" in a or f"{b}res_b" in a:
                want |= {f"{b}res_w": (c, c_in), f"{b}res_b": (c,)}
            c_in = c
        want |= {f"{p}head_w": (c,), f"{p}head_b": (), f"{p}skip": ()}
    extra, missing = sorted(set(a) - set(want)), sorted(set(want) - set(a))
    if extra or missing:
        raise ValueError(
            f"weights do not match the config ({config.members} member(s), "
            f"{len(config.dilations)} block(s) each): unexpected arrays {extra[:4]}, "
            f"missing {missing[:4]}"
        )
    wrong = [
        f"{n} {a[n].shape} (config: {shape})" for n, shape in want.items() if a[n].shape != shape
    ]
    if wrong:
        raise ValueError(
            f"weights do not match the config (kernel {k}, channels {c}, proj_dim "
            f"{config.proj_dim}): {'; '.join(wrong[:3])}"
        )


def check_text_model(tcn: FusionTCN, text: Any, where: str | Path | None = None) -> None:
    """ValueError unless ``text`` is the text model ``tcn`` was trained on.

    The TCN's inputs and its decision thresholds are fitted to one text model's
    probabilities: a text model from another `ahstream train` run (a copied pair, an
    interrupted move of new weights into place) would be served with the wrong
    thresholds without a word. TCN files written before fingerprints were recorded are
    checked by name and version only."""
    want = tcn.metadata.get("text_model")
    if not isinstance(want, dict):
        return
    fp = want.get("fingerprint")
    trained_on = (want.get("name"), want.get("version"), fp)
    beside = (text.name, text.version, text.fingerprint() if fp is not None else None)
    if trained_on == beside:
        return

    def label(name: Any, version: Any, fingerprint: str | None) -> str:
        return f"{name} {version}" + (f" (fingerprint {fingerprint[:12]})" if fingerprint else "")

    raise ValueError(
        f"{where if where is not None else WEIGHTS_DIR}: the TCN ({TCN_STEM}) was trained on "
        f"the text model {label(*trained_on)}, but the text model beside it is "
        f"{label(*beside)}; both weight pairs must come from the same `ahstream train` run "
        "(retrain, or restore both)"
    )


def load(path: str | Path | None = None) -> FusionTCN:
    """Load the fusion TCN (default: the shipped ``models/weights/tcn_lite``)."""
    return FusionTCN.load(path)
