"""Training and evaluation of the full profile on data in the BAH layout.

`train_full` reads ``split/train.txt`` and ``split/val.txt`` under a BAH root, computes
(or reads from the feature cache) the per-tick embeddings of `models.bah_features`, and
trains, seeded:

- the video-level `ConflictAwareAH` head (``0.5*BCE(full) + 0.5*BCE(text)`` + a prototype
  loss; BCE(text) over the rows with text only), then tunes the blend weight alpha and the
  decision threshold on val (the tie rule of `conflict_head.tune_blend`). By default
  (``video_level="windows"``) it learns from every tick's embeddings with the tick's label
  from the frame annotations (the video label where a video has none) and a video's
  probability is the mean over its ticks of the blended p (multi-window inference): a
  cross-modal conflict is local in time, and pooling the embeddings over the whole video
  first can cancel it (measured on a synthetic XOR variant of the fixture: see the test
  module). ``video_level="pooled"`` trains on one pooled embedding per video and its video
  label instead. The blend is `conflict_head.blend` with the rows' text presence (the full
  model's p alone where there is no text, e.g. before the first utterance), the same rule
  in training, tuning and `evaluate_full`;
- the frame-level `EmbeddingTCN` on the tick sequences, with soft tick labels from the
  frame annotations (the A/H fraction of the frames each tick is the first to see), then
  tunes its threshold on the val frames (``split-frames/val.txt`` where present), and the
  threshold of the service's video decision (`SERVED_METHOD`: the maximum of the 1 s moving
  average of its tick probabilities, as `stream.aggregate.VideoAggregator` aggregates
  them live) on the val videos; both are stored in the TCN's checkpoint
  (``threshold``, ``video_threshold``).

It writes a weights directory (`WEIGHTS_FILES`): the head, the TCN, and
``full_profile.json`` with the encoders (and whether the speech encoder normalised its
input, ``audio_normalize``), tick settings, thresholds and val metrics.
`evaluate_full` scores a split with it: video-level (the head's) and frame-level macro F1
and AP (`models.metrics`, the official definitions), the service's video decision
(``decision``) and, if asked, a challenge submission file (``video_id,p0,p1,pred``,
`models.submission`'s format, from the head).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch

from models.bah_features import (
    MODALITIES,
    Encoders,
    FeatureExtractor,
    TickConfig,
    VideoFeatures,
)
from models.bah_layout import BahLayout, BahLayoutError, FeatureCache, FrameLabel
from models.conflict_head import (
    TEXT,
    BlendChoice,
    ConflictAwareAH,
    HeadConfig,
    blend,
    load_checkpoint,
    pick_alpha,
    save_checkpoint,
)
from models.embedding_tcn import EmbeddingTCN, EmbeddingTCNConfig
from models.embedding_tcn import load as load_tcn
from models.full_stream import FULL_METHOD
from models.hub_encoders import DEFAULT_SPEECH_ID, DEFAULT_TEXT_ID, DEFAULT_VIDEO_ID
from models.metrics import best_threshold, evaluate_scores

log = logging.getLogger("ahstream")

__all__ = [
    "DEFAULT_MODELS",
    "SERVED_METHOD",
    "WEIGHTS_FILES",
    "FullProfileError",
    "FullTrainConfig",
    "load_encoders",
    "train_full",
    "evaluate_full",
    "frame_scores",
    "served_threshold",
    "video_decision_scores",
    "write_submission",
]

#: How the service aggregates the TCN's tick probabilities into its video decision
#: (`stream.aggregate`): the maximum of a 1 s moving average.
SERVED_METHOD = FULL_METHOD

#: Hub ids of the papers' encoders (issue 4): VideoMAE-Base, HuBERT-Base-LS960, RoBERTa-GoEmotions.
DEFAULT_MODELS: dict[str, str] = {
    "video": DEFAULT_VIDEO_ID,
    "audio": DEFAULT_SPEECH_ID,
    "text": DEFAULT_TEXT_ID,
}
PROFILE_JSON = "full_profile.json"
HEAD_FILE = "conflict_head.pt"
TCN_FILE = "embedding_tcn.pt"
WEIGHTS_FILES: tuple[str, ...] = (PROFILE_JSON, HEAD_FILE, TCN_FILE)
FORMAT_VERSION = 1


class FullProfileError(ValueError):
    """A missing split, missing weights or an unusable weights directory (message says which)."""


@dataclass(frozen=True)
class FullTrainConfig:
    """Hyper-parameters of `train_full` (sizes of the head and the TCN, optimiser, loss)."""

    epochs: int = 60
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    head_batch: int = 32
    tcn_batch: int = 8
    head_d: int = 64
    head_ff: int = 128
    head_heads: int = 4
    head_dropout: float = 0.1
    video_level: str = "windows"  # or "pooled"
    # Modalities the models may use; the others are presented as missing (ablations).
    modalities: tuple[str, ...] = ("video", "audio", "text")
    proto_weight: float = 0.1
    # Label smoothing keeps probabilities off 0/1: the official AP grid stops at 0.999, so
    # scores saturated above it are all one point of the curve and AP collapses.
    smoothing: float = 0.1
    tcn_d: int = 32
    tcn_channels: int = 32
    tcn_dilations: tuple[int, ...] = (1, 2, 4, 8)
    tcn_dropout: float = 0.1
    ticks: TickConfig = field(default_factory=TickConfig)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["tcn_dilations"] = list(self.tcn_dilations)
        out["modalities"] = list(self.modalities)
        return out


def load_encoders(
    video: str, audio: str, text: str, device: str = "cpu", audio_normalize: bool | None = None
) -> Encoders:
    """Load the three encoders by hub id or local path (`models.hub_encoders`) on ``device``;
    ``audio_normalize`` None: the speech model's own preprocessor config says."""
    from models.hub_encoders import FaceClipEncoder, SpeechEncoder, TextEmotionEncoder

    return Encoders(
        video=FaceClipEncoder.from_pretrained(video, device=device),
        audio=SpeechEncoder.from_pretrained(audio, device=device, normalize=audio_normalize),
        text=TextEmotionEncoder.from_pretrained(text, device=device),
    )


# --- data helpers -------------------------------------------------------------------------


def _split(layout: BahLayout, name: str) -> list[Any]:
    try:
        videos = layout.split(name)
    except BahLayoutError as e:
        raise FullProfileError(f"split {name!r}: {e}") from e
    if not videos:
        raise FullProfileError(f"split {name!r} of {layout.root} has no videos")
    return videos


def _stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (std floored) of rows [N, D]; zeros/ones if N == 0."""
    if rows.shape[0] == 0:
        return np.zeros(rows.shape[1], np.float32), np.ones(rows.shape[1], np.float32)
    mean = rows.mean(axis=0)
    std = np.maximum(rows.std(axis=0), 1e-3 * max(float(np.abs(rows).max()), 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def _video_level(feats: Sequence[VideoFeatures]) -> dict[str, np.ndarray]:
    rows = [f.video_level() for f in feats]
    return {
        "video": np.stack([r[0] for r in rows]),
        "audio": np.stack([r[1] for r in rows]),
        "text": np.stack([r[2] for r in rows]),
        "present": np.stack([r[3] for r in rows]),
        "label": np.array([f.label for f in feats], np.int64),
    }


def _head_rows(feats: Sequence[VideoFeatures], mode: str) -> dict[str, np.ndarray]:
    """What the video-level head sees: rows of embeddings, their labels and their video.

    ``windows``: every tick, labelled from the frame annotations (tick A/H fraction >= 0.5)
    or with the video label; ``pooled``: one pooled row per video with its video label.
    """
    if mode == "pooled":
        rows = _video_level(feats)
        rows["owner"] = np.arange(len(feats))
        return rows
    if mode != "windows":
        raise FullProfileError(f"video_level must be 'windows' or 'pooled', got {mode!r}")
    labels = []
    for f in feats:
        lab = f.tick_labels()
        labels.append(
            np.full(len(f.times), f.label, np.int64) if lab is None else (lab >= 0.5).astype(int)
        )
    return {
        "video": np.concatenate([f.video for f in feats]),
        "audio": np.concatenate([f.audio for f in feats]),
        "text": np.concatenate([f.text for f in feats]),
        "present": np.concatenate([f.present for f in feats]),
        "label": np.concatenate(labels).astype(np.int64),
        "owner": np.concatenate([np.full(len(f.times), i) for i, f in enumerate(feats)]),
    }


def _video_probs(
    full: np.ndarray,
    text: np.ndarray,
    owner: np.ndarray,
    n: int,
    alpha: float,
    has_text: np.ndarray | None = None,
) -> np.ndarray:
    """Video probability: the mean over a video's rows of the blended p (multi-window);
    ``has_text`` [rows] as in `conflict_head.blend` (None: every row has text)."""
    p = np.asarray(blend(text, full, alpha, has_text), np.float64)
    return np.bincount(owner, weights=p, minlength=n) / np.bincount(owner, minlength=n)


def _tune(
    full: np.ndarray,
    text: np.ndarray,
    owner: np.ndarray,
    labels: np.ndarray,
    has_text: np.ndarray | None = None,
) -> BlendChoice:
    """Alpha on the grid and threshold maximising video-level macro F1 (tune_blend's tie rule)."""
    return pick_alpha(
        lambda a: best_threshold(labels, _video_probs(full, text, owner, labels.size, a, has_text))
    )


def _has_text(rows: dict[str, np.ndarray]) -> np.ndarray:
    """Which head rows have text (after the modality restriction)."""
    return rows["present"][:, TEXT] > 0.5


def _restrict(feats: list[VideoFeatures], modalities: Sequence[str]) -> list[VideoFeatures]:
    """Features with every modality not in ``modalities`` marked missing (copies)."""
    unknown = set(modalities) - {"video", "audio", "text"}
    if unknown or not modalities:
        raise FullProfileError(f"modalities must be some of video, audio, text: {modalities}")
    drop = [i for i, m in enumerate(("video", "audio", "text")) if m not in modalities]
    if not drop:
        return feats
    out = []
    for f in feats:
        present = f.present.copy()
        present[:, drop] = 0.0
        out.append(replace(f, present=present))
    return out


def _normalize(x: dict[str, np.ndarray], stats: dict[str, Any]) -> list[torch.Tensor]:
    """Standardised video/audio/text and presence tensors for the head."""
    out = []
    for m in ("video", "audio", "text"):
        mean = np.asarray(stats[m]["mean"], np.float32)
        std = np.asarray(stats[m]["std"], np.float32)
        out.append(torch.from_numpy(((x[m] - mean) / std).astype(np.float32)))
    out.append(torch.from_numpy(x["present"] > 0.5))
    return out


def _head_logits(head: ConflictAwareAH, x: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    head.eval()
    with torch.no_grad():
        full, text = head(*x)[:2]
    return full.double().numpy(), text.double().numpy()


def _tcn_batch(feats: Sequence[VideoFeatures]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Padded [B, T, D] inputs (presence 0 on padding) and the [B, T] validity mask."""
    k = max(len(f.times) for f in feats)
    b = len(feats)
    arrays = {
        m: np.zeros((b, k, getattr(feats[0], m).shape[1]), np.float32)
        for m in ("video", "audio", "text")
    }
    present = np.zeros((b, k, 3), np.float32)
    mask = np.zeros((b, k), bool)
    for i, f in enumerate(feats):
        n = len(f.times)
        for m in ("video", "audio", "text"):
            arrays[m][i, :n] = getattr(f, m)
        present[i, :n] = f.present
        mask[i, :n] = True
    tensors = [torch.from_numpy(arrays[m]) for m in ("video", "audio", "text")]
    return [*tensors, torch.from_numpy(present)], torch.from_numpy(mask)


def _tick_probs(tcn: EmbeddingTCN, feats: Sequence[VideoFeatures]) -> list[np.ndarray]:
    """Per-video tick probabilities of the TCN (full-sequence forward, eval mode)."""
    tcn.eval()
    out = []
    with torch.no_grad():
        for f in feats:
            x, _ = _tcn_batch([f])
            out.append(torch.sigmoid(tcn(*x))[0].double().numpy())
    return out


def video_decision_scores(tick_p: Sequence[np.ndarray], hz: float) -> np.ndarray:
    """The service's video-level p of each video: its tick probabilities aggregated by
    `SERVED_METHOD` at ``hz`` ticks per second, at the end of the video (what the live
    `stream.aggregate.VideoAggregator` holds when the session ends)."""
    from models.train_tcn import aggregate  # the offline twin of VideoAggregator

    return np.array([aggregate(p, SERVED_METHOD, hz)[-1] if p.size else 0.0 for p in tick_p])


def served_threshold(tcn_extra: dict[str, Any]) -> float:
    """The threshold of the service's video decision in a TCN checkpoint's extras; for
    checkpoints written before it was tuned, the frame-level one (with a warning)."""
    if "video_threshold" in tcn_extra:
        return float(tcn_extra["video_threshold"])
    log.warning(
        "the TCN checkpoint has no video-level threshold (trained by an older ahstream): the "
        "video decision uses its frame-level threshold %.3f; retrain to tune one",
        float(tcn_extra["threshold"]),
    )
    return float(tcn_extra["threshold"])


def _inner(video_id: str) -> str:
    """``<pid>/Visite_1/<file>.mp4`` of a video or frame-split id (layout prefixes dropped)."""
    for prefix in ("Videos/", "cropped-aligned-faces/"):
        video_id = video_id.removeprefix(prefix)
    return video_id


def frame_scores(
    feats: Sequence[VideoFeatures],
    tick_p: Sequence[np.ndarray],
    frames: Sequence[FrameLabel] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame labels and scores: each frame takes the p of the first tick that has seen it.

    With ``frames`` (a ``split-frames`` file), exactly those frames are scored; otherwise
    every frame of the videos with frame annotations.
    """
    by_video = {_inner(f.video_id): (f, p) for f, p in zip(feats, tick_p, strict=True)}
    ys: list[np.ndarray] = []
    ps: list[np.ndarray] = []
    if frames is not None:
        keys = [None if fr.video is None else _inner(fr.video) for fr in frames]
        unknown = [fr.frame_id for fr, k in zip(frames, keys, strict=True) if k not in by_video]
        if unknown:
            raise FullProfileError(
                f"{len(unknown)} frame ids name no video of the split (first: {unknown[0]!r})"
            )
        y = np.array([fr.label for fr in frames], np.int64)
        p = np.empty(len(frames), np.float64)
        ticks = {k: f.frame_ticks() for k, (f, _) in by_video.items()}
        for i, (fr, k) in enumerate(zip(frames, keys, strict=True)):
            f, tp = by_video[k]
            p[i] = tp[ticks[k][min(int(fr.frame), f.n_frames - 1)]]
        return y, p
    for f, tp in zip(feats, tick_p, strict=True):
        if f.frame_labels is not None:
            ys.append(f.frame_labels.astype(np.int64))
            ps.append(tp[f.frame_ticks()])
    if not ys:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    return np.concatenate(ys), np.concatenate(ps)


def _frame_split(layout: BahLayout, name: str) -> list[FrameLabel] | None:
    path = layout.root / "split-frames" / f"{name}.txt"
    return layout.frame_split(name) if path.is_file() else None


def write_submission(
    path: str | Path, video_ids: Sequence[str], p1: np.ndarray, threshold: float
) -> Path:
    """Write ``video_id,p0,p1,pred`` lines (no header): the challenge submission format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{vid},{1.0 - float(p):.6f},{float(p):.6f},{int(float(p) >= threshold)}"
        for vid, p in zip(video_ids, p1, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- training -----------------------------------------------------------------------------


def _train_head(
    cfg: FullTrainConfig,
    dims: tuple[int, int, int],
    x: list[torch.Tensor],
    y: np.ndarray,
) -> ConflictAwareAH:
    torch.manual_seed(cfg.seed)
    head = ConflictAwareAH(
        HeadConfig(
            video_dim=dims[0],
            audio_dim=dims[1],
            text_dim=dims[2],
            d=cfg.head_d,
            heads=cfg.head_heads,
            ff=cfg.head_ff,
            dropout=cfg.head_dropout,
        )
    )
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    labels = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = labels.shape[0]
    head.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.head_batch):
            idx = order[s : s + cfg.head_batch]
            batch = [t[idx] for t in x]
            full, text, pooled = head(*batch, return_embedding=True)
            loss = head.loss(
                full,
                text,
                labels[idx],
                smoothing=cfg.smoothing,
                pooled=pooled,
                proto_weight=cfg.proto_weight,
                has_text=batch[3][:, TEXT],
            )
            opt.zero_grad()
            loss.total.backward()
            opt.step()
    return head.eval()


def _train_tcn(
    cfg: FullTrainConfig,
    dims: tuple[int, int, int],
    feats: Sequence[VideoFeatures],
    norm: list[tuple[np.ndarray, np.ndarray]],
) -> EmbeddingTCN:
    torch.manual_seed(cfg.seed)
    tcn = EmbeddingTCN(
        EmbeddingTCNConfig(
            video_dim=dims[0],
            audio_dim=dims[1],
            text_dim=dims[2],
            d=cfg.tcn_d,
            channels=cfg.tcn_channels,
            dilations=cfg.tcn_dilations,
            dropout=cfg.tcn_dropout,
        )
    )
    tcn.set_normalization(norm)
    labelled = [f for f in feats if f.frame_labels is not None]
    if not labelled:
        raise FullProfileError("no training video has frame annotations for the frame-level TCN")
    opt = torch.optim.AdamW(tcn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tcn.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(labelled), generator=gen).tolist()
        for s in range(0, len(order), cfg.tcn_batch):
            batch = [labelled[i] for i in order[s : s + cfg.tcn_batch]]
            x, mask = _tcn_batch(batch)
            target = torch.zeros(mask.shape)
            for i, f in enumerate(batch):
                lab = f.tick_labels()
                assert lab is not None
                target[i, : lab.shape[0]] = torch.from_numpy(lab)
            target = target * (1.0 - cfg.smoothing) + 0.5 * cfg.smoothing
            logits = tcn(*x)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], target[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return tcn.eval()


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"ahstream train: {msg}", file=sys.stderr, flush=True)


def train_full(
    bah_root: str | Path,
    out_dir: str | Path,
    encoders: Encoders | None = None,
    models: dict[str, str] | None = None,
    config: FullTrainConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train the video-level head and the frame-level TCN; write the weights directory.

    ``encoders`` (already loaded) wins over ``models`` (ids or paths, default
    `DEFAULT_MODELS`, loaded on ``device``). The feature cache defaults to
    ``<out_dir>/feature-cache``.
    Returns the JSON-able summary, val metrics included.
    """
    started = time.perf_counter()
    cfg = config or FullTrainConfig()
    layout = BahLayout(bah_root)
    train_videos, val_videos = _split(layout, "train"), _split(layout, "val")
    ids = {**DEFAULT_MODELS, **(models or {})}
    if encoders is None:
        encoders = load_encoders(ids["video"], ids["audio"], ids["text"], device)
    out = Path(out_dir)
    cache_path = Path(cache_dir) if cache_dir else out / "feature-cache"
    cache = FeatureCache(cache_path)
    extractor = FeatureExtractor(layout, encoders, cache, cfg.ticks)
    _log(progress, f"features of {len(train_videos)} train and {len(val_videos)} val videos")
    train = _restrict(extractor.split(train_videos, progress), cfg.modalities)
    val = _restrict(extractor.split(val_videos, progress), cfg.modalities)
    dims = encoders.dims

    # Video level: standardise with train statistics, train, tune alpha/threshold on val.
    rtrain, rval = _head_rows(train, cfg.video_level), _head_rows(val, cfg.video_level)
    head_stats = {}
    for i, m in enumerate(("video", "audio", "text")):
        mean, std = _stats(rtrain[m][rtrain["present"][:, i] > 0.5])
        head_stats[m] = {"mean": mean.tolist(), "std": std.tolist()}
    _log(progress, "training the video-level ConflictAwareAH head")
    head = _train_head(cfg, dims, _normalize(rtrain, head_stats), rtrain["label"])
    full_l, text_l = _head_logits(head, _normalize(rval, head_stats))
    y_val = np.array([f.label for f in val], np.int64)
    choice = _tune(full_l, text_l, rval["owner"], y_val, _has_text(rval))
    p_val = _video_probs(full_l, text_l, rval["owner"], len(val), choice.alpha, _has_text(rval))
    video_metrics = evaluate_scores(y_val, p_val, choice.threshold)

    # Frame level: standardise per tick (train ticks where present), train, tune on val frames.
    norm = []
    for i, m in enumerate(("video", "audio", "text")):
        rows = np.concatenate([getattr(f, m)[f.present[:, i] > 0.5] for f in train])
        norm.append(_stats(rows))
    _log(progress, "training the frame-level embedding TCN")
    tcn = _train_tcn(cfg, dims, train, norm)
    y_fr, p_fr = frame_scores(val, _tick_probs(tcn, val), _frame_split(layout, "val"))
    if y_fr.size == 0:
        raise FullProfileError("no val video has frame annotations: cannot tune the TCN")
    frame_thr, _ = best_threshold(y_fr, p_fr)
    frame_metrics = evaluate_scores(y_fr, p_fr, frame_thr)
    # The service's video decision: tuned at video level on what it aggregates.
    p_served = video_decision_scores(_tick_probs(tcn, val), cfg.ticks.hz)
    served_thr, _ = best_threshold(y_val, p_served)
    served_metrics = evaluate_scores(y_val, p_served, served_thr)

    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        head,
        out / HEAD_FILE,
        alpha=choice.alpha,
        threshold=choice.threshold,
        stats=head_stats,
        video_level=cfg.video_level,
    )
    tcn.save(
        out / TCN_FILE,
        threshold=frame_thr,
        hz=cfg.ticks.hz,
        video_threshold=served_thr,
        video_method=SERVED_METHOD,
    )
    summary: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "profile": "full",
        "encoders": encoders.names(),
        # Their weights: other files behind the same names are refused when loaded.
        "encoder_sha256": encoders.fingerprints(),
        # Preprocessing that is not in the model files everywhere: serving must repeat it.
        "audio_normalize": getattr(encoders.audio, "normalize", None),
        "dims": list(dims),
        "ticks": cfg.ticks.as_dict(),
        "modalities": list(cfg.modalities),
        "video_level": {
            "alpha": choice.alpha,
            "threshold": choice.threshold,
            "mode": cfg.video_level,
        },
        "frame_level": {"threshold": frame_thr},
        # what the service decides a video by (the head's numbers above are offline)
        "decision": {"source": "tcn", "method": SERVED_METHOD, "threshold": served_thr},
        "val": {"video": video_metrics, "frame": frame_metrics, "decision": served_metrics},
        "train": {"videos": len(train), "config": cfg.as_dict()},
        "bah_root": str(layout.root),
        "feature_cache": str(cache_path.resolve()),
    }
    (out / PROFILE_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return {
        **summary,
        "out_dir": str(out),
        "features": extractor.stats.as_dict(),
        "train_seconds": round(time.perf_counter() - started, 1),
    }


# --- evaluation ---------------------------------------------------------------------------


def read_weights(weights_dir: str | Path) -> dict[str, Any]:
    """The ``full_profile.json`` of a trained weights directory (FullProfileError if the
    directory, a file of it or its format is missing)."""
    d = Path(weights_dir)
    if not d.is_dir():
        raise FullProfileError(f"{d}: weights directory not found")
    missing = [f for f in WEIGHTS_FILES if not (d / f).is_file()]
    if missing:
        raise FullProfileError(
            f"{d}: missing {', '.join(missing)} (train it with `ahstream train --profile full`)"
        )
    try:
        meta = json.loads((d / PROFILE_JSON).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FullProfileError(f"{d / PROFILE_JSON}: invalid JSON: {e}") from e
    if meta.get("format") != FORMAT_VERSION or meta.get("profile") != "full":
        raise FullProfileError(f"{d / PROFILE_JSON}: not a full-profile weights file")
    try:
        TickConfig(**meta["ticks"])
        if len(meta["dims"]) != len(MODALITIES) or set(meta["encoders"]) != set(MODALITIES):
            raise ValueError("dims and encoders must name the three modalities")
    except (KeyError, TypeError, ValueError) as exc:
        raise FullProfileError(
            f"{d / PROFILE_JSON}: incomplete or from another version of ahstream "
            f"({type(exc).__name__}: {exc}); retrain with `ahstream train --profile full`"
        ) from exc
    return meta


def read_checkpoint(
    path: Path, load: Any, needs: Sequence[str] = ()
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``load(path)``: a checkpoint of a weights directory (the TCN's, the head's) and its
    extras, with the extras ``needs``; FullProfileError naming the file when it is damaged,
    truncated or written by another version of ahstream."""
    try:
        model, extra = load(path)
    except (KeyError, TypeError, ValueError, EOFError, OSError, RuntimeError, UnpicklingError) as e:
        raise FullProfileError(
            f"{path}: cannot be read ({type(e).__name__}: {e}); retrain with "
            "`ahstream train --profile full`"
        ) from e
    missing = [k for k in needs if k not in extra]
    if missing:
        raise FullProfileError(
            f"{path}: lacks {', '.join(missing)} (another version of ahstream?); retrain with "
            "`ahstream train --profile full`"
        )
    return model, extra


def read_tcn(weights_dir: str | Path, meta: dict[str, Any]) -> tuple[EmbeddingTCN, dict[str, Any]]:
    """The TCN of a weights directory and its extras, checked against ``meta`` (its
    ``full_profile.json``): the encoder widths and the tick rate it was trained on."""
    path = Path(weights_dir) / TCN_FILE
    tcn, extra = read_checkpoint(path, load_tcn, needs=("threshold",))
    assert isinstance(tcn, EmbeddingTCN)
    if list(tcn.cfg.in_dims) != list(meta["dims"]):
        raise FullProfileError(
            f"{path}: takes embeddings of widths {list(tcn.cfg.in_dims)}, the encoders of "
            f"{PROFILE_JSON} give {list(meta['dims'])}"
        )
    if abs(float(extra.get("hz", meta["ticks"]["hz"])) - float(meta["ticks"]["hz"])) > 1e-9:
        raise FullProfileError(f"{path}: the TCN and {PROFILE_JSON} disagree on hz")
    return tcn, extra


def weights_encoders(
    meta: dict[str, Any], encoders: Encoders | None = None, device: str = "cpu"
) -> Encoders:
    """The encoders a weights directory names (or ``encoders``), checked against its widths.

    The speech encoder normalises its input as in training: loaded with the recorded
    ``audio_normalize``, or refused (FullProfileError) if ``encoders`` does otherwise.
    Encoders whose weights are not the ones trained on (``encoder_sha256``: another model
    saved under the same path, a newer hub revision) are refused. Weights written before
    these were recorded are not checked.
    """
    recorded = meta.get("audio_normalize")
    if encoders is None:
        names = meta["encoders"]
        encoders = load_encoders(
            names["video"], names["audio"], names["text"], device, audio_normalize=recorded
        )
    if list(encoders.dims) != list(meta["dims"]):
        raise FullProfileError(
            f"encoder widths {list(encoders.dims)} differ from the weights' {meta['dims']}"
        )
    for modality, trained in meta.get("encoder_sha256", {}).items():
        now = getattr(getattr(encoders, modality), "fingerprint", None)
        if trained and now and now != trained:
            raise FullProfileError(
                f"the {modality} encoder {getattr(encoders, modality).name} is not the one "
                f"these weights were trained on (its weights differ: {now[:12]}, trained on "
                f"{trained[:12]}); give that model or retrain"
            )
    used = getattr(encoders.audio, "normalize", None)
    if recorded is not None and used != recorded:
        raise FullProfileError(
            f"the audio encoder has normalize={used}, the weights were trained with "
            f"normalize={recorded} (full_profile.json audio_normalize)"
        )
    return encoders


def _video_labels(feats: Sequence[VideoFeatures]) -> np.ndarray:
    """The video labels of ``feats`` (int64)."""
    return np.array([f.label for f in feats], np.int64)


def evaluate_full(
    bah_root: str | Path,
    split: str,
    weights_dir: str | Path,
    encoders: Encoders | None = None,
    cache_dir: str | Path | None = None,
    submission: str | Path | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score a split with trained full-profile weights: video- and frame-level metrics.

    The encoders are the ones recorded in the weights (or ``encoders`` if given: their
    widths must match). The head's video-level keys (n, macro_f1, f1_pos, f1_neg, ap,
    threshold) are at the top level; ``frame`` holds the frame-level ones and ``decision``
    those of the service's video decision (the TCN's `SERVED_METHOD` aggregate against its
    video-level threshold: what `ahstream serve`/`analyze` decide). ``submission`` writes
    the challenge CSV of the split (the head's). The feature cache defaults to the one
    training used, if it is there, else ``<weights_dir>/feature-cache``.
    """
    meta = read_weights(weights_dir)
    layout = BahLayout(bah_root)
    videos = _split(layout, split)
    wd = Path(weights_dir)
    encoders = weights_encoders(meta, encoders, device)
    ticks = TickConfig(**meta["ticks"])
    # The cache training used, where it still is (a weights directory copied from another
    # machine names a path of that machine), else one in the weights directory.
    recorded = meta.get("feature_cache")
    default = Path(recorded) if recorded and Path(recorded).is_dir() else wd / "feature-cache"
    cache = FeatureCache(Path(cache_dir) if cache_dir else default)
    extractor = FeatureExtractor(layout, encoders, cache, ticks)
    feats = _restrict(extractor.split(videos, progress), meta.get("modalities", MODALITIES))

    head, extra = read_checkpoint(wd / HEAD_FILE, load_checkpoint, ("alpha", "threshold", "stats"))
    alpha, threshold = float(extra["alpha"]), float(extra["threshold"])
    rows = _head_rows(feats, str(extra.get("video_level", "windows")))
    full_l, text_l = _head_logits(head, _normalize(rows, extra["stats"]))
    p = _video_probs(full_l, text_l, rows["owner"], len(feats), alpha, _has_text(rows))
    result: dict[str, Any] = {
        "split": split,
        **evaluate_scores(_video_labels(feats), p, threshold),
        "alpha": alpha,
    }

    tcn, tcn_extra = read_tcn(wd, meta)
    tick_p = _tick_probs(tcn, feats)
    y_fr, p_fr = frame_scores(feats, tick_p, _frame_split(layout, split))
    frame_thr = float(tcn_extra["threshold"])
    result["frame"] = (
        evaluate_scores(y_fr, p_fr, frame_thr) if y_fr.size else {"n": 0, "threshold": frame_thr}
    )
    # The service's video decision, as it decides: the TCN's aggregated tick probabilities
    # against the threshold serving uses (`models.full_stream.load_full_profile`).
    p_served = video_decision_scores(tick_p, float(meta["ticks"]["hz"]))
    result["decision"] = {
        **evaluate_scores(_video_labels(feats), p_served, served_threshold(tcn_extra)),
        "source": "tcn",
        "method": SERVED_METHOD,
    }
    result["submission"] = (
        str(write_submission(submission, [f.video_id for f in feats], p, threshold))
        if submission
        else None
    )
    result["features"] = extractor.stats.as_dict()
    result["weights_dir"] = str(wd)
    return result
