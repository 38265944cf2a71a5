"""The fusion TCN: causal step == full forward, torch twin == numpy runtime, lite honesty."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.face import FEATURE_NAMES as FACE_NAMES
from models.face import FaceFeatures
from models.fusion import LAYOUT, MODALITIES, TEXT_FEATURES, fusion_input
from models.prosody import FEATURE_NAMES as VOICE_NAMES
from models.prosody import VoiceFeatures
from models.tcn import TCN_STEM, WEIGHTS_DIR, FusionTCN, TCNConfig
from stream.buffers import AudioRing
from stream.vad import VadTimeline


def _random_tcn(rng: np.random.Generator, members: int = 2, kernel: int = 3) -> FusionTCN:
    """A TCN with every weight random and non-zero (all modalities active)."""
    cfg = TCNConfig(
        proj_dim=4,
        channels=6,
        kernel=kernel,
        dilations=(1, 2, 4),
        members=members,
        active=MODALITIES,
    )
    a: dict[str, np.ndarray] = {
        "in_mean": rng.normal(size=LAYOUT.dim),
        "in_std": rng.uniform(0.5, 2.0, LAYOUT.dim),
    }
    dims = {"text": LAYOUT.text_dim, "face": LAYOUT.face_dim, "voice": LAYOUT.voice_dim}
    for m in range(members):
        p = f"m{m}."
        for k, d in dims.items():
            a[f"{p}proj_{k}_w"] = rng.normal(size=(cfg.proj_dim, d)) * 0.3
            a[f"{p}proj_{k}_b"] = rng.normal(size=cfg.proj_dim) * 0.1
        c_in = cfg.in_dim
        for i, _ in enumerate(cfg.dilations):
            b = f"{p}block{i}."
            a[f"{b}conv1_w"] = rng.normal(size=(cfg.channels, c_in, kernel)) / np.sqrt(
                c_in * kernel
            )
            a[f"{b}conv1_b"] = rng.normal(size=cfg.channels) * 0.1
            a[f"{b}conv2_w"] = rng.normal(size=(cfg.channels, cfg.channels, kernel)) / 6
            a[f"{b}conv2_b"] = rng.normal(size=cfg.channels) * 0.1
            if c_in != cfg.channels:
                a[f"{b}res_w"] = rng.normal(size=(cfg.channels, c_in)) / np.sqrt(c_in)
                a[f"{b}res_b"] = rng.normal(size=cfg.channels) * 0.1
            c_in = cfg.channels
        a[f"{p}head_w"] = rng.normal(size=cfg.channels) * 0.3
        a[f"{p}head_b"] = np.array(rng.normal())
        a[f"{p}skip"] = np.array(0.3)
    return FusionTCN(cfg, a)


def _random_rows(rng: np.random.Generator, T: int) -> np.ndarray:
    """Fusion rows with random values and random masks (face, voice, usable text)."""
    x = rng.normal(size=(T, LAYOUT.dim))
    x[:, TEXT_FEATURES.index("usable")] = rng.random(T) < 0.7
    x[:, LAYOUT.face_mask] = rng.random(T) < 0.5
    x[:, LAYOUT.face] *= x[:, LAYOUT.face_mask : LAYOUT.face_mask + 1]
    vm = (rng.random((T, LAYOUT.voice_dim)) < 0.6) * (rng.random((T, 1)) < 0.7)
    x[:, LAYOUT.voice_mask] = vm
    x[:, LAYOUT.voice] *= vm
    return x


@pytest.mark.parametrize("T", [1, 2, 5, 17, 64, 301])
@pytest.mark.parametrize("kernel", [3, 5])
def test_step_equals_full_forward(T, kernel):
    rng = np.random.default_rng(T * 10 + kernel)
    tcn = _random_tcn(rng, kernel=kernel)
    x = _random_rows(rng, T)
    full = tcn.forward(x)
    stepper = tcn.fresh()
    steps = np.array([stepper.step(row) for row in x])
    assert full.shape == (T,)
    assert np.max(np.abs(full - steps)) <= 1e-5
    # p depends on the inputs (the test is not vacuous) and lies in (0, 1).
    assert np.all((full > 0) & (full < 1))
    if T > 1:
        assert np.std(full) > 1e-4


def test_state_is_per_instance_and_resets():
    rng = np.random.default_rng(1)
    tcn = _random_tcn(rng)
    x = _random_rows(rng, 40)
    a, b = tcn.fresh(), tcn.fresh()
    pa = [a.step(r) for r in x[:20]]
    pb = [b.step(r) for r in x[:20]]
    assert pa == pb
    a.reset()
    assert [a.step(r) for r in x[:20]] == pa
    # The causal state matters: the same row gives a different p after another history.
    c = tcn.fresh()
    c.step(x[5])
    assert c.step(x[0]) != tcn.fresh().step(x[0])


def test_a_silence_is_no_voice_for_the_conflict_features():
    """During a silence the voice vector holds only its pause entries: the voice is not
    "present" for the conflict features then (DESIGN: a conflict needs both sides), while
    speech makes it present. Checked on the numpy runtime and its torch twin's inputs."""
    from models.prosody import PAUSE_FEATURES

    rng = np.random.default_rng(5)
    tcn = _random_tcn(rng, members=1)
    text = np.zeros(len(TEXT_FEATURES))
    text[TEXT_FEATURES.index("usable")] = 1.0
    silent = np.full(len(VOICE_NAMES), np.nan)
    for name in PAUSE_FEATURES:
        silent[VOICE_NAMES.index(name)] = 1.5
    speaking = silent.copy()
    speaking[VOICE_NAMES.index("energy_db")] = -20.0
    face = FaceFeatures.from_values(0.0, smile_z=2.0)
    rows = np.stack(
        [
            fusion_input(text, face, VoiceFeatures(0.0, v.astype(np.float32), None, sp), MODALITIES)
            for v, sp in ((silent, False), (speaking, True))
        ]
    )
    assert rows[0, LAYOUT.voice_mask].sum() == len(PAUSE_FEATURES)  # the pauses are there
    pairs = tcn._expand(rows, tcn.normalize(rows), tcn.members[0])[
        :, -3:
    ]  # face-text, voice-text, face-voice
    assert pairs.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def test_torch_twin_matches_numpy_runtime():
    import torch  # a project dependency: missing, the test must fail, not skip

    from models.train_tcn import TorchFusionTCN, to_runtime

    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    cfg = TCNConfig(proj_dim=4, channels=8, kernel=3, dilations=(1, 2, 4, 8), active=MODALITIES)
    net = TorchFusionTCN(cfg, rng.normal(size=LAYOUT.dim), rng.uniform(0.5, 2, LAYOUT.dim), 0.0)
    with torch.no_grad():  # a non-zero head so the convolutions matter
        net.head.weight.normal_()
    net.eval()
    x = _random_rows(rng, 150)
    with torch.no_grad():
        z = net(torch.as_tensor(x[None], dtype=torch.float32))[0].double().numpy()
    runtime = to_runtime([net])
    p_torch = 1 / (1 + np.exp(-z))
    # to_runtime rounds weights to float32 (the file's precision); torch runs in float32.
    assert np.max(np.abs(runtime.forward(x) - p_torch)) <= 1e-5
    stepper = runtime.fresh()
    assert np.max(np.abs(np.array([stepper.step(r) for r in x]) - p_torch)) <= 1e-5


def test_lite_config_freezes_untrained_inputs():
    from models.train_tcn import TorchFusionTCN

    cfg = TCNConfig()
    frozen = TorchFusionTCN.frozen_inputs(cfg, ("since_word",))
    assert frozen[LAYOUT.face].all() and frozen[LAYOUT.face_mask]
    assert frozen[LAYOUT.voice].all() and frozen[LAYOUT.voice_mask].all()
    assert frozen[LAYOUT.dim :].all()  # conflicts and pair presences
    assert frozen[TEXT_FEATURES.index("since_word")]
    assert not frozen[TEXT_FEATURES.index("z_p")]


# ------------------------------------------------------------------------------- shipped weights


@pytest.fixture(scope="module")
def lite() -> FusionTCN:
    return FusionTCN.load()


def test_shipped_weights_load_without_pickle(lite):
    with np.load(WEIGHTS_DIR / f"{TCN_STEM}.npz", allow_pickle=False) as z:
        assert all(z[k].dtype == np.float32 for k in z.files)
    meta = json.loads((WEIGHTS_DIR / f"{TCN_STEM}.json").read_text())
    assert meta["config"]["active"] == ["text"]
    assert meta["decision"]["source"] in ("text", "tcn")
    assert meta["decision"]["method"] in ("last", "mean", "max_ma1s")
    assert 0 < meta["decision"]["threshold"] < 1 and 0 < meta["decision"]["threshold_context"] < 1
    assert "seed" in meta and "data_sha256" in meta
    assert lite.active == ("text",)


def test_a_published_tcn_fixes_the_tick_rate(lite):
    """The TCN's dilations count ticks: when its p is the published one (a retrain may
    choose it), sessions must tick at the rate it was trained at; the text model's p does
    not depend on the rate. (It was served at any --analysis-hz: final p moved by 0.10.)"""
    from models.profile import Models

    meta = lite.metadata
    published = FusionTCN(
        lite.config, lite.arrays, {**meta, "decision": {**meta["decision"], "source": "tcn"}}
    )
    text = FusionTCN(
        lite.config, lite.arrays, {**meta, "decision": {**meta["decision"], "source": "text"}}
    )
    assert Models("lite", text=None, tcn=published).analysis_hz == meta["hz"] == 10.0
    assert Models("lite", text=None, tcn=text).analysis_hz is None


def test_shipped_weights_carry_nothing_for_face_voice_conflict(lite):
    from models.train_tcn import TorchFusionTCN

    frozen = TorchFusionTCN.frozen_inputs(lite.config, lite.metadata["train"]["drop_features"])
    for m in range(lite.config.members):
        a = lite.arrays
        for k in MODALITIES:  # no conflict pair is trained in lite: projections are zero
            assert not a[f"m{m}.proj_{k}_w"].any() and not a[f"m{m}.proj_{k}_b"].any()
        assert not a[f"m{m}.block0.conv1_w"][:, frozen, :].any()
        if f"m{m}.block0.res_w" in a:
            assert not a[f"m{m}.block0.res_w"][:, frozen].any()
        assert a[f"m{m}.block0.conv1_w"][:, ~frozen, :].any()  # the text block is trained


def _face(t: float, rng: np.random.Generator) -> FaceFeatures:
    names = [n for n in FACE_NAMES if not n.startswith("p_")]
    return FaceFeatures.from_values(t, **{n: float(rng.normal() * 5) for n in names})


def _voice(t: float, rng: np.random.Generator) -> VoiceFeatures:
    v = rng.normal(size=len(VOICE_NAMES)).astype(np.float32) * 3
    v[rng.random(len(VOICE_NAMES)) < 0.2] = np.nan
    return VoiceFeatures(t, v)


def test_lite_p_does_not_depend_on_face_or_voice(lite):
    """Even fed face/voice rows (masks on), the lite TCN gives the same p as without them."""
    rng = np.random.default_rng(5)
    from models.fusion import TextStream
    from models.text_ah import load as load_text
    from models.whisper import Word

    ts = TextStream(load_text())
    words = [
        Word(w, 0.4 * i, 0.4 * i + 0.3, 1.0)
        for i, w in enumerate(
            "well i guess i should exercise more but honestly i never find the time".split()
        )
    ]
    plain, fed, shipped = lite.fresh(), lite.fresh(), lite.fresh()
    for k in range(60):
        t = 0.1 * (k + 1)
        text = ts.features(t, [w for w in words if w.t1 + 0.5 <= t])
        face, voice = _face(t, rng), _voice(t, rng)
        x_plain = fusion_input(text, None, None)
        x_fed = fusion_input(text, face, voice, active=MODALITIES)
        assert x_fed[LAYOUT.face_mask] == 1 and x_fed[LAYOUT.voice_mask].any()
        x_lite = fusion_input(text, face, voice, active=lite.active)
        assert np.array_equal(x_lite, x_plain)
        p = plain.step(x_plain)
        assert fed.step(x_fed) == p
        assert shipped.step(x_lite) == p


def test_fillers_move_neither_the_text_model_nor_the_tcn(lite):
    """The live Whisper writes "um" and "uh", which the training transcripts almost never
    have; the text model drops them, and so do the TCN's text inputs (its filler cue, the
    word count): one "um" put the filler cue 11 SD out and raised the TCN's final p by
    0.17 on average over val. The words' timing inputs still see them (they were spoken)."""
    from models.fusion import TEXT_FEATURES, TextStream
    from models.text_ah import load as load_text

    model = load_text()
    assert model.spec.drop_fillers
    plain, filled = TextStream(model), TextStream(model)
    said = "well i guess i should exercise more but honestly i never find the time"
    with_fillers = "well um i guess uh i should exercise more but um honestly i never find the time"
    a = plain._text_block(said)
    b = filled._text_block(with_fillers)
    assert np.array_equal(a, b), [n for n, x, y in zip(TEXT_FEATURES, a, b, strict=False) if x != y]
    assert plain.p_text == filled.p_text
    tcn_plain, tcn_filled = lite.fresh(), lite.fresh()
    x_plain = fusion_input(np.concatenate([a, [0.0, 2.0]]), None, None)
    x_filled = fusion_input(np.concatenate([b, [0.0, 2.0]]), None, None)
    assert tcn_plain.step(x_plain) == tcn_filled.step(x_filled)


def test_analyzer_p_same_with_and_without_face_and_voice(lite, monkeypatch):
    """The session's per-tick path: face and voice reach the cues, never the probability."""
    from types import SimpleNamespace

    from models.text_ah import load as load_text
    from models.whisper import Word
    from stream import analysis

    rng = np.random.default_rng(9)
    models = SimpleNamespace(text=load_text(), tcn=lite, expression=None)
    words = [
        Word(w, 0.3 * i, 0.3 * i + 0.25, 1.0)
        for i, w in enumerate("i wish i could stop but i do not know maybe later".split())
    ]
    # b hears 3.5 s of a voiced, gliding tone then 1.5 s of silence (its real voice path:
    # ring, VAD, prosody) and sees a face on every tick; a has neither.
    sr = 16000
    f0 = np.linspace(100.0, 180.0, 5 * sr)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    audio = sum(0.1 / k * np.sin(k * phase) for k in range(1, 6)).astype(np.float32)
    audio[int(3.5 * sr) :] = 0.0
    ring, vad = AudioRing(sr), VadTimeline()
    ring.write(audio, 0.0)
    vad.push(audio)
    a = analysis.Analyzer(models)
    b = analysis.Analyzer(models, ring=ring, vad=vad)
    voiced = silent = 0
    for k in range(50):
        t = 0.1 * (k + 1)
        new = [w for w in words if t - 0.1 < w.t1 + 0.5 <= t]
        ra = a.tick(t, new, False, [])
        b._face = FaceFeatures.from_values(t, smile=float(rng.normal()), yaw=10.0)
        rb = b.tick(t, new, False, [])
        assert ra.voice is None
        voiced += rb.voice is not None and rb.voice.speaking
        silent += rb.voice is not None and not rb.voice.speaking
        assert ra.p == rb.p and ra.p_tcn == rb.p_tcn and ra.p_text == rb.p_text
    # b did compute voice features (for its cues) on the ticks with speech, and the
    # silence's vectors (pause entries only) on the others
    assert voiced >= 30 and silent >= 8


def test_replace_keeps_config_frozen():
    cfg = TCNConfig()
    assert replace(cfg, members=3).members == 3
    assert cfg.receptive_field == 1 + 2 * 2 * (1 + 2 + 4 + 8)


# ------------------------------------------------------------------------------- weight files


def _saved(tmp_path: Path, members: int = 2) -> tuple[FusionTCN, Path, Path]:
    tcn = _random_tcn(np.random.default_rng(11), members=members)
    npz, js = tcn.save(tmp_path)
    return tcn, npz, js


def _edit_json(js: Path, **config: object) -> None:
    meta = json.loads(js.read_text())
    meta["config"].update(config)
    js.write_text(json.dumps(meta))


def test_saved_weights_round_trip_with_their_dilations(tmp_path):
    tcn, npz, _ = _saved(tmp_path)
    with np.load(npz, allow_pickle=False) as z:
        assert list(z["dilations"]) == [1, 2, 4]
    back = FusionTCN.load(tmp_path)
    assert back.config == tcn.config and "dilations" not in back.arrays
    x = _random_rows(np.random.default_rng(12), 30)
    assert np.max(np.abs(back.forward(x) - tcn.forward(x))) <= 1e-5


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"kernel": 5}, "kernel 5"),  # the arrays are kernel 3
        ({"members": 1}, r"unexpected arrays \['m1\."),  # the npz holds two members
        ({"members": 3}, r"missing \['m2\."),
        ({"dilations": [1, 2, 8]}, r"dilations \[1, 2, 8\] differ"),
        ({"dilations": [1, 2, 4, 8]}, "differ"),
        ({"proj_dim": 5}, "proj_dim 5"),
    ],
)
def test_a_json_that_does_not_match_the_arrays_is_refused(tmp_path, edit, match):
    _, _, js = _saved(tmp_path)
    _edit_json(js, **edit)
    with pytest.raises(ValueError, match=match):
        FusionTCN.load(js)


def test_the_shipped_weights_refuse_a_json_with_other_dilations(tmp_path):
    """The shipped npz stores its dilations too."""
    for suffix in (".npz", ".json"):
        shutil.copy(WEIGHTS_DIR / f"{TCN_STEM}{suffix}", tmp_path / f"{TCN_STEM}{suffix}")
    assert FusionTCN.load(tmp_path).config == FusionTCN.load().config
    _edit_json(tmp_path / f"{TCN_STEM}.json", dilations=[1, 2, 4, 16])
    with pytest.raises(ValueError, match=r"dilations \[1, 2, 4, 16\] differ"):
        FusionTCN.load(tmp_path)


def test_files_without_stored_dilations_check_what_they_can(tmp_path):
    """Other weights written before the dilations were stored: their number is checked
    against the blocks, their values cannot be."""
    tcn, npz, js = _saved(tmp_path)
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "dilations"}
    np.savez_compressed(npz, **arrays)
    assert FusionTCN.load(js).config == tcn.config
    _edit_json(js, dilations=[1, 2])
    with pytest.raises(ValueError, match=r"unexpected arrays \['m0\.block2\."):
        FusionTCN.load(js)
    _edit_json(js, dilations=[1, 2, 4], kernel=2)
    with pytest.raises(ValueError, match="kernel 2"):
        FusionTCN.load(js)
    # Unknown arrays are not silently dropped either.
    np.savez_compressed(npz, **arrays, **{"m0.extra": np.zeros(3, np.float32)})
    _edit_json(js, kernel=3)
    with pytest.raises(ValueError, match=r"unexpected arrays \['m0\.extra'\]"):
        FusionTCN.load(js)
