"""Fan-out of one session's events to its subscribers, one bounded queue each.

Drop policy: when a subscriber's queue is full, its oldest droppable event
(`frame`, `status`, tentative `transcript`) is discarded to make room;
critical events (`session.*`, committed transcript, final `video`, errors,
cues, segments) are never dropped, so a queue may exceed its bound only by
critical events. `session.started` and the newest 5,000 critical events after it are
also kept and replayed to subscribers that join late (an hour-long call publishes
fewer than that), so a late subscriber misses none of a session's results.
No queue is ever scanned: `put` is O(1) and a late join costs O(history), once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable

from stream.events import Event, SessionEnded, SessionStarted
from stream.redaction import log_failure

__all__ = ["Publisher", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """One subscriber's bounded queue of JSON messages, delivered in arrival order.

    Bound: ``maxsize`` messages. When full, `put` drops the oldest droppable message
    to make room; with none queued, a droppable newcomer is dropped instead and a
    critical one is queued beyond the bound. ``dropped`` counts both. ``backlog``
    (critical messages, a late joiner's replay) is queued first, beyond the bound if
    need be. Critical and droppable messages wait in two deques tagged with their
    arrival number, so dropping is O(1) and `get` merges them back in order.
    """

    def __init__(self, maxsize: int, backlog: Iterable[str] = ()) -> None:
        self.maxsize = maxsize
        self._critical: deque[tuple[int, str]] = deque(enumerate(backlog))
        self._droppable: deque[tuple[int, str]] = deque()
        self._next = len(self._critical)  # arrival number of the next message
        self._ready = asyncio.Event()
        if self._critical:
            self._ready.set()
        self.dropped = 0
        self.closed = False

    def put(self, event_json: str, critical: bool) -> None:
        """Enqueue without blocking, dropping the oldest droppable message if full."""
        if len(self) >= self.maxsize:
            if self._droppable:
                self._droppable.popleft()
                self.dropped += 1
            elif not critical:
                self.dropped += 1
                return
        queue = self._critical if critical else self._droppable
        queue.append((self._next, event_json))
        self._next += 1
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> str | None:
        """Next message, or None once closed and drained."""
        while not (self._critical or self._droppable):
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        crit, drop = self._critical, self._droppable
        if crit and (not drop or crit[0][0] < drop[0][0]):  # the older head goes first
            return crit.popleft()[1]
        return drop.popleft()[1]

    def __len__(self) -> int:
        return len(self._critical) + len(self._droppable)


class Publisher:
    """Publishes a session's events to every subscription.

    ``queue_size`` bounds each subscription (see `Subscription`); `session.started` and
    the last ``history`` critical events after it are kept for late subscribers, older
    ones are forgotten. A listener that raises is logged and skipped: it never keeps an
    event from the subscribers.
    """

    def __init__(self, session_id: str, queue_size: int = 256, history: int = 5000) -> None:
        self.session_id = session_id
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._started: list[str] = []  # the session.started event, always replayed
        self._history: deque[str] = deque(maxlen=history)
        self.ended = False
        self.count = 0
        self.listeners: list[Callable[[Event], None]] = []  # called synchronously, lossless

    def publish(self, event: Event) -> None:
        """Send an event to all subscribers (never blocks)."""
        msg = event.to_json()
        critical = event.critical
        self.count += 1
        if isinstance(event, SessionStarted) and not self._started:
            self._started.append(msg)
        elif critical:
            self._history.append(msg)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:
                log_failure(log, exc, "session %s: an event listener failed", self.session_id)
        for sub in self._subs:
            sub.put(msg, critical)
        if isinstance(event, SessionEnded):
            self.ended = True
            for sub in self._subs:
                sub.close()

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        """A new subscription, pre-filled with the kept critical events (O(history), once)."""
        sub = Subscription(
            queue_size or self.queue_size, backlog=itertools.chain(self._started, self._history)
        )
        if self.ended:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)
        sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._subs)
