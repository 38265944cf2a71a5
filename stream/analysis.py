"""Per-tick analysis shared by live sessions, `analyze` and `evaluate`.

An `Analyzer` turns what a session knows at media time ``t`` (the words so
far, new audio, the newest video frame) into the frame-level A/H probability,
codebook cues and modality features. It is synchronous and stateful: the
session calls it from its worker through an executor, one call at a time, in
media order; `evaluate` calls it directly on simulated word streams. Keeping
one code path is what makes the evaluated numbers the served ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from av.video.reformatter import VideoReformatter

from models.cross_cues import ValenceInconsistencyDetector
from models.cues import CueHit
from models.face import FaceAnalyzer, FaceFeatures
from models.face_cues import FaceCueDetector
from models.fusion import FACE_MAX_AGE_S, TextStream, fusion_input
from models.fusion import join_words as _join_words
from models.prosody import ProsodyTracker, VoiceFeatures
from models.tcn import FusionTCN
from models.voice_cues import VoiceCueDetector
from models.word_cues import WordCueDetector
from stream.buffers import AudioRing, VideoFrame
from stream.ingest import upright
from stream.vad import VadTimeline

if TYPE_CHECKING:  # torch comes with the full profile only: serving lite does not import it
    from models.full_stream import FullStream

__all__ = ["Analyzer", "CueFlushError", "TickResult", "words_complete_until"]


class CueFlushError(RuntimeError):
    """A cue detector failed at the end of a session; ``hits`` holds the other detectors'
    pending cues (the failure is the exception's cause)."""

    def __init__(self, hits: list[CueHit]) -> None:
        super().__init__("a cue detector failed to flush")
        self.hits = hits


@dataclass
class TickResult:
    """What one analysis tick produced."""

    t: float
    p: float  # the frame-level A/H probability that is published (see Analyzer.source)
    # "text": the model saw words; "media" (full profile): face or voice, no words (none
    # yet, or a checkpoint trained without text);
    # "prior": no input the model can use yet (lite: fewer than three words)
    evidence: str
    n_words: int
    cues: list[CueHit] = field(default_factory=list)
    voice: VoiceFeatures | None = None
    face: FaceFeatures | None = None
    p_text: float = 0.0  # the text model alone on the transcript so far
    p_tcn: float = 0.0  # the fusion TCN
    x: np.ndarray | None = None  # the fusion input row of this tick
    timings: dict[str, float] = field(default_factory=dict)  # seconds: "face", "model"
    # The face analysis of the tick's frame failed: the tick went on without it (its words,
    # voice and cues are kept; the caller reports the failure and counts the frame dropped).
    face_error: Exception | None = None
    # A frame was analysed this tick (without error): `face` None then means it has no face.
    face_checked: bool = False


# Frames are scaled down to this width before face analysis (the mesh needs no more).
MAX_FACE_WIDTH = 640


def frame_rgb(frame: VideoFrame, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """Upright RGB pixels of a frame, scaled down to at most MAX_FACE_WIDTH wide
    (``reformatter`` keeps its scaler between frames of one size; without, one is made
    per frame). A decoded frame's display rotation (a phone's recording: stored sideways
    or upside down, with a tag saying how to show it) is applied, as players do."""
    image = frame.image
    if isinstance(image, np.ndarray):
        return image
    # Ingest may ask for a smaller size than the decoded one (its resolution limit).
    width, height = min(frame.width, image.width), min(frame.height, image.height)
    rotation = getattr(image, "rotation", 0)
    sideways = int(round(rotation / 90.0)) % 2 == 1  # stored width is the upright height
    upright_width = height if sideways else width
    if upright_width > MAX_FACE_WIDTH:
        scale = MAX_FACE_WIDTH / upright_width
        width = max(2, int(round(width * scale / 2)) * 2)
        height = max(2, int(round(height * scale / 2)) * 2)
    if reformatter is None:
        rgb = image.to_ndarray(format="rgb24", width=width, height=height)
    else:
        rgb = reformatter.reformat(image, format="rgb24", width=width, height=height).to_ndarray()
    return upright(rgb, rotation)


def join_words(words: list[Any]) -> str:
    """The transcript text of ASR words."""
    return _join_words(words)


def words_complete_until(t: float, tentative: Sequence[Any], asr_t: float | None) -> float:
    """The media time up to which the committed words are complete at tick ``t``: where the
    ASR's transcription ends (``asr_t``, default ``t``), or earlier where its tentative tail
    starts (words are committed in time order, so every word before it is committed)."""
    until = t if asr_t is None else min(t, asr_t)
    if tentative:
        until = min(until, tentative[0].t0)
    return until


class Analyzer:
    """The frame-level model and cue detectors of one session.

    Per tick: text features of the words so far (`models.fusion.TextStream`),
    the newest face features (at most `FACE_MAX_AGE_S` old) and voice features
    form the fusion row; the fusion TCN steps on it. Modalities the TCN's
    weights were not trained on are presented to it as missing (the lite
    weights: face and voice), so they only feed the cue detectors. The
    published ``p`` is the source named by the weights' decision rule
    (``tcn`` or ``text``), and `method`/`threshold` go with it.

    The full profile (``models.full`` set) publishes the p of its embedding TCN
    (`models.full_stream.FullStream`: face clip, audio window, committed
    transcript); its video decision has the threshold tuned on that aggregate
    (``threshold``), its A/H segments the frame-level one (``segment_threshold``);
    the cue detectors run as in the lite profile. Its ticks must fall at the
    checkpoint's rate.
    """

    def __init__(
        self,
        models: Any,
        context: str | None = None,
        ring: AudioRing | None = None,
        vad: VadTimeline | None = None,
    ) -> None:
        self.text_model = models.text
        self.context = context
        self.ring = ring
        self.vad = vad
        full = getattr(models, "full", None)
        self.full: FullStream | None = None
        if full is not None:
            from models.full_stream import FullStream

            self.full = FullStream(full)
            self.source, self.method, self.threshold = "full", full.method, full.threshold
            # segments follow the frame p: the threshold tuned on val frames
            self.segment_threshold: float = full.frame_threshold
        else:
            self.tcn: FusionTCN = models.tcn.fresh()
            self.text_stream = TextStream(self.text_model, context)
            rule = self.tcn.decision()
            self.source: str = rule.get("source", "text")
            self.method: str = rule.get("method", "last")
            with_context = self.text_stream.question is not None
            if "threshold" in rule:
                self.threshold = float(rule["threshold_context" if with_context else "threshold"])
            else:
                self.threshold = self.text_model.threshold_for(context)
            # the published p is a video-level estimate at every tick (final-value rule)
            self.segment_threshold = self.threshold
        self.words: list[Any] = []  # committed words so far
        self._face: FaceFeatures | None = None  # newest face features
        self.word_cues = WordCueDetector()
        self.voice_cues = VoiceCueDetector()
        self.prosody: ProsodyTracker | None = ProsodyTracker() if ring is not None else None
        self._pending_words: list[Any] = []
        self._expression = getattr(models, "expression", None)
        self._face_pool = getattr(models, "face_pool", None)
        self._reformatter = VideoReformatter()  # one scaler per session, not per frame
        self._face_lock = threading.Lock()
        self.face: FaceAnalyzer | None = None  # made by warm_face or on the first frame
        self._closed = False  # set by close: no face graph is taken any more
        self.face_cues = FaceCueDetector()
        self.cross_cues = ValenceInconsistencyDetector()

    def tick(
        self,
        t: float,
        committed: list[Any],
        utterance_final: bool,
        tentative: list[Any],
        frame: VideoFrame | None = None,
        audio_t: float | None = None,
        earlier: Sequence[VideoFrame] = (),
        asr_t: float | None = None,
    ) -> TickResult:
        """Analyse media time ``t`` given words newly committed since the last tick,
        the newest video frame not analysed yet (None if there is none), and the
        audio up to ``audio_t`` (default ``t``). ``earlier``: the frames since the last
        tick before ``frame`` (the full profile's face clips use them; lite: none).
        ``asr_t``: the media time up to which the ASR has transcribed the audio, i.e.
        every word spoken before it is committed or in ``tentative`` (default ``t``: an
        offline replay whose committed words are complete up to the tick)."""
        started = time.perf_counter()
        audio_t = t if audio_t is None else audio_t
        complete = words_complete_until(t, tentative, asr_t)
        cues: list[CueHit] = []
        if committed or utterance_final:
            self.words.extend(committed)
            self._pending_words.extend(committed)
            cues.extend(self.word_cues.update(committed, final=utterance_final))
        if self.full is not None:
            frames = [*earlier, frame]
            return self._tick_full(t, committed, cues, frames, audio_t, complete, started)
        words = self.words + list(tentative)
        text_x = self.text_stream.features(t, words)
        p_text = self.text_stream.p_text
        evidence = "text" if self.text_stream.usable else "prior"
        voice = self._voice(audio_t, cues, complete)
        face = None
        face_s = 0.0
        face_error: Exception | None = None
        if frame is not None:
            face_started = time.perf_counter()
            try:
                face = self._analyse_frame(frame, cues)
            except Exception as exc:  # a bad frame must not cost the tick its words and cues
                face_error = exc
            else:
                self._face = face  # None: no face in the newest frame, masked from now
            face_s = time.perf_counter() - face_started
        cues.extend(self.cross_cues.update(committed, complete))
        recent_face = self._face
        if recent_face is not None and t - recent_face.t > FACE_MAX_AGE_S:
            recent_face = None
        x = fusion_input(text_x, recent_face, voice, active=self.tcn.active)
        p_tcn = self.tcn.step(x)
        p = p_tcn if self.source == "tcn" else p_text
        return TickResult(
            t=t,
            p=float(np.clip(p, 0.0, 1.0)),
            evidence=evidence,
            n_words=len(words),
            cues=cues,
            voice=voice,
            face=face,
            p_text=float(p_text),
            p_tcn=float(p_tcn),
            x=x,
            timings={"face": face_s, "model": time.perf_counter() - started - face_s},
            face_error=face_error,
            face_checked=frame is not None and face_error is None,
        )

    def _analyse_frame(
        self, frame: VideoFrame, cues: list[CueHit], rgb: np.ndarray | None = None
    ) -> Any:
        """Face features of one frame, fed to the face cues (hits appended to ``cues``) and
        the cross cues; raises if the face analysis fails (no detector has seen it then)."""
        if rgb is None:
            rgb = frame_rgb(frame, self._reformatter)
        face = self.prepare_face().analyze(rgb, frame.t)
        cues.extend(self.face_cues.update(frame.t, face))
        self.cross_cues.add_face(frame.t, face)
        return face

    def _voice(self, audio_t: float, cues: list[CueHit], words_until: float) -> Any:
        """Voice features of the audio since the last tick up to ``audio_t`` (None without
        new audio), their cues appended to ``cues``; the committed words are complete up to
        ``words_until``."""
        voice = None
        if self.prosody is not None and self.ring is not None:
            audio = self.ring.read_time(self.prosody.t, audio_t)
            if audio.size:
                voice = self.prosody.update(
                    audio, self._pending_words, self.vad, words_until=words_until
                )
                self._pending_words = []
            cues.extend(self.voice_cues.update(audio_t, voice, self.vad))
        return voice

    def _tick_full(
        self,
        t: float,
        committed: list[Any],
        cues: list[CueHit],
        frames: list[VideoFrame | None],
        audio_t: float,
        complete: float,
        started: float,
    ) -> TickResult:
        """The full profile's tick: cues as in the lite one, p from `FullStream.step`.
        Its evidence is "text" once the model has words, "media" while it has only face or
        voice (its p is then a model output, not a prior), "prior" with no input."""
        assert self.full is not None
        voice = self._voice(audio_t, cues, complete)
        face = None
        face_s = 0.0
        face_error: Exception | None = None
        checked = False
        face_started = time.perf_counter()
        for f in frames:  # every frame since the last tick, the newest last
            if f is None:
                continue
            try:
                rgb = frame_rgb(f, self._reformatter)
                face = self._analyse_frame(f, cues, rgb)
            except Exception as exc:  # as in the lite tick: the frame is skipped
                face, face_error, checked = None, face_error or exc, False
                continue
            checked = True
            self.full.add_frame(f.t, rgb, None if face is None else face.landmarks)
        face_s = time.perf_counter() - face_started
        cues.extend(self.cross_cues.update(committed, complete))
        # The audio window ends at t where the ring holds it (a file session, always), as in
        # training; else at the newest audio received.
        end_t = t if self.ring is None else max(audio_t, min(t, self.ring.end_time))
        step = self.full.step(t, self.ring, end_t, [w.w for w in self.words])
        evidence = "text" if step.present[2] else "media" if step.present.any() else "prior"
        return TickResult(
            t=t,
            p=float(np.clip(step.p, 0.0, 1.0)),
            evidence=evidence,
            n_words=len(self.words),
            cues=cues,
            voice=voice,
            face=face,
            p_tcn=float(step.p),
            x=np.concatenate([step.video, step.audio, step.text, step.present]),
            timings={"face": face_s, "model": time.perf_counter() - started - face_s},
            face_error=face_error,
            face_checked=checked,
        )

    def prepare_face(self) -> FaceAnalyzer:
        """The session's face analyzer, made now if it is not yet (RuntimeError once closed)."""
        with self._face_lock:
            if self._closed:
                raise RuntimeError("the analyzer is closed")
            return self._take_face()

    def warm_face(self) -> None:
        """Make the face analyzer ahead of the first frame; nothing once closed (a warm-up
        that runs after the session ended must not take a graph that nobody closes)."""
        with self._face_lock:
            if not self._closed:
                self._take_face()

    def _take_face(self) -> FaceAnalyzer:
        # Called with the face lock held, so `close` waits for a graph being built.
        if self.face is None:
            pool = self._face_pool
            self.face = pool.take() if pool is not None else FaceAnalyzer(self._expression)
        return self.face

    def flush(self) -> list[CueHit]:
        """Cues still pending at the end of the session; closes the analyzer, even if a
        detector fails."""
        hits: list[CueHit] = []
        failed: Exception | None = None
        try:
            for detector in (self.word_cues, self.face_cues, self.cross_cues):
                try:  # one failing detector must not lose the others' pending cues
                    hits += detector.flush()
                except Exception as exc:
                    failed = failed or exc
        finally:
            self.close()
        if failed is not None:
            raise CueFlushError(hits) from failed
        return hits

    def close(self) -> None:
        """Release the face graph; a later `warm_face` takes none, `prepare_face` raises."""
        with self._face_lock:
            self._closed = True
            face, self.face = self.face, None
        if face is not None:
            face.close()
