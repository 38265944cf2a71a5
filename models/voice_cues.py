"""Voice BAH codebook cues: long pauses, slowed/hurried speech, volume changes.

`VoiceCueDetector` (one per session) is called once per analysis tick, in media
order, with the tick time, that tick's `VoiceFeatures` from the session's
`ProsodyTracker` (None without new audio; ``speaking`` false when the last 0.5 s had no
speech: only its pause entries are real then) and the session's VAD timeline.
It returns the `CueHit`s (modality ``"voice"``) that became certain at that tick;
each hit is reported once.

Rules:

- ``long_pause``: silence between two VAD speech runs lasting `LONG_PAUSE_S` to
  `MAX_HESITATION_PAUSE_S`, reported once speech has resumed for `RESUME_MIN_S`
  (so the silence after the last answer, which never resumes, is not reported).
  The silence is the one heard: audio that never arrived (`SpeechTimeline.lost`, lost
  packets) inside it does not count.
  Speech runs shorter than `MIN_SPEECH_RUN_S` (clicks, breaths) do not split a pause.
  Strength (L - 0.5) / 2.5 clipped to [0, 1]: 1 s -> 0.2, 2 s -> 0.6, >= 3 s -> 1.
  The VAD's hold-over (about 0.25 s after the last voiced frame, measured) is inside
  the speech runs, so a pause starts that much late and reads that much short.
- ``slowed_speech`` / ``hurried_speech``: speech-rate z-score (syllable rate, else
  word rate) <= -`RATE_Z` / >= +`RATE_Z` on every tick with a rate for at least
  `RATE_SUSTAIN_S` (ticks without a rate, e.g. short pauses, neither extend nor
  break the run unless they last > `RATE_GAP_S`). Strength (|mean z| - 1) / 2.
  The rates come from words the ASR committed seconds after they were spoken, so
  the hit's times are those of the speech: the words of the rate window that
  confirmed the episode (`VoiceFeatures.rate_span`), from the first word's start
  to the last word's end, reaching back to the end of the words of the episode's
  first tick. They do not depend on the ASR's commit lag.
- ``volume_change``: energy z-score beyond +-`VOLUME_Z` (same sign) on every
  speech tick for at least `VOLUME_SUSTAIN_S`; detail says louder/softer and by how
  many dB against the speaker's baseline. Strength (|mean z| - 1.5) / 2.5. A tick
  without speech (no features, or not ``speaking``) ends the episode.

After a rate or volume episode is reported, the same cue is re-armed only when its
z-score has come back within +-`REARM_Z` (no flicker around the threshold).
Durations count ticks as coverage (`models.cues.FrameInterval`): a tick at ``t``
covers ``(t - tick interval, t]``, so 0.5 s is 5 ticks at 10 Hz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from models.cues import CueHit, FrameInterval
from models.prosody import SpeechTimeline, VoiceFeatures

__all__ = ["VOICE_CUES", "VoiceCueDetector"]

VOICE_CUES: tuple[str, ...] = ("long_pause", "slowed_speech", "hurried_speech", "volume_change")
MODALITY = "voice"

# Fluent speech has pauses up to ~0.7 s between phrases and sentences (read speech
# included); the codebook's hesitation pauses are the longer ones.
LONG_PAUSE_S = 1.0
# Silence longer than this inside a call is a turn boundary (the other side speaks,
# the answer ended), not a hesitation within an answer.
MAX_HESITATION_PAUSE_S = 5.0
# Speech must resume for this long to prove the pause was inside speech.
RESUME_MIN_S = 0.3
# VAD runs shorter than this are noise (a click, a breath). Measured with
# `stream.vad.VadTimeline` on a voiced tone: 30 ms of it (one webrtcvad frame) gives a
# 0.27 s run (webrtcvad's own hold-over plus our 0.15 s hangover), 60 ms a 0.30 s run,
# 100 ms (the shortest word) 0.33 s.
MIN_SPEECH_RUN_S = 0.29
# Strength ramp for pauses: 0 at 0.5 s, 1 at 3 s.
PAUSE_STRENGTH_S = (0.5, 3.0)
# Speech-rate z-score for slowed/hurried: +-1.5 std of the speaker's own windowed rate
# (about the 7 % tails of a normal spread) is a change a listener notices.
RATE_Z = 1.5
# ... sustained this long: the rate is measured over ~4 s of words, 2 s of a consistent
# deviation is a change of tempo, not one long word.
RATE_SUSTAIN_S = 2.0
RATE_GAP_S = 1.0  # ticks without a rate for longer than this end a rate episode
# Energy z-score for volume_change: syllable-level loudness varies a lot; the 0.5 s
# level of read speech stays within +-2 std of the speaker's baseline (librivox clip).
VOLUME_Z = 2.0
# ... sustained this long: a loud word or a cough is shorter.
VOLUME_SUSTAIN_S = 0.5
CALM_DB_ALPHA = 0.05  # EMA weight per tick of the "normal" level shown in the detail (~2 s)
REARM_Z = 1.0  # hysteresis: an episode may start again once |z| fell below this
PAUSE_LOOKBACK_S = MAX_HESITATION_PAUSE_S + 3.0


@dataclass
class _Episode:
    """A run of ticks beyond a z threshold with one sign."""

    sign: int = 0
    t0: float = 0.0
    t_last: float = 0.0
    at0: float = 0.0  # media time of the first tick's evidence (rates: its words' end)
    z_sum: float = 0.0
    n: int = 0
    reported: bool = False
    armed: bool = True

    def reset(self) -> None:
        self.sign, self.z_sum, self.n, self.reported = 0, 0.0, 0, False


class VoiceCueDetector:
    """Per-session voice cue detector over prosody features and the VAD timeline."""

    def __init__(self) -> None:
        self._last_pause_end = -math.inf
        self._rate = _Episode()
        self._volume = _Episode()
        self._calm_db = math.nan  # recent speech level while the energy z-score was normal
        self._ticks = FrameInterval(RATE_GAP_S)  # longer steps are gaps, not the tick rate

    def update(
        self, t: float, features: VoiceFeatures | None, vad: SpeechTimeline | None
    ) -> list[CueHit]:
        """Cues that became certain at media time ``t`` (call every tick, in order)."""
        self._ticks.add(t)
        hits: list[CueHit] = []
        if vad is not None:
            hits.extend(self._pauses(t, vad))
        hits.extend(self._rate_cues(t, features))
        hits.extend(self._volume_cues(t, features))
        return hits

    # ------------------------------------------------------------------ pauses

    def _pauses(self, t: float, vad: SpeechTimeline) -> list[CueHit]:
        runs = [
            (s, e)
            for s, e in vad.segments(max(0.0, t - PAUSE_LOOKBACK_S), t)
            if e - s >= MIN_SPEECH_RUN_S - 1e-9
        ]
        out: list[CueHit] = []
        for (_, a_end), (b_start, b_end) in zip(runs[:-1], runs[1:], strict=True):
            # the silence heard: audio that never arrived (lost packets) is no hesitation
            gap = max(0.0, b_start - a_end - vad.lost(a_end, b_start))
            if b_start <= self._last_pause_end + 1e-9:
                continue
            if not LONG_PAUSE_S <= gap <= MAX_HESITATION_PAUSE_S:
                continue
            if b_end - b_start < RESUME_MIN_S:
                continue
            lo, hi = PAUSE_STRENGTH_S
            strength = min(1.0, max(0.0, (gap - lo) / (hi - lo)))
            out.append(
                CueHit("long_pause", a_end, b_start, round(strength, 3), MODALITY, f"{gap:.2f} s")
            )
            self._last_pause_end = b_start
        return out

    # ------------------------------------------------------------------ episodes

    def _episode(
        self,
        ep: _Episode,
        t: float,
        z: float,
        threshold: float,
        sustain_s: float,
        gap_s: float,
        at: float | None = None,
    ) -> _Episode | None:
        """Advance an episode with this tick's z (NaN: no value); the episode if it fires.
        ``at``: the media time of the tick's evidence (default ``t``)."""
        if not math.isfinite(z):
            if ep.n and t - ep.t_last > gap_s:
                ep.reset()
            return None
        if abs(z) < REARM_Z:
            ep.armed = True
        sign = 1 if z >= threshold else -1 if z <= -threshold else 0
        if sign == 0 or (ep.n and sign != ep.sign):
            ep.reset()
            if sign == 0:
                return None
        if not ep.armed:
            return None
        if ep.n == 0:
            ep.sign, ep.t0, ep.at0 = sign, t, t if at is None else at
        ep.t_last = t
        ep.z_sum += z
        ep.n += 1
        if not ep.reported and self._ticks.covered(ep.t0, t) >= sustain_s - 1e-9:
            ep.reported = True
            ep.armed = False
            return ep
        return None

    def _rate_cues(self, t: float, f: VoiceFeatures | None) -> list[CueHit]:
        z = math.nan
        # no rate without speech now (the silent vector has none either)
        span = None if f is None or not f.speaking else f.rate_span
        if f is not None and span is not None:
            z = f.get("syl_rate_z")
            if not math.isfinite(z):
                z = f.get("word_rate_z")
        at = None if span is None else span[1]
        ep = self._episode(self._rate, t, z, RATE_Z, RATE_SUSTAIN_S, RATE_GAP_S, at)
        if ep is None or span is None:
            return []
        zm = ep.z_sum / ep.n
        cue = "hurried_speech" if ep.sign > 0 else "slowed_speech"
        strength = min(1.0, max(0.0, (abs(zm) - 1.0) / 2.0))
        rate = f.get("syl_rate") if f is not None else math.nan
        detail = f"rate z {zm:+.1f}" + (f", {rate:.1f} syl/s" if math.isfinite(rate) else "")
        # The confirming window normally holds the words of the episode's first tick too
        # (RATE_SUSTAIN_S < RATE_WINDOW_S); after a burst of commits it may not: reach back.
        t0 = min(span[0], ep.at0)
        return [CueHit(cue, t0, span[1], round(strength, 3), MODALITY, detail)]

    def _volume_cues(self, t: float, f: VoiceFeatures | None) -> list[CueHit]:
        if f is None or not f.speaking:  # a volume episode needs continuous speech
            self._volume.reset()
            return []
        z = f.get("energy_z")
        db = f.get("energy_db")
        if math.isfinite(z) and abs(z) < REARM_Z:
            a = CALM_DB_ALPHA
            self._calm_db = (
                db if not math.isfinite(self._calm_db) else (1 - a) * self._calm_db + a * db
            )
        ep = self._episode(self._volume, t, z, VOLUME_Z, VOLUME_SUSTAIN_S, 0.0)
        if ep is None:
            return []
        zm = ep.z_sum / ep.n
        strength = min(1.0, max(0.0, (abs(zm) - 1.5) / 2.5))
        word = "louder" if ep.sign > 0 else "softer"
        detail = f"{word}, energy z {zm:+.1f}"
        if math.isfinite(self._calm_db):
            detail += f", {db - self._calm_db:+.1f} dB"
        return [CueHit("volume_change", ep.t0, t, round(strength, 3), MODALITY, detail)]
