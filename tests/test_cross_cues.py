"""Face–words valence inconsistency on crafted word and face sequences."""

from models.cross_cues import ValenceInconsistencyDetector, words_valence
from models.face import FaceFeatures
from models.text_ah import tokenize
from models.whisper import Word


def _words(text, t0=0.0, step=0.3):
    return [Word(w, t0 + i * step, t0 + i * step + 0.25, 1.0) for i, w in enumerate(text.split())]


def _run(text, face_dev, seconds=3.0, hz=10):
    det = ValenceInconsistencyDetector()
    words = _words(text)
    hits = []
    for k in range(1, int(seconds * hz) + 1):
        t = k / hz
        new = [w for w in words if t - 1 / hz < w.t1 <= t]
        face = FaceFeatures.from_values(t, valence_dev=face_dev)
        hits += det.update(t, new, face)
    return hits + det.flush()


def test_word_valence_with_negation():
    assert words_valence(tokenize("I love it, it's fun")) == 1.0
    assert words_valence(tokenize("I don't enjoy it")) == -1.0
    assert words_valence(tokenize("I go to the store")) is None


def test_smiling_while_saying_negative_things_is_inconsistent():
    hits = _run("honestly I hate it it is so boring", face_dev=0.6)
    assert len(hits) == 1
    hit = hits[0]
    assert hit.cue == "valence_inconsistency" and hit.modality == "cross"
    assert hit.t1 - hit.t0 >= 0.5 and 0.5 <= hit.strength <= 1.0
    assert "negative words" in hit.detail


def test_negative_face_with_positive_words_is_inconsistent():
    assert [h.cue for h in _run("I really love running it is great", face_dev=-0.6)] == [
        "valence_inconsistency"
    ]


def test_congruent_or_neutral_faces_give_nothing():
    assert _run("I really love running it is great", face_dev=0.6) == []
    assert _run("honestly I hate it it is so boring", face_dev=-0.6) == []
    assert _run("honestly I hate it it is so boring", face_dev=0.1) == []
    assert _run("I walk to the store in the morning", face_dev=0.8) == []
