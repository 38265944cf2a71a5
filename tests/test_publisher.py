"""Per-subscriber bounded queues: slow subscribers lose frames, never final events."""

import random
import sys
from collections.abc import Callable
from types import FrameType

import pytest

import stream.publisher as publisher_module
from stream.events import Cue, Frame, SessionEnded, SessionStarted, Transcript, Video
from stream.publisher import Publisher, Subscription


async def _drain(sub):
    out = []
    while (msg := await sub.get()) is not None:
        out.append(msg)
    return out


async def test_slow_subscriber_drops_old_frames_but_keeps_finals():
    pub = Publisher("s1", queue_size=32)
    sub = pub.subscribe()
    pub.publish(SessionStarted("s1"))
    for i in range(100):
        pub.publish(Frame("s1", t=i / 10, p=0.5))
        if i % 10 == 0:
            pub.publish(Transcript("s1", t0=i / 10, t1=i / 10 + 0.1, text=f"w{i}", final=True))
            pub.publish(Transcript("s1", t0=i / 10, t1=i / 10 + 0.1, text="tent", final=False))
    pub.publish(Video("s1", t=10.0, p=0.7, label=1, final=True))
    pub.publish(SessionEnded("s1", duration=10.0))
    msgs = await _drain(sub)
    assert sub.dropped > 0
    assert sum('"transcript"' in m and '"final":true' in m for m in msgs) == 10
    assert any('"video"' in m and '"final":true' in m for m in msgs)
    assert msgs[0].startswith('{"v":1,"type":"session.started"')
    assert '"session.ended"' in msgs[-1]
    frames = [m for m in msgs if '"type":"frame"' in m]
    assert frames and '"t":9.9' in frames[-1]  # the newest frames survive, the oldest go


async def test_late_subscriber_gets_critical_history_and_end():
    pub = Publisher("s2")
    pub.publish(SessionStarted("s2"))
    pub.publish(Frame("s2", t=0.1, p=0.2))
    pub.publish(Transcript("s2", t0=0, t1=1, text="hello", final=True))
    pub.publish(SessionEnded("s2", duration=1.0))
    msgs = await _drain(pub.subscribe())
    types = [m.split('"type":"')[1].split('"')[0] for m in msgs]
    assert types == ["session.started", "transcript", "session.ended"]


class _ReferenceQueue:
    """The documented drop policy, written the plain (scanning) way, to compare against."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: list[tuple[bool, str]] = []
        self.dropped = 0

    def put(self, msg: str, critical: bool) -> None:
        if len(self.items) >= self.maxsize:
            oldest = next((i for i, (crit, _) in enumerate(self.items) if not crit), None)
            if oldest is not None:
                del self.items[oldest]
                self.dropped += 1
            elif not critical:
                self.dropped += 1
                return
        self.items.append((critical, msg))


async def test_subscription_follows_the_documented_drop_policy():
    rng = random.Random(7)
    for backlog in (0, 3, 20):
        sub = Subscription(8, backlog=[f"h{i}" for i in range(backlog)])
        ref = _ReferenceQueue(8)
        for i in range(backlog):
            ref.put(f"h{i}", True)
        for i in range(2000):
            if rng.random() < 0.6:
                critical = rng.random() < 0.3
                sub.put(f"m{i}", critical)
                ref.put(f"m{i}", critical)
            elif ref.items:
                assert await sub.get() == ref.items.pop(0)[1]
            assert (len(sub), sub.dropped) == (len(ref.items), ref.dropped)


async def test_late_subscriber_to_long_session_gets_all_criticals_in_order():
    pub = Publisher("s3", queue_size=256, history=5000)
    cues = [
        Cue("s3", t0=i, t1=i + 1, cue="filler", modality="text", strength=0.5) for i in range(5000)
    ]
    for cue in cues:
        pub.publish(cue)
    sub = pub.subscribe()
    assert len(sub) == 5000  # the replay may exceed the bound: it is all critical
    for i in range(10):
        pub.publish(Frame("s3", t=i, p=0.5))  # queue over its bound with nothing droppable
    assert sub.dropped == 10
    for _ in range(5000 - 250):
        await sub.get()
    for i in range(10):
        pub.publish(Frame("s3", t=100 + i, p=0.5))  # 6 fit, then each evicts the oldest frame
    pub.publish(SessionEnded("s3", duration=5000.0))  # the queue is full: evicts one more frame
    rest = await _drain(sub)
    assert rest[:250] == [c.to_json() for c in cues[-250:]]
    assert rest[250:-1] == [Frame("s3", t=t, p=0.5).to_json() for t in range(105, 110)]
    assert '"session.ended"' in rest[-1] and sub.dropped == 10 + 5


def _lines_run_in_publisher(fn: Callable[[], object]) -> int:
    """Python lines executed in stream/publisher.py while ``fn`` runs: work, not time."""
    if sys.gettrace() is not None:
        pytest.skip("another tracer (coverage, a debugger) is active")
    lines = 0

    def trace(frame: FrameType, event: str, arg: object) -> object:
        nonlocal lines
        if frame.f_code.co_filename != publisher_module.__file__:
            return None
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return lines


def test_joining_and_publishing_never_scan_a_queue():
    pub = Publisher("s4", queue_size=16, history=400)
    for i in range(400):
        pub.publish(Cue("s4", t0=i, t1=i + 1, cue="filler", modality="text", strength=0.5))
    subs = []
    assert _lines_run_in_publisher(lambda: subs.append(pub.subscribe())) < 50  # not per event
    events = [
        Cue("s4", t0=i, t1=i + 1, cue="pause", modality="voice", strength=0.5) for i in range(200)
    ] + [Frame("s4", t=i, p=0.5) for i in range(200)]
    lines = _lines_run_in_publisher(lambda: [pub.publish(e) for e in events])
    assert lines < 40 * len(events)  # a bounded amount per event, whatever is queued
    assert len(subs[0]) == 600 and subs[0].dropped == 200


async def test_history_bound_keeps_session_started_and_the_newest_results():
    pub = Publisher("s1", history=50)
    pub.publish(SessionStarted("s1"))
    for i in range(120):
        pub.publish(Cue("s1", t0=i, t1=i + 1, cue="hedge", modality="text", strength=0.5))
    msgs = await _drain_now(pub.subscribe())
    assert msgs[0].startswith('{"v":1,"type":"session.started"')
    assert len(msgs) == 51 and '"t0":70' in msgs[1] and '"t0":119' in msgs[-1]


async def test_a_failing_listener_does_not_keep_events_from_subscribers(caplog):
    pub = Publisher("s1")

    def broken(event):
        raise OSError("disk full")

    pub.listeners.append(broken)
    sub = pub.subscribe()
    pub.publish(SessionStarted("s1"))
    pub.publish(SessionEnded("s1", duration=1.0))
    msgs = await _drain(sub)
    assert [m.split('"type":"')[1].split('"')[0] for m in msgs] == [
        "session.started",
        "session.ended",
    ]
    assert "an event listener failed (OSError)" in caplog.text
    assert "test_publisher.py" in caplog.text  # where it was raised ...


async def test_a_failure_is_logged_without_its_message(caplog):
    """... but not its text, which may quote what it was working on: here a transcript
    (health data, never in the log). The same helper logs every failure of a session."""

    def quoting(event):
        raise ValueError(f"cannot handle {event.text!r}") from KeyError(event.text.upper())

    pub = Publisher("s1")
    pub.listeners.append(quoting)
    pub.publish(Transcript("s1", t0=0.0, t1=1.0, text="I want to stop but", final=True))
    assert "an event listener failed (ValueError)" in caplog.text
    assert "want to stop" not in caplog.text.lower(), caplog.text


async def _drain_now(sub):
    out = []
    while len(sub):
        out.append(await sub.get())
    return out
