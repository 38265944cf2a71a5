"""Fan-out of one session's events to its subscribers, one bounded queue each.

Drop policy: when a subscriber's queue is full, its oldest droppable event
(`frame`, `status`, tentative `transcript`) is discarded to make room;
critical events (`session.*`, committed transcript, final `video`, errors,
cues, segments) are never dropped, so a queue may exceed its bound only by
critical events. Critical events are also kept (bounded) and replayed to
subscribers that join late, so none of the session's results are lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from stream.events import Event, SessionEnded

__all__ = ["Publisher", "Subscription"]


class Subscription:
    """One subscriber's bounded queue of JSON messages."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[tuple[bool, str]] = deque()
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def put(self, event_json: str, critical: bool) -> None:
        """Enqueue without blocking, dropping the oldest droppable event if full."""
        if len(self._items) >= self.maxsize:
            for i, (crit, _) in enumerate(self._items):
                if not crit:
                    del self._items[i]
                    self.dropped += 1
                    break
            else:
                if not critical:
                    self.dropped += 1
                    return
        self._items.append((critical, event_json))
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def get(self) -> str | None:
        """Next message, or None once closed and drained."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()[1]

    def __len__(self) -> int:
        return len(self._items)


class Publisher:
    """Publishes a session's events to every subscription."""

    def __init__(self, session_id: str, queue_size: int = 256, history: int = 5000) -> None:
        self.session_id = session_id
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._history: deque[str] = deque(maxlen=history)
        self.ended = False
        self.count = 0
        self.listeners: list[Callable[[Event], None]] = []  # called synchronously, lossless

    def publish(self, event: Event) -> None:
        """Send an event to all subscribers (never blocks)."""
        msg = event.to_json()
        critical = event.critical
        self.count += 1
        if critical:
            self._history.append(msg)
        for listener in self.listeners:
            listener(event)
        for sub in self._subs:
            sub.put(msg, critical)
        if isinstance(event, SessionEnded):
            self.ended = True
            for sub in self._subs:
                sub.close()

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        """A new subscription, pre-filled with the critical events so far."""
        sub = Subscription(queue_size or self.queue_size)
        for msg in self._history:
            sub.put(msg, True)
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
