"""AudioRing and LatestFrameSlot: bounded, on the media timeline, drops counted."""

import numpy as np
import pytest

from stream.buffers import AudioRing, LatestFrameSlot, VideoFrame
from stream.vad import VadTimeline


def test_ring_keeps_timeline_across_wraparound():
    ring = AudioRing(sample_rate=100, span_s=1.0)  # capacity 100 samples
    x = np.arange(250, dtype=np.float32)
    for i in range(0, 250, 30):
        ring.write(x[i : i + 30])
    assert ring.end_index == 250
    assert ring.start_index == 150
    assert ring.overwritten == 150
    np.testing.assert_array_equal(ring.read(150, 250), x[150:250])
    np.testing.assert_array_equal(ring.read_time(2.0, 2.5), x[200:250])
    with pytest.raises(IndexError):
        ring.read(100, 160)


def test_ring_fills_forward_gaps_and_drops_backward_overlap():
    ring = AudioRing(sample_rate=100, span_s=10.0)
    ring.write(np.ones(50, dtype=np.float32), t=0.0)
    ring.write(np.full(10, 2.0, dtype=np.float32), t=1.0)  # 50 samples of silence first
    assert ring.gap_samples == 50
    assert ring.end_index == 110
    assert np.all(ring.read(50, 100) == 0)
    written = ring.write(np.full(20, 3.0, dtype=np.float32), t=1.0)  # 10 overlap, 10 new
    assert written == 10 and ring.dropped_overlap == 10
    np.testing.assert_array_equal(ring.read(100, 120), [2.0] * 10 + [3.0] * 10)


def test_latest_frame_slot_keeps_newest_per_interval_and_counts_drops():
    slot = LatestFrameSlot(interval_s=0.1, max_intervals=3)
    for i in range(5):  # 30 fps for 1/6 s: intervals (.., 0], (0, 0.1], (0.1, 0.2]
        slot.put(VideoFrame(t=i / 30, image=None, width=2, height=2))
    assert len(slot) == 3 and slot.dropped == 2  # 1/30 and 2/30 replaced by 0.1
    assert slot.take_until(-0.01) is None
    frame = slot.take_until(0.1)  # the frame at the tick itself, not evicted by 4/30
    assert frame is not None and frame.t == pytest.approx(0.1)
    assert slot.dropped == 3  # t=0 was never analysed
    for i in range(10):  # far ahead of the worker: only the newest intervals stay
        slot.put(VideoFrame(t=1.0 + i / 10, image=None, width=2, height=2))
    assert len(slot) == 3
    frame = slot.take_until(5.0)
    assert frame is not None and frame.t == pytest.approx(1.9)
    assert slot.take_until(5.0) is None
    assert slot.received == 15 and slot.taken == 2
    assert slot.dropped == slot.received - slot.taken


def test_vad_push_silence_equals_pushing_zeros():
    from tests.media import espeak_speech

    speech = espeak_speech("I want to, but I do not know.")
    a, b = VadTimeline(), VadTimeline()
    for vad in (a, b):
        vad.push(speech[: len(speech) // 2 + 123])  # ends mid-frame, in speech
    a.push(np.zeros(48_017, dtype=np.float32))
    b.push_silence(48_017)
    for vad in (a, b):
        vad.push(speech)
    assert a.end_time == b.end_time
    assert np.array_equal(a.flags(0, a.end_time), b.flags(0, b.end_time))
    assert a.segments(0, a.end_time) == b.segments(0, b.end_time)
    b.push_silence(16000 * 3600)  # an hour-long gap: bounded memory, time still advances
    assert b.end_time > 3600 and b.held == b.flags(0, b.end_time).size == 20_000


def test_vad_ring_wraps_without_changing_answers():
    """A short span overwrites its oldest flags; within what it still holds it answers as a
    long one (flags, segments, speech fraction, last speech end), in hops of any size."""
    from tests.media import espeak_speech

    speech = espeak_speech("I want to, but I do not know. Maybe next week, or the one after.")
    audio = np.concatenate([speech, np.zeros(7_001, dtype=np.float32), speech])
    short, long = VadTimeline(span_s=1.5), VadTimeline()
    for i in range(0, len(audio), 4_000):
        short.push(audio[i : i + 4_000])
    long.push(audio)
    end = short.end_time
    assert end == long.end_time and short.held == 50
    t0 = end - 1.5
    assert np.array_equal(short.flags(0.0, end), long.flags(t0, end))
    assert short.segments(0.0, end) == long.segments(t0, end) != []
    for t in np.arange(t0, end, 0.07):
        assert short.speech_fraction(t0, t) == long.speech_fraction(t0, t)
        expected = long.last_speech_end(t)
        assert short.last_speech_end(t) == (expected if expected and expected > t0 else None)
    assert short.last_speech_end(t0 - 1.0) is None  # no longer held


def test_slot_drops_a_frame_behind_one_already_taken():
    """The ingest lets a timestamp step back by a little (jitter); a frame behind one the
    analysis has taken comes too late (the face cues go forwards in media time: it raised
    "media time went back" there) and is dropped and counted, not analysed."""
    slot = LatestFrameSlot(interval_s=0.1)
    slot.put(VideoFrame(1.0, None, 2, 2))
    assert slot.take_until(1.0).t == 1.0
    slot.put(VideoFrame(0.95, None, 2, 2))  # stepped back 0.05 s
    slot.put(VideoFrame(1.0, None, 2, 2))  # the same time again
    assert len(slot) == 0 and slot.dropped == 2 and slot.take_until(1.1) is None
    slot.put(VideoFrame(1.05, None, 2, 2))
    assert [f.t for f in slot.take_all_until(1.1)] == [1.05]
    slot.put(VideoFrame(1.04, None, 2, 2))
    assert slot.take_all_until(1.2) == [] and slot.dropped == 3
    assert slot.received == 5 and slot.taken == 2


def test_a_write_longer_than_the_ring_keeps_its_newest_samples():
    """One write of more than the span (a long file chunk, a backlog) overwrote past the
    buffer's end (ValueError); the newest span of it is held, the rest counted lost."""
    ring = AudioRing(sample_rate=100, span_s=1.0)
    ring.write(np.arange(30, dtype=np.float32))
    ring.write(np.arange(30, 280, dtype=np.float32))
    assert ring.end_index == 280 and ring.start_index == 180
    assert np.array_equal(ring.read(180, 280), np.arange(180, 280, dtype=np.float32))
    assert ring.overwritten == 180
