"""How the text model holds up under ASR-like noise (the model card's "ASR noise" table).

    python -m models.text_noise --split-dir DIR [--weights-dir DIR] [--seeds 5]

Scores val.txt clean and with simulated transcription errors (word deletions, random
vocabulary substitutions, inserted fillers, lost casing and punctuation), each noisy
condition averaged over ``--seeds`` draws, at the model's own threshold.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from models.bah import read_split
from models.metrics import evaluate_scores
from models.text_ah import TextAHModel

__all__ = ["CONDITIONS", "noise_table"]

_WORD = re.compile(r"[a-z']+")
Noise = Callable[[str, np.random.Generator, Sequence[str]], str]

CONDITIONS: dict[str, Noise] = {
    "clean Whisper large-v3 text": lambda t, r, v: t,
    "lower case, no punctuation": lambda t, r, v: re.sub(r"[^\w\s']", "", t.lower()),
    "10 % of words deleted": lambda t, r, v: " ".join(w for w in t.split() if r.random() >= 0.1),
    "10 % of words replaced by random vocabulary words": lambda t, r, v: " ".join(
        v[r.integers(len(v))] if r.random() < 0.1 else w for w in t.split()
    ),
    '"um"/"uh" inserted before 5 % of words': lambda t, r, v: " ".join(
        f"{('um', 'uh')[r.integers(2)]} {w}" if r.random() < 0.05 else w for w in t.split()
    ),
}


def noise_table(split_dir: Path, model: TextAHModel, seeds: int = 5) -> str:
    """Markdown table: AUC, AP and macro F1 (model threshold) on val per noise condition."""
    from sklearn.metrics import roc_auc_score

    split_dir = Path(split_dir)
    val = read_split(split_dir / "val.txt")
    train = read_split(split_dir / "train.txt")
    vocab = sorted({w for it in train for w in _WORD.findall(it.transcript.lower())})
    y = np.array([it.label for it in val])
    rows = ["| condition | AUC | AP | macro F1 |", "|---|---|---|---|"]
    for name, noise in CONDITIONS.items():
        runs = []
        for s in range(seeds):
            p = np.empty(len(val))
            for i, it in enumerate(val):
                v = model.predict_one(noise(it.transcript, np.random.default_rng([s, i]), vocab))
                p[i] = model.prior(None) if v is None else v
            e = evaluate_scores(y, p, model.threshold)
            runs.append((roc_auc_score(y, p), e["ap"], e["macro_f1"]))
        auc, ap, f1 = np.mean(runs, axis=0)
        rows.append(f"| {name} | {auc:.3f} | {ap:.3f} | {f1:.3f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the table."""
    ap = argparse.ArgumentParser(prog="python -m models.text_noise", description=__doc__)
    ap.add_argument("--split-dir", type=Path, required=True, help="dir with train.txt, val.txt")
    ap.add_argument("--weights-dir", type=Path, default=None, help="default: shipped weights")
    ap.add_argument("--seeds", type=int, default=5, help="noise draws per condition (5)")
    args = ap.parse_args(argv)
    model = TextAHModel.load(args.weights_dir)
    print(f"threshold {model.threshold:.3f}")
    print(noise_table(args.split_dir, model, args.seeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
