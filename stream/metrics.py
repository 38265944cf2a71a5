"""Prometheus metrics of a server, collected by observing the events its sessions publish.

`ServerMetrics.observe` is attached as a listener to every session's
`Publisher` (see `Server.new_session`), so the numbers are those the
subscribers see: no extra hooks inside the session. Only counts, times and
codes are kept, never text (no transcript, no error messages, no session ids
as labels). `GET /metrics` serves them in the Prometheus text format; with
service tokens configured it needs ``Authorization: Bearer <service token>``
(session read tokens do not open it).

Metric names (README, Metrics):

- ``ahstream_sessions_active`` (gauge), ``ahstream_sessions_total``,
  ``ahstream_sessions_ended_total{reason}``, ``ahstream_media_seconds_total``
- ``ahstream_video_frames_received_total``, ``ahstream_video_frames_dropped_total``
  (from `status` events: counted up to the session's last status event)
- ``ahstream_events_total{type}``, ``ahstream_frame_events_total``
- ``ahstream_stage_lag_seconds{stage}`` (histogram of the `lags` of frame events)
- ``ahstream_asr_rtf`` (histogram of the `rtf` of status events),
  ``ahstream_asr_skipped_hops_total`` (from status events)
- ``ahstream_errors_total{code}``
- ``ahstream_subscribers`` (gauge), ``ahstream_subscriber_dropped_events_total``
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from stream.events import Error, Event, Frame, SessionEnded, SessionStarted, Status
from stream.serving import SERVER

if TYPE_CHECKING:
    from stream.server import Server

__all__ = ["LAG_BUCKETS", "RTF_BUCKETS", "ServerMetrics", "metrics_endpoint"]

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 5.0)
MAX_LABEL_VALUES = 32  # per label: stage names, error codes, end reasons
_LABEL_RE = re.compile(r"^[a-z][a-z0-9_. ]{0,39}$")  # "session.started" too


class _Labels:
    """Bounded, sanitised label values: anything unexpected becomes ``other``."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: Any) -> str:
        value = str(value)
        if value in self._seen:
            return value
        if not _LABEL_RE.match(value) or len(self._seen) >= MAX_LABEL_VALUES:
            return "other"
        self._seen.add(value)
        return value


class ServerMetrics:
    """The metrics of one server (its own registry, so several servers can share a process)."""

    def __init__(
        self,
        active_sessions: Callable[[], int] = lambda: 0,
        subscribers: Callable[[], int] = lambda: 0,
    ) -> None:
        disable_created_metrics()  # no `*_created` series next to every counter (process-wide)
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "ahstream_sessions_active", "Sessions that have not ended yet", registry=r
        )
        self.sessions_active.set_function(active_sessions)
        self.sessions = Counter("ahstream_sessions", "Sessions started", registry=r)
        self.sessions_ended = Counter(
            "ahstream_sessions_ended", "Sessions ended, by reason", ["reason"], registry=r
        )
        self.media_seconds = Counter(
            "ahstream_media_seconds", "Media seconds of ended sessions", registry=r
        )
        self.video_received = Counter(
            "ahstream_video_frames_received", "Video frames received", registry=r
        )
        self.video_dropped = Counter(
            "ahstream_video_frames_dropped",
            "Video frames dropped before analysis (newest-frame policy)",
            registry=r,
        )
        self.events = Counter(
            "ahstream_events", "Events published to subscribers, by type", ["type"], registry=r
        )
        self.frame_events = Counter(
            "ahstream_frame_events", "Frame events (analysis ticks) published", registry=r
        )
        self.lag = Histogram(
            "ahstream_stage_lag_seconds",
            "Seconds from media arrival to the event, per stage (frame events' lags)",
            ["stage"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "ahstream_asr_rtf",
            "ASR real-time factor (compute / media time) reported by status events",
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.asr_skipped = Counter(
            "ahstream_asr_skipped_hops",
            "ASR hops live sessions skipped to keep up with real time",
            registry=r,
        )
        self.errors = Counter("ahstream_errors", "Error events, by code", ["code"], registry=r)
        self.subscribers = Gauge(
            "ahstream_subscribers", "Websocket subscribers connected", registry=r
        )
        self.subscribers.set_function(subscribers)
        self.subscriber_dropped = Counter(
            "ahstream_subscriber_dropped_events",
            "Events dropped for subscribers that fell behind (frame/status/tentative only)",
            registry=r,
        )
        self._stage = _Labels()
        self._code = _Labels()
        self._reason = _Labels()
        self._type = _Labels()
        # session -> {counter: the cumulative value its status events reported so far}
        self._seen: dict[str, dict[Counter, int]] = {}

    def observe(self, event: Event) -> None:
        """Account for one published event (a `Publisher` listener; never raises)."""
        try:
            self._observe(event)
        except Exception:  # metrics must never break a session
            log.exception("metrics: cannot account for %r", getattr(event, "type", event))

    def _observe(self, event: Event) -> None:
        self.events.labels(self._type(event.type)).inc()
        if isinstance(event, Frame):
            self.frame_events.inc()
            for stage, seconds in event.lags.items():
                if seconds is not None and seconds >= 0:
                    self.lag.labels(self._stage(stage)).observe(seconds)
        elif isinstance(event, Status):
            if event.rtf is not None:
                self.rtf.observe(event.rtf)
            self._cumulative(event.session, self.video_received, event.received_video_frames)
            self._cumulative(event.session, self.video_dropped, event.dropped_video_frames)
            self._cumulative(event.session, self.asr_skipped, getattr(event, "asr_skipped", 0))
        elif isinstance(event, Error):
            self.errors.labels(self._code(event.code)).inc()
        elif isinstance(event, SessionStarted):
            self.sessions.inc()
            self._seen[event.session] = {}
        elif isinstance(event, SessionEnded):
            self.sessions_ended.labels(self._reason(event.reason)).inc()
            self.media_seconds.inc(max(0.0, event.duration))
            self._seen.pop(event.session, None)

    def _cumulative(self, session: str, counter: Counter, value: int) -> None:
        """Add the growth of a per-session cumulative count to a server-wide counter."""
        seen = self._seen.setdefault(session, {})
        before = seen.get(counter, 0)
        if value > before:
            counter.inc(value - before)
            seen[counter] = value

    def subscriber_left(self, dropped: int) -> None:
        """Account for a subscriber that went away having lost ``dropped`` events."""
        if dropped > 0:
            self.subscriber_dropped.inc(dropped)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    """`GET /metrics`: Prometheus text format (a service token is required when auth is on)."""
    server: Server = request.app[SERVER]
    server.auth.require_service(request)
    resp = web.Response(body=server.metrics.exposition())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
