"""disk_limit, for every running task at once: what each task has written is measured about
once a second, all tasks in one hop to a worker thread per round, and a directory that
several tasks share (the working dir of a model's tasks) is scanned once for all of them.

A thousand tasks used to mean a thousand thread hops and a thousand scans of the same
directory every second; now it is one hop and one scan per distinct directory.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from cnetd.background import cancel_and_wait
from cnetd.supervisor.disk import DiskMeter, measure_all

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two measurements of a task


@dataclass(eq=False)
class _Guarded:
    meter: DiskMeter
    limit: int
    passed: asyncio.Future[int]


class DiskGuard:
    def __init__(self, interval: float = CHECK_INTERVAL) -> None:
        self.interval = interval
        self._guarded: set[_Guarded] = set()
        self._empty: dict[str, int] = {}  # directories found empty (only the round's thread uses it)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="disk-guard")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def until_exceeded(self, meter: DiskMeter, limit: int) -> int:
        """Return the bytes written once they pass limit; wait until cancelled otherwise
        (the task's watcher cancels it when the task ends)."""
        guarded = _Guarded(meter, limit, asyncio.get_running_loop().create_future())
        self._guarded.add(guarded)
        try:
            return await guarded.passed
        finally:
            self._guarded.discard(guarded)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            round_ = [g for g in self._guarded if not g.passed.done()]
            if not round_:
                continue
            try:
                used = await asyncio.to_thread(measure_all, [g.meter for g in round_], self._empty)
            except Exception:
                log.exception("measuring what tasks wrote failed")
                continue
            for guarded, written in zip(round_, used, strict=True):
                if written > guarded.limit and not guarded.passed.done():
                    guarded.passed.set_result(written)
