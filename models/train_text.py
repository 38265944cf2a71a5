"""Train the text-only A/H model (``models/weights/text_ah_lite.{npz,json}``) from BAH splits.

Reproduce the shipped weights (seeded and deterministic, well under a minute on 2 cores)::

    python -m models.train_text --split-dir DIR --out-dir models/weights

``DIR`` holds the BAH video-level ``train.txt`` and ``val.txt``. The model is
fit on train.txt only; val.txt is used to choose the decision thresholds
(pooled with the out-of-fold train probabilities, step 5) and to report
metrics. ``--cv-table`` instead prints the
candidate comparison (grouped 5-fold CV on train, 3 fold seeds, and val).

Recipe (``DEFAULT_CONFIG``):
1. Vocabulary/idf and cue statistics from the full train transcripts.
2. Every train answer plus 4 random word prefixes of it (total prefix weight
   equal to the answer's), all with the video label: the service scores the
   transcript *so far*.
3. On that set, an elastic-net logistic regression for A/H (``z_text``; L2
   up to 1.1.0) and a multinomial one for the question being answered (its
   A/H base rate in train gives ``z_q``), over word 1-2-gram TF-IDF + codebook
   cue counts.
4. Out-of-fold scores (5 folds over train, stratified and grouped by
   participant) of the answers and of random prefixes of them fit the final
   mix ``sigmoid(a*z_text + b*z_q + c)`` and the context head
   ``sigmoid(a'*z_text + b_q)`` used when the prompt is known.
5. Thresholds maximising macro F1 on the out-of-fold train probabilities of
   step 4 and the val probabilities pooled (726 answers;
   ``metrics.pooled_threshold``), with and without the prompt as context; val
   metrics go into the JSON metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sklearn
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from models.bah import QUESTION_PROMPTS, BahItem, read_split
from models.metrics import (
    average_precision,
    best_threshold,
    evaluate_scores,
    pooled_threshold,
)
from models.text_ah import (
    DEFAULT_STEM,
    QUESTIONS,
    FeatureSpec,
    TextAHModel,
    char_terms,
    content_tokens,
    word_terms,
)

__all__ = [
    "TrainConfig",
    "DEFAULT_CONFIG",
    "CANDIDATES",
    "fit_spec",
    "design_matrix",
    "prefix_augment",
    "fit_stage1",
    "OOF",
    "fit_heads",
    "oof_scores",
    "cross_validate",
    "fit_model",
    "evaluate_model",
    "train_text_model",
    "cv_table",
    "threshold_study",
    "main",
]

MODEL_VERSION = "1.2.0"  # 1.2: elastic-net A/H head, mix fit on prefixes too; 1.1: no fillers
CV_FOLDS = 5


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the text model recipe."""

    word_ngrams: tuple[int, int] = (1, 2)
    min_df_word: int = 2
    char_ngrams: tuple[int, int] | None = None
    min_df_char: int = 3
    char_weight: float = 1.0
    cue_weight: float = 0.1
    C: float = 1.0
    # Elastic-net mixing of the A/H head's penalty (None: plain L2, the lbfgs solver).
    l1_ratio: float | None = 0.5
    # Random prefixes per answer, and their total weight relative to the full answer.
    n_prefix: int = 4
    prefix_weight: float = 1.0
    min_prefix_words: int = 3
    # Probability of dropping each word in the prefix copies (ASR deletion noise).
    word_drop: float = 0.0
    # Multinomial question head whose train A/H rate feeds the final mix.
    question_head: bool = True
    C_question: float = 10.0
    min_words: int = 3
    # Fit the mix and the context head on out-of-fold scores of random prefixes too (drawn
    # as for training, weighing as much as the answer in total), not of full answers only.
    mix_prefixes: bool = True
    # Read the answers without filler sounds (`models.text_ah.FILLERS`): the same CV scores
    # on clean transcripts, and live transcripts keep fillers the training ones lack.
    drop_fillers: bool = True


DEFAULT_CONFIG = TrainConfig()

# The candidates of the model card's comparison table (``--cv-table``).
# Versions up to 1.1.0: an L2 head, and the mix fit on full answers only.
_V11 = replace(DEFAULT_CONFIG, l1_ratio=None, mix_prefixes=False)
_BASE = replace(_V11, cue_weight=0.0, n_prefix=0, question_head=False, drop_fillers=False)
CANDIDATES: dict[str, TrainConfig] = {
    "tfidf word 1-2 + LR": _BASE,
    "tfidf word 1-3 + LR": replace(_BASE, word_ngrams=(1, 3)),
    "tfidf word 1-2 + LR (C=10)": replace(_BASE, C=10.0),
    "+ char 2-5": replace(_BASE, char_ngrams=(2, 5)),
    "+ cues": replace(_BASE, cue_weight=0.1),
    "+ cues + prefixes": replace(_BASE, cue_weight=0.1, n_prefix=4),
    "+ cues + prefixes + word drop 0.1": replace(_BASE, cue_weight=0.1, n_prefix=4, word_drop=0.1),
    "+ cues + prefixes + question head (1.0.0)": replace(_V11, drop_fillers=False),
    "+ char 2-5 + cues + prefixes + question head": replace(
        _V11, char_ngrams=(2, 5), drop_fillers=False
    ),
    "+ cues + prefixes + question head, fillers dropped (1.1.0)": _V11,
    "+ elastic-net A/H head (l1_ratio 0.5)": replace(DEFAULT_CONFIG, mix_prefixes=False),
    "+ elastic net, mix fit on prefixes too (shipped, 1.2.0)": DEFAULT_CONFIG,
}


# ------------------------------------------------------------------------------- features


def _vocab_idf(docs: Sequence[Sequence[str]], min_df: int) -> tuple[dict[str, int], np.ndarray]:
    df: Counter[str] = Counter()
    for terms in docs:
        df.update(set(terms))
    terms = sorted(t for t, c in df.items() if c >= min_df)
    vocab = {t: i for i, t in enumerate(terms)}
    dfa = np.array([df[t] for t in terms], dtype=np.float64)
    idf = np.log((1.0 + len(docs)) / (1.0 + dfa)) + 1.0  # smoothed idf
    return vocab, idf


def fit_spec(texts: Sequence[str], cfg: TrainConfig) -> FeatureSpec:
    """Fit vocabularies, idf and cue statistics on full answers."""
    toks = [content_tokens(t, cfg.drop_fillers) for t in texts]
    word_vocab, word_idf = _vocab_idf(
        [word_terms(t, cfg.word_ngrams) for t in toks], cfg.min_df_word
    )
    char_vocab: dict[str, int] = {}
    char_idf = np.zeros(0)
    if cfg.char_ngrams is not None and cfg.char_weight > 0:
        cdocs = [char_terms(t, cfg.char_ngrams) for t in toks]
        char_vocab, char_idf = _vocab_idf(cdocs, cfg.min_df_char)
    spec = FeatureSpec(
        word_ngrams=cfg.word_ngrams,
        char_ngrams=cfg.char_ngrams if char_vocab else None,
        char_weight=cfg.char_weight if char_vocab else 0.0,
        cue_weight=cfg.cue_weight,
        word_vocab=word_vocab,
        char_vocab=char_vocab,
        word_idf=word_idf,
        char_idf=char_idf,
        drop_fillers=cfg.drop_fillers,
    )
    if cfg.cue_weight > 0:
        raw = np.stack([FeatureSpec.raw_cues(t) for t in toks])
        spec.cue_mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        spec.cue_std = np.where(std > 1e-12, std, 1.0)
    return spec


def design_matrix(spec: FeatureSpec, texts: Sequence[str]) -> sparse.csr_matrix:
    """Return the sparse feature matrix (rows = texts) of a fitted spec."""
    indptr = [0]
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    for t in texts:
        idx, val = spec.featurize(t)
        indices.append(idx)
        data.append(val)
        indptr.append(indptr[-1] + idx.size)
    return sparse.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.asarray(indptr)),
        shape=(len(texts), spec.n_features),
    )


def prefix_augment(
    texts: Sequence[str], cfg: TrainConfig, rng: np.random.Generator
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return (texts, weights, source index): each answer, then random word prefixes of it."""
    out_t: list[str] = []
    out_w: list[float] = []
    out_src: list[int] = []
    for i, text in enumerate(texts):
        out_t.append(text)
        out_w.append(1.0)
        out_src.append(i)
        words = text.split()
        n = len(words)
        if cfg.n_prefix <= 0 or n <= cfg.min_prefix_words:
            continue
        w = cfg.prefix_weight / cfg.n_prefix
        for _ in range(cfg.n_prefix):
            k = int(rng.integers(cfg.min_prefix_words, n))  # min_prefix_words .. n-1 words
            pw = words[:k]
            if cfg.word_drop > 0:
                keep = rng.random(k) >= cfg.word_drop
                pw = [x for x, kp in zip(pw, keep, strict=True) if kp]
            out_t.append(" ".join(pw))
            out_w.append(w)
            out_src.append(i)
    return out_t, np.asarray(out_w), np.asarray(out_src)


def _question_rates(labels: np.ndarray, questions: Sequence[int | None]) -> np.ndarray:
    """A/H rate per BAH question in the training items (Laplace-smoothed)."""
    q = np.array([-1 if x is None else x for x in questions])
    return np.array([(labels[q == j].sum() + 1.0) / ((q == j).sum() + 2.0) for j in QUESTIONS])


def _ah_head(cfg: TrainConfig) -> LogisticRegression:
    """The A/H head's (unfitted) logistic regression: L2, or an elastic net."""
    if cfg.l1_ratio is None:
        return LogisticRegression(C=cfg.C, max_iter=5000, tol=1e-8)
    # saga converges linearly: tol 1e-8 puts the coefficients within about 3e-6 of the
    # optimum (1e-5 leaves 3e-3), about 6 s on train's 3,064 rows.
    return LogisticRegression(
        C=cfg.C,
        solver="saga",
        l1_ratio=cfg.l1_ratio,
        max_iter=100_000,
        tol=1e-8,
        random_state=0,
    )


def fit_stage1(
    texts: Sequence[str],
    labels: Sequence[int],
    questions: Sequence[int | None],
    cfg: TrainConfig,
    seed: int,
) -> TextAHModel:
    """Fit features, the A/H head and the question head; the mix is left at identity."""
    y = np.asarray(labels, dtype=np.int64)
    spec = fit_spec(texts, cfg)
    at, aw, src = prefix_augment(texts, cfg, np.random.default_rng(seed))
    X = design_matrix(spec, at)
    lr = _ah_head(cfg)
    lr.fit(X, y[src], sample_weight=aw)
    model = TextAHModel(
        spec=spec,
        coef=lr.coef_[0].astype(np.float64),
        intercept=float(lr.intercept_[0]),
        min_words=cfg.min_words,
    )
    if cfg.question_head:
        qa = np.array([-1 if x is None else x for x in questions])[src]
        keep = qa > 0
        if set(qa[keep].tolist()) != set(QUESTIONS):
            raise ValueError("the question head needs training answers to all seven questions")
        qlr = LogisticRegression(C=cfg.C_question, max_iter=5000, tol=1e-8)
        qlr.fit(X[keep], qa[keep], sample_weight=aw[keep])
        if tuple(int(c) for c in qlr.classes_) != QUESTIONS:
            raise AssertionError(f"unexpected question classes {qlr.classes_}")
        model.q_coef = qlr.coef_.astype(np.float64)
        model.q_intercept = qlr.intercept_.astype(np.float64)
        model.q_rates = _question_rates(y, questions)
    return model


def _folds(
    items: Sequence[BahItem], n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    y = np.array([it.label for it in items])
    groups = np.array([it.participant or it.video_id for it in items])
    skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(items)), y, groups))


def _prefix(text: str, frac: float) -> str:
    words = text.split()
    return " ".join(words[: max(1, math.ceil(frac * len(words)))])


class OOF(NamedTuple):
    """Out-of-fold scores, rows of (z_text, z_q)."""

    Z: np.ndarray  # the full answers, in item order
    prefixes: dict[float, np.ndarray]  # the answers' first word fractions
    # With ``mix_prefixes``: the answers and random prefixes of them drawn as for training
    # (weights; the answer each row comes from), which the mix and context head are fit on.
    mix_Z: np.ndarray | None = None
    mix_w: np.ndarray | None = None
    mix_src: np.ndarray | None = None


def oof_scores(
    items: Sequence[BahItem],
    cfg: TrainConfig,
    seed: int,
    n_splits: int = CV_FOLDS,
    prefix_fracs: Sequence[float] = (),
    progress: bool = False,
) -> OOF:
    """Out-of-fold (z_text, z_q) rows for full answers, for prefixes at word fractions and,
    with ``cfg.mix_prefixes``, for random prefixes (the rows the mix is fit on)."""
    texts = [it.transcript for it in items]
    y = [it.label for it in items]
    q = [it.question for it in items]
    Z = np.zeros((len(items), 2))
    Zp = {f: np.zeros((len(items), 2)) for f in prefix_fracs}
    mix_z: list[tuple[float, float]] = []
    mix_w: list[np.ndarray] = []
    mix_src: list[np.ndarray] = []
    folds = _folds(items, n_splits, seed)
    if progress:
        from tqdm import tqdm

        folds = tqdm(folds, desc="out-of-fold", leave=False, file=sys.stderr)
    for k, (tr, te) in enumerate(folds):
        m = fit_stage1(
            [texts[i] for i in tr], [y[i] for i in tr], [q[i] for i in tr], cfg, seed + 1000 + k
        )
        for i in te:
            Z[i] = m.scores(texts[i])
            for f in prefix_fracs:
                Zp[f][i] = m.scores(_prefix(texts[i], f))
        if cfg.mix_prefixes:
            rng = np.random.default_rng(seed + 2000 + k)
            at, aw, src = prefix_augment([texts[i] for i in te], cfg, rng)
            mix_z += [m.scores(t) for t in at]
            mix_w.append(aw)
            mix_src.append(te[src])
    if not cfg.mix_prefixes:
        return OOF(Z, Zp)
    return OOF(Z, Zp, np.array(mix_z), np.concatenate(mix_w), np.concatenate(mix_src))


def fit_heads(
    oof: OOF, y: np.ndarray, questions: Sequence[int | None], cfg: TrainConfig
) -> tuple[tuple[float, float, float], float, dict[int, float]]:
    """The mix and the context head (a, offsets), fit on the out-of-fold rows ``cfg`` names."""
    if oof.mix_Z is None or oof.mix_src is None:
        mix = fit_mix(oof.Z, y, cfg.question_head)
        ctx_a, offsets = fit_context_head(oof.Z[:, 0], y, questions)
        return mix, ctx_a, offsets
    ys = y[oof.mix_src]
    qs = [questions[i] for i in oof.mix_src]
    mix = fit_mix(oof.mix_Z, ys, cfg.question_head, oof.mix_w)
    ctx_a, offsets = fit_context_head(oof.mix_Z[:, 0], ys, qs, oof.mix_w)
    return mix, ctx_a, offsets


def fit_mix(
    Z: np.ndarray, y: np.ndarray, use_q: bool, sample_weight: np.ndarray | None = None
) -> tuple[float, float, float]:
    """Fit ``sigmoid(a*z_text + b*z_q + c)`` on out-of-fold scores (b = 0 without use_q)."""
    X = Z if use_q else Z[:, :1]
    lr = LogisticRegression(C=100.0, max_iter=1000, tol=1e-10)
    lr.fit(X, y, sample_weight=sample_weight)
    b = float(lr.coef_[0, 1]) if use_q else 0.0
    return float(lr.coef_[0, 0]), b, float(lr.intercept_[0])


def fit_context_head(
    z_text: np.ndarray,
    y: np.ndarray,
    questions: Sequence[int | None],
    sample_weight: np.ndarray | None = None,
) -> tuple[float, dict[int, float]]:
    """Fit ``sigmoid(a*z_text + b_q)`` (one offset per BAH question) on out-of-fold scores."""
    mask = np.array([qq is not None for qq in questions])
    onehot = np.array([[1.0 if qq == j else 0.0 for j in QUESTIONS] for qq in questions])
    X = np.column_stack([z_text, onehot])[mask]
    lr = LogisticRegression(C=10.0, fit_intercept=False, max_iter=1000, tol=1e-10)
    lr.fit(X, y[mask], sample_weight=None if sample_weight is None else sample_weight[mask])
    c = lr.coef_[0]
    return float(c[0]), {j: float(c[1 + i]) for i, j in enumerate(QUESTIONS)}


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _mixed(Z: np.ndarray, mix: tuple[float, float, float]) -> np.ndarray:
    a, b, c = mix
    return _sig(a * Z[:, 0] + b * Z[:, 1] + c)


def cross_validate(
    items: Sequence[BahItem],
    cfg: TrainConfig,
    seed: int = 0,
    n_splits: int = CV_FOLDS,
    prefix_fracs: Sequence[float] = (0.1, 0.25, 0.5),
) -> dict[str, float]:
    """Grouped stratified k-fold CV on train: AUC, AP, macro F1 (OOF threshold), prefixes."""
    y = np.array([it.label for it in items])
    q = [it.question for it in items]
    oof = oof_scores(items, cfg, seed, n_splits, prefix_fracs)
    Z, Zp = oof.Z, oof.prefixes
    # The 2-3 parameter mix is fit on the same out-of-fold scores (negligible optimism).
    mix, a, offs = fit_heads(oof, y, q, cfg)
    p = _mixed(Z, mix)
    out = {
        "auc": float(roc_auc_score(y, p)),
        "ap": average_precision(y, p),
        "macro_f1": best_threshold(y, p)[1],
        "log_loss": float(log_loss(y, p)),
    }
    for f, Zf in Zp.items():
        pf = _mixed(Zf, mix)
        out[f"auc_prefix{int(f * 100)}"] = float(roc_auc_score(y, pf))
        out[f"log_loss_prefix{int(f * 100)}"] = float(log_loss(y, pf))
    pc = _sig(a * Z[:, 0] + np.array([offs[qq] if qq else 0.0 for qq in q]))
    out["ctx_auc"] = float(roc_auc_score(y, pc))
    out["ctx_macro_f1"] = best_threshold(y, pc)[1]
    return out


# ------------------------------------------------------------------------------- main recipe


def fit_model(
    train: Sequence[BahItem], cfg: TrainConfig, seed: int, progress: bool = False
) -> tuple[TextAHModel, dict[str, Any], dict[str, np.ndarray]]:
    """Fit the full recipe on train items; return the model, its out-of-fold CV summary and
    the out-of-fold probabilities (``p`` without, ``p_context`` with the BAH prompt)."""
    y = np.array([it.label for it in train])
    q = [it.question for it in train]
    oof = oof_scores(train, cfg, seed, CV_FOLDS, progress=progress)
    Z = oof.Z
    mix, ctx_a, ctx_offsets = fit_heads(oof, y, q, cfg)
    p = _mixed(Z, mix)
    p_ctx = _sig(ctx_a * Z[:, 0] + np.array([ctx_offsets[qq] if qq else 0.0 for qq in q]))
    thr_oof, f1_oof = best_threshold(y, p)
    cv = {
        "folds": CV_FOLDS,
        "grouped_by": "participant",
        "auc": float(roc_auc_score(y, p)),
        "ap": average_precision(y, p),
        "macro_f1_at_oof_threshold": f1_oof,
        "oof_threshold": thr_oof,
    }
    model = fit_stage1([it.transcript for it in train], y.tolist(), q, cfg, seed)
    model.mix_a, model.mix_b, model.mix_c = mix
    model.ctx_a, model.ctx_offsets = ctx_a, ctx_offsets
    return model, cv, {"y": y, "p": p, "p_context": p_ctx}


def evaluate_model(
    model: TextAHModel, items: Sequence[BahItem], with_context: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, probabilities) on split items; context = the item's BAH prompt.

    A transcript below ``model.min_words`` words (no probability) is scored with
    the model's no-evidence probability ``model.prior(context)``, as a session does.
    """
    y = np.array([it.label for it in items])
    p = np.empty(len(items))
    for i, it in enumerate(items):
        ctx = QUESTION_PROMPTS.get(it.question) if with_context and it.question else None
        v = model.predict_one(it.transcript, ctx)
        p[i] = model.prior(ctx) if v is None else v
    return y, p


POOLED_RULE = (
    "max macro F1 over numpy.arange(0, 1, 0.001), p >= t positive, lower median of the "
    "maximisers, on the out-of-fold train probabilities and the val probabilities pooled"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_text_model(
    split_dir: Path, out_dir: Path, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Train on train.txt, tune thresholds on the out-of-fold train and val probabilities,
    write the weights; return val metrics."""
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        """Print a timestamped progress line on stderr."""
        if progress:
            print(f"[train_text {time.perf_counter() - t0:5.1f}s] {msg}", file=sys.stderr)

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    cfg = DEFAULT_CONFIG
    train = read_split(split_dir / "train.txt")
    val = read_split(split_dir / "val.txt")
    log(f"train {len(train)} videos, val {len(val)} videos")
    model, cv, oof = fit_model(train, cfg, seed, progress=progress)
    model.name, model.version = DEFAULT_STEM, MODEL_VERSION
    log(f"CV on train: AUC {cv['auc']:.4f}, AP {cv['ap']:.4f}")

    # Thresholds on the out-of-fold train probabilities and val (the model exactly as saved
    # and loaded) together: 726 answers instead of val's 110 (see `pooled_threshold`).
    model.save(out_dir)
    loaded = TextAHModel.load(out_dir)
    yv, pv = evaluate_model(loaded, val, with_context=False)
    yc, pc = evaluate_model(loaded, val, with_context=True)
    thr = pooled_threshold((oof["y"], oof["p"]), (yv, pv))
    thr_c = pooled_threshold((oof["y"], oof["p_context"]), (yc, pc))
    val_metrics = evaluate_scores(yv, pv, thr)
    val_ctx = evaluate_scores(yc, pc, thr_c)
    model.threshold, model.threshold_context = thr, thr_c
    model.metadata = {
        "description": (
            "Text-only A/H probability of a (partial) answer transcript, filler sounds ignored: "
            "word 1-2-gram TF-IDF + codebook cue counts, elastic-net logistic regression on "
            "answers and random prefixes, mixed with the A/H base rate of the question inferred "
            "from the text; a known BAH prompt as context replaces the inferred question."
        ),
        "trained_on": "BAH video-level split-0 train.txt (public LIVIAETS/bah-dataset)",
        "data_sha256": {f: _sha256(split_dir / f) for f in ("train.txt", "val.txt")},
        "seed": seed,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "metrics": {
            "val": val_metrics,
            "val_with_context": val_ctx,
            "val_macro_f1_at_oof_threshold": evaluate_scores(yv, pv, cv["oof_threshold"])[
                "macro_f1"
            ],
            "val_macro_f1_at_val_threshold": best_threshold(yv, pv)[1],
            "cv_train": cv,
            "threshold_rule": POOLED_RULE,
        },
        "library_versions": {"numpy": np.__version__, "sklearn": sklearn.__version__},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    model.save(out_dir)
    log(
        f"val macro F1 {val_metrics['macro_f1']:.4f} (threshold {thr:.3f}), "
        f"AP {val_metrics['ap']:.4f}; with context {val_ctx['macro_f1']:.4f} "
        f"(threshold {thr_c:.3f}); wrote {out_dir}/{DEFAULT_STEM}.{{npz,json}}"
    )
    return {
        "val": val_metrics,
        "val_with_context": val_ctx,
        "cv_train": cv,
        "threshold": thr,
        "threshold_context": thr_c,
        "train_seconds": model.metadata["train_seconds"],
        "out_dir": str(out_dir),
    }


def cv_table(split_dir: Path, seeds: Sequence[int] = (0, 1, 2), progress: bool = True) -> str:
    """Return a markdown table comparing ``CANDIDATES`` (CV on train over seeds, and val)."""
    train = read_split(Path(split_dir) / "train.txt")
    val = read_split(Path(split_dir) / "val.txt")
    y_tr = np.array([it.label for it in train])
    rows = [
        "| candidate | CV AUC | CV AP | CV macro F1 | CV log loss 10% / 25% prefix "
        "| CV +prompt macro F1 | val AUC | val AP | val macro F1 (val thr / OOF thr) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # The question prior alone (true question known), as in the data README.
    cvq = []
    for s in seeds:
        p = np.zeros(len(train))
        for tr, te in _folds(train, CV_FOLDS, s):
            rates = _question_rates(y_tr[tr], [train[i].question for i in tr])
            p[te] = [rates[QUESTIONS.index(train[i].question)] for i in te]
        cvq.append((roc_auc_score(y_tr, p), average_precision(y_tr, p), best_threshold(y_tr, p)))
    rates = _question_rates(y_tr, [it.question for it in train])
    yv = np.array([it.label for it in val])
    pv = np.array([rates[QUESTIONS.index(it.question)] for it in val])
    rows.append(
        f"| question prior alone (needs the prompt) | {np.mean([c[0] for c in cvq]):.3f} "
        f"| {np.mean([c[1] for c in cvq]):.3f} | {np.mean([c[2][1] for c in cvq]):.3f} | – | – "
        f"| {roc_auc_score(yv, pv):.3f} | {average_precision(yv, pv):.3f} "
        f"| {best_threshold(yv, pv)[1]:.3f} / "
        f"{evaluate_scores(yv, pv, cvq[0][2][0])['macro_f1']:.3f} |"
    )
    for name, cfg in CANDIDATES.items():
        t0 = time.perf_counter()
        rs = [cross_validate(train, cfg, seed=s) for s in seeds]
        m = {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
        model, cv, _ = fit_model(train, cfg, seeds[0])
        yv, pv = evaluate_model(model, val, with_context=False)
        rows.append(
            f"| {name} | {m['auc']:.3f} | {m['ap']:.3f} | {m['macro_f1']:.3f} "
            f"| {m['log_loss_prefix10']:.3f} / {m['log_loss_prefix25']:.3f} "
            f"| {m['ctx_macro_f1']:.3f} | {roc_auc_score(yv, pv):.3f} "
            f"| {average_precision(yv, pv):.3f} | {best_threshold(yv, pv)[1]:.3f} / "
            f"{evaluate_scores(yv, pv, cv['oof_threshold'])['macro_f1']:.3f} |"
        )
        if progress:
            print(f"{rows[-1]}  ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    return "\n".join(rows)


def threshold_study(
    split_dir: Path, seeds: Sequence[int] = (0, 1, 2), repeats: int = 400, n_test: int = 110
) -> str:
    """How well a threshold transfers to unseen answers, by the size of its tuning set.

    On the shipped recipe's out-of-fold train probabilities: ``repeats`` times per seed,
    ``n_test`` answers are held out, the threshold is tuned on 110 of the others (val's
    size) or on all of them, and the held-out macro F1 at that threshold is averaged.
    """
    train = read_split(Path(split_dir) / "train.txt")
    y = np.array([it.label for it in train])
    res: dict[str, list[float]] = {"110 answers (val alone)": [], "all others": [], "oracle": []}
    for seed in seeds:
        oof = oof_scores(train, DEFAULT_CONFIG, seed)
        q = [it.question for it in train]
        p = _mixed(oof.Z, fit_heads(oof, y, q, DEFAULT_CONFIG)[0])
        rng = np.random.default_rng(seed)
        for _ in range(repeats):
            idx = rng.permutation(len(y))
            test, rest = idx[:n_test], idx[n_test:]
            for name, tune in (
                ("110 answers (val alone)", rest[:110]),
                ("all others", rest),
                ("oracle", test),
            ):
                thr = best_threshold(y[tune], p[tune])[0]
                res[name].append(float(evaluate_scores(y[test], p[test], thr)["macro_f1"]))
    rows = [
        f"| threshold tuned on | held-out macro F1 (mean of {len(seeds)} x {repeats}) | s.e. |",
        "|---|---|---|",
    ]
    for name, v in res.items():
        rows.append(f"| {name} | {np.mean(v):.4f} | {np.std(v) / np.sqrt(len(v)):.4f} |")
    return "\n".join(rows)


def learning_curve(
    split_dir: Path,
    fractions: Sequence[float] = (0.55, 0.7, 0.85, 1.0),
    seeds: Sequence[int] = tuple(range(8)),
    repeats: int = 200,
    n_test: int = 392,
) -> str:
    """How the shipped recipe's held-out scores grow with the number of training answers.

    Train and val pooled (726 answers), grouped 5-fold CV; in each fold the training
    participants are subsampled to each fraction. Per fraction: out-of-fold AUC and AP,
    and the macro F1 on ``n_test`` random answers (the withheld split's size) at the
    threshold tuned on the others, ``repeats`` times per seed.
    """
    d = Path(split_dir)
    items = read_split(d / "train.txt") + read_split(d / "val.txt")
    y = np.array([it.label for it in items])
    texts = [it.transcript for it in items]
    q = [it.question for it in items]
    groups = np.array([it.participant or it.video_id for it in items])
    res: dict[float, list[tuple[float, float, float, float]]] = {f: [] for f in fractions}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        Z = {f: np.zeros((len(y), 2)) for f in fractions}
        rows: dict[float, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
            f: [] for f in fractions
        }
        sizes: dict[float, list[int]] = {f: [] for f in fractions}
        for k, (tr, te) in enumerate(_folds(items, CV_FOLDS, seed)):
            parts = np.unique(groups[tr])
            rng.shuffle(parts)
            for f in fractions:
                keep = set(parts[: int(round(f * len(parts)))])
                sub = [i for i in tr if groups[i] in keep]
                sizes[f].append(len(sub))
                m = fit_stage1(
                    [texts[i] for i in sub],
                    [int(y[i]) for i in sub],
                    [q[i] for i in sub],
                    DEFAULT_CONFIG,
                    seed + 1000 + k,
                )
                for i in te:
                    Z[f][i] = m.scores(texts[i])
                if DEFAULT_CONFIG.mix_prefixes:
                    r = np.random.default_rng(seed + 2000 + k)
                    at, aw, src = prefix_augment([texts[i] for i in te], DEFAULT_CONFIG, r)
                    rows[f].append((np.array([m.scores(t) for t in at]), aw, te[src]))
        for f in fractions:
            oof = OOF(Z[f], {})
            if rows[f]:
                oof = OOF(Z[f], {}, *(np.concatenate(c) for c in zip(*rows[f], strict=True)))
            p = _mixed(Z[f], fit_heads(oof, y, q, DEFAULT_CONFIG)[0])
            r = np.random.default_rng(seed + 7)
            f1s = []
            for _ in range(repeats):
                idx = r.permutation(len(y))
                test, tune = idx[:n_test], idx[n_test:]
                thr = best_threshold(y[tune], p[tune])[0]
                f1s.append(evaluate_scores(y[test], p[test], thr)["macro_f1"])
            res[f].append(
                (
                    float(np.mean(sizes[f])),
                    float(roc_auc_score(y, p)),
                    average_precision(y, p),
                    float(np.mean(f1s)),
                )
            )
    rows = [
        f"| training answers per fold | CV AUC | CV AP | macro F1 on {n_test} held out "
        f"(mean of {len(seeds)} seeds) |",
        "|---|---|---|---|",
    ]
    for f in fractions:
        a = np.array(res[f])
        rows.append(
            f"| {a[:, 0].mean():.0f} | {a[:, 1].mean():.4f} | {a[:, 2].mean():.4f} "
            f"| {a[:, 3].mean():.4f} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m models.train_text --split-dir DIR --out-dir models/weights``."""
    ap = argparse.ArgumentParser(
        prog="python -m models.train_text", description="Train the text-only A/H model."
    )
    ap.add_argument("--split-dir", type=Path, required=True, help="dir with train.txt, val.txt")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ap.add_argument("--cv-table", action="store_true", help="print the candidate comparison")
    ap.add_argument(
        "--threshold-study",
        action="store_true",
        help="print how a threshold tuned on 110 answers vs on 506 transfers (CV on train)",
    )
    ap.add_argument(
        "--learning-curve",
        action="store_true",
        help="print how CV scores grow with the number of training answers (train + val)",
    )
    args = ap.parse_args(argv)
    if args.learning_curve:
        print(learning_curve(args.split_dir))
        return 0
    if args.threshold_study:
        print(threshold_study(args.split_dir))
        return 0
    if args.cv_table:
        print(cv_table(args.split_dir, progress=not args.quiet))
        return 0
    res = train_text_model(args.split_dir, args.out_dir, seed=args.seed, progress=not args.quiet)
    print(json.dumps(res, separators=(",", ":")) if args.json else json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
