"""Tiny randomly-initialised hub-style encoders, written to disk for tests (never served).

`make_tiny_encoders(root)` saves, under ``root``, models of the very classes the full profile
loads from the hub (``models.hub_encoders``), with tiny configs and seeded random weights:

- ``video``: a ``VideoMAEModel`` (hidden 32, 1 layer, 8 frames of 32x32, patch 8, tubelet 2);
- ``audio``: a ``HubertModel`` (hidden 32, 2 layers, 3 conv layers of total stride 80 with
  the base model's GroupNorm feature extractor) and its ``preprocessor_config.json``
  (``do_normalize`` = ``audio_normalize``; None writes none);
- ``text``: a ``RobertaForSequenceClassification`` with 28 multi-label outputs named like
  GoEmotions' and a byte-level BPE tokenizer trained here on a few sentences.

Each is loadable by path with ``from_pretrained``. They exist to test code paths; their
outputs mean nothing. `make_tiny_text_classifier(path, kind)` writes the other text families
(``bert``, ``distilbert``) with a WordPiece tokenizer.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

__all__ = ["GOEMOTIONS_LABELS", "make_tiny_encoders", "make_tiny_text_classifier"]

#: The 28 GoEmotions labels, in the order of SamLowe/roberta-base-go_emotions' id2label.
GOEMOTIONS_LABELS = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
)  # fmt: skip

_SENTENCES = [
    "I mean, I guess I could try to walk more, but I am not sure.",
    "Um, well, maybe. I do want to quit, but it is hard.",
    "Yes, I am ready to start tomorrow morning.",
    "No, I do not think that is for me, honestly.",
    "I don't know, sometimes I feel like it helps and sometimes not.",
    "Thank you, that makes a lot of sense to me.",
]


def _video(path: Path) -> None:
    from transformers import VideoMAEConfig, VideoMAEModel

    cfg = VideoMAEConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        num_frames=8,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        use_mean_pooling=False,
    )
    VideoMAEModel(cfg).eval().save_pretrained(path)


def _audio(path: Path, normalize: bool | None = True) -> None:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    cfg = HubertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 4, 4),
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=8,
    )
    HubertModel(cfg).eval().save_pretrained(path)
    if normalize is not None:
        Wav2Vec2FeatureExtractor(do_normalize=normalize).save_pretrained(path)


def _text(path: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _SENTENCES,
        vocab_size=320,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(path))
    tok = RobertaTokenizerFast(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    tok.model_max_length = 64
    tok.save_pretrained(path)
    cfg = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64 + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        num_labels=len(GOEMOTIONS_LABELS),
        id2label=dict(enumerate(GOEMOTIONS_LABELS)),
        label2id={n: i for i, n in enumerate(GOEMOTIONS_LABELS)},
        problem_type="multi_label_classification",
    )
    RobertaForSequenceClassification(cfg).eval().save_pretrained(path)


def make_tiny_encoders(
    root: Path, seed: int = 0, audio_normalize: bool | None = True
) -> dict[str, Path]:
    """Write tiny random VideoMAE / HuBERT / RoBERTa-GoEmotions models under ``root``.

    Returns ``{"video": path, "audio": path, "text": path}``; the same seed gives the
    same weights. Takes well under 2 s."""
    import torch

    root = Path(root)
    paths = {"video": root / "videomae", "audio": root / "hubert", "text": root / "roberta"}
    builders = (
        ("video", _video),
        ("audio", partial(_audio, normalize=audio_normalize)),
        ("text", _text),
    )
    for i, (kind, build) in enumerate(builders):
        torch.manual_seed(seed + i)
        build(paths[kind])
    return paths


def make_tiny_text_classifier(path: Path, kind: str = "bert", seed: int = 0) -> Path:
    """Write a tiny random ``BertForSequenceClassification`` (``kind="bert"``) or
    ``DistilBertForSequenceClassification`` (``"distilbert"``) with GoEmotions' 28 labels and
    a WordPiece tokenizer over the test sentences at ``path``; returns ``path``."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertTokenizerFast,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    words = sorted({w.strip(".,'").lower() for s in _SENTENCES for w in s.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "'", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    labels = {
        "num_labels": len(GOEMOTIONS_LABELS),
        "id2label": dict(enumerate(GOEMOTIONS_LABELS)),
        "label2id": {n: i for i, n in enumerate(GOEMOTIONS_LABELS)},
        "problem_type": "multi_label_classification",
    }
    torch.manual_seed(seed)
    if kind == "bert":
        tok = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
        cfg = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **labels,
        )
        model = BertForSequenceClassification(cfg)
    elif kind == "distilbert":
        tok = DistilBertTokenizerFast(vocab_file=str(path / "vocab.txt"))
        cfg = DistilBertConfig(
            vocab_size=len(vocab),
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            **labels,
        )
        model = DistilBertForSequenceClassification(cfg)
    else:
        raise ValueError(f"unknown tiny text classifier {kind!r}: bert or distilbert")
    tok.model_max_length = 64
    tok.save_pretrained(path)
    model.eval().save_pretrained(path)
    return path
