"""Fan-out of task changes to live views, with back-pressure: each subscriber has a
bounded queue and a slow one is dropped with a warning rather than slowing the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

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

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
