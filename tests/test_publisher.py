"""Per-subscriber bounded queues: slow subscribers lose frames, never final events."""

from stream.events import Frame, SessionEnded, SessionStarted, Transcript, Video
from stream.publisher import Publisher


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
