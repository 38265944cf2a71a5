"""`ahstream evaluate`: replays through the session's Analyzer, official metrics, early F1."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from models.bah import QUESTION_PROMPTS, read_split
from models.metrics import evaluate_scores
from models.simulate import DEFAULT_PACING, early_index, seed_for, simulate_stream
from tests.conftest import ROOT, SHARED_DATA

ANSWERS = [
    ("11111", 1, 1, "I wake up, I brush my teeth and I make coffee. That's about it."),
    ("11111", 4, 1, "I, um, I wish I could stop scrolling at night but I don't know, it's hard."),
    ("22222", 2, 0, "I love hiking with my dog. It makes me feel free and happy."),
    ("22222", 7, 1, "Maybe going back to school. I should have done it already, but, well..."),
    ("33333", 3, 0, "Doing the dishes. I hate it, it's boring and it never ends."),
    ("33333", 6, 1, "I guess smoking? People do it but I would not, I mean, probably not."),
    ("44444", 5, 0, "Hanging out with friends, always. Anytime, anywhere."),
    ("44444", 1, 0, "Stretch."),
]


def _write_split(path):
    lines = [
        f"Videos/{pid}/Visite_1/{pid}_Question_{q}_2024-11-19_15-12-{i:02d}_Video.mp4,{y},{text}"
        for i, (pid, q, y, text) in enumerate(ANSWERS)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models():
    from stream.evaluate import load_eval_models

    return load_eval_models()


def test_simulated_pacing_is_natural_and_seeded():
    text = "Well, I usually get up early. Then I make coffee, and I read the news for a while."
    a = simulate_stream(text, seed_for("v1"))
    b = simulate_stream(text, seed_for("v1"))
    c = simulate_stream(text, seed_for("v2"))
    assert [w.t0 for w in a.words] == [w.t0 for w in b.words]
    assert [w.t0 for w in a.words] != [w.t0 for w in c.words]
    assert [w.w for w in a.words] == text.split()
    t0 = np.array([w.t0 for w in a.words])
    t1 = np.array([w.t1 for w in a.words])
    assert np.all(t1 > t0) and np.all(t0[1:] >= t1[:-1])
    n = len(a.words)
    span = a.words[-1].t1 - a.words[0].t0
    wpm = 60 * n / span
    assert 110 <= wpm <= 200
    gaps = t0[1:] - t1[:-1]
    after_period = [g for w, g in zip(a.words, gaps, strict=False) if w.w.endswith(".")]
    others = [g for w, g in zip(a.words, gaps, strict=False) if w.w[-1].isalpha()]
    assert min(after_period) > max(others)
    # Ticks every 100 ms until 1 s after the last word becomes visible.
    assert np.allclose(np.diff(a.ticks), 0.1)
    last_visible = a.words[-1].t1 + DEFAULT_PACING.commit_delay_s
    assert a.ticks[-1] == pytest.approx(last_visible + DEFAULT_PACING.tail_s, abs=0.1)
    assert early_index(40, 0.5) == 19 and early_index(40, 0.25) == 9 and early_index(1, 0.25) == 0


def test_analyzer_rows_equal_the_training_rows(tmp_path, models):
    """The rows the TCN is trained on are the rows the session's Analyzer computes."""
    from models.train_tcn import _one_stream
    from stream.analysis import Analyzer

    item = read_split(_write_split(tmp_path / "tiny.txt"))[1]
    for ctx in (None, QUESTION_PROMPTS[item.question]):
        x_train, p_train = _one_stream(models.text, item, 0, ctx is not None, DEFAULT_PACING)
        an = Analyzer(models, ctx)
        sim = simulate_stream(item.transcript, seed_for(item.video_id, 0))
        rows = [an.tick(t, new, fin, []).x for t, new, fin in sim.batches()]
        assert np.array_equal(np.array(rows), x_train)
        p = models.tcn.forward(x_train)
        an2 = Analyzer(models, ctx)
        res = [an2.tick(t, new, fin, []) for t, new, fin in sim.batches()]
        assert np.max(np.abs(np.array([r.p_tcn for r in res]) - p)) <= 1e-9
        assert np.allclose([r.p_text for r in res], p_train, atol=0, rtol=0)


def test_evaluate_tiny_split(tmp_path, models):
    from stream.evaluate import evaluate_split, replay_item

    split = _write_split(tmp_path / "tiny.txt")
    res = evaluate_split(split, models=models, progress=False)
    assert res["n"] == len(ANSWERS)
    for k in ("macro_f1", "f1_pos", "f1_neg", "ap", "threshold"):
        assert 0.0 <= res[k] <= 1.0
    assert set(res["early"]) == {"25", "50", "75"}
    for v in res["early"].values():
        assert v["n"] == len(ANSWERS) and 0 <= v["macro_f1"] <= 1
    # The numbers are the official metrics of the replayed decisions.
    items = read_split(split)
    reps = [replay_item(models, it) for it in items]
    y = np.array([it.label for it in items])
    p = np.array([r.p for r in reps])
    assert res == {**res, **evaluate_scores(y, p, reps[0].threshold)}
    assert res["threshold"] == models.tcn.decision()["threshold"]
    half = evaluate_scores(y, np.array([r.p_at(0.5) for r in reps]), reps[0].threshold)
    assert res["early"]["50"] == half
    # Deterministic: the pacing seed comes from the video id.
    assert evaluate_split(split, models=models, progress=False) == res


def test_context_from_question_uses_the_context_threshold(tmp_path, models):
    from stream.evaluate import evaluate_split

    split = _write_split(tmp_path / "tiny.txt")
    res = evaluate_split(split, context_from_question=True, models=models, progress=False)
    assert res["threshold"] == models.tcn.decision()["threshold_context"]
    assert res["context"] == "question"
    plain = evaluate_split(split, models=models, progress=False)
    assert res["ap"] != plain["ap"] or res["macro_f1"] != plain["macro_f1"]


def test_evaluate_cli_json(tmp_path):
    split = _write_split(tmp_path / "tiny.txt")
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", "--split-file", str(split), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"n", "macro_f1", "f1_pos", "f1_neg", "ap", "threshold", "early"} <= set(res)
    assert res["n"] == len(ANSWERS)
    assert "evaluate" not in run.stderr  # no progress bar with --json
    bad = tmp_path / "bad.txt"
    bad.write_text("no commas here\n")
    run = subprocess.run(
        [sys.executable, "-m", "stream.cli", "evaluate", "--split-file", str(bad), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "bad.txt:1" in run.stderr


def _shipped_meta():
    from models.tcn import TCN_STEM, WEIGHTS_DIR

    return json.loads((WEIGHTS_DIR / f"{TCN_STEM}.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("context", [False, True])
def test_val_macro_f1_equals_the_model_card(models, context):
    """`evaluate` on val reproduces the val numbers stored with the weights and in the card."""
    from stream.evaluate import evaluate_split

    val = SHARED_DATA / "val.txt"
    if not val.is_file():
        pytest.skip(f"BAH transcripts not available at {SHARED_DATA}")
    meta = _shipped_meta()
    if hashlib.sha256(val.read_bytes()).hexdigest() != meta["data_sha256"]["val.txt"]:
        pytest.skip("val.txt differs from the one the shipped weights were tuned on")
    res = evaluate_split(val, context_from_question=context, models=models, progress=False)
    want = meta["decision"]["val_with_context" if context else "val"]
    for k in ("n", "macro_f1", "f1_pos", "f1_neg", "ap", "threshold"):
        assert res[k] == pytest.approx(want[k], abs=1e-12), k
    for f in ("25", "50", "75"):
        assert res["early"][f]["macro_f1"] == pytest.approx(want["early"][f]["macro_f1"], abs=1e-12)
    assert _card_row(context) == _card_numbers(want)  # and so the card's row


CARD_ROWS = {False: "no context", True: "BAH prompt as context"}


def _card_row(context: bool) -> list[str]:
    """The numbers of the model card's `evaluate` val row (bold marks dropped)."""
    from models.tcn import WEIGHTS_DIR

    card = (WEIGHTS_DIR.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    table = card[card.index("| val (110 videos) | macro F1 |") :]
    line = next(x for x in table.splitlines() if x.startswith(f"| {CARD_ROWS[context]} |"))
    cells = [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
    early = cells.pop().split(" / ")
    return cells + early


def _card_numbers(val: dict) -> list[str]:
    """What that row must say of the val metrics stored with the weights."""
    keys = ("macro_f1", "f1_pos", "f1_neg", "ap", "threshold")
    return [f"{val[k]:.3f}" for k in keys] + [
        f"{val['early'][f]['macro_f1']:.3f}" for f in ("25", "50", "75")
    ]


@pytest.mark.parametrize("context", [False, True])
def test_the_model_cards_val_table_is_the_shipped_weights_numbers(context):
    """Every number of the card's `evaluate` val rows is the one stored with the shipped
    weights (which `evaluate` reproduces on val, above, where the data is)."""
    assert _card_row(context) == _card_numbers(_shipped_meta()["decision"][
        "val_with_context" if context else "val"
    ])  # fmt: skip
