"""Training of the fusion TCN on simulated streams of real BAH answers (lite profile).

Data: the BAH video-level split files only. Every training answer is replayed
as a word stream (`models.simulate`: 130-170 wpm, pauses at punctuation, 10 Hz
ticks), ``realizations`` times with different pacing seeds, half of them with
the question's prompt as context. Each tick gets the fusion row the live
analysis would compute (`models.fusion.TextStream`; face and voice masked: no
face or voice A/H labels exist here) and the *video* label (broadcast to every
tick, the BAH authors' weak-label practice).

Stacking without leakage: the text features of a training answer come from a
text model that did not see it (the 5 participant-grouped fold models of
`models.train_text`, seeds as in its cross-validation), so the TCN learns how
out-of-sample text scores behave; validation and live use the shipped text
model. Loss: binary cross-entropy per tick, every stream weighted equally.

What carries learned weight: the text block only (`TCNConfig.active`). The
input columns of face, voice, their masks and the conflict features are zero
from initialisation (weight normalisation keeps zero columns at zero, their
inputs are always masked) and are written as exact zeros, as are the
modality projections, which never receive a gradient here.

``python -m models.train_tcn --split-dir DIR --out-dir models/weights`` (after
`models.train_text`) reproduces ``tcn_lite.{npz,json}``; ``--table`` prints
the candidate comparison of the model card.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from models.bah import QUESTION_PROMPTS, BahItem, read_split
from models.fusion import LAYOUT, MODALITIES, TEXT_FEATURES, TextStream, fusion_input
from models.metrics import best_threshold, evaluate_scores, pooled_threshold
from models.simulate import DEFAULT_PACING, PacingConfig, early_index, seed_for, simulate_stream
from models.tcn import TCN_STEM, FusionTCN, TCNConfig
from models.text_ah import TextAHModel

__all__ = [
    "TrainTCNConfig",
    "DEFAULT_TRAIN",
    "METHODS",
    "EARLY_FRACTIONS",
    "Streams",
    "aggregate",
    "build_streams",
    "fold_text_models",
    "TorchFusionTCN",
    "fit_tcn",
    "train_tcn_model",
    "choose_rule",
    "train_plan",
    "main",
]

# 1.4: the text block reads the words the text model reads (fillers out, as it drops them);
# 1.3: retrained on text model 1.2.0; 1.2: face 46 and voice 18 features (fusion row 103);
# 1.1: thresholds pooled
TCN_VERSION = "1.4.0"
METHODS = ("last", "mean", "max_ma1s")
EARLY_FRACTIONS = (0.25, 0.5, 0.75)
HZ = 10.0
PAD_TICKS = 64


@dataclass(frozen=True)
class TrainTCNConfig:
    """Training recipe (defaults = the shipped lite weights)."""

    tcn: TCNConfig = TCNConfig()
    realizations: int = 4  # streams per training answer (even: no context, odd: context)
    epochs: int = 12
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    dropout: float = 0.1
    # Text features kept at zero weight: simulated timing is label-independent by
    # construction, so the lite weights must not learn anything from it.
    drop_features: tuple[str, ...] = ("since_word", "word_rate")


DEFAULT_TRAIN = TrainTCNConfig()


# ------------------------------------------------------------------------------- data


@dataclass
class Streams:
    """Simulated streams: fusion rows, text-model p per tick, labels, owners."""

    x: list[np.ndarray]  # (T_i, D) fusion rows
    p_text: list[np.ndarray]  # (T_i,) the text model's p at each tick (the text-only path)
    y: np.ndarray  # (n,) video label
    item: np.ndarray  # (n,) index of the answer in its split
    context: np.ndarray  # (n,) bool: the prompt was given as context


def _one_stream(
    model: TextAHModel,
    it: BahItem,
    salt: int,
    with_context: bool,
    pacing: PacingConfig,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Fusion rows and text p of one simulated replay, exactly as the analysis computes them."""
    sim = simulate_stream(it.transcript, seed_for(it.video_id, salt), HZ, pacing)
    ctx = QUESTION_PROMPTS.get(it.question) if with_context and it.question else None
    ts = TextStream(model, ctx)
    rows, ps = [], []
    words: list[Any] = []
    for t, new, _final in sim.batches():
        words.extend(new)
        rows.append(fusion_input(ts.features(t, words), None, None, active=("text",)))
        ps.append(ts.p_text)
    return np.asarray(rows, dtype=dtype), np.asarray(ps)


def build_streams(
    items: Sequence[BahItem],
    model_for: Callable[[int], TextAHModel],
    plan: Sequence[tuple[int, bool]],
    pacing: PacingConfig = DEFAULT_PACING,
    progress: bool = False,
    desc: str = "streams",
    dtype: type = np.float64,
) -> Streams:
    """Simulate every item for each (salt, with_context) of ``plan``; text model per item.

    Training streams are kept in float32 (what the network trains on; half the memory).
    """
    xs, ps, y, owner, ctx = [], [], [], [], []
    jobs = [(i, s, c) for i in range(len(items)) for s, c in plan]
    it_jobs: Any = jobs
    if progress:
        from tqdm import tqdm

        it_jobs = tqdm(jobs, desc=desc, file=sys.stderr, leave=False)
    for i, salt, c in it_jobs:
        x, p = _one_stream(model_for(i), items[i], salt, c, pacing, dtype)
        xs.append(x)
        ps.append(p)
        y.append(items[i].label)
        owner.append(i)
        ctx.append(c)
    return Streams(xs, ps, np.array(y), np.array(owner), np.array(ctx, dtype=bool))


def fold_text_models(
    train: Sequence[BahItem], full: TextAHModel, seed: int = 0, progress: bool = False
) -> tuple[list[TextAHModel], np.ndarray]:
    """The text model's participant-grouped fold models and the fold of each training item.

    Folds and seeds are those of `models.train_text` cross-validation; each fold
    model takes the mix and context head of the full model (a few parameters fit
    on out-of-fold scores of all of train).
    """
    from models.train_text import CV_FOLDS, DEFAULT_CONFIG, _folds, fit_stage1

    texts = [it.transcript for it in train]
    y = [it.label for it in train]
    q = [it.question for it in train]
    folds = _folds(train, CV_FOLDS, seed)
    fold_of = np.zeros(len(train), dtype=np.int64)
    models = []
    it: Any = list(enumerate(folds))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="text fold models", file=sys.stderr, leave=False)
    for k, (tr, te) in it:
        m = fit_stage1(
            [texts[i] for i in tr],
            [y[i] for i in tr],
            [q[i] for i in tr],
            DEFAULT_CONFIG,
            seed + 1000 + k,
        )
        m.mix_a, m.mix_b, m.mix_c = full.mix_a, full.mix_b, full.mix_c
        m.ctx_a, m.ctx_offsets = full.ctx_a, dict(full.ctx_offsets)
        m.min_words = full.min_words
        models.append(m)
        fold_of[te] = k
    return models, fold_of


# ------------------------------------------------------------------------------- aggregation


def aggregate(p: np.ndarray, method: str, hz: float = HZ) -> np.ndarray:
    """Running video-level p after each tick (as `stream.aggregate.VideoAggregator`;
    ValueError for a p that is not a number in [0, 1])."""
    p = np.asarray(p, dtype=np.float64)
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise ValueError("frame probabilities must be numbers in [0, 1]")
    n = np.arange(1, p.size + 1)
    if method == "last":
        return p.copy()
    if method == "mean":
        return np.cumsum(p) / n
    if method == "max_ma1s":
        w = max(1, int(round(hz)))
        c = np.concatenate([[0.0], np.cumsum(p)])
        lo = np.maximum(n - w, 0)
        ma = (c[n] - c[lo]) / (n - lo)
        return np.maximum.accumulate(ma)
    raise ValueError(f"unknown aggregation method {method!r}")


def video_scores(
    p_seqs: Sequence[np.ndarray], method: str, fraction: float | None = None
) -> np.ndarray:
    """Video-level p per stream: the aggregate at the end (or at ``fraction`` of the stream)."""
    out = np.empty(len(p_seqs))
    for i, p in enumerate(p_seqs):
        agg = aggregate(p, method)
        out[i] = agg[-1] if fraction is None else agg[early_index(p.size, fraction)]
    return out


# ------------------------------------------------------------------------------- the network


class TorchFusionTCN(nn.Module):
    """Training twin of `models.tcn.FusionTCN` (one member; weight-normalised convolutions)."""

    def __init__(
        self,
        cfg: TCNConfig,
        in_mean: np.ndarray,
        in_std: np.ndarray,
        dropout: float = 0.1,
        drop_features: Sequence[str] = (),
    ) -> None:
        super().__init__()
        L = LAYOUT
        self.cfg = cfg
        self.register_buffer("in_mean", torch.as_tensor(in_mean, dtype=torch.float32))
        self.register_buffer("in_std", torch.as_tensor(in_std, dtype=torch.float32))
        K = cfg.proj_dim
        dims = {"text": L.text_dim, "face": L.face_dim, "voice": L.voice_dim}
        self.proj = nn.ModuleDict({m: nn.Linear(dims[m], K) for m in MODALITIES})
        self.blocks = nn.ModuleList()
        c_in = cfg.in_dim
        for d in cfg.dilations:
            conv1 = weight_norm(nn.Conv1d(c_in, cfg.channels, cfg.kernel, dilation=d))
            conv2 = weight_norm(nn.Conv1d(cfg.channels, cfg.channels, cfg.kernel, dilation=d))
            res = nn.Conv1d(c_in, cfg.channels, 1) if c_in != cfg.channels else None
            self.blocks.append(nn.ModuleDict({"conv1": conv1, "conv2": conv2}))
            if res is not None:
                self.blocks[-1]["res"] = res
            c_in = cfg.channels
        self.head = nn.Linear(cfg.channels, 1)
        self.skip = nn.Parameter(torch.tensor(1.0))
        self.dropout = nn.Dropout(dropout)
        self.frozen = torch.as_tensor(self.frozen_inputs(cfg, drop_features))
        self.active_idx = torch.as_tensor(np.flatnonzero(~self.frozen.numpy()))
        with torch.no_grad():
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            b0 = self.blocks[0]
            b0["conv1"].parametrizations.weight.original1[:, self.frozen, :] = 0.0
            if "res" in b0:
                b0["res"].weight[:, self.frozen, :] = 0.0
            for m in MODALITIES:
                if m not in cfg.active:
                    self.proj[m].weight.zero_()
                    self.proj[m].bias.zero_()

    @staticmethod
    def frozen_inputs(cfg: TCNConfig, drop_features: Sequence[str] = ()) -> np.ndarray:
        """Bool per network input column: True where the weight must stay zero."""
        L = LAYOUT
        frozen = np.zeros(cfg.in_dim, dtype=bool)
        if "face" not in cfg.active:
            frozen[L.face] = True
            frozen[L.face_mask] = True
        if "voice" not in cfg.active:
            frozen[L.voice] = True
            frozen[L.voice_mask] = True
        for name in drop_features:
            frozen[TEXT_FEATURES.index(name)] = True
        K, base = cfg.proj_dim, L.dim
        for j, (a, b) in enumerate((("face", "text"), ("voice", "text"), ("face", "voice"))):
            if a not in cfg.active or b not in cfg.active:
                frozen[base + j * K : base + (j + 1) * K] = True
                frozen[base + 3 * K + j] = True
        return frozen

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Network input columns (B, T, n_active): normalised rows, conflicts, pair presences.

        Only the columns that are not frozen are built (the frozen ones have zero
        weight), which makes text-only training several times cheaper.
        """
        L = LAYOUT
        xn = (x - self.in_mean) / self.in_std
        fm = x[..., L.face_mask : L.face_mask + 1]
        vm = x[..., L.voice_mask]
        xn = torch.cat(
            [xn[..., L.text], xn[..., L.face] * fm, fm, xn[..., L.voice] * vm, vm], dim=-1
        )
        pairs = [
            (a, b)
            for a, b in (("face", "text"), ("voice", "text"), ("face", "voice"))
            if a in self.cfg.active and b in self.cfg.active
        ]
        if not pairs:
            return xn[..., self.active_idx]
        pres = {
            "text": x[..., TEXT_FEATURES.index("usable")],
            "face": x[..., L.face_mask],
            "voice": x[..., L.voice_speech_masks].amax(dim=-1),
        }
        proj = {
            "text": self.proj["text"](xn[..., L.text]),
            "face": self.proj["face"](xn[..., L.face]),
            "voice": self.proj["voice"](xn[..., L.voice]),
        }
        parts = [xn]
        both = []
        for a, b in (("face", "text"), ("voice", "text"), ("face", "voice")):
            pr = pres[a] * pres[b]
            parts.append((proj[a] - proj[b]).abs() * pr[..., None])
            both.append(pr)
        parts.append(torch.stack(both, dim=-1))
        return torch.cat(parts, dim=-1)[..., self.active_idx]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, T) of fusion rows (B, T, D)."""
        h = self._inputs(x).transpose(1, 2)  # (B, C, T)
        for i, blk in enumerate(self.blocks):
            d = blk["conv1"].dilation[0]
            pad = (self.cfg.kernel - 1) * d
            w1 = blk["conv1"].weight
            if i == 0:
                w1 = w1[:, self.active_idx, :]
            a = F.conv1d(F.pad(h, (pad, 0)), w1, blk["conv1"].bias, dilation=d)
            a = self.dropout(F.relu(a))
            a = self.dropout(F.relu(blk["conv2"](F.pad(a, (pad, 0)))))
            if "res" in blk:
                wr = blk["res"].weight[:, self.active_idx, :] if i == 0 else blk["res"].weight
                r = F.conv1d(h, wr, blk["res"].bias)
            else:
                r = h
            h = F.relu(a + r)
        z = self.head(h.transpose(1, 2)).squeeze(-1)
        return z + self.skip * x[..., TEXT_FEATURES.index("z_p")]

    def export(self, prefix: str = "m0.") -> dict[str, np.ndarray]:
        """Folded float64 arrays for `FusionTCN` (inactive weights written as exact zeros)."""
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for m in MODALITIES:
                w = self.proj[m].weight.double().numpy().copy()
                b = self.proj[m].bias.double().numpy().copy()
                if not self._proj_used(m):
                    w[:], b[:] = 0.0, 0.0
                out[f"{prefix}proj_{m}_w"], out[f"{prefix}proj_{m}_b"] = w, b
            for i, blk in enumerate(self.blocks):
                p = f"{prefix}block{i}."
                for name in ("conv1", "conv2"):
                    out[f"{p}{name}_w"] = blk[name].weight.double().numpy().copy()
                    out[f"{p}{name}_b"] = blk[name].bias.double().numpy().copy()
                if "res" in blk:
                    out[f"{p}res_w"] = blk["res"].weight[:, :, 0].double().numpy().copy()
                    out[f"{p}res_b"] = blk["res"].bias.double().numpy().copy()
            fr = self.frozen.numpy()
            out[f"{prefix}block0.conv1_w"][:, fr, :] = 0.0
            if f"{prefix}block0.res_w" in out:
                out[f"{prefix}block0.res_w"][:, fr] = 0.0
            out[f"{prefix}head_w"] = self.head.weight[0].double().numpy().copy()
            out[f"{prefix}head_b"] = np.array(float(self.head.bias[0]))
            out[f"{prefix}skip"] = np.array(float(self.skip))
        return out

    def _proj_used(self, m: str) -> bool:
        pairs = (("face", "text"), ("voice", "text"), ("face", "voice"))
        return any(m in p and p[0] in self.cfg.active and p[1] in self.cfg.active for p in pairs)


def input_stats(streams: Streams) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean/std of the text block over all ticks (face/voice: 0/1, masks: 0/1)."""
    X = np.concatenate([x[:, LAYOUT.text] for x in streams.x]).astype(np.float64)
    mean = np.zeros(LAYOUT.dim)
    std = np.ones(LAYOUT.dim)
    mean[LAYOUT.text] = X.mean(axis=0)
    std[LAYOUT.text] = np.maximum(X.std(axis=0), 1e-3)
    return mean, std


def _batches(lengths: np.ndarray, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches in random order."""
    order = np.argsort(lengths + rng.uniform(0, 1, lengths.size) * 20, kind="stable")
    groups = [order[i : i + batch] for i in range(0, order.size, batch)]
    rng.shuffle(groups)
    return groups


def fit_tcn(
    streams: Streams,
    cfg: TrainTCNConfig,
    seed: int,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
    desc: str = "TCN",
) -> TorchFusionTCN:
    """Train one member on the streams (seeded); returns the torch network in eval mode."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = stats if stats is not None else input_stats(streams)
    net = TorchFusionTCN(cfg.tcn, mean, std, cfg.dropout, cfg.drop_features)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = np.array([x.shape[0] for x in streams.x])
    steps = cfg.epochs * math.ceil(len(lengths) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    X = [torch.as_tensor(x, dtype=torch.float32) for x in streams.x]
    it: Any = range(cfg.epochs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, file=sys.stderr, leave=False)
    net.train()
    for _ in it:
        for idx in _batches(lengths, cfg.batch, rng):
            # Fixed batch size and lengths rounded up to PAD_TICKS: few distinct shapes, so
            # the CPU convolution kernels are planned once (padding has zero loss weight).
            T = int(math.ceil(lengths[idx].max() / PAD_TICKS) * PAD_TICKS)
            xb = torch.zeros(cfg.batch, T, LAYOUT.dim)
            wb = torch.zeros(cfg.batch, T)
            yb = torch.zeros(cfg.batch, T)
            for j, i in enumerate(idx):
                n = int(lengths[i])
                xb[j, :n] = X[i]
                wb[j, :n] = 1.0 / n
                yb[j] = float(streams.y[i])
            loss = (F.binary_cross_entropy_with_logits(net(xb), yb, reduction="none") * wb).sum()
            loss = loss / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar is not None:
        bar.close()
    net.eval()
    return net


def to_runtime(nets: Sequence[TorchFusionTCN], metadata: dict[str, Any] | None = None) -> FusionTCN:
    """Fold trained members into one numpy `FusionTCN` ensemble."""
    cfg = replace(nets[0].cfg, members=len(nets))
    arrays: dict[str, np.ndarray] = {
        "in_mean": nets[0].in_mean.double().numpy().copy(),
        "in_std": nets[0].in_std.double().numpy().copy(),
    }
    for k, net in enumerate(nets):
        arrays.update(net.export(prefix=f"m{k}."))
    # The runtime computes in float64 from the float32 file: round now so that
    # the model in memory is the model on disk.
    arrays = {k: v.astype(np.float32).astype(np.float64) for k, v in arrays.items()}
    return FusionTCN(config=cfg, arrays=arrays, metadata=dict(metadata or {}))


def predict_streams(model: FusionTCN, streams: Streams) -> list[np.ndarray]:
    """Frame p of each stream with the numpy runtime."""
    return [model.forward(x) for x in streams.x]


# ------------------------------------------------------------------------------- recipe


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_plan(n: int) -> list[tuple[int, bool]]:
    """(salt, with_context) of the training replays: salts 1..n, every second with context."""
    return [(1 + r, r % 2 == 1) for r in range(n)]


VAL_PLAN = ((0, False), (0, True))  # evaluation replays use salt 0, as `ahstream evaluate`
CV_PLAN = ((1, False), (2, True))  # the training replays scored in cross-validation


def _subset(s: Streams, mask: np.ndarray) -> Streams:
    idx = np.flatnonzero(mask)
    return Streams(
        [s.x[i] for i in idx], [s.p_text[i] for i in idx], s.y[idx], s.item[idx], s.context[idx]
    )


def _salts(plan: Sequence[tuple[int, bool]], n_items: int) -> np.ndarray:
    """Salt of each stream built by `build_streams` with this plan."""
    return np.tile(np.array([salt for salt, _ in plan]), n_items)


def score_table(
    y: np.ndarray, seqs: Sequence[np.ndarray], thresholds: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per aggregation method: AUC and the official metrics at a given or the tuned threshold."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        s = video_scores(seqs, method)
        thr = best_threshold(y, s)[0] if thresholds is None else thresholds[method]
        out[method] = {"auc": float(roc_auc_score(y, s)), **evaluate_scores(y, s, thr)}
        out[method]["early_macro_f1"] = {
            str(int(f * 100)): evaluate_scores(y, video_scores(seqs, method, f), thr)["macro_f1"]
            for f in EARLY_FRACTIONS
        }
    return out


def cross_validate_tcn(
    tr: Streams,
    fold_of: np.ndarray,
    cfg: TrainTCNConfig,
    seed: int,
    progress: bool = False,
) -> list[np.ndarray | None]:
    """Out-of-fold TCN frame p for the `CV_PLAN` streams (participant-grouped text folds)."""
    salts = _salts(train_plan(cfg.realizations), int(tr.item.max()) + 1)
    scored = np.isin(salts, [s for s, _ in CV_PLAN])
    oof: list[np.ndarray | None] = [None] * len(tr.x)
    for k in range(int(fold_of.max()) + 1):
        in_fold = fold_of[tr.item] == k
        fit_on = _subset(tr, ~in_fold)
        nets = [
            fit_tcn(fit_on, cfg, seed + 100 * (k + 1) + m, progress=progress, desc=f"CV fold {k}")
            for m in range(cfg.tcn.members)
        ]
        model = to_runtime(nets)
        for i in np.flatnonzero(in_fold & scored):
            oof[i] = model.forward(tr.x[i])
    return oof


def candidate_table(
    tr: Streams,
    oof: list[np.ndarray | None],
    va: Streams,
    p_val_tcn: list[np.ndarray],
    cv_plan_salts: np.ndarray,
) -> dict[str, Any]:
    """CV-on-train and val metrics of every (source, method), without and with context."""
    table: dict[str, Any] = {}
    for ctx in (False, True):
        key = "context" if ctx else "no_context"
        cv_sel = np.flatnonzero((tr.context == ctx) & cv_plan_salts)
        va_sel = np.flatnonzero(va.context == ctx)
        table[key] = {
            "cv": {
                "text": score_table(tr.y[cv_sel], [tr.p_text[i] for i in cv_sel]),
                "tcn": score_table(tr.y[cv_sel], [oof[i] for i in cv_sel]),  # type: ignore[misc]
            },
            "val": {
                "text": score_table(va.y[va_sel], [va.p_text[i] for i in va_sel]),
                "tcn": score_table(va.y[va_sel], [p_val_tcn[i] for i in va_sel]),
            },
        }
    return table


SIMPLEST = ("text", "last")
MIN_GAIN = 0.01


def choose_rule(table: dict[str, Any]) -> tuple[str, str, str]:
    """Pick (source, method) and say why.

    Default: the simplest, the text model's estimate on everything heard so far
    (``text``, ``last``). Another candidate replaces it only if its mean macro F1
    (no context and context) beats it by at least `MIN_GAIN` in cross-validation
    on train (616 answers; val has 110, where one answer is ~0.01) and is not
    worse on val.
    """

    def mean_f1(split: str, source: str, method: str) -> float:
        return float(
            np.mean(
                [table[c][split][source][method]["macro_f1"] for c in ("no_context", "context")]
            )
        )

    base_cv, base_val = mean_f1("cv", *SIMPLEST), mean_f1("val", *SIMPLEST)
    best, best_cv = SIMPLEST, base_cv
    for source in ("text", "tcn"):
        for method in METHODS:
            cv, val = mean_f1("cv", source, method), mean_f1("val", source, method)
            if cv >= base_cv + MIN_GAIN and val >= base_val and cv > best_cv:
                best, best_cv = (source, method), cv
    why = (
        f"CV macro F1 {best_cv:.3f} vs {base_cv:.3f} for text/last"
        if best != SIMPLEST
        else f"no candidate beat text/last (CV macro F1 {base_cv:.3f}) by {MIN_GAIN} in CV "
        "without losing on val"
    )
    return best[0], best[1], why


def train_tcn_model(
    split_dir: Path,
    out_dir: Path,
    text_model: TextAHModel | None = None,
    seed: int = 0,
    cfg: TrainTCNConfig = DEFAULT_TRAIN,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the shipped TCN on train.txt; choose the decision rule and thresholds; save."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        """Print a timestamped progress line on stderr."""
        if progress:
            print(f"[train_tcn {time.perf_counter() - t0:5.1f}s] {msg}", file=sys.stderr)

    # One intra-op thread: these convolutions are tiny, and a second thread spin-waits
    # (40x slower per step when the other core is busy). Also makes runs reproducible.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        split_dir, out_dir = Path(split_dir), Path(out_dir)
        train = read_split(split_dir / "train.txt")
        val = read_split(split_dir / "val.txt")
        full = text_model if text_model is not None else TextAHModel.load(out_dir)
        folds, fold_of = fold_text_models(train, full, seed, progress)
        log("text fold models fitted")
        plan = train_plan(cfg.realizations)
        tr = build_streams(
            train,
            lambda i: folds[fold_of[i]],
            plan,
            progress=progress,
            desc="train streams",
            dtype=np.float32,
        )
        va = build_streams(val, lambda i: full, VAL_PLAN, progress=progress, desc="val streams")
        n_ticks = sum(x.shape[0] for x in tr.x)
        log(f"{len(tr.x)} training streams ({n_ticks} ticks), {len(va.x)} val streams")
        oof = cross_validate_tcn(tr, fold_of, cfg, seed, progress)
        log("cross-validation done")
        nets = [
            fit_tcn(tr, cfg, seed + m, progress=progress, desc=f"TCN {m + 1}/{cfg.tcn.members}")
            for m in range(cfg.tcn.members)
        ]
        model = to_runtime(nets)
        log("final TCN trained")
    finally:
        torch.set_num_threads(threads)

    p_val_tcn = predict_streams(model, va)
    cv_salts = np.isin(_salts(plan, len(train)), [s for s, _ in CV_PLAN])
    table = candidate_table(tr, oof, va, p_val_tcn, cv_salts)
    source, method, why = choose_rule(table)
    decision: dict[str, Any] = {
        "source": source,
        "method": method,
        "why": why,
        "threshold_rule": (
            "max macro F1 of the video scores over numpy.arange(0, 1, 0.001) (lower median of "
            "the maximisers), out-of-fold train replays and val pooled"
        ),
    }
    for ctx in (False, True):
        sel = np.flatnonzero(va.context == ctx)
        seqs = [(p_val_tcn if source == "tcn" else va.p_text)[i] for i in sel]
        s = video_scores(seqs, method)
        # The threshold of the out-of-fold train scores and val's pooled (726 answers; val
        # alone, 110, is noisy: models.metrics.pooled_threshold).
        cv_sel = np.flatnonzero((tr.context == ctx) & cv_salts)
        s_cv = video_scores([(oof if source == "tcn" else tr.p_text)[i] for i in cv_sel], method)
        thr = pooled_threshold((tr.y[cv_sel], s_cv), (va.y[sel], s))
        decision["threshold_context" if ctx else "threshold"] = thr
        res: dict[str, Any] = evaluate_scores(va.y[sel], s, thr)
        res["early"] = {
            str(int(f * 100)): evaluate_scores(va.y[sel], video_scores(seqs, method, f), thr)
            for f in EARLY_FRACTIONS
        }
        decision["val_with_context" if ctx else "val"] = res
    model.metadata = {
        "name": TCN_STEM,
        "version": TCN_VERSION,
        "description": (
            "Causal fusion TCN over per-tick text/face/voice features and conflict features; "
            "lite weights trained on simulated word streams of BAH answers (video labels "
            "broadcast to ticks). Only the text block carries learned weight."
        ),
        "decision": decision,
        "trained_inputs": [f for f in TEXT_FEATURES if f not in cfg.drop_features],
        "zero_weight_inputs": [
            *cfg.drop_features,
            "face",
            "face_mask",
            "voice",
            "voice_mask",
            "conflict",
        ],
        "hz": HZ,
        "pacing": asdict(DEFAULT_PACING),
        "train": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(cfg).items()
            if k != "tcn"
        },
        "seed": seed,
        "text_model": {
            "name": full.name,
            "version": full.version,
            "fingerprint": full.fingerprint(),
        },
        "data_sha256": {f: _sha256(split_dir / f) for f in ("train.txt", "val.txt")},
        "candidates": table,
        "library_versions": {"numpy": np.__version__, "torch": torch.__version__},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    model.save(out_dir)
    v, vc = decision["val"], decision["val_with_context"]
    log(
        f"decision {source}/{method} ({why}); val macro F1 {v['macro_f1']:.4f} "
        f"(threshold {decision['threshold']:.3f}), with context {vc['macro_f1']:.4f} "
        f"(threshold {decision['threshold_context']:.3f}); wrote {out_dir}/{TCN_STEM}.{{npz,json}}"
    )
    return {
        "decision": decision,
        "train_seconds": model.metadata["train_seconds"],
        "out_dir": str(out_dir),
    }


def format_table(table: dict[str, Any]) -> str:
    """Markdown table of `candidate_table` (as in the model card)."""
    rows = [
        "| context | source | aggregation | CV AUC | CV macro F1 | val AUC | val AP "
        "| val macro F1 | val early macro F1 25/50/75 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ctx in ("no_context", "context"):
        for source in ("text", "tcn"):
            for m in METHODS:
                cv, va = table[ctx]["cv"][source][m], table[ctx]["val"][source][m]
                rows.append(
                    f"| {'prompt' if ctx == 'context' else 'none'} | {source} | {m} "
                    f"| {cv['auc']:.3f} | {cv['macro_f1']:.3f} | {va['auc']:.3f} "
                    f"| {va['ap']:.3f} | {va['macro_f1']:.3f} "
                    f"| {' / '.join(f'{v:.3f}' for v in va['early_macro_f1'].values())} |"
                )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m models.train_tcn --split-dir DIR --out-dir models/weights``."""
    ap = argparse.ArgumentParser(
        prog="python -m models.train_tcn",
        description="Train the fusion TCN (after models.train_text has written the text model).",
    )
    ap.add_argument("--split-dir", type=Path, required=True, help="dir with train.txt, val.txt")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    ap.add_argument("--table", action="store_true", help="print the candidate table afterwards")
    args = ap.parse_args(argv)
    res = train_tcn_model(args.split_dir, args.out_dir, seed=args.seed, progress=not args.quiet)
    if args.table:
        meta = json.loads((Path(args.out_dir) / f"{TCN_STEM}.json").read_text(encoding="utf-8"))
        print(format_table(meta["candidates"]))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
