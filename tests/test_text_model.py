"""Tests of the BAH split reader and of the shipped text A/H model (models/text_ah.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from models.bah import (
    QUESTION_PROMPTS,
    BahFormatError,
    participant_of,
    question_of,
    read_split,
)
from models.metrics import evaluate_scores
from models.text_ah import (
    DEFAULT_STEM,
    WEIGHTS_DIR,
    TextAHModel,
    context_question,
    count_words,
    lexical_cues,
    load,
    normalize_text,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "shared/data/bah-transcripts"


@pytest.fixture(scope="module")
def model() -> TextAHModel:
    return load()


def _need_data() -> Path:
    if not (DATA_DIR / "train.txt").is_file() or not (DATA_DIR / "val.txt").is_file():
        pytest.skip(f"BAH transcripts not available at {DATA_DIR}")
    return DATA_DIR


def _meta() -> dict:
    return json.loads((WEIGHTS_DIR / f"{DEFAULT_STEM}.json").read_text(encoding="utf-8"))


def _need_same_data(meta: dict) -> Path:
    d = _need_data()
    for name, sha in meta["data_sha256"].items():
        if hashlib.sha256((d / name).read_bytes()).hexdigest() != sha:
            pytest.skip(f"{d / name} differs from the data the shipped model was trained on")
    return d


# ------------------------------------------------------------------------------- split reading


def test_read_split_parses_commas_and_question(tmp_path: Path) -> None:
    f = tmp_path / "s.txt"
    f.write_text(
        "Videos/1/Visite_1/1_Question_4_2024-11-19_15-12-23_Video.mp4,1,Well, I, uh, wish.\n"
        "\n"
        "Videos/2/Visite_1/2_Question_7_2024-11-19 15-12-23_Video-DESKTOP-X.mp4,0,\n",
        encoding="utf-8",
    )
    items = read_split(f)
    assert len(items) == 2
    assert items[0].label == 1 and items[0].transcript == "Well, I, uh, wish."
    assert items[0].question == 4 and items[0].participant == "1"
    assert items[1].label == 0 and items[1].transcript == "" and items[1].question == 7


def test_read_split_ends_lines_at_newlines_only(tmp_path: Path) -> None:
    """CRLF files read as LF ones, and a lone carriage return inside a transcript stays
    in it: it does not cut the line in two (the second half would be a bad line)."""
    f = tmp_path / "s.txt"
    f.write_bytes(b"a.mp4,1,one\rtwo\r\nb.mp4,0,three\r\n")
    items = read_split(f)
    assert [(it.video_id, it.label, it.transcript) for it in items] == [
        ("a.mp4", 1, "one\rtwo"),
        ("b.mp4", 0, "three"),
    ]


@pytest.mark.parametrize(
    "bad",
    ["Videos/1/Visite_1/1_Question_1_x.mp4,1\n", "Videos/1/x.mp4,2,text\n", ",1,text\n"],
)
def test_read_split_reports_line_number(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "s.txt"
    f.write_text("Videos/1/Visite_1/1_Question_1_x.mp4,0,fine\n" + bad, encoding="utf-8")
    with pytest.raises(BahFormatError, match=r"s\.txt:2:"):
        read_split(f)


def test_question_and_participant_of() -> None:
    vid = "Videos/82725/Visite_1/82725_Question_1_2024-11-19_15-12-23_Video.mp4"
    assert question_of(vid) == 1 and participant_of(vid) == "82725"
    assert question_of("something_else.mp4") is None
    assert sorted(QUESTION_PROMPTS) == [1, 2, 3, 4, 5, 6, 7]


def test_real_splits_read() -> None:
    d = _need_same_data(_meta())
    train, val = read_split(d / "train.txt"), read_split(d / "val.txt")
    assert (len(train), sum(i.label for i in train)) == (616, 340)
    assert (len(val), sum(i.label for i in val)) == (110, 59)
    assert all(i.question in QUESTION_PROMPTS for i in train + val)


# ------------------------------------------------------------------------------- text handling


def test_normalisation_ignores_case_and_punctuation(model: TextAHModel) -> None:
    a = "Well, I DON'T know... I guess I should—maybe—start running? 5 times."
    b = "well i don't know i guess i should maybe start running 5 times"
    assert normalize_text(a) == normalize_text(b)
    assert model.predict([a])[0] == model.predict([b])[0]
    assert count_words("  ") == 0 and count_words("I don't, know.") == 3


def test_lexical_cues() -> None:
    c = lexical_cues("Um, I don't know, I I think maybe I should but I keep procrastinating.")
    assert c["filler"] == 1 and c["uncertainty"] == 1 and c["hedge"] == 2
    assert c["contrast"] == 1 and c["obligation"] == 1 and c["procrastination"] == 1
    assert c["repetition"] == 1


def test_context_question_matching() -> None:
    for q, prompt in QUESTION_PROMPTS.items():
        assert context_question(prompt) == q
        assert context_question(prompt.lower().replace(",", "").replace(".", "")) == q
    assert context_question(None) is None
    assert context_question("") is None
    assert context_question("How was your weekend?") is None


# ------------------------------------------------------------------------------- shipped model


def test_shipped_weights_are_small_and_load_without_pickle() -> None:
    npz = WEIGHTS_DIR / f"{DEFAULT_STEM}.npz"
    js = WEIGHTS_DIR / f"{DEFAULT_STEM}.json"
    assert npz.stat().st_size + js.stat().st_size < 2_000_000
    with np.load(npz, allow_pickle=False) as z:  # raises if any array needs pickle
        assert all(z[k].dtype != object for k in z.files)
    m = TextAHModel.load()
    assert m.name == DEFAULT_STEM and m.version
    assert 0.0 < m.threshold < 1.0 and 0.0 < m.threshold_context < 1.0
    assert m.min_words >= 1
    assert TextAHModel.load(WEIGHTS_DIR).coef.shape == m.coef.shape
    assert TextAHModel.load(js).threshold == m.threshold


def test_predictions_in_unit_interval(model: TextAHModel) -> None:
    texts = [
        "I wake up, brush my teeth and have breakfast.",
        "so um i i wish i could stop but i don't know i keep doing it",
        "the the the the",
        " ".join(["x" * 500] * 3),
        "Zzz qqq unknownword another unknownword here.",
        " ".join(["word"] * 2000),
    ]
    assert all(model.usable(t) for t in texts)  # so each gets a probability, never NaN
    p = model.predict(texts)
    assert p.shape == (len(texts),) and p.dtype == np.float64
    assert np.all((p >= 0.0) & (p <= 1.0))
    pc = model.predict(texts, context=QUESTION_PROMPTS[3])
    assert np.all((pc >= 0.0) & (pc <= 1.0))
    # In a batch each text is scored as alone, and the texts are read (not one value for all).
    assert p.tolist() == [model.predict_one(t) for t in texts]
    assert pc.tolist() == [model.predict_one(t, QUESTION_PROMPTS[3]) for t in texts]
    assert len(set(p.tolist())) > 1 and len(set(pc.tolist())) > 1


def test_empty_and_too_short_texts_give_no_probability(model: TextAHModel) -> None:
    short = " ".join(["hello"] * (model.min_words - 1))
    p = model.predict(["", "   ", "...", short])
    assert np.isnan(p).all()
    assert model.predict_one("") is None
    assert not model.usable("") and not model.usable(short)
    ok = " ".join(["hello"] * model.min_words)
    assert model.usable(ok) and model.predict_one(ok) is not None


def test_filler_sounds_do_not_move_the_probability(model: TextAHModel) -> None:
    # The training transcripts (Whisper large-v3) mostly lack fillers; the live ASR keeps
    # them. The shipped weights read the answer without them; the filler cue still counts.
    assert model.spec.drop_fillers
    plain = "I want to go to the gym more often but I keep putting it off"
    filled = "um I want to go uh to the gym more often but um I keep putting it off hmm"
    assert model.predict_one(filled) == model.predict_one(plain)
    assert model.predict_one(filled, QUESTION_PROMPTS[7]) == model.predict_one(
        plain, QUESTION_PROMPTS[7]
    )
    assert lexical_cues(filled)["filler"] == 4
    # Fillers are not words towards min_words either.
    assert not model.usable("um uh so") and model.predict_one("um uh so") is None
    # Weights from before 1.1.0 (no drop_fillers in their JSON) read the fillers as words.
    from dataclasses import replace

    old = replace(model.spec, drop_fillers=False)
    (i_old, v_old), (i_new, v_new) = old.featurize(filled), model.spec.featurize(filled)
    assert not (np.array_equal(i_old, i_new) and np.allclose(v_old, v_new))


def test_crafted_texts_order(model: TextAHModel) -> None:
    # Sanity only (the val test below is the real check): a plainly neutral routine
    # answer scores below a plainly torn, hedging one.
    neutral = "I wake up, brush my teeth, have breakfast and coffee, and then I go to work."
    torn = (
        "I wish I could stop scrolling on my phone at night, but I don't know, I keep "
        "doing it. I should really stop, maybe, I have been putting it off."
    )
    assert model.predict_one(torn) > model.threshold > model.predict_one(neutral)


def test_context_moves_probability_by_question(model: TextAHModel) -> None:
    text = "I like to go for a walk with my dog and then maybe read a book."
    p_q4 = model.predict_one(text, context=QUESTION_PROMPTS[4])  # ambivalent prompt
    p_q1 = model.predict_one(text, context=QUESTION_PROMPTS[1])  # neutral prompt
    assert p_q4 > p_q1
    # An unknown prompt is ignored (text-only probability and threshold).
    assert model.predict_one(text, context="What did you eat?") == model.predict_one(text)
    assert model.threshold_for("What did you eat?") == model.threshold
    assert model.threshold_for(QUESTION_PROMPTS[4]) == model.threshold_context


def test_prefixes_are_scored(model: TextAHModel) -> None:
    text = (
        "So something that I could have done already but have not is learning to drive. "
        "I keep saying I will book the lessons but then work gets busy and I put it off."
    )
    words = text.split()
    prefixes = [" ".join(words[:k]) for k in range(len(words) + 1)]
    p = model.predict(prefixes)
    assert np.isnan(p[: model.min_words]).all()
    scored = p[model.min_words :]
    assert np.all((scored >= 0) & (scored <= 1))  # and so no NaN once there are enough words
    # Each prefix gets what the model gives that text alone ...
    assert scored.tolist() == [model.predict_one(t) for t in prefixes[model.min_words :]]
    # ... and the words added move it: most words change p, and the whole answer is not
    # read as its first words were.
    assert np.count_nonzero(np.diff(scored)) >= (len(scored) - 1) // 2
    assert scored[-1] != scored[0]


# ------------------------------------------------------------------------------- against data


def test_val_macro_f1_matches_metadata(model: TextAHModel) -> None:
    from models.train_text import evaluate_model

    meta = _meta()
    d = _need_same_data(meta)
    val = read_split(d / "val.txt")
    y, p = evaluate_model(model, val, with_context=False)
    r = evaluate_scores(y, p, model.threshold)
    assert r["macro_f1"] == pytest.approx(meta["metrics"]["val"]["macro_f1"], abs=1e-9)
    assert r["ap"] == pytest.approx(meta["metrics"]["val"]["ap"], abs=1e-9)
    y, pc = evaluate_model(model, val, with_context=True)
    rc = evaluate_scores(y, pc, model.threshold_context)
    assert rc["macro_f1"] == pytest.approx(
        meta["metrics"]["val_with_context"]["macro_f1"], abs=1e-9
    )


def test_retraining_reproduces_shipped_weights(tmp_path: Path) -> None:
    # 5 out-of-fold fits + the final fit. One BLAS/OpenMP thread: with a thread per core,
    # the fits slow down ~10x when something else (a training run, other tests) has the CPU.
    from threadpoolctl import threadpool_limits

    from models.train_text import train_text_model

    meta = _meta()
    d = _need_same_data(meta)
    with threadpool_limits(1):
        res = train_text_model(d, tmp_path, seed=int(meta["seed"]), progress=False)
    with (
        np.load(WEIGHTS_DIR / f"{DEFAULT_STEM}.npz", allow_pickle=False) as a,
        np.load(tmp_path / f"{DEFAULT_STEM}.npz", allow_pickle=False) as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if a[k].dtype == np.uint8:  # vocabularies
                assert np.array_equal(a[k], b[k]), k
            else:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, err_msg=k)
    new = json.loads((tmp_path / f"{DEFAULT_STEM}.json").read_text(encoding="utf-8"))
    assert new["threshold"] == meta["threshold"]
    assert new["threshold_context"] == meta["threshold_context"]
    assert res["val"]["macro_f1"] == pytest.approx(meta["metrics"]["val"]["macro_f1"], abs=1e-9)


def test_the_elastic_net_recipe_on_planted_answers() -> None:
    """The shipped recipe (elastic-net head, mix fit on prefixes too) on synthetic answers,
    so CI exercises it without the BAH data: the head keeps the planted words and drops
    most of the others, every answer's rows weigh 2 in the mix (the answer, and its
    prefixes together), and the fitted model ranks unseen answers by the planted words."""
    from dataclasses import replace

    from models.bah import BahItem
    from models.train_text import DEFAULT_CONFIG, fit_heads, fit_model, oof_scores

    assert DEFAULT_CONFIG.l1_ratio is not None and DEFAULT_CONFIG.mix_prefixes
    cfg = replace(DEFAULT_CONFIG, question_head=False)
    rng = np.random.default_rng(0)
    filler = ["zq" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(60)]  # "zqaa", ...

    def answer(label: int) -> str:
        words = list(rng.choice(filler, 14))
        cue = ["but", "maybe", "unsure"] if label else ["always", "gladly", "sure"]
        for w in rng.choice(cue, 2, replace=False):
            words.insert(int(rng.integers(0, len(words))), str(w))
        return " ".join(words)

    items = [
        BahItem(
            f"Videos/p{i // 2}/p{i // 2}_Question_{1 + i % 7}_x.mp4",
            i % 2,
            answer(i % 2),
            1 + i % 7,
        )
        for i in range(120)
    ]
    y = np.array([it.label for it in items])
    oof = oof_scores(items, cfg, seed=0)
    assert oof.mix_Z is not None and oof.mix_w is not None and oof.mix_src is not None
    assert len(oof.mix_Z) > len(items)  # prefixes too
    np.testing.assert_allclose(np.bincount(oof.mix_src, weights=oof.mix_w), 2.0)
    whole = oof.mix_w == 1.0  # each answer's own row (a prefix weighs 1/4)
    assert whole.sum() == len(items)
    np.testing.assert_array_equal(oof.mix_Z[whole], oof.Z[oof.mix_src[whole]])
    (a, _, _), ctx_a, _ = fit_heads(oof, y, [it.question for it in items], cfg)
    assert a > 0 and ctx_a > 0

    model, cv, _ = fit_model(items, cfg, seed=0)
    vocab = model.spec.word_vocab
    kept = {w for w, j in vocab.items() if model.coef[j] != 0}
    assert {"but", "maybe", "unsure", "always", "gladly", "sure"} <= kept
    assert len(kept) < 0.5 * len(vocab), len(kept)  # the L1 part drops words
    assert cv["auc"] > 0.9
    pos, neg = model.predict([answer(1), answer(1)]), model.predict([answer(0), answer(0)])
    assert pos.min() > neg.max()
