"""CPU and memory of running tasks, sampled through their sandbox backend.

One sampler serves every reader: the task's `usage` (latest values and peak memory, stored
with the task when it ends) and the UI's usage charts (a ring of recent samples per task).

What it promises, and what it costs with a thousand tasks running:
  - a task is sampled as soon as it is watched (started, or reattached after an agent
    restart), and once more by `finish` after its processes have exited but before its
    sandbox is released, while the cgroup still knows the peak memory (so even a
    sub-second task ends with a usage whenever the backend can report one);
  - while it runs, it is sampled every SAMPLE_INTERVAL when it is busy (CPU at least
    BUSY_CPU_PERCENT of a core, memory or process count moving) or someone has looked at
    it within LOOK_WINDOW (its page, its chart, `GET /api/tasks/{id}`), and every
    IDLE_INTERVAL while it idles: an idle task's figures do not change, and its peak
    memory is the cgroup's own counter, so sampling it less often loses nothing;
  - `fresh` (used when one task is asked for) reads the task at once when its sample is
    older than FRESH_AGE, so the task you ask for never shows a figure older than that;
  - each round reads every task that is due in one hop to a worker thread (backends with
    `read_stats`), not one await per task on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.supervisor.base import BlockingStats, Handle, Sandbox, Usage

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0  # seconds between two samples of a busy task, or of one someone looks at
IDLE_INTERVAL = 5.0  # seconds between two samples of an idle task
LOOK_WINDOW = 30.0  # a task looked at is sampled every SAMPLE_INTERVAL for this long
FRESH_AGE = 1.5  # `fresh` reads a task at once when its sample is older than this
BATCH_AHEAD = 0.25  # a round also takes tasks due this soon, so rounds come at most ~4 a second
BUSY_CPU_PERCENT = 1.0  # of one core, over the last sample's window
BUSY_MEMORY_BYTES = 1 << 20  # a change of memory between two samples that counts as busy
SAMPLE_TIMEOUT = 5.0  # a backend that takes longer to answer is skipped this round
SAMPLES_PER_TASK = 300  # five minutes at one sample a second
TASKS_REMEMBERED = 100  # finished tasks keep their chart until this many newer ones push it out


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    cpu_percent: float | None
    memory_bytes: int | None
    gpu_memory_bytes: int | None = None  # only for a task with GPUs


# (task id, handle) -> the task's GPU figures to add to its usage ({} for a task without GPUs)
GpuUsage = Callable[[str, Handle], dict[str, Any]]


@dataclass
class UsageHistory:
    """A bounded ring of samples per task, for the most recent TASKS_REMEMBERED tasks."""

    samples: OrderedDict[str, deque[Sample]] = field(default_factory=OrderedDict)

    def add(self, task_id: str, sample: Sample) -> None:
        ring = self.samples.get(task_id)
        if ring is None:
            ring = self.samples[task_id] = deque(maxlen=SAMPLES_PER_TASK)
            while len(self.samples) > TASKS_REMEMBERED:
                self.samples.popitem(last=False)
        ring.append(sample)

    def of(self, task_id: str) -> list[Sample]:
        return list(self.samples.get(task_id, ()))


def summarize(usage: Usage, previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `usage` a task shows after this sample. A sample that finds no process left
    (the task has exited) only adds its peak: its current values describe nothing."""
    peak = max(
        (v for v in (usage.memory_peak_bytes, usage.memory_bytes, (previous or {}).get("memory_peak_bytes"))
         if v is not None),
        default=None,
    )
    if usage.pids == 0:
        if previous is None:
            return None if peak is None else {
                "cpu_percent": None, "memory_bytes": None, "memory_peak_bytes": peak, "pids": 0, "sampled_at": utc_now(),
            }
        return {**previous, "memory_peak_bytes": peak}
    return {
        "cpu_percent": None if usage.cpu_percent is None else round(usage.cpu_percent, 1),
        "memory_bytes": usage.memory_bytes,
        "memory_peak_bytes": peak,
        "pids": usage.pids,
        "sampled_at": utc_now(),
    }


def is_busy(previous: Usage | None, usage: Usage) -> bool:
    """Whether a task did something between two samples (an unknown CPU figure counts:
    the first sample of a task has no window yet)."""
    if previous is None or usage.cpu_percent is None or usage.cpu_percent >= BUSY_CPU_PERCENT:
        return True
    if usage.pids != previous.pids:
        return True
    if usage.memory_bytes is None or previous.memory_bytes is None:
        return False
    return abs(usage.memory_bytes - previous.memory_bytes) >= BUSY_MEMORY_BYTES


@dataclass(eq=False)
class _Watched:
    backend: Sandbox
    handle: Handle
    due: float = 0.0  # time.monotonic() of its next sample; 0: at once
    sampled: float = 0.0  # time.monotonic() of its last sample; 0: never
    looked_until: float = 0.0  # sampled every SAMPLE_INTERVAL until then
    last: Usage | None = None
    reading: asyncio.Task[None] | None = None  # a read on demand under way
    blocking: bool = False  # the backend has read_stats (checked once: a Protocol isinstance is slow)


class UsageMonitor:
    """Samples every watched task; `watch` when it runs, `look` when someone looks at it,
    `finish` once it has exited, `forget` once its end is recorded."""

    def __init__(self, interval: float = SAMPLE_INTERVAL, idle_interval: float = IDLE_INTERVAL) -> None:
        self.gpu_usage: GpuUsage | None = None  # set by the runner on a node with GPUs
        self.interval = interval
        self.idle_interval = max(idle_interval, interval)
        self.history = UsageHistory()
        self._watched: dict[str, _Watched] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()  # reads on demand under way

    # ---- readers -------------------------------------------------------------------

    def latest(self, task_id: str) -> dict[str, Any] | None:
        """cpu_percent, memory_bytes, memory_peak_bytes (the most seen), pids, sampled_at."""
        summary = self._latest.get(task_id)
        return None if summary is None else dict(summary)

    def samples(self, task_id: str) -> list[Sample]:
        return self.history.of(task_id)

    # ---- the task service's hooks ---------------------------------------------------

    def watch(self, task_id: str, backend: Sandbox, handle: Handle) -> None:
        self._watched[task_id] = _Watched(backend, handle, blocking=isinstance(backend, BlockingStats))  # due at once
        self._wake.set()

    def look(self, task_id: str) -> None:
        """Someone looks at the task: sample it every `interval` for the next LOOK_WINDOW."""
        watched = self._watched.get(task_id)
        if watched is None:
            return
        now = time.monotonic()
        watched.looked_until = now + LOOK_WINDOW
        if watched.due > now + self.interval:
            watched.due = watched.sampled + self.interval if watched.sampled else now
            self._wake.set()

    async def fresh(self, task_id: str, max_age: float = FRESH_AGE) -> None:
        """`look`, and read the task now when its last sample is older than max_age."""
        self.look(task_id)
        watched = self._watched.get(task_id)
        if watched is None or time.monotonic() - watched.sampled <= max_age:
            return
        if watched.reading is None:
            watched.reading = asyncio.create_task(self._read_now(task_id, watched), name=f"usage-now-{task_id}")
            self._reads.add(watched.reading)
            watched.reading.add_done_callback(self._reads.discard)
        await asyncio.shield(watched.reading)  # a caller that gives up does not cancel the others' read

    async def _read_now(self, task_id: str, watched: _Watched) -> None:
        try:
            if watched.blocking and cast(BlockingStats, watched.backend).stats_on_loop:
                (usage,) = _read_blocking([watched])  # a few cgroupfs reads: cheaper than a thread hop
            else:
                (usage,) = await self._read([watched])
            if usage is not None and self._watched.get(task_id) is watched:
                self._record(task_id, watched, usage, time.monotonic())
        except Exception:  # the caller still gets the task, with its last sample
            log.exception("reading usage on demand failed", extra={"task_id": task_id})
        finally:
            watched.reading = None
            self._wake.set()  # the loop left it out while it was being read

    async def finish(self, task_id: str) -> dict[str, Any] | None:
        """The final sample, taken after the task's processes exited and before its
        sandbox is released; returns the task's usage to store with it."""
        watched = self._watched.pop(task_id, None)
        if watched is not None:
            (usage,) = await self._read([watched])
            if usage is not None:
                self._record(task_id, watched, usage, time.monotonic())
        return self.latest(task_id)

    def forget(self, task_id: str) -> None:
        """The task's end is stored: drop its live summary (its chart stays in history)."""
        self._watched.pop(task_id, None)
        self._latest.pop(task_id, None)

    # ---- the loop ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="task-usage-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._reads)
        self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            horizon = time.monotonic() + BATCH_AHEAD
            due = [t for t, w in self._watched.items() if w.due <= horizon and w.reading is None]
            if due:
                try:
                    await self._sample_round(due)
                except Exception:
                    log.exception("sampling task usage failed")
            next_due = min((w.due for w in self._watched.values() if w.reading is None), default=None)
            wait = None if next_due is None else max(0.0, next_due - time.monotonic())
            await wait_event(self._wake, wait)

    async def _sample_round(self, task_ids: list[str]) -> None:
        """One sample of each of these tasks that is still watched."""
        targets = [(t, w) for t in task_ids if (w := self._watched.get(t)) is not None]
        results = await self._read([w for _, w in targets])
        now = time.monotonic()
        for (task_id, watched), usage in zip(targets, results, strict=True):
            # a task finished meanwhile has had its final sample: this one is older
            if self._watched.get(task_id) is not watched:
                continue
            if usage is None:
                watched.due = now + self.interval  # try again soon
            else:
                self._record(task_id, watched, usage, now)

    async def _read(self, targets: Sequence[_Watched]) -> list[Usage | None]:
        """Usage of each target: all blocking readers in one worker thread, the others
        (backends with only the async stats()) concurrently on the loop."""
        results: list[Usage | None] = [None] * len(targets)
        blocking = [i for i, w in enumerate(targets) if w.blocking]
        others = [i for i, w in enumerate(targets) if not w.blocking]
        if blocking:
            try:  # asyncio.timeout, not wait_for: that one can swallow a cancellation (cnetd.background)
                async with asyncio.timeout(SAMPLE_TIMEOUT):
                    read = await asyncio.to_thread(_read_blocking, [targets[i] for i in blocking])
            except TimeoutError:
                log.warning("reading the usage of %d tasks took over %.0fs; skipped this round",
                            len(blocking), SAMPLE_TIMEOUT)
                read = [None] * len(blocking)
            for i, usage in zip(blocking, read, strict=True):
                results[i] = usage
        if others:
            for i, usage in zip(others, await asyncio.gather(*(_read_async(targets[i]) for i in others)), strict=True):
                results[i] = usage
        return results

    def _record(self, task_id: str, watched: _Watched, usage: Usage, now: float) -> None:
        busy = is_busy(watched.last, usage)
        watched.last, watched.sampled = usage, now
        if busy or watched.looked_until > now:
            watched.due = now + self.interval
        else:  # on a beat of `interval`, so that idle tasks make one batch a second, not several
            watched.due = (now + self.idle_interval) // self.interval * self.interval
        summary = summarize(usage, self._latest.get(task_id))
        gpu: dict[str, Any] = {}
        if self.gpu_usage is not None and usage.pids != 0:
            try:
                gpu = self.gpu_usage(task_id, watched.handle)
            except Exception:
                log.exception("reading the task's GPU usage failed", extra={"task_id": task_id})
        if summary is not None:
            self._latest[task_id] = {**summary, **gpu}
        if usage.pids != 0:
            self.history.add(task_id, Sample(time.time(), usage.cpu_percent, usage.memory_bytes,
                                             gpu.get("gpu_memory_bytes")))


def _read_blocking(targets: list[_Watched]) -> list[Usage | None]:
    out: list[Usage | None] = []
    for watched in targets:
        try:
            out.append(cast(BlockingStats, watched.backend).read_stats(watched.handle))
        except Exception as exc:  # the process may have just ended; the cgroup may be gone
            log.debug("no usage sample of pid %d: %r", watched.handle.pid, exc)
            out.append(None)
    return out


async def _read_async(watched: _Watched) -> Usage | None:
    try:
        async with asyncio.timeout(SAMPLE_TIMEOUT):
            return await watched.backend.stats(watched.handle)
    except Exception as exc:  # the process may have just ended; the cgroup may be gone
        log.debug("no usage sample of pid %d: %r", watched.handle.pid, exc)
        return None
