"""Cross-session micro-batching: one runner per model, shared by every session of a server.

Sessions call a model from executor threads (their analysis ticks), usually one item
at a time. A `MicroBatcher` wraps the model's `models.runner.Runner` and is itself a
`Runner`, so a model switched to it (``use_runner``) needs no other change. Its one
worker thread takes the oldest pending request, gathers the requests pending behind it
whose non-batch shapes and dtypes match (up to ``max_batch`` items), runs the runner
once on their concatenation and hands each caller its slice of the outputs.

When does the worker wait for more requests?

- Requests that pile up while the runner is busy always go into the next batch (no
  added latency: they would have waited anyway).
- Beyond that, with ``wait="expected"`` (the default) the worker waits — at most
  ``max_wait_ms`` after the oldest request arrived — only while some caller has
  announced a request that has not come yet (`MicroBatcher.expecting`: a session
  announces its FER request when its tick starts the face mesh). A session alone
  never waits for itself. ``wait="always"`` waits the full ``max_wait_ms`` for
  ``max_batch`` items (classic micro-batching; for accelerators where a larger batch
  pays for the wait).
- A `run` that finds the runner idle, nothing pending and no request announced runs
  in the caller's thread (no hand-off to the worker, which can cost up to the GIL's
  5 ms switch interval on a busy process); requests arriving meanwhile queue for the
  next batch. The runner never runs twice at once.
- ``max_batch=1`` or ``max_wait_ms=0`` turns batching off: `run` calls the runner in
  the caller's thread, as if there were no batcher.

The pending queue is bounded (``max_pending`` requests) with policy **block**: a full
queue makes the submitter wait for room (back-pressure on the executor threads); no
request is ever dropped. A request is validated when it is submitted (its names, at
least one dimension, one batch size for all inputs), so a malformed request raises
in its caller's thread and never joins a batch. If a batched run still fails, each of
its requests is run again alone, so the error reaches only the callers whose request
fails by itself. `close` stops taking requests, runs the pending ones and joins the
worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.runner import Runner
from stream.redaction import log_failure

__all__ = [
    "PENDING_POLICY",
    "BatchStats",
    "BatcherClosed",
    "BatcherFull",
    "BatcherCollector",
    "MicroBatcher",
    "SharedRunners",
]

#: What a full pending queue does to a submitter: it waits for room (nothing is dropped).
PENDING_POLICY = "block"

WAIT_POLICIES = ("expected", "always")

#: Histogram buckets (Prometheus) of batch sizes, items, and of request waits, seconds.
SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher is closed and takes no more requests."""


class BatcherFull(RuntimeError):
    """``submit(block=False)`` found the pending queue full."""


@dataclass(frozen=True)
class BatchStats:
    """Counters of one batcher since it started."""

    name: str
    requests: int  # requests run (including failed ones)
    items: int  # items (rows on axis 0) run
    batches: int  # runner calls
    failed: int  # requests that ended with an error
    max_batch_items: int  # largest batch run, in items
    mean_batch_items: float  # items per runner call
    max_wait_s: float  # longest time a request waited from submit to its run
    mean_wait_s: float
    pending: int  # requests waiting now
    sizes: dict[int, int]  # items per runner call -> how many calls
    waits: dict[float, int]  # WAIT_BUCKETS upper bound (s) -> requests that waited that long
    wait_sum_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (status events, benchmarks)."""
        return dataclasses.asdict(self)


@dataclass(eq=False)  # compared by identity (their arrays have no truth value)
class _Request:
    inputs: dict[str, np.ndarray]
    n: int  # items (axis 0)
    key: tuple[Any, ...]  # requests with equal keys can be concatenated
    future: Future[dict[str, np.ndarray]]
    submitted: float


class _Announcement:
    """One expected request of one thread (see `MicroBatcher.expecting`)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


class MicroBatcher:
    """A `Runner` that batches the requests of many threads into fewer runs of ``runner``."""

    def __init__(
        self,
        runner: Runner,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        *,
        wait: str = "expected",
        max_pending: int = 256,
        name: str | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1, max_wait_ms >= 0")
        if wait not in WAIT_POLICIES:
            raise ValueError(f"wait must be one of {WAIT_POLICIES}, got {wait!r}")
        self.runner = runner
        self.name = name or runner.name
        self.backend = runner.backend
        self.input_names = tuple(runner.input_names)
        self.output_names = tuple(runner.output_names)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.wait = wait
        self.max_pending = max_pending
        self.enabled = max_batch > 1 and max_wait_ms > 0
        self._cv = threading.Condition()
        self._pending: deque[_Request] = deque()
        self._expected = 0  # announced requests not submitted yet
        self._busy = False  # the runner is running (the worker's batch or an inline request)
        self._local = threading.local()
        self._closed = False
        # counters (under _cv)
        self._requests = 0
        self._items = 0
        self._batches = 0
        self._failed = 0
        self._max_items = 0
        self._wait_sum = 0.0
        self._wait_max = 0.0
        self._sizes: Counter[int] = Counter()
        self._waits: Counter[float] = Counter()
        self._worker: threading.Thread | None = None
        if self.enabled:
            self._worker = threading.Thread(
                target=self._work, name=f"batch-{self.name}", daemon=True
            )
            self._worker.start()

    # ---- callers ------------------------------------------------------------------

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one request (batch on axis 0) and return its outputs; blocks until done."""
        if not self.enabled:
            return self._run_direct(inputs)
        return self._enqueue(inputs, block=True, inline=True).result()

    async def run_async(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`run` for asyncio callers: the event loop never blocks (a full queue is waited
        for in a thread, a disabled batcher runs in the default executor)."""
        if not self.enabled:
            return await asyncio.to_thread(self._run_direct, inputs)
        try:
            future = self.submit(inputs, block=False)
        except BatcherFull:
            future = await asyncio.to_thread(self.submit, inputs)
        return await asyncio.wrap_future(future)

    def submit(
        self, inputs: Mapping[str, np.ndarray], block: bool = True
    ) -> Future[dict[str, np.ndarray]]:
        """Queue one request; its future gets the outputs (or the error of its run).

        Raises at once (ValueError/KeyError) for a malformed request, `BatcherClosed`
        after `close`, and `BatcherFull` when the queue is full and ``block`` is False
        (with ``block`` True, the policy `PENDING_POLICY`: wait for room)."""
        if not self.enabled:
            future: Future[dict[str, np.ndarray]] = Future()
            try:
                future.set_result(self._run_direct(inputs))
            except Exception as exc:
                future.set_exception(exc)
            return future
        return self._enqueue(inputs, block, inline=False)

    def _enqueue(
        self, inputs: Mapping[str, np.ndarray], block: bool, inline: bool
    ) -> Future[dict[str, np.ndarray]]:
        """Queue a request, or with ``inline`` run it in this thread when batching could
        not gain anything: the runner idle, nothing pending, no announced request (a
        session alone pays no hand-off to the worker thread)."""
        arrays, n, key = self._validate(inputs)
        request = _Request(arrays, n, key, Future(), 0.0)
        announcement = self._take_announcement()
        with self._cv:
            if announcement is not None:
                self._expected -= 1
            while len(self._pending) >= self.max_pending and not self._closed:
                if not block:
                    raise BatcherFull(f"{self.name}: {self.max_pending} requests pending")
                self._cv.wait()
            if self._closed:
                raise BatcherClosed(f"{self.name}: the batcher is closed")
            request.submitted = time.monotonic()
            inline = (
                inline
                and self.wait == "expected"
                and not self._busy
                and not self._pending
                and self._expected <= 0
            )
            if inline:
                self._busy = True  # requests arriving meanwhile queue for the next batch
            else:
                self._pending.append(request)
                self._cv.notify_all()
        if inline:
            try:
                self._finish([request], self._call(arrays, n), request.submitted)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        return request.future

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce that this thread will submit one request within the block, so that
        the worker may hold a batch (at most ``max_wait_ms``) for it. The first request
        this thread submits inside the block fulfils the announcement; leaving the block
        without one withdraws it."""
        if not self.enabled:
            yield
            return
        token = _Announcement()
        stack: list[_Announcement] = self._local.__dict__.setdefault("stack", [])
        stack.append(token)
        with self._cv:
            self._expected += 1
        try:
            yield
        finally:
            stack.remove(token)
            if token.open:
                token.open = False
                with self._cv:
                    self._expected -= 1
                    self._cv.notify_all()

    def _take_announcement(self) -> _Announcement | None:
        for token in reversed(self._local.__dict__.get("stack", ())):
            if token.open:
                token.open = False
                return token
        return None

    def _validate(
        self, inputs: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], int, tuple[Any, ...]]:
        """The request's arrays, its batch size and its concatenation key (or raise)."""
        if not isinstance(inputs, Mapping):
            raise TypeError(f"{self.name}: inputs must be a mapping of names to arrays")
        names = set(inputs)
        if names != set(self.input_names):
            missing = sorted(set(self.input_names) - names)
            extra = sorted(names - set(self.input_names))
            raise KeyError(f"{self.name}: missing inputs {missing}, unknown inputs {extra}")
        arrays = {k: np.asarray(inputs[k]) for k in self.input_names}
        sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
        if any(s is None for s in sizes.values()):
            raise ValueError(f"{self.name}: every input needs a batch axis, got {sizes}")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{self.name}: inputs disagree on the batch size: {sizes}")
        n = next(iter(sizes.values()))
        if not n:
            raise ValueError(f"{self.name}: empty request (batch size 0)")
        key = tuple((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items())
        return arrays, int(n), key

    # ---- worker ---------------------------------------------------------------------

    def _work(self) -> None:
        group: list[_Request] = []
        try:
            while True:
                with self._cv:
                    # One run at a time: wait for requests and for an inline run to end.
                    while not self._pending or self._busy:
                        if self._closed and not self._pending:
                            return  # closed and drained
                        self._cv.wait()
                    group = self._gather()
                    self._busy = True
                    self._cv.notify_all()  # room in the queue for blocked submitters
                try:
                    self._run_group(group)
                finally:
                    with self._cv:
                        self._busy = False
                        self._cv.notify_all()
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            log_failure(log, exc, "batcher %s: worker failed; closing", self.name)
            with self._cv:
                self._closed = True
                stranded = [*group, *self._pending]
                self._pending.clear()
                self._cv.notify_all()
            for r in stranded:
                if not r.future.done():
                    r.future.set_exception(BatcherClosed(f"{self.name}: worker failed: {exc!r}"))
            raise

    def _gather(self) -> list[_Request]:
        """Wait (see the module docstring) and take the next batch (under ``_cv``)."""
        first = self._pending[0]
        deadline = first.submitted + self.max_wait_s
        while True:
            group = [r for r in self._pending if r.key == first.key]
            items = 0
            taken: list[_Request] = []
            for r in group:
                if taken and items + r.n > self.max_batch:
                    break
                taken.append(r)
                items += r.n
            if items >= self.max_batch or self._closed:
                break
            if self.wait == "expected" and self._expected <= 0:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cv.wait(remaining)
        for r in taken:
            self._pending.remove(r)
        return taken

    def _run_group(self, group: list[_Request]) -> None:
        started = time.monotonic()
        if len(group) == 1:
            self._finish(group, self._call(group[0].inputs, group[0].n), started)
            return
        names = self.input_names
        batch = {k: np.concatenate([r.inputs[k] for r in group], axis=0) for k in names}
        outputs = self._call(batch, sum(r.n for r in group))
        if isinstance(outputs, Exception):
            # Something in the batch fails: run each alone so the error reaches only its
            # own caller(s).
            for r in group:
                self._finish([r], self._call(r.inputs, r.n), started)
            return
        self._finish(group, outputs, started)

    def _call(self, inputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray] | Exception:
        """One runner call; the error instead of raising; checks the outputs' batch axis."""
        try:
            outputs = self.runner.run(inputs)
            for k, v in outputs.items():
                if np.ndim(v) == 0 or np.shape(v)[0] != n:
                    raise ValueError(
                        f"{self.name}: output {k} has shape {np.shape(v)}, expected batch {n}"
                    )
        except Exception as exc:
            return exc
        finally:
            with self._cv:
                self._batches += 1
                self._items += n
                self._max_items = max(self._max_items, n)
                self._sizes[n] += 1
        return outputs

    def _finish(
        self,
        group: list[_Request],
        outputs: dict[str, np.ndarray] | Exception,
        started: float,
    ) -> None:
        with self._cv:
            for r in group:
                waited = started - r.submitted
                self._requests += 1
                self._wait_sum += waited
                self._wait_max = max(self._wait_max, waited)
                self._waits[next((b for b in WAIT_BUCKETS if waited <= b), float("inf"))] += 1
                self._failed += isinstance(outputs, Exception)
        if isinstance(outputs, Exception):
            for r in group:
                r.future.set_exception(outputs)
            return
        i = 0
        for r in group:
            r.future.set_result({k: v[i : i + r.n] for k, v in outputs.items()})
            i += r.n

    def _run_direct(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batching off: the runner in the caller's thread (still counted)."""
        if self._closed:
            raise BatcherClosed(f"{self.name}: the batcher is closed")
        arrays, n, _ = self._validate(inputs)
        started = time.monotonic()
        outputs = self._call(arrays, n)
        self._finish([_Request(arrays, n, (), Future(), started)], outputs, started)
        if isinstance(outputs, Exception):
            raise outputs
        return outputs

    # ---- lifecycle and counters --------------------------------------------------

    def close(self, timeout: float | None = 10.0) -> None:
        """Take no more requests, run the pending ones, stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> BatchStats:
        """The counters now."""
        with self._cv:
            return BatchStats(
                name=self.name,
                requests=self._requests,
                items=self._items,
                batches=self._batches,
                failed=self._failed,
                max_batch_items=self._max_items,
                mean_batch_items=self._items / self._batches if self._batches else 0.0,
                max_wait_s=self._wait_max,
                mean_wait_s=self._wait_sum / self._requests if self._requests else 0.0,
                pending=len(self._pending),
                sizes=dict(sorted(self._sizes.items())),
                waits=dict(sorted(self._waits.items())),
                wait_sum_s=self._wait_sum,
            )


class SharedRunners:
    """Every batchable model of a loaded profile switched to one shared `MicroBatcher`.

    A model is batchable when it has a ``runner`` and ``use_runner``: the lite FER model
    (`models.expression.ExpressionModel`, whose ``active_runner`` is what it calls) and
    the full profile's encoders (`models.hub_encoders`). The batcher wraps the runner the
    model calls now; `close` gives it back and stops the batchers."""

    def __init__(self, models: Any, max_batch: int = 8, max_wait_ms: float = 2.0) -> None:
        self.batchers: dict[str, MicroBatcher] = {}
        self._restore: list[tuple[Any, Runner]] = []
        fields = vars(models) if hasattr(models, "__dict__") else {}
        for attr, model in fields.items():
            runner = getattr(model, "active_runner", None) or getattr(model, "runner", None)
            if runner is None or not callable(getattr(model, "use_runner", None)):
                continue
            batcher = MicroBatcher(runner, max_batch, max_wait_ms)
            model.use_runner(batcher)
            self.batchers[attr] = batcher
            self._restore.append((model, runner))

    def stats(self) -> list[BatchStats]:
        """The counters of every batcher."""
        return [b.stats() for b in self.batchers.values()]

    def close(self) -> None:
        """Back to the models' own runners; pending requests are run first."""
        for model, runner in self._restore:
            model.use_runner(runner)
        for batcher in self.batchers.values():
            batcher.close()

    def collector(self) -> BatcherCollector:
        """A Prometheus collector over these batchers (register it in a registry)."""
        return BatcherCollector(self.batchers.values())


class BatcherCollector:
    """Prometheus metrics of batchers, read when scraped (``registry.register(it)``); only
    counters, histograms and a sum-able gauge, so a multi-process front may add up its
    workers' numbers: ``ahstream_batch_{requests,items,runs,failed_requests}_total{model}``,
    ``ahstream_batch_size{model}`` (histogram of items per run; mean = items / runs),
    ``ahstream_batch_wait_seconds{model}`` (histogram of each request's wait from submit
    to its run), ``ahstream_batch_pending{model}`` (gauge)."""

    def __init__(self, batchers: Iterable[MicroBatcher]) -> None:
        self._batchers = list(batchers)

    def collect(self) -> Iterator[Any]:
        """The metric families (prometheus_client's custom-collector interface)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = [b.stats() for b in self._batchers]
        counters = {
            "requests": ("Requests run by the cross-session batcher", "requests"),
            "items": ("Items run by the cross-session batcher", "items"),
            "runs": ("Model runs (batches) of the cross-session batcher", "batches"),
            "failed_requests": ("Batcher requests that ended with an error", "failed"),
        }
        for metric, (doc, attr) in counters.items():
            family = CounterMetricFamily(f"ahstream_batch_{metric}", doc, labels=["model"])
            for s in stats:
                family.add_metric([s.name], getattr(s, attr))
            yield family
        sizes = HistogramMetricFamily(
            "ahstream_batch_size", "Items per batched model run", labels=["model"]
        )
        waits = HistogramMetricFamily(
            "ahstream_batch_wait_seconds",
            "Seconds a request waited from submit to the start of its run",
            labels=["model"],
        )
        pending = GaugeMetricFamily(
            "ahstream_batch_pending", "Requests waiting for a batch", labels=["model"]
        )
        for s in stats:
            sizes.add_metric([s.name], _cumulative(s.sizes, SIZE_BUCKETS), float(s.items))
            waits.add_metric([s.name], _cumulative(s.waits, WAIT_BUCKETS), s.wait_sum_s)
            pending.add_metric([s.name], s.pending)
        yield sizes
        yield waits
        yield pending


def _cumulative(counts: Mapping[Any, int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (``le`` -> cumulative count) from exact counts."""
    buckets = [(str(b), float(sum(n for v, n in counts.items() if v <= b))) for b in bounds]
    return [*buckets, ("+Inf", float(sum(counts.values())))]
