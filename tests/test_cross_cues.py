"""Face–words valence inconsistency on crafted word and face sequences, through the detector
and through the session's Analyzer with the ASR committing words late."""

import numpy as np
import pytest

from models.cross_cues import (
    WORD_WINDOW_S,
    ValenceInconsistencyDetector,
    text_valence,
    words_valence,
)
from models.face import FaceFeatures
from models.text_ah import tokenize
from models.whisper import Word
from stream.analysis import Analyzer
from stream.buffers import VideoFrame


def _words(text, t0=0.0, step=0.3):
    return [Word(w, t0 + i * step, t0 + i * step + 0.25, 1.0) for i, w in enumerate(text.split())]


def _run(text, face_dev, seconds=3.0, hz=10):
    det = ValenceInconsistencyDetector()
    words = _words(text)
    hits = []
    for k in range(1, int(seconds * hz) + 1):
        t = k / hz
        new = [w for w in words if t - 1 / hz < w.t1 <= t]
        det.add_face(t, FaceFeatures.from_values(t, valence_dev=face_dev))
        hits += det.update(new, t)
    return hits + det.flush()


def test_word_valence_with_negation():
    assert words_valence(tokenize("I love it, it's fun")) == 1.0
    assert words_valence(tokenize("I don't enjoy it")) == -1.0
    assert words_valence(tokenize("I go to the store")) is None
    # a negation flips the words of its own clause only
    assert text_valence("No, I love it.") == 1.0
    assert text_valence("No fun at all.") == -1.0
    assert text_valence("I love it. Not bad!") == 1.0


def test_no_then_positive_words_with_a_smile_is_consistent():
    assert _run("No, I love it, it is fun.", face_dev=0.6) == []
    assert len(_run("No, I love it, it is fun.", face_dev=-0.6)) == 1


def test_the_cue_starts_when_the_face_does_not_when_its_average_does():
    """A negative face from 2.0 to 3.5 s after "I love it": the face valence averaged over
    FACE_WINDOW_S passes the threshold about 0.9 s late, and stays past it after the face
    is neutral again; the cue spans the frames of the face itself (it was 2.9-4.0 s)."""
    det = ValenceInconsistencyDetector()
    hits = []
    for k in range(1, 61):
        t = k / 10
        det.add_face(t, FaceFeatures.from_values(t, valence_dev=-0.6 if 2.0 <= t < 3.5 else 0.0))
        hits += det.update(_words("I love it.") if k == 1 else [], t)
    (hit,) = hits + det.flush()
    assert (hit.t0, hit.t1) == (pytest.approx(2.0), pytest.approx(3.4))


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


# ------------------------------------------------------------------ timing through the Analyzer

POSITIVE_THEN_NEGATIVE = _words("i really love doing it it is so fun and great", 2.0, 0.4) + _words(
    "but then it gets awful and i hate it", 7.5, 0.4
)


@pytest.fixture(scope="module")
def models():
    from stream.evaluate import load_eval_models

    return load_eval_models()


class _Faces:
    """Stands in for the session's face analyzer: crafted valence per frame time."""

    def __init__(self, valence):
        self.valence = valence

    def analyze(self, rgb, t):
        v = self.valence(t)
        return None if v is None else FaceFeatures.from_values(t, valence_dev=v)

    def close(self):
        pass


def _analyze(models, words, valence, lag, seconds, via="tentative", hz=10):
    """Cross cues of the real Analyzer on 10 Hz frames, words committed ``lag`` s after they
    end, as a session ticks. ``via`` says how the tick learns up to when the words are
    complete: "tentative" (spoken words not committed yet are the tentative tail) or "asr_t"
    (no tentative tail; the ASR has transcribed up to ``t - lag``). At the end the rest is
    committed (the session's last tick) and the analyzer flushed."""
    an = Analyzer(models)
    an.face = _Faces(valence)
    hits, j, t = [], 0, 0.0
    for k in range(1, int(round(seconds * hz)) + 1):
        t = round(k / hz, 3)
        new = []
        while j < len(words) and words[j].t1 + lag <= t + 1e-9:
            new.append(words[j])
            j += 1
        tentative = [w for w in words[j:] if w.t0 <= t] if via == "tentative" else []
        kw = {"asr_t": t - lag} if via == "asr_t" else {}
        frame = VideoFrame(t, np.zeros((4, 4, 3), np.uint8), 4, 4)
        hits += an.tick(t, new, False, tentative, frame, **kw).cues
    hits += an.tick(t, words[j:], True, [], None).cues
    hits += an.flush()
    return [(h.t0, h.t1, h.strength, h.detail) for h in hits if h.modality == "cross"]


@pytest.mark.parametrize(
    "valence",
    [lambda t: -0.6, lambda t: -0.8 if 4.0 <= t < 6.0 else 0.0],
    ids=["negative face", "negative face 4-6 s"],
)
def test_the_cue_does_not_depend_on_the_asr_lag(models, valence):
    """The words' valence at a frame is that of the words spoken by then, whenever the ASR
    commits them: the cue is the same for commit lags of 0 to 4.5 s (live p95 2.3-3.2 s)."""
    ref = _analyze(models, POSITIVE_THEN_NEGATIVE, valence, 0.0, 12.0)
    assert len(ref) == 1 and ref[0][3].startswith("positive words, negative face")
    for lag in (0.5, 2.5, 4.5):
        assert _analyze(models, POSITIVE_THEN_NEGATIVE, valence, lag, 12.0) == ref, lag


def test_the_cue_spans_the_frames_whose_words_disagree(models):
    """With a negative face throughout: from the first frame after "love" ends (3.05 s) to
    the last before "awful" ends (9.35 s) and tips the last 4 s of words to mixed."""
    (hit,) = _analyze(models, POSITIVE_THEN_NEGATIVE, lambda t: -0.6, 2.5, 12.0)
    assert hit[:2] == pytest.approx((3.1, 9.3))


def test_asr_time_bounds_the_words_without_a_tentative_tail(models):
    """Between utterances the ASR has no tentative tail; the tick's ``asr_t`` then says how
    far it has listened, so frames after it wait for their words."""
    ref = _analyze(models, POSITIVE_THEN_NEGATIVE, lambda t: -0.6, 0.0, 12.0, via="asr_t")
    assert ref == _analyze(models, POSITIVE_THEN_NEGATIVE, lambda t: -0.6, 0.0, 12.0)
    for lag in (0.5, 2.5, 4.5):
        got = _analyze(models, POSITIVE_THEN_NEGATIVE, lambda t: -0.6, lag, 12.0, via="asr_t")
        assert got == ref, lag


def test_flush_judges_the_frames_still_waiting_for_words(models):
    """The media ends 1 s after the words, before a 2.5 s lag commits them: the session's
    last tick and flush still give the cue of the whole media."""
    words = _words("i really love doing it it is so fun and great", 2.0, 0.4)
    ref = _analyze(models, words, lambda t: -0.6, 0.0, 7.3)
    assert len(ref) == 1 and ref[0][1] == pytest.approx(7.3)
    assert _analyze(models, words, lambda t: -0.6, 2.5, 7.3) == ref


def test_minimum_duration_is_frame_coverage(models):
    """Five frames at 10 Hz cover 0.5 s (as `stream.aggregate.SegmentTracker` counts)."""
    words = _words("i really love it", 1.0, 0.4)

    def face_for(n):
        return lambda t: -0.6 if 3.0 < t < 3.05 + n / 10 else None

    assert _analyze(models, words, face_for(4), 0.5, 6.0) == []
    (hit,) = _analyze(models, words, face_for(5), 0.5, 6.0)
    assert hit[:2] == pytest.approx((3.1, 3.5))


def test_faces_wait_for_their_words_at_most_face_history_s():
    """An ASR that stalls for a minute: the frames of the last FACE_HISTORY_S are judged when
    the words come, older ones were dropped (bounded memory)."""
    from models.cross_cues import FACE_HISTORY_S

    det = ValenceInconsistencyDetector()
    for k in range(1, 601):
        t = k / 10
        det.add_face(t, FaceFeatures.from_values(t, valence_dev=-0.6))
        assert det.update([], 0.0) == []
    early = _words("i love it it is great", 10.0)
    late = _words("i love it it is great", 45.0)
    assert 10.0 + 2.0 + WORD_WINDOW_S < 60.0 - FACE_HISTORY_S < 45.0
    (hit,) = det.update(early + late, 60.0) + det.flush()  # none for the early words' frames
    assert 45.0 < hit.t0 < hit.t1 < late[-1].t1 + WORD_WINDOW_S
