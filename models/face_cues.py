"""Streaming detectors of the BAH codebook's face cues over per-frame ``FaceFeatures``.

``FaceCueDetector.update(t, features_or_None)`` is called once per analysed frame, in media
time order, and returns the cues whose episodes closed at that frame. Each cue is reported
once per episode, as a ``CueHit`` with the episode's media times ``t0``/``t1``, when the
episode ends (the condition has been false, or the face missing, for longer than
``GAP_S``; for oscillations, no new reversal for ``OSC_WINDOW_S``) or when it reaches
``MAX_EPISODE_S`` (then it is reported and a new episode starts after it: a long state gives
a hit every ``MAX_EPISODE_S``, and hits of one cue never overlap). ``flush(t)`` closes what
is open at the end of a session.

Durations are frame coverage (`models.cues.FrameInterval`): a frame at ``t`` covers
``(t - interval, t]`` with the interval of the frames fed, so a cue with a 0.5 s minimum
needs 5 frames at 10 Hz (as `stream.aggregate.SegmentTracker` counts). The hit's ``t0`` and
``t1`` are the media times of its first and last frame.

Rules (all judged against the person's running baseline from ``models.face``; each threshold
is a named constant below with the reason for its value):

* ``gaze_aversion``: where the person looks (head + eyes) is >= ``GAZE_YAW_DEG``
  sideways or >= ``GAZE_PITCH_DEG`` up/down from their baseline for >= ``GAZE_MIN_S``,
  while the head itself stays within the looking-away thresholds (a head turn is
  ``looking_away``); one direction per episode.
* ``looking_away``: head yaw >= ``LOOK_YAW_DEG`` or pitch >= ``LOOK_PITCH_DEG`` from the
  baseline for >= ``LOOK_MIN_S``, one direction per episode.
* ``head_shake`` / ``nod``: >= ``OSC_MIN_REVERSALS`` direction reversals of yaw / pitch within
  ``OSC_WINDOW_S``, every swing between reversals >= ``SHAKE_MIN_SWING_DEG`` /
  ``NOD_MIN_SWING_DEG``, and that axis moving more than the other one.
* ``frown``: brow height z <= ``FROWN_Z`` for >= ``FROWN_MIN_S``.
* ``lip_press``: lip thickness z <= ``LIP_PRESS_Z`` with the mouth closed
  (<= ``LIP_PRESS_MAX_OPEN`` IOD) and not smiling, for >= ``LIP_PRESS_MIN_S``.
* ``smile``: p(happy) >= ``SMILE_HAPPY_DEV`` above the baseline, or mouth corners raised
  (z >= ``SMILE_LIFT_Z``) with the mouth widened (z >= ``SMILE_WIDTH_Z``), for
  >= ``SMILE_MIN_S``.

Strength in [0, 1]: the episode's mean of a ramp that is 0.5 at the threshold and 1.0 at a
"full" value (named ``*_FULL``); for oscillations, of the mean swing.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from models.cues import CueHit, FrameInterval
from models.face import FaceFeatures

__all__ = ["CUES", "MODALITY", "CueHit", "FaceCueDetector"]

#: The modality of every hit (``models.cues.MODALITIES``).
MODALITY = "face"

CUES: tuple[str, ...] = (
    "gaze_aversion",
    "looking_away",
    "head_shake",
    "nod",
    "frown",
    "lip_press",
    "smile",
)

# ---------------------------------------------------------------- episodes
#: Brief interruptions (one or two analysis ticks at 10 Hz: a blink, a dropped frame, a missed
#: face) do not end an episode.
GAP_S = 0.3
#: Long states are reported in pieces of this length (A/H segments last ~4.3 s on average,
#: so a cue never spans much more than a segment and is published without long delays).
MAX_EPISODE_S = 5.0

# ---------------------------------------------------------------- gaze and head
#: Gaze shift (head + eyes) from the person's usual gaze. In a call people look at the
#: screen, not the camera, and the baseline absorbs that offset; the iris estimate jitters
#: by ~2-3 degrees frame to frame, and 15 degrees is past the edge of a laptop screen seen
#: from 60 cm (~ +-13 degrees).
GAZE_YAW_DEG = 15.0
#: Vertical iris estimates are noisier (the lids follow the iris), and the screen spans
#: less vertically (~ +-9 degrees): 12 degrees.
GAZE_PITCH_DEG = 12.0
#: Twice the threshold counts as a full-strength aversion.
GAZE_FULL_FACTOR = 2.0
#: Shorter gaze shifts are glances and saccades; gaze aversion while thinking lasts ~1-3 s.
GAZE_MIN_S = 0.5
#: Head turns in conversation stay within ~10 degrees of the resting pose; 20 degrees of
#: yaw turns the face off the screen.
LOOK_YAW_DEG = 20.0
#: Looking down at the desk or up at the ceiling; pitch estimates carry more noise than yaw.
LOOK_PITCH_DEG = 15.0
#: Twice the threshold counts as a full-strength look away.
LOOK_FULL_FACTOR = 2.0
#: Shorter excursions are parts of gestures (a shake or a nod crosses the threshold briefly).
LOOK_MIN_S = 0.5

# ---------------------------------------------------------------- shakes and nods
#: A shake or a nod is two or more reversals of direction: e.g. left-right-left.
OSC_MIN_REVERSALS = 2
#: ... within this window (conversational shakes and nods run at ~1.5-3 Hz, so two
#: reversals take 0.3-0.7 s; slow ones up to ~1.2 s).
OSC_WINDOW_S = 1.5
#: Every swing between reversals must reach this (degrees). Face-mesh pose jitter is
#: ~0.5-1 degree; small conversational shakes are ~5-10 degrees peak to peak.
SHAKE_MIN_SWING_DEG = 5.0
#: Nods are smaller than shakes (backchannel nods ~4-8 degrees).
NOD_MIN_SWING_DEG = 4.0
#: Swings of this size (degrees) count as full strength.
SHAKE_FULL_SWING_DEG = 20.0
NOD_FULL_SWING_DEG = 15.0

# ---------------------------------------------------------------- expressions
#: Brows lowered: brow-eye distance 2 SD below the baseline (AU4 lowers the brows by
#: ~0.05 IOD; the SD floor is 0.02 IOD).
FROWN_Z = -2.0
FROWN_FULL_Z = -4.0
#: A frown is held; shorter dips come with blinks and speech emphasis.
FROWN_MIN_S = 0.5
#: Lips thinned 2 SD below the baseline (pressing rolls the red lips inwards).
LIP_PRESS_Z = -2.0
LIP_PRESS_FULL_Z = -4.0
#: The mouth must be closed (inner lip gap in IODs; speech opens it to 0.1-0.3).
LIP_PRESS_MAX_OPEN = 0.05
#: Lips also thin when a smile stretches them: no lip press while the mouth is widened this
#: much (z) or the face reads as happy.
LIP_PRESS_MAX_WIDTH_Z = 1.5
#: Bilabial consonants (p, b, m) close the lips for < 0.2 s; a press is held longer.
LIP_PRESS_MIN_S = 0.7
#: Smile from the expression model: p(happy) this much above the person's baseline (a neutral
#: face reads p(happy) < 0.05, a clear smile > 0.8 on real video).
SMILE_HAPPY_DEV = 0.3
SMILE_HAPPY_FULL_DEV = 0.8
#: Smile from geometry: corners raised relative to the upper lip and the mouth widened
#: (a smile widens the mouth by 20-50 %, ~3-12 SD at the floor of 0.03 IOD).
SMILE_LIFT_Z = 2.0
SMILE_WIDTH_Z = 2.0
SMILE_FULL_WIDTH_Z = 8.0
#: A smile is held; shorter ones are speech movements.
SMILE_MIN_S = 0.5

_EPS = 1e-6  # media times are floats: 1.7 - 1.4 > 0.3


def _ramp(value: float, threshold: float, full: float) -> float:
    """0.5 at the threshold, 1.0 at ``full`` (either direction), clipped to [0, 1]."""
    if full == threshold:
        return 1.0
    if not math.isfinite(value):
        return 0.0
    return min(max(0.5 + 0.5 * (value - threshold) / (full - threshold), 0.0), 1.0)


class _Sustained:
    """Episodes of a condition that must hold for a minimum time; one key (e.g. a direction)
    per episode. ``describe(key, peak)`` writes the hit's detail; ``frames`` measures the
    time the frames cover."""

    def __init__(
        self,
        cue: str,
        min_s: float,
        describe: Callable[[str, float], str],
        frames: FrameInterval,
    ) -> None:
        self.cue, self.min_s, self.describe, self.frames = cue, min_s, describe, frames
        self.key: str | None = None
        self.t0 = self.last = 0.0
        self.scores: list[float] = []
        self.peak = 0.0

    def _emit(self, t1: float) -> list[CueHit]:
        hits = []
        try:
            if (
                self.key is not None
                and self.scores
                and self.frames.covered(self.t0, t1) >= self.min_s - _EPS
            ):
                strength = sum(self.scores) / len(self.scores)
                detail = self.describe(self.key, self.peak)
                hits.append(CueHit(self.cue, self.t0, t1, strength, MODALITY, detail))
        finally:  # an episode that cannot be reported must not fail every later frame
            self.key = None
            self.scores = []
        return hits

    def update(
        self, t: float, key: str | None, score: float = 0.0, peak: float = 0.0
    ) -> list[CueHit]:
        """Feed one frame: ``key`` None when the condition is false (or the face missing)."""
        hits: list[CueHit] = []
        if self.key is not None and key is not None and key != self.key:
            hits += self._emit(self.last)
        if key is None:
            if self.key is not None and t - self.last > GAP_S + _EPS:
                hits += self._emit(self.last)
            return hits
        if self.key is None:
            self.key, self.t0, self.peak = key, t, peak
        self.last = t
        self.scores.append(score)
        self.peak = max(self.peak, peak, key=abs)
        if self.frames.covered(self.t0, t) >= MAX_EPISODE_S - _EPS:
            # The next piece starts with the next frame: pieces share no frame.
            hits += self._emit(t)
        return hits

    def flush(self) -> list[CueHit]:
        """Close an open episode."""
        return self._emit(self.last)


@dataclass
class _Turn:
    t: float  # time of the extreme
    swing: float  # size of the swing that led to it
    leg_start: float  # time of the previous extreme
    confirmed: float  # time at which the swing away from it reached the minimum


class _Oscillation:
    """Counts direction reversals of one angle with hysteresis (a zig-zag: a reversal is
    confirmed when the angle has moved back from its extreme by at least ``min_swing``)."""

    def __init__(
        self, cue: str, min_swing: float, full_swing: float, label: str, frames: FrameInterval
    ) -> None:
        self.cue, self.min_swing, self.full_swing, self.label = cue, min_swing, full_swing, label
        self.frames = frames
        self._reset_tracker()
        self.ep_t0: float | None = None
        self.ep_last = 0.0
        self.hit_t1 = -math.inf  # t1 of the last hit: the next episode starts no earlier
        self.ep_swings: list[float] = []
        self.ep_turns = 0

    def _reset_tracker(self) -> None:
        self.dir = 0
        self.lo: tuple[float, float] | None = None  # (t, v) while no direction yet
        self.hi: tuple[float, float] | None = None
        self.ext = (0.0, 0.0)  # current extreme (t, v)
        self.prev_ext = (0.0, 0.0)  # the extreme before it
        self.turns: deque[_Turn] = deque()
        self.samples: deque[tuple[float, float, float]] = deque()  # (t, v, other)
        self.last_t: float | None = None

    def _emit(self) -> list[CueHit]:
        if self.ep_t0 is None:
            return []
        swing = sum(self.ep_swings) / len(self.ep_swings)
        hit = CueHit(
            self.cue,
            self.ep_t0,
            self.ep_last,
            _ramp(swing, self.min_swing, self.full_swing),
            MODALITY,
            f"{self.ep_turns} reversals of {self.label}, mean swing {swing:.1f} deg",
        )
        self.ep_t0 = None
        self.ep_swings, self.ep_turns = [], 0
        self.hit_t1 = hit.t1
        return [hit]

    def missing(self, t: float) -> list[CueHit]:
        """No face at t: the tracker restarts after a gap; an open episode may close."""
        if self.last_t is not None and t - self.last_t > GAP_S + _EPS:
            self._reset_tracker()
        return self._maybe_close(t)

    def _maybe_close(self, t: float) -> list[CueHit]:
        if self.ep_t0 is not None and t - self.ep_last > OSC_WINDOW_S + _EPS:
            return self._emit()
        return []

    def update(self, t: float, v: float, other: float) -> list[CueHit]:
        """Feed one sample of the angle (and of the other axis, for the dominance check)."""
        if self.last_t is not None and t - self.last_t > GAP_S + _EPS:
            self._reset_tracker()
        self.last_t = t
        self.samples.append((t, v, other))
        while self.samples and self.samples[0][0] < t - OSC_WINDOW_S:
            self.samples.popleft()
        confirmed = None
        if self.dir == 0:
            if self.lo is None or self.hi is None:
                self.lo = self.hi = (t, v)
            # The latest sample at the extreme: a swing starts where the angle leaves it.
            if v <= self.lo[1]:
                self.lo = (t, v)
            if v >= self.hi[1]:
                self.hi = (t, v)
            if v - self.lo[1] >= self.min_swing:
                self.dir, self.prev_ext, self.ext = 1, self.lo, (t, v)
            elif self.hi[1] - v >= self.min_swing:
                self.dir, self.prev_ext, self.ext = -1, self.hi, (t, v)
        elif (v - self.ext[1]) * self.dir > 0:
            self.ext = (t, v)
        elif (self.ext[1] - v) * self.dir >= self.min_swing:
            swing = abs(self.ext[1] - self.prev_ext[1])
            confirmed = _Turn(self.ext[0], swing, self.prev_ext[0], t)
            self.turns.append(confirmed)
            self.dir = -self.dir
            self.prev_ext, self.ext = self.ext, (t, v)
        while self.turns and self.turns[0].t < t - OSC_WINDOW_S:
            self.turns.popleft()

        if confirmed is not None:
            if self.ep_t0 is not None:
                self.ep_turns += 1
                self.ep_swings.append(confirmed.swing)
                self.ep_last = t
            elif len(self.turns) >= OSC_MIN_REVERSALS and self._dominant():
                recent = list(self.turns)
                # After a split the first new turn's swing began inside the last hit.
                self.ep_t0 = max(recent[0].leg_start, self.hit_t1)
                self.ep_turns = len(recent)
                self.ep_swings = [tr.swing for tr in recent]
                self.ep_last = t
        hits = self._maybe_close(t)
        if self.ep_t0 is not None and self.frames.covered(self.ep_t0, t) >= MAX_EPISODE_S - _EPS:
            hits += self._emit()
            self.turns.clear()
        return hits

    def _dominant(self) -> bool:
        vs = [s[1] for s in self.samples]
        os_ = [s[2] for s in self.samples]
        return (max(vs) - min(vs)) > (max(os_) - min(os_))

    def flush(self) -> list[CueHit]:
        """Close an open episode."""
        return self._emit()


def _direction(h: float, v: float, h_thr: float, v_thr: float) -> tuple[str | None, float]:
    """The dominant direction of a (horizontal, vertical) deviation beyond its thresholds, and
    its size relative to the threshold (0 when within both)."""
    rh, rv = abs(h) / h_thr, abs(v) / v_thr
    if not max(rh, rv) >= 1.0:  # within both, or not a number
        return None, 0.0
    if rh >= rv:
        return ("image-right" if h > 0 else "image-left"), rh
    return ("up" if v > 0 else "down"), rv


class FaceCueDetector:
    """Streaming face cue detector for one session (see the module docstring for the rules)."""

    def __init__(self) -> None:
        # Longer steps between frames are gaps (they end episodes), not the frame rate.
        self._frames = frames = FrameInterval(GAP_S + _EPS)
        self._look = _Sustained(
            "looking_away",
            LOOK_MIN_S,
            lambda k, p: f"head turned {k}, peak {p:+.0f} deg from baseline",
            frames,
        )
        self._gaze = _Sustained(
            "gaze_aversion",
            GAZE_MIN_S,
            lambda k, p: f"gaze {k}, peak {p:+.0f} deg from baseline",
            frames,
        )
        self._shake = _Oscillation(
            "head_shake", SHAKE_MIN_SWING_DEG, SHAKE_FULL_SWING_DEG, "yaw", frames
        )
        self._nod = _Oscillation("nod", NOD_MIN_SWING_DEG, NOD_FULL_SWING_DEG, "pitch", frames)
        self._frown = _Sustained(
            "frown", FROWN_MIN_S, lambda k, p: f"brows lowered, peak z {p:+.1f}", frames
        )
        self._press = _Sustained(
            "lip_press",
            LIP_PRESS_MIN_S,
            lambda k, p: f"lips thinned and closed, peak z {p:+.1f}",
            frames,
        )
        self._smile = _Sustained(
            "smile", SMILE_MIN_S, lambda k, p: f"p(happy) up to {p:+.2f} over baseline", frames
        )
        self._sustained = (self._look, self._gaze, self._frown, self._press, self._smile)
        self._last_t: float | None = None

    def update(self, t: float, f: FaceFeatures | None) -> list[CueHit]:
        """Feed the features of the frame at media time t (None: no face); returns the cue
        episodes that ended (or reached the maximum length) at this frame."""
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"media time went back: {t} < {self._last_t}")
        self._last_t = t
        self._frames.add(t)
        hits: list[CueHit] = []
        if f is None:
            for s in self._sustained:
                hits += s.update(t, None)
            hits += self._shake.missing(t) + self._nod.missing(t)
            return _ordered(hits)
        v = f.values
        # Shakes and nods use absolute angles: they need no baseline.
        hits += self._shake.update(t, v["yaw"], v["pitch"])
        hits += self._nod.update(t, v["pitch"], v["yaw"])
        if not v["baseline_ready"]:
            for s in self._sustained:
                hits += s.update(t, None)
            return _ordered(hits)

        # Head pose beyond thresholds from the baseline.
        key, r = _direction(v["yaw_dev"], v["pitch_dev"], LOOK_YAW_DEG, LOOK_PITCH_DEG)
        horizontal = key in ("image-left", "image-right")
        hits += self._look.update(
            t, key, _ramp(r, 1.0, LOOK_FULL_FACTOR), v["yaw_dev"] if horizontal else v["pitch_dev"]
        )

        # Gaze (head + eyes) away, while the head itself is not looking away.
        looking_away = key is not None
        key, r = (
            (None, 0.0)
            if looking_away
            else _direction(v["gaze_yaw_dev"], v["gaze_pitch_dev"], GAZE_YAW_DEG, GAZE_PITCH_DEG)
        )
        horizontal = key in ("image-left", "image-right")
        hits += self._gaze.update(
            t,
            key,
            _ramp(r, 1.0, GAZE_FULL_FACTOR),
            v["gaze_yaw_dev"] if horizontal else v["gaze_pitch_dev"],
        )

        z = v["brow_height_z"]
        hits += self._frown.update(
            t, "brows" if z <= FROWN_Z else None, _ramp(-z, -FROWN_Z, -FROWN_FULL_Z), z
        )

        z = v["lip_thickness_z"]
        press = (
            z <= LIP_PRESS_Z
            and v["mouth_open"] <= LIP_PRESS_MAX_OPEN
            and v["mouth_width_z"] < LIP_PRESS_MAX_WIDTH_Z
            and v["p_happy_dev"] < SMILE_HAPPY_DEV
        )
        hits += self._press.update(
            t, "lips" if press else None, _ramp(-z, -LIP_PRESS_Z, -LIP_PRESS_FULL_Z), z
        )

        happy = v["p_happy_dev"]
        geom = v["smile_z"] >= SMILE_LIFT_Z and v["mouth_width_z"] >= SMILE_WIDTH_Z
        score = max(
            _ramp(happy, SMILE_HAPPY_DEV, SMILE_HAPPY_FULL_DEV),
            _ramp(v["mouth_width_z"], SMILE_WIDTH_Z, SMILE_FULL_WIDTH_Z) if geom else 0.0,
        )
        hits += self._smile.update(
            t, "smile" if happy >= SMILE_HAPPY_DEV or geom else None, score, happy
        )
        return _ordered(hits)

    def flush(self) -> list[CueHit]:
        """Close every open episode (at the end of a session); returns their hits."""
        hits: list[CueHit] = []
        for s in self._sustained:
            hits += s.flush()
        hits += self._shake.flush() + self._nod.flush()
        return _ordered(hits)


def _ordered(hits: list[CueHit]) -> list[CueHit]:
    return sorted(hits, key=lambda h: (h.t0, CUES.index(h.cue)))
