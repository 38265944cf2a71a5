"""Receiver tuning: frames at their marker packet (only when complete); REMB throttled."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from stream.rtpreceiver import REMB_INTERVAL_MS, MarkerJitterBuffer, ThrottledEstimator


def _packet(seq: int, ts: int, data: bytes, marker: bool = False) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker))
    p._data = data
    return p


def test_frame_released_at_its_marker_packet():
    jb = MarkerJitterBuffer(capacity=16, is_video=True)
    assert jb.add(_packet(100, 3000, b"a")) == (False, None)
    assert jb.add(_packet(101, 3000, b"b")) == (False, None)
    _, frame = jb.add(_packet(102, 3000, b"c", marker=True))
    assert frame is not None and frame.data == b"abc" and frame.timestamp == 3000
    _, frame = jb.add(_packet(103, 6000, b"d", marker=True))  # one-packet frame
    assert frame is not None and frame.data == b"d" and frame.timestamp == 6000


def test_incomplete_frame_waits_for_aiortc_rule():
    jb = MarkerJitterBuffer(capacity=16, is_video=True)
    jb.add(_packet(200, 9000, b"a"))
    # 201 is late: the marker packet alone does not complete the frame.
    assert jb.add(_packet(202, 9000, b"c", marker=True)) == (False, None)
    _, frame = jb.add(_packet(201, 9000, b"b"))  # the gap is filled, but no marker now ...
    assert frame is None
    _, frame = jb.add(_packet(203, 12000, b"d"))  # ... so the next frame's packet releases it
    assert frame is not None and frame.data == b"abc"


def test_wraparound_of_sequence_numbers():
    jb = MarkerJitterBuffer(capacity=16, is_video=True)
    jb.add(_packet(65534, 1, b"x"))
    jb.add(_packet(65535, 1, b"y"))
    _, frame = jb.add(_packet(0, 1, b"z", marker=True))
    assert frame is not None and frame.data == b"xyz"


def test_remb_at_most_every_interval():
    est = ThrottledEstimator()
    sent = []
    # A sender whose packets arrive ever later than they were sent: the estimator sees
    # overuse and would ask for a REMB on nearly every packet.
    for i in range(3000):
        arrival = i * 2 + (i * i) // 4000
        remb = est.add(
            arrival_time_ms=arrival,
            abs_send_time=(i * 2 * 262144 // 1000) % (1 << 24),
            payload_size=1200,
            ssrc=1234,
        )
        if remb is not None:
            sent.append(arrival)
    assert len(sent) >= 2  # feedback still flows
    assert min(b - a for a, b in zip(sent, sent[1:], strict=False)) >= REMB_INTERVAL_MS
