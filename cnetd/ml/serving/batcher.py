"""The micro-batcher of one served model.

Requests wait in a bounded queue (one more is a 429). The dispatcher sends the queue to the
least busy ready worker as one batch of up to `max_batch_size` instances. A worker holds at
most PIPELINE_DEPTH batches, so while it is busy the queue grows into the next batch by
itself; `max_delay_ms` is only spent waiting for company when other batches are in flight
(a lone request never waits for a batch that is not coming). Every request has a deadline
(`timeout_ms`): a 504 when a worker took it and did not answer, a 503 when no worker was
there to take it. A worker that dies fails only the batches it held (503); the queue goes to
the other workers or waits for the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnetd.background import wait_event
from cnetd.errors import BadGateway, DomainError, TimedOut, TooMany, Unavailable
from cnetd.metrics.prometheus import BATCH_BUCKETS, LATENCY_BUCKETS, LOAD_BUCKETS, Histogram
from cnetd.metrics.window import LatencyWindow
from cnetd.ml.monitor.drift import InputDrift
from cnetd.ml.serving.client import ProtocolError, Values, WorkerClient, WorkerLost, WorkerRejected
from cnetd.ml.serving.spec import ServingSpec

log = logging.getLogger(__name__)

PIPELINE_DEPTH = 2  # batches a worker may hold: one being computed, the next one ready

ERROR_REASONS = {400: "bad_input", 429: "queue_full", 502: "bad_answer", 503: "unavailable", 504: "timeout"}


class Rejected(DomainError):
    """The worker refused the input; its message is the error."""

    status = 400


@dataclass
class ModelMetrics:
    requests: dict[int, int] = field(default_factory=dict)  # by HTTP status
    errors: dict[str, int] = field(default_factory=dict)  # by reason
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    cache_hits: int = 0
    cache_misses: int = 0
    worker_restarts: int = 0
    reloads: int = 0  # workers replaced because the model file changed
    reload_failures: int = 0  # replacement workers that could not load the changed file
    # per-version monitoring (cnetd.ml.monitor)
    queue_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))  # arrival -> sent to a worker
    compute_time: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))  # batch sent -> answered
    load_time: Histogram = field(default_factory=lambda: Histogram(LOAD_BUCKETS))  # worker started -> ready
    in_flight: int = 0  # requests inside predict() now
    window: LatencyWindow = field(default_factory=LatencyWindow)  # since the last roll-up (swapped by it)
    drift: InputDrift | None = None  # set by the monitor when the training result has input_stats

    def record(self, status: int, seconds: float) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1
        if status >= 400:
            reason = ERROR_REASONS.get(status, "error")
            self.errors[reason] = self.errors.get(reason, 0) + 1
        self.latency.observe(seconds)
        self.window.add(seconds, status >= 400)


@dataclass(frozen=True)
class Answer:
    values: Values  # one prediction per instance: a list, or an array (a slice of the batch's)
    worker: str  # the task id of the worker that answered, or "cache"
    model_stamp: tuple[int, int] | None = None  # of the model file the worker loaded

    @property
    def predictions(self) -> list[Any]:
        """The predictions as JSON values, as the worker's JSON answer had them."""
        values = self.values
        return values.tolist() if isinstance(values, np.ndarray) else values


def batch_key(instances: Values) -> tuple[str, tuple[int, ...]] | None:
    """Requests with the same key can be sent as one batch: lists with lists, arrays with
    arrays of the same dtype and sample shape (concatenated along the batch dimension)."""
    if isinstance(instances, np.ndarray):
        return instances.dtype.str, instances.shape[1:]
    return None


class Link:
    """A ready worker as the dispatcher sees it."""

    __slots__ = ("client", "model_stamp", "task_id")

    def __init__(self, client: WorkerClient, task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        self.model_stamp = client.hello.model_stamp if client.hello is not None else None


class _Pending:
    __slots__ = ("dispatched", "future", "instances", "key", "queued_at")

    def __init__(self, instances: Values, future: asyncio.Future[Answer]) -> None:
        self.instances = instances
        self.key = batch_key(instances)
        self.future = future
        self.dispatched = False
        self.queued_at = time.monotonic()


def file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class PredictionCache:
    """LRU of instance -> prediction, emptied when the model file changes. While workers are
    replaced after such a change, answers from the workers that still hold the previous
    file are not kept."""

    def __init__(self, size: int, model_file: Path) -> None:
        self.size = size
        self.model_file = model_file
        self._entries: OrderedDict[str | bytes, Any] = OrderedDict()
        self._stamp = file_stamp(model_file)

    def _check_file(self) -> None:
        stamp = file_stamp(self.model_file)
        if stamp != self._stamp:
            self._entries.clear()
            self._stamp = stamp

    def lookup(self, instances: Values) -> tuple[list[str | bytes], list[Any] | None]:
        self._check_file()
        keys: list[str | bytes]
        if isinstance(instances, np.ndarray):
            kind = f"{instances.dtype.str}{instances.shape[1:]}".encode()
            keys = [kind + row.tobytes() for row in instances]
        else:
            keys = [json.dumps(i, separators=(",", ":")) for i in instances]
        found = []
        for key in keys:
            if key not in self._entries:
                return keys, None
            found.append(self._entries[key])
        for key in keys:
            self._entries.move_to_end(key)
        return keys, found

    def store(self, keys: list[str | bytes], predictions: list[Any], model_stamp: tuple[int, int] | None = None) -> None:
        if model_stamp is not None and model_stamp != self._stamp:
            return  # computed from another version of the file than the one there now
        for key, value in zip(keys, predictions, strict=True):
            self._entries[key] = value
            self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Batcher:
    def __init__(self, label: str, spec: ServingSpec, model_file: Path, metrics: ModelMetrics) -> None:
        self.label = label
        self.model_file = model_file
        self.metrics = metrics
        self.links: list[Link] = []
        self._queue: deque[_Pending] = deque()
        self._queued_instances = 0
        self._wake = asyncio.Event()
        self._turn = 0
        self._closed: str | None = None
        self.spec = spec
        self.cache: PredictionCache | None = None
        self.configure(spec)

    def configure(self, spec: ServingSpec) -> None:
        self.spec = spec
        if spec.cache_size == 0:
            self.cache = None
        elif self.cache is None:
            self.cache = PredictionCache(spec.cache_size, self.model_file)
        else:
            self.cache.size = spec.cache_size
        self._wake.set()

    # ---- workers -------------------------------------------------------------------

    def add(self, link: Link) -> None:
        if link not in self.links:
            self.links.append(link)
        self._wake.set()

    def remove(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(link.client.in_flight for link in self.links)

    @property
    def queue_wait(self) -> float:
        """Seconds the oldest queued request has waited (0 with none queued)."""
        return time.monotonic() - self._queue[0].queued_at if self._queue else 0.0

    # ---- requests ------------------------------------------------------------------

    async def predict(self, instances: Values) -> Answer:
        """instances: a list of samples, or an array of them along its first dimension (sent
        to a socket-channel worker as raw bytes)."""
        started = time.monotonic()
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            answer = await self._predict(instances)
        except DomainError as exc:
            metrics.record(exc.status, time.monotonic() - started)
            raise
        finally:
            metrics.in_flight -= 1
        metrics.record(200, time.monotonic() - started)
        if metrics.drift is not None:  # inputs the model answered (not those it rejected)
            metrics.drift.observe(instances)
        return answer

    async def _predict(self, instances: Values) -> Answer:
        if self._closed is not None:
            raise Unavailable(self._closed)
        keys: list[str | bytes] | None = None
        if self.cache is not None:
            keys, cached = self.cache.lookup(instances)
            if cached is not None:
                self.metrics.cache_hits += 1
                return Answer(cached, "cache")
            self.metrics.cache_misses += 1
        if len(self._queue) >= self.spec.max_queue:
            raise TooMany(
                f"model {self.label}: {len(self._queue)} requests are already waiting (max_queue {self.spec.max_queue})",
                {"queue_depth": len(self._queue)},
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(instances, loop.create_future())
        idle = self._idle_link() if not self._queue else None
        if idle is not None:
            # A lone request with every worker idle: there is no batch to wait for, so it
            # goes out at once, without a turn through the dispatcher.
            self._send(idle, [pending], lone=True)
        else:
            self._queue.append(pending)
            self._queued_instances += len(instances)
            self._wake.set()
        timer = loop.call_later(self.spec.timeout_ms / 1000, self._expire, pending)
        try:
            answer = await pending.future
        finally:
            timer.cancel()
        if keys is not None and self.cache is not None and answer.worker != "cache":
            self.cache.store(keys, answer.predictions, answer.model_stamp)  # (JSON values: kept apart from the batch's buffer)
        return answer

    def _expire(self, pending: _Pending) -> None:
        if pending.future.done():
            return
        seconds = f"{self.spec.timeout_ms / 1000:g}s"
        if pending.dispatched:
            exc: DomainError = TimedOut(f"model {self.label}: the worker did not answer within {seconds}")
        elif not self.links:
            exc = Unavailable(f"model {self.label}: no worker was ready to take the request within {seconds}")
        else:
            exc = TimedOut(f"model {self.label}: the request waited {seconds} in the queue")
        pending.future.set_exception(exc)

    def close(self, message: str) -> None:
        """Fail every queued request and refuse new ones (serving stopped)."""
        self._closed = message
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(Unavailable(message))
        self._queued_instances = 0
        self._wake.set()

    # ---- dispatching ----------------------------------------------------------------

    def _idle_link(self) -> Link | None:
        """A worker to send to at once: only when no worker holds any batch."""
        links = self.links
        if not links or any(link.client.in_flight for link in links):
            return None
        self._turn += 1
        return links[self._turn % len(links)]

    def _free_link(self) -> Link | None:
        best: Link | None = None
        n = len(self.links)
        for i in range(n):
            link = self.links[(self._turn + i) % n]
            busy = link.client.in_flight
            if busy < PIPELINE_DEPTH and (best is None or busy < best.client.in_flight):
                best = link
                if busy == 0:
                    break
        if best is not None:
            self._turn += 1
        return best

    async def run(self) -> None:
        """The dispatcher loop; owned (started and cancelled) by the serving manager."""
        while True:
            while not (self._queue and self._has_free_link()):
                self._wake.clear()
                await self._wake.wait()
                if self._closed is not None:
                    return
            delay = self.spec.max_delay_ms / 1000
            if delay > 0 and self._queued_instances < self.spec.max_batch_size and self.in_flight > 0:
                await self._gather(delay)
            link = self._free_link()
            if link is None:
                continue
            batch = self._take()
            if batch:
                self._send(link, batch)

    def _has_free_link(self) -> bool:
        return any(link.client.in_flight < PIPELINE_DEPTH for link in self.links)

    async def _gather(self, delay: float) -> None:
        """Wait up to `delay` for the queue to fill a batch."""
        deadline = time.monotonic() + delay
        while self._queued_instances < self.spec.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.clear()
            if not await wait_event(self._wake, remaining):
                return

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        limit = self.spec.max_batch_size
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # timed out or its caller went away
                self._queue.popleft()
                self._queued_instances -= len(head.instances)
                continue
            if batch and (size + len(head.instances) > limit or head.key != batch[0].key):
                break
            self._queue.popleft()
            self._queued_instances -= len(head.instances)
            batch.append(head)
            size += len(head.instances)
        return batch

    def _send(self, link: Link, batch: list[_Pending], lone: bool = False) -> None:
        instances: Values
        if len(batch) == 1:
            instances = batch[0].instances
        elif batch[0].key is not None:
            instances = np.concatenate([pending.instances for pending in batch])
        else:
            instances = [item for pending in batch for item in pending.instances]
        sent = time.monotonic()
        for pending in batch:
            if not pending.dispatched:
                self.metrics.queue_time.observe(sent - pending.queued_at)
            pending.dispatched = True
        self.metrics.batch_size.observe(len(instances))
        link.client.send(instances, lambda predictions, error: self._on_answer(link, batch, predictions, error, sent),
                         lone)

    def _on_answer(
        self, link: Link, batch: list[_Pending], predictions: Values | None, exc: Exception | None, sent: float = 0.0,
    ) -> None:
        if sent:
            self.metrics.compute_time.observe(time.monotonic() - sent)
        if self._queue:
            self._wake.set()  # the worker has room again for what waits
        if predictions is not None:
            total = sum(len(p.instances) for p in batch)
            if len(predictions) != total:
                self._fail(batch, BadGateway(
                    f"model {self.label}: worker {link.task_id} returned {len(predictions)} predictions for {total} instances"
                ))
                return
            start = 0
            for pending in batch:
                end = start + len(pending.instances)
                if not pending.future.done():
                    pending.future.set_result(Answer(predictions[start:end], link.task_id, link.model_stamp))
                start = end
        elif isinstance(exc, WorkerRejected):
            if len(batch) == 1:
                self._fail(batch, Rejected(str(exc), {"worker": link.task_id}))
            else:
                # One bad request fails a whole batch: ask again one by one, so that only
                # the bad one gets the error.
                for pending in batch:
                    if not pending.future.done():
                        self._send(link, [pending])
        elif isinstance(exc, WorkerLost):
            self._fail(batch, Unavailable(
                f"model {self.label}: worker {link.task_id} went away while it held this request ({exc})",
                {"worker": link.task_id},
            ))
        elif isinstance(exc, ProtocolError):
            self._fail(batch, BadGateway(f"model {self.label}: worker {link.task_id}: {exc}"))
        else:
            log.error("unexpected batch failure on %s: %r", link.task_id, exc)
            self._fail(batch, BadGateway(f"model {self.label}: {exc}"))

    @staticmethod
    def _fail(batch: list[_Pending], exc: DomainError) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)
