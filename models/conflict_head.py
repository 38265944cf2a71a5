"""ConflictAwareAH: the full profile's video-level A/H head over modality embeddings.

Inputs are one embedding per modality (video v, audio a, text t, each with its own
width), projected to a common width ``d``. The encoder sees six tokens
``[v, a, t, |v-a|, |v-t|, |a-t|]`` plus learned type embeddings; a modality that is
missing masks its own token and every conflict token it takes part in. A 2-layer
transformer encoder, a masked mean over the tokens that remain, and a linear layer
give the full logit; a text-only auxiliary head on the projected text gives the text
logit. At inference the two are blended, ``p = alpha*sigmoid(text) + (1-alpha)*sigmoid(full)``
on rows with text and ``p = sigmoid(full)`` on rows without (the text logit of a row without
text is the head's answer to a zero input: it means nothing), with ``alpha`` and the decision
threshold tuned on validation data (``tune_blend``). `blend` is the one place of that rule:
training, tuning and evaluation (`models.train_full`) all go through it.

Training uses ``0.5*BCE(full) + 0.5*BCE(text)`` (optional label smoothing), where BCE(full)
is the mean over the batch and BCE(text) the mean over the rows with text (0 when the batch
has none), and an optional LEYA-style prototype loss: cosine similarity of the pooled
embedding to learnable per-class prototypes, divided by a temperature, cross-entropy over
classes.

Library code for the full profile: an untrained head must never serve a probability,
so nothing here is wired into the server or the CLI.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.metrics import best_threshold

__all__ = [
    "MODALITIES",
    "TOKENS",
    "PAIRS",
    "HeadConfig",
    "HeadLoss",
    "ConflictAwareAH",
    "token_mask",
    "blend",
    "BlendChoice",
    "tune_blend",
    "pick_alpha",
    "ensemble_probs",
    "multi_window_probs",
    "save_checkpoint",
    "load_checkpoint",
    "export_onnx",
    "OnnxConflictHead",
]

MODALITIES: tuple[str, ...] = ("video", "audio", "text")
# Conflict tokens: index pairs into MODALITIES, in token order |v-a|, |v-t|, |a-t|.
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
TOKENS: tuple[str, ...] = ("v", "a", "t", "|v-a|", "|v-t|", "|a-t|")
TEXT = 2  # index of text in MODALITIES


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of a ConflictAwareAH head."""

    video_dim: int
    audio_dim: int
    text_dim: int
    d: int = 128
    heads: int = 4
    layers: int = 2
    ff: int = 256
    dropout: float = 0.1
    n_classes: int = 2  # prototypes (no-A/H, A/H)
    temperature: float = 0.1  # prototype cosine temperature

    @property
    def in_dims(self) -> tuple[int, int, int]:
        """(video, audio, text) input widths."""
        return (self.video_dim, self.audio_dim, self.text_dim)


@dataclass
class HeadLoss:
    """The training loss and its parts (``proto`` is 0 when the prototype loss is off)."""

    total: Tensor
    full: Tensor
    text: Tensor
    proto: Tensor


def token_mask(present: Tensor) -> Tensor:
    """[B, 3] bool modality presence -> [B, 6] bool token presence (conflicts need both sides)."""
    if present.dim() != 2 or present.shape[1] != len(MODALITIES):
        raise ValueError(f"present must be [B, 3], got {tuple(present.shape)}")
    present = present.to(torch.bool)
    pairs = [present[:, i] & present[:, j] for i, j in PAIRS]
    return torch.cat([present, torch.stack(pairs, dim=1)], dim=1)


class ConflictAwareAH(nn.Module):
    """Transformer over modality and conflict tokens, with a text-only auxiliary head."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, d), nn.LayerNorm(d)) for dim in cfg.in_dims
        )
        self.type_emb = nn.Parameter(torch.randn(len(TOKENS), d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.heads,
            dim_feedforward=cfg.ff,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: the same code path in training, inference and ONNX export.
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=cfg.layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(d)
        self.full_head = nn.Linear(d, 1)
        self.text_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        self.prototypes = nn.Parameter(torch.randn(cfg.n_classes, d))

    def forward(
        self,
        v: Tensor,
        a: Tensor,
        t: Tensor,
        present: Tensor | None = None,
        return_embedding: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Return (full logit [B], text logit [B]) and, if asked, the pooled embedding [B, d].

        ``present`` is [B, 3] bool (video, audio, text); None means all present. The
        text logit only means something where text is present (`blend` and `loss` ignore
        it elsewhere when given the presence).
        """
        b = t.shape[0]
        if present is None:
            present = torch.ones(b, len(MODALITIES), dtype=torch.bool, device=t.device)
        present = present.to(torch.bool)
        # Zero missing inputs first: masked attention alone would still let NaN/inf through.
        xs = [
            torch.where(present[:, i : i + 1], x, torch.zeros_like(x))
            for i, x in enumerate((v, a, t))
        ]
        p = [proj(x) for proj, x in zip(self.proj, xs, strict=True)]
        conflicts = [torch.abs(p[i] - p[j]) for i, j in PAIRS]
        tokens = torch.stack(p + conflicts, dim=1) + self.type_emb  # [B, 6, d]
        keep = token_mask(present)  # [B, 6]
        # A row with nothing present would make attention softmax over nothing (NaN):
        # let it attend everywhere (inputs are zeros) and zero its pooled embedding below.
        any_kept = keep.any(dim=1, keepdim=True)
        pad = ~(keep | ~any_kept)
        h = self.encoder(tokens, src_key_padding_mask=pad)
        w = keep.to(h.dtype).unsqueeze(-1)
        pooled = (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
        pooled = self.norm(pooled)
        full = self.full_head(pooled).squeeze(-1)
        text = self.text_head(p[TEXT]).squeeze(-1)
        if return_embedding:
            return full, text, pooled
        return full, text

    def prototype_logits(self, pooled: Tensor) -> Tensor:
        """Cosine similarity of pooled embeddings to the class prototypes over temperature."""
        z = F.normalize(pooled, dim=-1)
        c = F.normalize(self.prototypes, dim=-1)
        return z @ c.T / self.cfg.temperature

    def loss(
        self,
        full_logit: Tensor,
        text_logit: Tensor,
        labels: Tensor,
        smoothing: float = 0.0,
        pooled: Tensor | None = None,
        proto_weight: float = 0.0,
        has_text: Tensor | None = None,
    ) -> HeadLoss:
        """0.5*BCE(full) + 0.5*BCE(text) (+ proto_weight * prototype CE if ``pooled`` given).

        BCE(text) is the mean over the rows where ``has_text`` [B] (e.g. ``present[:, 2]``)
        is true, 0 if there are none; None means every row has text (callers without
        presence information).
        """
        if not 0.0 <= smoothing < 1.0:
            raise ValueError("smoothing must be in [0, 1)")
        y = labels.to(full_logit.dtype)
        target = y * (1.0 - smoothing) + 0.5 * smoothing
        bce_full = F.binary_cross_entropy_with_logits(full_logit, target)
        if has_text is None:
            bce_text = F.binary_cross_entropy_with_logits(text_logit, target)
        else:
            keep = has_text.to(torch.bool)
            # where, not indexing-then-mean: a batch without text gives 0 and no NaN gradient.
            per_row = F.binary_cross_entropy_with_logits(
                torch.where(keep, text_logit, torch.zeros_like(text_logit)),
                target,
                reduction="none",
            )
            n = keep.sum().clamp(min=1).to(per_row.dtype)
            bce_text = torch.where(keep, per_row, torch.zeros_like(per_row)).sum() / n
        total = 0.5 * bce_full + 0.5 * bce_text
        proto = full_logit.new_zeros(())
        if proto_weight > 0.0:
            if pooled is None:
                raise ValueError("the prototype loss needs the pooled embedding")
            proto = F.cross_entropy(self.prototype_logits(pooled), labels.long())
            total = total + proto_weight * proto
        return HeadLoss(total=total, full=bce_full, text=bce_text, proto=proto)

    @torch.no_grad()
    def predict_proba(
        self, v: Tensor, a: Tensor, t: Tensor, present: Tensor | None = None, alpha: float = 0.6
    ) -> Tensor:
        """Blended probability [B] (`blend`; rows without text: the full model's alone).

        Eval mode is the caller's business."""
        full, text = self(v, a, t, present)[:2]
        return blend(text, full, alpha, None if present is None else present[:, TEXT])


def blend(text_logit: Any, full_logit: Any, alpha: float, has_text: Any = None) -> Any:
    """p = alpha*sigmoid(text) + (1-alpha)*sigmoid(full) where ``has_text``, sigmoid(full)
    elsewhere; torch tensors or numpy arrays.

    ``has_text`` [B] bool or 0/1 (e.g. ``present[:, 2]``); None means every row has text
    (callers without presence information, the behaviour before presence was passed).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    if isinstance(text_logit, Tensor):
        p_full = torch.sigmoid(full_logit)
        p = alpha * torch.sigmoid(text_logit) + (1.0 - alpha) * p_full
        if has_text is None:
            return p
        keep = torch.as_tensor(has_text, device=p.device) > 0.5
        return torch.where(keep, p, p_full)
    tl = np.asarray(text_logit, dtype=np.float64)
    fl = np.asarray(full_logit, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # rows without text may hold anything
        p_full = 1.0 / (1.0 + np.exp(-fl))
        p = alpha / (1.0 + np.exp(-tl)) + (1.0 - alpha) * p_full
    if has_text is None:
        return p
    return np.where(_numpy(has_text).reshape(p.shape) > 0.5, p, p_full)


@dataclass(frozen=True)
class BlendChoice:
    """The blend weight and threshold chosen on validation data, and their macro F1."""

    alpha: float
    threshold: float
    macro_f1: float


DEFAULT_ALPHAS: np.ndarray = np.round(np.arange(0.0, 1.0 + 1e-9, 0.05), 2)


def tune_blend(
    text_logits: Any,
    full_logits: Any,
    labels: Any,
    alphas: Sequence[float] | np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    has_text: Any = None,
) -> BlendChoice:
    """Choose alpha on a grid and the threshold maximizing validation macro F1.

    The probabilities are `blend`'s (``has_text`` as there: None means every row has
    text). Thresholds come from ``models.metrics.best_threshold`` (default: the official
    0.001 grid).
    """
    tl = _numpy(text_logits)
    fl = _numpy(full_logits)
    y = _numpy(labels).astype(np.int64)
    mask = None if has_text is None else _numpy(has_text)
    return pick_alpha(lambda a: best_threshold(y, blend(tl, fl, a, mask), thresholds), alphas)


def pick_alpha(
    score: Callable[[float], tuple[float, float]],
    alphas: Sequence[float] | np.ndarray | None = None,
) -> BlendChoice:
    """The alpha of the grid whose ``score(alpha) -> (threshold, macro F1)`` is best.

    Among alphas tied within 1e-12 of the best macro F1, the lower median in grid order
    is chosen (the same plateau rule as ``best_threshold``).
    """
    grid = DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("alphas must be a non-empty 1-D grid")
    results = [score(float(a)) for a in grid]
    scores = np.array([f for _, f in results])
    idx = np.flatnonzero(scores >= scores.max() - 1e-12)
    pick = int(idx[(idx.size - 1) // 2])
    thr, f1 = results[pick]
    return BlendChoice(alpha=float(grid[pick]), threshold=float(thr), macro_f1=float(f1))


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy().reshape(-1)
    return np.asarray(x, dtype=np.float64).reshape(-1)


@torch.no_grad()
def ensemble_probs(
    heads: Sequence[ConflictAwareAH],
    v: Tensor,
    a: Tensor,
    t: Tensor,
    present: Tensor | None = None,
    alpha: float | Sequence[float] = 0.6,
) -> Tensor:
    """Mean blended probability [B] over heads (checkpoints or seeds), each in eval mode.

    ``alpha`` is one weight for all heads or one per head.
    """
    if not heads:
        raise ValueError("an ensemble needs at least one head")
    alphas = [float(alpha)] * len(heads) if isinstance(alpha, int | float) else list(alpha)
    if len(alphas) != len(heads):
        raise ValueError("one alpha per head")
    probs = []
    for head, al in zip(heads, alphas, strict=True):
        was_training = head.training
        head.eval()
        probs.append(head.predict_proba(v, a, t, present, al))
        head.train(was_training)
    return torch.stack(probs).mean(dim=0)


@torch.no_grad()
def multi_window_probs(
    heads: ConflictAwareAH | Sequence[ConflictAwareAH],
    v: Tensor,
    a: Tensor,
    t: Tensor,
    present: Tensor | None = None,
    window_mask: Tensor | None = None,
    alpha: float | Sequence[float] = 0.6,
) -> Tensor:
    """Clip probability [B] from per-window embeddings: the mean over windows of p.

    ``v``, ``a``, ``t`` are [B, W, D_m] (W windows of a longer clip); ``present`` is
    [B, W, 3] or [B, 3] (same for every window); ``window_mask`` [B, W] bool marks real
    windows when clips have different numbers of them (each clip needs at least one).
    """
    if v.dim() != 3:
        raise ValueError("window inputs must be [B, W, D]")
    b, w = v.shape[:2]
    if present is None:
        present = torch.ones(b, w, len(MODALITIES), dtype=torch.bool, device=v.device)
    elif present.dim() == 2:
        present = present.unsqueeze(1).expand(b, w, present.shape[1])
    members = [heads] if isinstance(heads, ConflictAwareAH) else list(heads)
    flat = ensemble_probs(
        members,
        v.reshape(b * w, -1),
        a.reshape(b * w, -1),
        t.reshape(b * w, -1),
        present.reshape(b * w, -1),
        alpha,
    ).reshape(b, w)
    if window_mask is None:
        return flat.mean(dim=1)
    keep = window_mask.to(torch.bool)
    if bool((~keep.any(dim=1)).any()):
        raise ValueError("every clip needs at least one window")
    # where, not a product: padding windows may hold anything, NaN included.
    flat = torch.where(keep, flat, torch.zeros_like(flat))
    return flat.sum(dim=1) / keep.sum(dim=1).to(flat.dtype)


def save_checkpoint(head: ConflictAwareAH, path: str | Path, **extra: Any) -> None:
    """Save config, weights and any extra JSON-able fields (e.g. tuned alpha, threshold, seed)."""
    torch.save({"config": asdict(head.cfg), "state": head.state_dict(), "extra": extra}, path)


def load_checkpoint(path: str | Path) -> tuple[ConflictAwareAH, dict[str, Any]]:
    """Load a head saved by ``save_checkpoint`` (eval mode) and its extra fields."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    head = ConflictAwareAH(HeadConfig(**ckpt["config"]))
    head.load_state_dict(ckpt["state"], strict=True)
    return head.eval(), dict(ckpt.get("extra", {}))


class _Exported(nn.Module):
    """Forward with a float presence input (0/1): the ONNX graph takes plain tensors.

    With ``stats`` (the checkpoint's ``{modality: {"mean": [...], "std": [...]}}``, what
    `models.train_full` standardises embeddings with before the head) the graph takes raw
    embeddings and standardises them itself, as training and evaluation do."""

    def __init__(self, head: ConflictAwareAH, stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.head = head
        self.standardise = stats is not None
        for name, dim in zip(MODALITIES, head.cfg.in_dims, strict=True):
            mean, std = np.zeros(dim, np.float32), np.ones(dim, np.float32)
            if stats is not None:
                if name not in stats:
                    raise ValueError(f"stats lack the {name} modality")
                mean = np.asarray(stats[name]["mean"], np.float32).reshape(-1)
                std = np.asarray(stats[name]["std"], np.float32).reshape(-1)
                if mean.shape != (dim,) or std.shape != (dim,):
                    raise ValueError(
                        f"{name} stats have widths {mean.size}/{std.size}, the head takes {dim}"
                    )
                if not (np.all(np.isfinite(mean)) and np.all(std > 0)):
                    raise ValueError(f"{name} stats must be finite with std > 0")
            self.register_buffer(f"{name}_mean", torch.from_numpy(mean.copy()))
            self.register_buffer(f"{name}_std", torch.from_numpy(std.copy()))

    def forward(self, v: Tensor, a: Tensor, t: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        if self.standardise:
            v = (v - self.video_mean) / self.video_std
            a = (a - self.audio_mean) / self.audio_std
            t = (t - self.text_mean) / self.text_std
        full, text = self.head(v, a, t, present > 0.5)[:2]
        return full, text


ONNX_INPUTS: tuple[str, ...] = ("video", "audio", "text", "present")
ONNX_OUTPUTS: tuple[str, ...] = ("full_logit", "text_logit")


def export_onnx(
    head: ConflictAwareAH,
    path: str | Path,
    dims: tuple[int, int, int] | None = None,
    opset: int = 17,
    stats: dict[str, Any] | None = None,
) -> Path:
    """Export to ONNX (opset >= 17, dynamic batch); inputs video/audio/text/present (float 0/1).

    ``dims`` are the (video, audio, text) widths; they must match the head's config.
    ``stats`` (a `models.train_full` checkpoint's ``extra["stats"]``) builds the input
    standardisation into the graph, which then takes raw embeddings; without it the graph
    takes the embeddings as the head does (already standardised, if it was trained so).
    """
    if opset < 17:
        raise ValueError("opset must be >= 17")
    dims = head.cfg.in_dims if dims is None else dims
    if tuple(dims) != head.cfg.in_dims:
        raise ValueError(f"dims {tuple(dims)} differ from the head's {head.cfg.in_dims}")
    module = _Exported(head, stats)
    path = Path(path)
    was_training = head.training
    head.eval()
    b = 2  # a batch > 1 so the tracer cannot specialise on 1
    gen = torch.Generator().manual_seed(0)
    sample = tuple(torch.randn(b, d, generator=gen) for d in dims) + (
        torch.ones(b, len(MODALITIES)),
    )
    axes = {name: {0: "batch"} for name in ONNX_INPUTS + ONNX_OUTPUTS}
    try:
        # Grad stays enabled: under no_grad, eval-mode encoder layers take PyTorch's fused
        # fast path (aten::_transformer_encoder_layer_fwd), which has no ONNX symbolic.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                sample,
                str(path),
                dynamo=False,
                input_names=list(ONNX_INPUTS),
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes=axes,
                opset_version=opset,
            )
    finally:
        head.train(was_training)
    return path


class OnnxConflictHead:
    """ONNX Runtime runner for an exported head: same outputs as the torch forward."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(
        self, v: np.ndarray, a: np.ndarray, t: np.ndarray, present: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (full logit [B], text logit [B]); ``present`` is [B, 3] bool/0-1 (None: all).
        The embeddings are raw when the graph was exported with ``stats`` (`export_onnx`).

        Probabilities: ``blend(text, full, alpha, present[:, 2])``, as for the torch head."""
        b = t.shape[0]
        pres = np.ones((b, 3), np.float32) if present is None else present.astype(np.float32)
        feeds = {
            "video": np.asarray(v, np.float32),
            "audio": np.asarray(a, np.float32),
            "text": np.asarray(t, np.float32),
            "present": pres,
        }
        full, text = self.session.run(list(ONNX_OUTPUTS), feeds)
        return full, text
