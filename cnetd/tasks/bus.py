"""Fan-out of task changes to live views, with back-pressure: each subscriber has a
bounded queue and a slow one is dropped with a warning rather than slowing the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cnetd.tasks.model import Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskChange:
    task_id: str
    status: str
    kind: str  # "status", "progress" or "stop_requested"


class TaskBus:
    def __init__(self, queue_size: int = 256) -> None:
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[TaskChange | None]] = set()

    def subscribe(self) -> asyncio.Queue[TaskChange | None]:
        queue: asyncio.Queue[TaskChange | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[TaskChange | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, change: TaskChange) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                log.warning("dropping a slow task-change subscriber")
                self._subscribers.discard(queue)
                try:  # make room for the end marker: the reader sees None and stops
                    queue.get_nowait()
                    queue.put_nowait(None)
                except (asyncio.QueueEmpty, asyncio.QueueFull):
                    pass

    async def follow_ended(self, on_ended: Callable[[str], Awaitable[None]], missed: Callable[[], Awaitable[None]],
                           what: str) -> None:
        """Call on_ended(task_id) for each task that reaches a terminal status, until
        cancelled. Dropped as a slow subscriber, it calls missed() (what ended meanwhile was
        not seen) and subscribes again. what: names the follower in the log."""
        while True:
            queue = self.subscribe()
            try:
                while (change := await queue.get()) is not None:
                    if change.kind == "status" and Status(change.status).terminal:
                        try:
                            await on_ended(change.task_id)
                        except Exception:
                            log.exception("%s after task %s ended failed", what, change.task_id)
            finally:
                self.unsubscribe(queue)
            try:
                await missed()
            except Exception:
                log.exception("%s: catching up on missed task changes failed", what)

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
