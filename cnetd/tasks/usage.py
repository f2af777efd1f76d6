"""CPU and memory of running tasks, sampled once through their sandbox backend's stats().

One sampler serves every reader: the task's `usage` (latest values and peak memory, stored
with the task when it ends) and the UI's usage charts (a ring of recent samples per task).

A task is sampled as soon as it is watched (started, or reattached after an agent
restart), then every SAMPLE_INTERVAL, and once more by `finish` after its processes have
exited but before its sandbox is released, while the cgroup still knows the peak memory.
So even a sub-second task ends with a usage whenever the backend can report one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.supervisor.base import Handle, Sandbox, Usage

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0  # seconds between two samples of a running task
SAMPLE_TIMEOUT = 5.0  # a backend that takes longer to answer is skipped this round
SAMPLES_PER_TASK = 300  # five minutes at one sample a second
TASKS_REMEMBERED = 100  # finished tasks keep their chart until this many newer ones push it out


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    cpu_percent: float | None
    memory_bytes: int | None


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


@dataclass
class _Watched:
    backend: Sandbox
    handle: Handle


class UsageMonitor:
    """Samples every watched task; `watch` when it runs, `finish` once it has exited,
    `forget` once its end is recorded."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.history = UsageHistory()
        self._watched: dict[str, _Watched] = {}
        self._latest: dict[str, dict[str, Any]] = {}
        self._fresh: set[str] = set()  # watched since the last round: sampled at once
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- readers -------------------------------------------------------------------

    def latest(self, task_id: str) -> dict[str, Any] | None:
        """cpu_percent, memory_bytes, memory_peak_bytes (the most seen), pids, sampled_at."""
        summary = self._latest.get(task_id)
        return None if summary is None else dict(summary)

    def samples(self, task_id: str) -> list[Sample]:
        return self.history.of(task_id)

    # ---- the task service's hooks ---------------------------------------------------

    def watch(self, task_id: str, backend: Sandbox, handle: Handle) -> None:
        self._watched[task_id] = _Watched(backend, handle)
        self._fresh.add(task_id)
        self._wake.set()

    async def finish(self, task_id: str) -> dict[str, Any] | None:
        """The final sample, taken after the task's processes exited and before its
        sandbox is released; returns the task's usage to store with it."""
        watched = self._watched.pop(task_id, None)
        self._fresh.discard(task_id)
        if watched is not None:
            usage = await self._stats(task_id, watched)
            if usage is not None:
                self._record(task_id, usage)
        return self.latest(task_id)

    def forget(self, task_id: str) -> None:
        """The task's end is stored: drop its live summary (its chart stays in history)."""
        self._watched.pop(task_id, None)
        self._fresh.discard(task_id)
        self._latest.pop(task_id, None)

    # ---- the loop ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="task-usage-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        next_round = 0.0
        while True:
            self._wake.clear()
            now = time.monotonic()
            if now >= next_round:
                due = list(self._watched)
                next_round = now + self.interval
            else:
                due = [t for t in self._fresh if t in self._watched]
            self._fresh.clear()
            try:
                await self._sample_round(due)
            except Exception:
                log.exception("sampling task usage failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_round - time.monotonic()))

    async def _sample_round(self, task_ids: list[str]) -> None:
        """One sample of each of these tasks that is still watched, concurrently."""
        targets = [(t, w) for t in task_ids if (w := self._watched.get(t)) is not None]
        results = await asyncio.gather(*(self._stats(t, w) for t, w in targets))
        for (task_id, watched), usage in zip(targets, results):
            # a task finished meanwhile has had its final sample: this one is older
            if usage is not None and self._watched.get(task_id) is watched:
                self._record(task_id, usage)

    async def _stats(self, task_id: str, watched: _Watched) -> Usage | None:
        try:
            return await asyncio.wait_for(watched.backend.stats(watched.handle), SAMPLE_TIMEOUT)
        except Exception as exc:  # the process may have just ended; the cgroup may be gone
            log.debug("no usage sample: %r", exc, extra={"task_id": task_id})
            return None

    def _record(self, task_id: str, usage: Usage) -> None:
        summary = summarize(usage, self._latest.get(task_id))
        if summary is not None:
            self._latest[task_id] = summary
        if usage.pids != 0:
            self.history.add(task_id, Sample(time.time(), usage.cpu_percent, usage.memory_bytes))
