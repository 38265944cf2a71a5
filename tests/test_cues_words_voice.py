"""Word and voice codebook cues, and the prosody features under them.

Crafted word sequences and synthetic audio pin each rule; real speech (espeak-ng
and the LibriVox clip, with the bundled Whisper tiny.en for word times) checks the
detectors end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

try:
    from tests.media import espeak_speech, librivox_speech, silence
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from media import espeak_speech, librivox_speech, silence

from models.cues import CueHit
from models.prosody import (
    FEATURE_NAMES,
    N_FEATURES,
    PAUSE_WARMUP_N,
    ProsodyTracker,
    VoiceFeatures,
    count_syllables,
    estimate_f0,
    semitones_to_hz,
)
from models.voice_cues import VoiceCueDetector
from models.whisper import FILLER_PROMPT, Word, load_whisper
from models.word_cues import WordCueDetector
from stream.vad import VadTimeline

SR = 16000
HOP = 1600  # 0.1 s, the session's analysis hop
# The entries a vector has without speech now (``VoiceFeatures.speaking`` false).
PAUSE_ENTRIES = ("speech_fraction", "pause_s", "pause_z", "silence_s", "silence_z")
SPEECH_ENTRIES = tuple(n for n in FEATURE_NAMES if n not in PAUSE_ENTRIES)


# ------------------------------------------------------------------------------ helpers


def words(text: str, t0: float = 0.0, word_s: float = 0.3, gap_s: float = 0.05) -> list[Word]:
    """Evenly timed words; a token ``<1.5`` inserts 1.5 s of silence."""
    out: list[Word] = []
    t = t0
    for w in text.split():
        if w.startswith("<"):
            t += float(w[1:])
            continue
        out.append(Word(w, t, t + word_s, 0.9))
        t += word_s + gap_s
    return out


def word_hits(text: str, **kw) -> list[CueHit]:
    return WordCueDetector().update(words(text, **kw), final=True)


def cues(hits: list[CueHit], name: str | None = None) -> list[CueHit]:
    return [h for h in hits if name is None or h.cue == name]


def details(hits: list[CueHit], name: str) -> list[str]:
    return [h.detail for h in hits if h.cue == name]


def harmonic(
    f0: float | np.ndarray, seconds: float, level_db: float = -26.0, n_harm: int = 6
) -> np.ndarray:
    """A voiced-like tone: harmonics with 1/k amplitudes at RMS ``level_db`` dBFS."""
    n = int(round(seconds * SR))
    f = np.broadcast_to(np.asarray(f0, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, n_harm + 1))
    x *= 10 ** (level_db / 20) / np.sqrt(np.mean(x**2))
    return x.astype(np.float32)


def run_voice(
    audio: np.ndarray,
    ws: list[Word] = (),
    use_vad: bool = True,
    commit_lag_s: float = 1.0,
) -> tuple[list[VoiceFeatures | None], list[CueHit], ProsodyTracker]:
    """Feed audio hop by hop as a session would: VAD, prosody (+ words once committed), cues."""
    vad = VadTimeline() if use_vad else None
    tracker, det = ProsodyTracker(), VoiceCueDetector()
    feats: list[VoiceFeatures | None] = []
    hits: list[CueHit] = []
    k = 0
    for i in range(0, len(audio), HOP):
        x = audio[i : i + HOP]
        if vad is not None:
            vad.push(x)
        t = (i + len(x)) / SR
        new = []
        while k < len(ws) and ws[k].t1 + commit_lag_s <= t:
            new.append(ws[k])
            k += 1
        f = tracker.update(x, new, vad, words_until=t - commit_lag_s)
        feats.append(f)
        hits.extend(det.update(t, f, vad))
    return feats, hits, tracker


def spoken(feats: list[VoiceFeatures | None]) -> list[VoiceFeatures]:
    """The vectors of ticks with speech now."""
    return [f for f in feats if f is not None and f.speaking]


def assert_silent(f: VoiceFeatures | None) -> None:
    """A tick without speech: speech entries masked (NaN, mask 0, 0 in the vector), no rate."""
    assert f is not None and not f.speaking and f.rate_span is None
    m, v = f.mask(), f.vector()
    for n in SPEECH_ENTRIES:
        i = FEATURE_NAMES.index(n)
        assert np.isnan(f.get(n)) and m[i] == 0.0 and v[i] == 0.0, n
    for n in ("speech_fraction", "pause_s", "silence_s"):
        assert m[FEATURE_NAMES.index(n)] == 1.0, n


def pause_hits(
    segs: list[tuple[float, float]],
    until: float,
    lost: tuple[float, float] | None = None,
    tracker: ProsodyTracker | None = None,
) -> list[CueHit]:
    """Long-pause cues of a voiced tone during ``segs`` (silence elsewhere), through the
    session's real VAD timeline, ticked every 0.1 s as a session does. The 0.1 s hops
    inside ``lost`` never arrive: they reach the VAD as a gap (`push_silence`) and the
    ``tracker`` (if any) as the ring's silence, as in `Session.push_audio`."""
    audio = np.zeros(int(round(until * SR)), dtype=np.float32)
    for s, e in segs:
        i0, i1 = int(round(s * SR)), int(round(e * SR))
        audio[i0:i1] = harmonic(140.0, (i1 - i0) / SR)
    vad, det, out = VadTimeline(), VoiceCueDetector(), []
    for k in range(int(round(until * 10))):
        x = audio[k * HOP : (k + 1) * HOP]
        if lost is not None and lost[0] <= k / 10 < lost[1] - 1e-9:
            vad.push_silence(len(x))
            x = np.zeros_like(x)
        else:
            vad.push(x)
        f = tracker.update(x, vad=vad) if tracker is not None else None
        out.extend(det.update((k + 1) / 10, f, vad))
    return out


@pytest.fixture(scope="module")
def whisper():
    return load_whisper()  # bundled by a required dependency: a failure here is a bug


def transcribe(model, audio: np.ndarray, prompt: str | None = None) -> list[Word]:
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        word_timestamps=True,
        condition_on_previous_text=False,
        initial_prompt=prompt,
    )
    return [Word(w.word, w.start, w.end, w.probability) for s in segments for w in s.words]


# ------------------------------------------------------------------------------ word cues


def test_cue_hit_validates_and_maps_to_the_cue_event() -> None:
    h = CueHit("hedge", 1.23456, 2.0, 0.5, "text", "maybe")
    assert h.to_event() == {
        "t0": 1.235,
        "t1": 2.0,
        "cue": "hedge",
        "modality": "text",
        "strength": 0.5,
        "detail": "maybe",
    }
    with pytest.raises(ValueError):
        CueHit("hedge", 1.0, 0.5, 0.5, "text")
    with pytest.raises(ValueError):
        CueHit("hedge", 0.0, 0.5, 1.5, "text")


def test_filler_sounds_with_word_times() -> None:
    ws = words("Um, I think, uh, it's fine. Ummm okay. Hmm.")
    hits = WordCueDetector().update(ws, final=True)
    fs = cues(hits, "filler_sound")
    assert [h.detail for h in fs] == ["um", "uh", "ummm", "hmm"]
    assert (fs[0].t0, fs[0].t1) == (ws[0].t0, ws[0].t1)
    assert (fs[1].t0, fs[1].t1) == (ws[3].t0, ws[3].t1)
    assert all(h.modality == "text" and 0.5 <= h.strength <= 1.0 for h in fs)
    long_um = WordCueDetector().update([Word("Um", 0.0, 1.2, 0.9)], final=True)
    assert long_um[0].strength == 1.0
    assert not cues(word_hits("Uh-huh, yes. Mm-hmm."), "filler_sound")  # backchannels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Well, I don't eat much.", ["well"]),
        ("It was, like, really hard.", ["like"]),
        ("Like, I never have time.", ["like"]),
        ("You know, it is hard.", ["you know"]),
        ("It's hard, you know.", ["you know"]),
        ("I mean, it is fine.", ["i mean"]),
        ("So, uh, I go running.", ["so"]),
        ("Basically, I walk.", ["basically"]),
    ],
)
def test_filler_words(text: str, expected: list[str]) -> None:
    assert details(word_hits(text), "filler_word") == expected


@pytest.mark.parametrize(
    "text",
    [
        "I like pizza.",
        "I would like to stop.",
        "I feel like it.",
        "I'm doing well, thanks.",
        "I did that as well.",
        "Do you know him?",
        "If you know what I mean.",
        "I sleep so much.",
        "I went there so I could rest.",
    ],
)
def test_not_filler_words(text: str) -> None:
    assert not cues(word_hits(text), "filler_word")


@pytest.mark.parametrize(
    ("text", "expected", "strength"),
    [
        ("Maybe I will go.", ["maybe"], 0.5),
        ("I'll probably stop.", ["probably"], 0.5),
        ("It's kind of hard.", ["kind of"], 0.4),
        ("I guess I could.", ["i guess"], 0.5),
        ("I think so.", ["i think"], 0.4),
        ("I'm not sure.", ["i'm not sure"], 0.7),  # longest match: not also "not sure"
        ("Not sure, I don't know.", ["not sure", "i don't know"], 0.7),
        ("I haven't made up my mind.", ["made up my mind"], 0.7),
    ],
)
def test_hedges(text: str, expected: list[str], strength: float) -> None:
    hits = cues(word_hits(text), "hedge")
    assert [h.detail for h in hits] == expected
    assert hits[0].strength == strength


@pytest.mark.parametrize(
    "text", ["What kind of food?", "I made up my mind.", "I think about it daily.", "It works."]
)
def test_not_hedges(text: str) -> None:
    assert not cues(word_hits(text), "hedge")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("I I want to go.", "i i"),
        ("I want to to go.", "to to"),
        ("I- I want to go.", "i i"),
        ("I want I want to quit.", "i want i want"),
        ("I want- I need to stop.", "restart: i want i"),
        ("I want to, I need to stop.", "restart: i want to i"),
        ("I want, um, I need to stop.", "restart: i want um i"),
        ("I was tired, I mean, exhausted.", "i mean"),
        ("On Monday, or rather Tuesday.", "or rather"),
        ("I went on Mon- Tuesday.", "cut: mon"),
        ("I was going to-", "cut: to"),  # trailing off at the end of the utterance
        ("the the the the dog", "the the the the"),  # a run: one hit over all of it
        ("I I I I I I I I want it.", "i i i ... (8 times)"),
    ],
)
def test_corrections_and_repetitions(text: str, detail: str) -> None:
    hits = cues(word_hits(text), "correction_repetition")
    assert [h.detail for h in hits] == [detail]


def test_restart_needs_a_break_and_counts_once() -> None:
    ws = words("I want <0.4 I need to stop")
    assert details(WordCueDetector().update(ws, final=True), "correction_repetition") == [
        "restart: i want i"
    ]
    assert len(cues(word_hits("I I I I want it."), "correction_repetition")) == 1
    (run,) = cues(word_hits("the the the the the the dog"), "correction_repetition")
    assert run.t0 == 0.0 and run.t1 == pytest.approx(5 * 0.35 + 0.3)  # the whole stutter


@pytest.mark.parametrize(
    "text",
    [
        "I think I will go.",
        "I know I can do it.",
        "I said that I would.",
        "I know that that is true.",
        "It was very very good.",
        "I want it <1.5 I want it.",  # a new utterance, not a repetition
        "It takes like 10, 15 minutes.",  # numbers all read "0": not "0 0"
        "In 2019 2020 I was busy.",
    ],
)
def test_not_corrections(text: str) -> None:
    assert not cues(word_hits(text), "correction_repetition")


def test_but_excuse_strengths() -> None:
    strong = cues(word_hits("I want to quit smoking but I can't."), "but_excuse")
    assert len(strong) == 1 and strong[0].strength == pytest.approx(0.8)
    assert "BUT" in strong[0].detail
    weak = cues(word_hits("I went there but it rained."), "but_excuse")
    assert len(weak) == 1 and weak[0].strength == pytest.approx(0.3)
    for text in ("It's good, though.", "Although I try.", "Except on Sundays."):
        assert len(cues(word_hits(text), "but_excuse")) == 1, text
    because = cues(word_hits("I should walk more because I sit a lot."), "but_excuse")
    assert len(because) == 1 and because[0].strength >= 0.6


@pytest.mark.parametrize(
    "text",
    [
        "I love butter.",
        "Nothing but trouble.",
        "I haven't started yet.",
        "I still run.",
        "I run because it is fun.",
    ],
)
def test_not_but_excuse(text: str) -> None:
    assert not cues(word_hits(text), "but_excuse")


def test_a_long_session_keeps_a_bounded_word_window_and_the_same_cues() -> None:
    """5,000 words fed a sentence at a time: the detector keeps only the words its rules
    can still look back at (<= 64 + CONTEXT_BEFORE + 8 decided ones plus the undecided
    tail), and finds the same cues, at the same times, as on each sentence alone."""
    from models.word_cues import CONTEXT_BEFORE, CONTRAST_LOOKAHEAD

    text = "Well, um, I want I want to quit but I don't know, I mean, it's kind of hard."
    per_sentence = WordCueDetector().update(words(text), final=True)
    step = len(words(text)) * 0.35 + 2.0
    det = WordCueDetector()
    hits: list[CueHit] = []
    longest = 0
    for k in range(5000 // len(words(text))):
        hits += det.update(words(text, t0=k * step), final=True)
        longest = max(longest, len(det._toks))
    hits += det.flush()
    assert longest <= 64 + CONTEXT_BEFORE + 8 + CONTRAST_LOOKAHEAD + len(words(text))
    n = 5000 // len(words(text))
    expected = [
        (h.cue, round(h.t0 + k * step, 6), round(h.t1 + k * step, 6), h.detail, h.strength)
        for k in range(n)
        for h in per_sentence
    ]
    got = [(h.cue, round(h.t0, 6), round(h.t1, 6), h.detail, h.strength) for h in hits]
    assert [g[:4] for g in got] == [e[:4] for e in expected]
    # strengths from durations: the same up to float rounding of the later times
    assert np.allclose([g[4] for g in got], [e[4] for e in expected], atol=0.002)


def test_incremental_feeding_matches_batch_and_waits_for_context() -> None:
    text = "Well, um, I want I want to quit but I don't know, I mean, it's kind of hard."
    ws = words(text)
    batch = WordCueDetector().update(ws, final=True)
    det = WordCueDetector()
    inc: list[CueHit] = []
    for w in ws:
        inc.extend(det.update([w]))
    inc.extend(det.flush())
    assert inc == batch
    assert {h.cue for h in batch} == {
        "filler_word",
        "filler_sound",
        "correction_repetition",
        "but_excuse",
        "hedge",
    }
    # phrases of up to 4 words are found when their words arrive one by one
    for text in ("I can't make up my mind.", "I want, I mean, I need it."):
        ws = words(text)
        det = WordCueDetector()
        inc = [h for w in ws for h in det.update([w])] + det.flush()
        assert inc == WordCueDetector().update(ws, final=True) and len(inc) == 1, text
    # "but" waits for the words after it (the excuse), then decides
    det = WordCueDetector()
    assert not det.update(words("I want to quit but"))
    late = det.update(words("I can't", t0=2.0))
    assert cues(late, "but_excuse") == []  # still waiting for the 4 words after "but"
    assert cues(det.update([], final=True), "but_excuse")[0].strength == pytest.approx(0.8)


def test_syllable_counts() -> None:
    assert [count_syllables(w) for w in ("I", "time", "little", "vegetables", "um", "7")] == [
        1,
        1,
        2,
        4,
        1,
        1,
    ]


# ------------------------------------------------------------------------------ prosody


def test_harmonic_tone_pitch_and_vector() -> None:
    feats, hits, tracker = run_voice(harmonic(150.0, 5.0), use_vad=False)
    f0 = [semitones_to_hz(f.get("f0_st")) for f in spoken(feats[10:])]
    assert len(f0) >= 35
    assert np.median(f0) == pytest.approx(150.0, abs=5.0)
    last = feats[-1]
    assert last is not None and last.speaking and last.t == pytest.approx(5.0)
    assert last.get("voicing_ratio") > 0.95
    assert last.get("f0_std_st") < 0.2
    assert last.get("energy_db") == pytest.approx(-26.0, abs=0.5)
    v, m = last.vector(), last.mask()
    assert v.dtype == np.float32 and m.dtype == np.float32
    assert v.shape == m.shape == (N_FEATURES,) == (len(FEATURE_NAMES),)
    assert m[FEATURE_NAMES.index("energy_z")] == 1.0  # baseline warmed up after 3 s
    assert m[FEATURE_NAMES.index("word_rate")] == 0.0  # no words: masked, and 0 in the vector
    assert v[FEATURE_NAMES.index("word_rate")] == 0.0
    assert np.all(np.isfinite(v))
    # z-scores only after a few seconds of speech
    early = feats[5]
    assert early is not None and np.isnan(early.get("energy_z"))
    assert not hits


def test_pitch_at_the_edges_of_its_range() -> None:
    """Inside 60-400 Hz a steady tone reads its F0 to 0.1 %; outside it the frames are
    unvoiced, not extrapolated past the longest lag (55 Hz read ~50 Hz) nor an octave
    low (its double period: 450 Hz read 225 Hz)."""
    for f0, voiced in (
        (55.0, False),
        (62.0, True),
        (100.0, True),
        (390.0, True),
        (450.0, False),
        (600.0, False),
    ):
        x = harmonic(f0, 0.5, n_harm=3)
        frames = np.lib.stride_tricks.sliding_window_view(x, 640)[::160]
        _, hz, v = estimate_f0(frames)
        if voiced:
            assert v.all() and np.allclose(hz, f0, rtol=1e-3), (f0, np.nanmin(hz), np.nanmax(hz))
        else:
            assert not v.any() and np.isnan(hz).all(), (f0, np.nanmedian(hz))


def test_chirp_rising_pitch() -> None:
    f0 = np.linspace(100.0, 250.0, 4 * SR)
    feats, _, _ = run_voice(harmonic(f0, 4.0), use_vad=False)
    track = [semitones_to_hz(feats[i].get("f0_st")) for i in (9, 19, 29, 39)]
    assert all(b > a + 20 for a, b in zip(track, track[1:], strict=False)), track
    assert all(feats[i].get("f0_slope_st") > 1.0 for i in (19, 29, 39))
    # the median of the last 0.5 s trails the instantaneous F0 by ~0.25 s
    assert track[-1] == pytest.approx(100 + 150 * 3.75 / 4, rel=0.04)


def test_silence_is_masked_not_zero() -> None:
    assert ProsodyTracker().update(silence(0.02)) is None  # not one 40 ms frame yet
    audio = np.concatenate([silence(2.0), silence(2.0, noise_db=-70)])
    feats, hits, _ = run_voice(audio)
    for f in feats:
        assert_silent(f)  # the noise's onset makes a VAD blip, but no speech above the floor
    for f in feats[:20]:
        assert f.get("speech_fraction") == 0.0 and f.get("pause_s") == 0.0
        assert f.get("silence_s") == pytest.approx(f.t, abs=0.05)
        assert np.isnan(f.get("silence_z"))  # no speech yet: no pause of the speaker
    assert not hits
    # speech then digital silence: VAD hangover frames under the noise floor are not speech
    for use_vad in (False, True):
        audio = np.concatenate([harmonic(140.0, 2.0), silence(2.0)])
        feats, hits, _ = run_voice(audio, use_vad=use_vad)
        assert feats[15].speaking and np.isfinite(feats[15].get("energy_db"))
        for f in feats[25:]:
            assert_silent(f)
        silences = [f.get("silence_s") for f in feats[25:]]
        assert silences == sorted(silences) and silences[-1] > 1.5  # seen growing
    assert not hits


def test_hop_size_does_not_change_frames() -> None:
    audio = harmonic(np.linspace(120.0, 180.0, 2 * SR), 2.0)
    tracks = []
    for hop in (1600, 480, 2000):
        tr = ProsodyTracker()
        for i in range(0, len(audio), hop):
            tr.update(audio[i : i + hop])
        tracks.append(tr.frame_track())
    for other in tracks[1:]:
        for a, b in zip(tracks[0], other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------------------ voice cues


def test_volume_step_is_a_volume_change() -> None:
    audio = np.concatenate([harmonic(150.0, 5.0, level_db=-30.0), harmonic(150.0, 2.0, -18.0)])
    _, hits, _ = run_voice(audio, use_vad=False)
    vol = cues(hits, "volume_change")
    assert len(vol) == 1 and not cues(hits, "long_pause")
    assert vol[0].detail.startswith("louder")
    # reported at the 5th loud tick: 5 ticks at 10 Hz cover 0.5 s (the first covers t0 - 0.1..t0)
    assert 5.0 <= vol[0].t0 <= 5.5 and vol[0].t1 - vol[0].t0 == pytest.approx(0.4)
    assert vol[0].strength > 0.8
    assert "+12" in vol[0].detail or "+11" in vol[0].detail
    soft = run_voice(np.concatenate([harmonic(150.0, 5.0, -20.0), harmonic(150.0, 2.0, -32.0)]))
    assert [h.detail.split(",")[0] for h in cues(soft[1], "volume_change")] == ["softer"]


def test_long_pause_from_vad_timeline() -> None:
    hits = pause_hits([(0.0, 3.0), (4.8, 7.0), (7.6, 9.0)], until=15.0)
    assert len(hits) == 1  # 0.6 s between phrases is no hesitation
    h = hits[0]
    assert (h.cue, h.modality) == ("long_pause", "voice")
    # the pause starts when the VAD's hold-over ends (about 0.25 s late), ends on time
    assert 3.0 < h.t0 < 3.4 and h.t1 == pytest.approx(4.8, abs=0.06)
    assert h.strength == pytest.approx((h.t1 - h.t0 - 0.5) / 2.5, abs=1e-3)
    # reported once speech has resumed for 0.3 s, not before
    assert pause_hits([(0.0, 3.0), (4.8, 5.0)], until=5.0) == []
    # a click (one 30 ms VAD frame) does not split a pause
    blip = pause_hits([(0.0, 2.0), (3.0, 3.03), (5.0, 6.0)], until=6.0)
    assert len(blip) == 1 and 2.0 < blip[0].t0 < 2.4 and blip[0].t1 == pytest.approx(5.0, abs=0.06)
    # end of the answer (no speech after) and a turn-sized gap are not hesitations
    assert pause_hits([(0.0, 3.0)], until=12.0) == []
    assert pause_hits([(0.0, 3.0), (9.5, 11.0)], until=11.0) == []


def test_lost_audio_is_no_pause() -> None:
    """Audio that never arrived (lost packets: the session fills the gap with silence)
    inside speech is neither a long_pause cue nor a pause of the speaker's baseline; the
    same silence spoken is both. A pause is the silence heard: a lost packet inside one
    takes its length off, not the pause away (at 1 % packet loss half the long pauses
    had one)."""
    speech = [(0.0, 3.0), (4.5, 6.5)]
    spoken, missing = ProsodyTracker(), ProsodyTracker()
    hits = pause_hits(speech, until=6.5, tracker=spoken)
    assert [h.cue for h in hits] == ["long_pause"]
    assert spoken.baselines["pause"].weight == 1.0
    assert pause_hits(speech, until=6.5, lost=(3.0, 4.5), tracker=missing) == []
    assert missing.baselines["pause"].weight == 0.0
    # a packet or two lost inside a pause leave the pause, less what was lost
    dropped = ProsodyTracker()
    (h,) = pause_hits(speech, until=6.5, lost=(3.7, 3.8), tracker=dropped)
    assert h.cue == "long_pause" and h.detail == f"{h.t1 - h.t0 - 0.1:.2f} s"
    assert dropped.baselines["pause"].weight == 1.0
    # a pause that ended before the lost audio is still the speaker's
    before = pause_hits([(0.0, 2.0), (3.5, 5.0), (6.0, 7.0)], until=7.0, lost=(5.0, 6.0))
    assert [(h.cue, round(h.t1, 1)) for h in before] == [("long_pause", 3.5)]


def paced(rates: list[tuple[float, float]]) -> list[Word]:
    """One-syllable words at ``rate`` words/s until each ``until`` (media seconds)."""
    out, t = [], 0.2
    for rate, until in rates:
        while t < until:
            out.append(Word("ba", t, t + 0.8 / rate, 0.9))
            t += 1.0 / rate
    return out


def test_paced_words_hurried_and_slowed() -> None:
    tone = harmonic(130.0, 26.0, -24.0)
    _, hits, _ = run_voice(tone, paced([(2.5, 16.0), (4.5, 26.0)]), use_vad=False)
    assert [h.cue for h in hits] == ["hurried_speech"]
    # the words of the rate window that confirmed it: from the last slow word, >= 2 s fast
    assert 15.0 <= hits[0].t0 <= 16.0 and hits[0].t1 >= 18.0
    _, hits, _ = run_voice(tone, paced([(2.5, 16.0), (1.2, 26.0)]), use_vad=False)
    assert [h.cue for h in hits] == ["slowed_speech"]
    _, hits, _ = run_voice(tone, paced([(2.5, 26.0)]), use_vad=False)
    assert hits == []


def test_rate_cue_times_are_the_speech_not_the_commit() -> None:
    """Words committed 0.5, 2.5 or 4 s after they end give the same hurried_speech hit, at the
    times of the fast speech (the rate window's words), not of the tick that saw them."""
    tone = harmonic(130.0, 30.0, -24.0)
    words = paced([(2.5, 20.0), (5.0, 30.0)])
    spans = []
    # 4 s: longer than RATE_STALE_S, which counts from the ASR's horizon, not the audio
    for lag in (0.5, 2.5, 4.0):
        _, hits, _ = run_voice(tone, words, use_vad=False, commit_lag_s=lag)
        assert [h.cue for h in hits] == ["hurried_speech"], lag
        spans.append((hits[0].t0, hits[0].t1, hits[0].strength))
    assert spans[1] == pytest.approx(spans[0]) and spans[2] == pytest.approx(spans[0]), spans
    t0, t1, _ = spans[0]
    assert 19.0 <= t0 <= 20.0 and 22.0 <= t1 <= 24.0  # over the fast speech heard by then
    assert any(w.t0 == t0 for w in words) and any(w.t1 == t1 for w in words)


def test_silent_ticks_leave_the_volume_and_rate_cues_unchanged() -> None:
    """Ticks without speech bring a vector (``speaking`` false) where they used to bring
    None; the rate and volume cues treat both alike. Phrases split by 1 s pauses: the rate
    episode bridges them (hurried speech from 12 s); loud 0.2 s bursts split by silences
    are no volume change (each silence ends the episode), a loud second is one."""
    parts = []
    for _ in range(8):
        parts += [harmonic(130.0, 2.4, -30.0), silence(1.0)]
    for _ in range(3):
        parts += [harmonic(130.0, 0.2, -18.0), silence(0.8)]
    parts += [harmonic(130.0, 1.0, -18.0), silence(0.5)]
    audio = np.concatenate(parts)
    ws = paced([(2.5, 12.0), (4.5, 24.0)])
    feats, hits, _ = run_voice(audio, ws)
    assert sum(not f.speaking for f in feats) >= 40
    assert [h.cue for h in hits] == ["hurried_speech", "volume_change"], hits
    assert 11.0 < hits[0].t0 < 13.0
    loud_from = sum(len(p) for p in parts[:-2]) / SR
    assert loud_from < hits[1].t0 < hits[1].t1 < loud_from + 1.0
    # The same ticks with None for every silent vector (the interface before) give the
    # same hits.
    vad, det, before = VadTimeline(), VoiceCueDetector(), []
    for k, f in enumerate(feats):
        vad.push(audio[k * HOP : (k + 1) * HOP])
        before += det.update(f.t, f if f.speaking else None, vad)
    assert before == hits


# ------------------------------------------------------------------------------ real speech

BASELINE_TEXT = (
    "The weather was mild this morning, so we walked to the market and bought bread, "
    "apples and a few vegetables for dinner. After lunch we read the paper and talked "
    "about the garden."
)
SLOW_TEXT = (
    "I suppose I could try to walk a little more each day, and maybe cook at home on "
    "the weekend as well."
)


def test_espeak_slowed_speech_after_baseline(whisper) -> None:
    fast = espeak_speech(BASELINE_TEXT, rate_wpm=150)
    slow = espeak_speech(SLOW_TEXT, rate_wpm=80)
    audio = np.concatenate([fast, slow])
    ws = transcribe(whisper, audio)
    assert len(ws) >= 40
    feats, hits, _ = run_voice(audio, ws)
    names = [h.cue for h in hits]
    assert names == ["slowed_speech"], hits
    onset = len(fast) / SR
    assert onset < hits[0].t0 < onset + 8.0
    f = feats[int(hits[0].t1 * 10) - 1]
    assert f is not None and f.speaking and f.get("syl_rate_z") <= -1.5


def test_espeak_slowed_speech_times_do_not_depend_on_the_commit_lag(whisper) -> None:
    """Real speech: the slowed_speech hit lies in the slow part, at the same media times
    whether the ASR commits words 0.5 or 2.5 s after they end."""
    fast = espeak_speech(BASELINE_TEXT, rate_wpm=150)
    slow = espeak_speech(SLOW_TEXT, rate_wpm=80)
    audio = np.concatenate([fast, slow])
    ws = transcribe(whisper, audio)
    times = []
    for lag in (0.5, 2.5):
        _, hits, _ = run_voice(audio, ws, commit_lag_s=lag)
        assert [h.cue for h in hits] == ["slowed_speech"], (lag, hits)
        times.append((hits[0].t0, hits[0].t1))
    assert times[0] == times[1]
    t0, t1 = times[0]
    assert len(fast) / SR - 0.5 < t0 < t1 <= ws[-1].t1


def test_espeak_pause_inside_speech_is_a_long_pause() -> None:
    a = espeak_speech("I would like to stop smoking.", rate_wpm=150)
    b = espeak_speech("Maybe next month.", rate_wpm=150)
    audio = np.concatenate([a, silence(1.6), b, silence(3.0)])
    feats, hits, _ = run_voice(audio)
    pauses = cues(hits, "long_pause")
    assert len(pauses) == 1, hits
    gap = pauses[0].t1 - pauses[0].t0
    assert 1.0 <= gap <= 2.2
    assert len(a) / SR - 0.5 < pauses[0].t0 < pauses[0].t1 < len(a) / SR + 1.6 + 0.5
    # The features see the pause too: the silence grows past 1 s while speech entries are
    # masked, and once speech resumes pause_s is that gap.
    during = [f for f in feats if pauses[0].t0 < f.t <= pauses[0].t1]
    assert max(f.get("silence_s") for f in during) > 1.0
    for f in during:
        if f.get("silence_s") > 0.6:
            assert_silent(f)
    after = [f for f in feats if pauses[0].t1 + 0.3 < f.t < pauses[0].t1 + 1.0]
    assert after and all(f.get("pause_s") == pytest.approx(gap, abs=0.06) for f in after)


def test_pause_baseline_gives_pause_and_silence_z_scores() -> None:
    """Phrases of a voiced tone with 0.6-0.7 s pauses, then a 2.5 s one, through the real
    VAD: the pause z-scores exist once the speaker has made a few pauses, the usual pauses
    score near 0 and the long one far above; while it lasts, the silence's z-score grows."""
    parts = []
    for k in range(8):
        parts += [harmonic(140.0 + 5 * k, 1.5), silence(0.6 + 0.05 * (k % 3))]
    parts += [harmonic(140.0, 1.5), silence(2.5), harmonic(150.0, 1.5)]
    parts += [silence(0.6), harmonic(145.0, 1.5)]
    ends = np.cumsum([len(p) for p in parts]) / SR
    resumes = ends[1:-1:2]  # where each phrase after a pause starts
    long_from = ends[-5]
    feats, hits, tracker = run_voice(np.concatenate(parts))
    assert [h.cue for h in hits] == ["long_pause"]
    assert tracker.baselines["pause"].weight == 10  # one update per pause, not per second
    # The pause just ended, 0.3 s into each phrase after it: its length and z-score.
    after = [feats[int(round((t + 0.3) * 10)) - 1] for t in resumes]
    lengths = [f.get("pause_s") for f in after]
    zs = [f.get("pause_z") for f in after]
    assert all(0.25 < p < 0.6 for i, p in enumerate(lengths) if i != 8), lengths
    assert 1.9 < lengths[8] < 2.6  # the long pause (the VAD's hold-over shortens them all)
    # NaN until PAUSE_WARMUP_N pauses are in the baseline, then a z-score per pause.
    assert all(np.isnan(z) for z in zs[:PAUSE_WARMUP_N]), zs
    assert all(np.isfinite(z) for z in zs[PAUSE_WARMUP_N:]), zs
    usual = zs[PAUSE_WARMUP_N:8] + zs[9:]
    assert max(abs(z) for z in usual) < 2.0, zs
    assert zs[8] > 4.0 and zs[8] > max(usual) + 3.0, zs
    # silence_z during the long pause: finite, growing with the silence, speech masked
    during = [f for f in feats if long_from + 0.6 < f.t < long_from + 2.2]
    for f in during:
        assert_silent(f)
    silence_zs = [f.get("silence_z") for f in during]
    assert np.all(np.isfinite(silence_zs)) and silence_zs == sorted(silence_zs)
    assert during[-1].get("silence_s") > 1.0 and silence_zs[-1] > 4.0
    assert silence_zs[0] < silence_zs[-1] - 2.0


def test_librivox_pitch_and_no_cues_in_steady_reading(whisper) -> None:
    audio, _ = librivox_speech()
    ws = transcribe(whisper, audio)
    feats, hits, tracker = run_voice(audio, ws)
    assert hits == []  # steady read speech: no pauses >= 1 s, no tempo or volume episodes
    f0 = np.array([semitones_to_hz(f.get("f0_st")) for f in spoken(feats)])
    f0 = f0[np.isfinite(f0)]
    assert 85.0 <= np.median(f0) <= 110.0  # the male reader: ~96 Hz
    rates = [f.get("word_rate") for f in spoken(feats) if np.isfinite(f.get("word_rate"))]
    assert 2.0 <= np.median(rates) <= 4.0  # read speech: ~3 words/s
    voicing = [f.get("voicing_ratio") for f in spoken(feats)]
    assert 0.4 <= np.nanmedian(voicing) <= 0.9


def test_espeak_disfluent_sentence_word_cues(whisper) -> None:
    audio = espeak_speech("I want to, um, start running, uh, but I don't know.", rate_wpm=140)
    ws = transcribe(whisper, audio, prompt=FILLER_PROMPT)
    det = WordCueDetector()
    hits = det.update(ws, final=True)
    assert {h.cue for h in hits} == {"filler_sound", "but_excuse", "hedge"}, (ws, hits)
    assert details(hits, "filler_sound") == ["um", "uh"]  # kept by the disfluent prompt
    but = cues(hits, "but_excuse")[0]
    assert but.strength >= 0.6  # "I want to ... but I don't know"
    assert all(ws[0].t0 <= h.t0 <= h.t1 <= ws[-1].t1 for h in hits)
