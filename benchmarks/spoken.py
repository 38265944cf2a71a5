"""Spoken-answer benchmark: BAH answers rendered with espeak-ng, run through `analyze`'s
session code (live ASR, streaming model, aggregation), against the TF-IDF(1-2)+LR reference
method given offline (whole-file) Whisper tiny.en transcripts of the same audio.

    python -m benchmarks.spoken --train-file train.txt --split-file val.txt \
        --out benchmarks/results/spoken_val.json

The reference method is fit on the train transcripts and thresholded on the clean
transcripts of the split (as the dataset README's 0.699 point is). The speech is rendered
to a temporary WAV per answer, which is deleted right after. The JSON has, per answer, the
video id, label, live and reference p and the word error rates of the live and the offline
transcript against the BAH transcript (no text: ASR differs between CPUs, and this is what
tells where two machines' runs part), with the run (commit, versions) and the machine.

Every answer is scored, as the official metric needs: an answer whose session ends without
a decision (it analysed no tick) is scored p = 0, the negative class, which is what the
live service shows for it (no A/H flagged), and counted in ``undecided`` (with its
``undecided_ids``) so that such answers are visible, not hidden in the metrics. The inputs,
the output directory and espeak-ng are checked before anything runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.live import machine
from benchmarks.output import mark_start, run_info, write_json
from models.bah import read_split
from models.metrics import best_threshold, evaluate_scores
from models.wer import wer


def _tfidf_reference(train_file: Path, split_items: list[Any]) -> tuple[Any, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = read_split(train_file)
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(max_iter=1000))
    pipe.fit([it.transcript for it in train], [it.label for it in train])
    p = pipe.predict_proba([it.transcript for it in split_items])[:, 1]
    threshold, _ = best_threshold([it.label for it in split_items], p)
    return pipe, threshold


def live_scores(decisions: list[dict[str, Any] | None]) -> tuple[list[float], list[int]]:
    """The live score of each answer from its session's decision, and the indices of the
    answers without one (scored 0: the negative class, see the module docstring)."""
    undecided = [i for i, d in enumerate(decisions) if d is None or d.get("p") is None]
    scores = [0.0 if i in undecided else float(d["p"]) for i, d in enumerate(decisions)]
    return scores, undecided


def speak_to_wav(text: str, wav: Path, rate_wpm: int) -> None:
    """Synthesise ``text`` with espeak-ng (en-us) into the WAV file ``wav``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (Debian package espeak-ng)")
    subprocess.run(
        [exe, "-s", str(rate_wpm), "-v", "en-us", "-w", str(wav), text],
        check=True,
        capture_output=True,
        timeout=120,
    )


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from models.profile import load_models
    from stream.publisher import Publisher
    from stream.replay import replay_file
    from stream.session import Session

    items = read_split(args.split_file)[: args.limit or None]
    models = load_models(face=False)
    pipe, ref_threshold = _tfidf_reference(Path(args.train_file), items)
    y, p_ref, audio_s = [], [], 0.0
    decisions: list[dict[str, Any] | None] = []
    wers: list[tuple[float, float]] = []  # (live, offline) against the BAH transcript
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "answer.wav"
        for i, item in enumerate(items):
            speak_to_wav(item.transcript, wav, args.rate)
            session = Session(f"spoken{i}", models, Publisher(f"spoken{i}"))
            session.start()
            await replay_file(wav, session)
            audio_s += session.media_end
            decisions.append(session.decision)
            segs, _ = models.whisper.transcribe(str(wav), language="en", beam_size=5)
            offline = " ".join(s.text.strip() for s in segs)
            p_ref.append(float(pipe.predict_proba([offline])[0, 1]))
            wers.append((wer(item.transcript, session.asr.text), wer(item.transcript, offline)))
            y.append(item.label)
            print(f"\r{i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
            wav.unlink()
    print(file=sys.stderr)
    threshold = models.tcn.decision().get("threshold", models.text.threshold)
    p_live, undecided = live_scores(decisions)
    live_wer, offline_wer = (float(np.mean([w[k] for w in wers])) for k in (0, 1))
    return {
        "n": len(y),
        "undecided": len(undecided),
        "undecided_ids": [items[i].video_id for i in undecided],
        "audio_s": round(audio_s, 1),
        "wall_s": round(time.perf_counter() - started, 1),
        "speech": f"espeak-ng en-us {args.rate} wpm",
        "ahstream_analyze": evaluate_scores(y, p_live, threshold),
        "tfidf_lr_on_offline_whisper": evaluate_scores(y, p_ref, ref_threshold),
        "wer_mean": {"live": live_wer, "offline": offline_wer},
        "answers": [
            {
                "video_id": item.video_id,
                "label": label,
                "p_live": p,
                "p_reference": pr,
                "wer_live": w[0],
                "wer_offline": w[1],
            }
            for item, label, p, pr, w in zip(items, y, p_live, p_ref, wers, strict=True)
        ],
        "machine": machine(),
        "run": run_info(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-file", required=True, help="BAH train.txt (fits the reference)")
    ap.add_argument("--split-file", required=True, help="BAH split to speak (e.g. val.txt)")
    ap.add_argument("--rate", type=int, default=160, help="espeak-ng words per minute")
    ap.add_argument("--limit", type=int, default=0, help="only the first N answers")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    for flag, path in (("--train-file", args.train_file), ("--split-file", args.split_file)):
        if not Path(path).is_file():
            ap.error(f"{flag} {path}: no such file")
        try:
            if not read_split(path):
                ap.error(f"{flag} {path}: no answers in it")
        except (OSError, ValueError) as exc:
            ap.error(f"{flag}: {exc}")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        ap.error(f"--out {args.out}: no such directory {Path(args.out).parent}")
    if shutil.which("espeak-ng") is None:
        ap.exit(1, f"{ap.prog}: espeak-ng is not installed (Debian package espeak-ng)\n")
    mark_start()
    result = asyncio.run(_run(args))
    if args.out:
        write_json(result, args.out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
