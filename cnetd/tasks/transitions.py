"""Every change of a task's status, with the store as the authority.

A status is written only while the stored status is still the one the caller decided from
(`UPDATE ... WHERE id = ? AND status = ?`), and only along the transition table. When the
store holds another status, nothing is written, and the same transaction re-reads what it
holds and hands it back for the caller to decide again: the same change from another status
means something else (`stopped` over a pending task is a stop before it started; over a
running one it would claim processes are gone that nobody signalled). On top of that, stop,
launch and exit-recording of one task hold that task's lock while they read, decide and
write, so their decisions never interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from cnetd.security.identity import Identities, task_owner
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.tasks.bus import TaskBus, TaskChange
from cnetd.tasks.model import Status, Task
from cnetd.tasks.states import check_transition, event

log = logging.getLogger(__name__)

Also = Callable[[sqlite3.Connection], dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    applied: bool
    status: Status | None  # what the store holds after the write (None: no such task)
    stop_requested: bool = False  # as stored, read in the same transaction


class TaskLocks:
    """One asyncio lock per task id, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, task_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(task_id, (asyncio.Lock(), 0))
        self._locks[task_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[task_id]
            if users == 1:
                del self._locks[task_id]
            else:
                self._locks[task_id] = (lock, users - 1)

    def held(self) -> int:
        return len(self._locks)


class TaskStates:
    def __init__(self, db: Database, identities: Identities, bus: TaskBus) -> None:
        self.db = db
        self.identities = identities
        self.bus = bus
        self._locks = TaskLocks()
        self._finished: dict[str, asyncio.Event] = {}
        self._stop_why: dict[str, str] = {}  # who asked for a stop, for the message at its end
        self._on_end: list[Callable[[str], None]] = []

    def lock(self, task_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by stop, launch and exit-recording of the task while they read, decide and write."""
        return self._locks.hold(task_id)

    def on_end(self, callback: Callable[[str], None]) -> None:
        """callback(task_id) after a task reached an end state."""
        self._on_end.append(callback)

    async def read(self, task_id: str) -> Task | None:
        return await self.db.read(lambda c: q.get_task(c, task_id))

    # ---- writes ----------------------------------------------------------------------

    async def move(self, task: Task, new: Status, event_type: str, message: str, *,
                   release_owner: str | None = None, also: Also | None = None, **changes: Any) -> Outcome:
        """task.status -> new with its event, guarded on task.status in the store (an illegal
        transition raises IllegalTransition). Not applied: Outcome.status is what the store
        holds. `also` runs in the same transaction once the status is written and returns
        more columns to set. On success the task object is updated and the change announced."""
        changes["status"] = new
        expected = task.status
        check_transition(task.id, expected, new)
        ev = event(task.id, event_type, message)

        def write(conn: sqlite3.Connection) -> tuple[Outcome, dict[str, Any]]:
            if not q.change_status(conn, task.id, expected, changes):
                return Outcome(False, q.status_of(conn, task.id)), {}
            extra = also(conn) if also is not None else {}
            if extra:
                q.update_task(conn, task.id, extra)
            q.insert_event(conn, ev)
            if release_owner is not None:
                self.identities.release(conn, release_owner)
            return Outcome(True, new, q.stop_is_requested(conn, task.id)), extra

        outcome, extra = await self.db.write(write)
        if not outcome.applied:
            log.info("task %s -> %s not written: the store holds %s", expected, new, outcome.status or "no such task",
                     extra={"task_id": task.id})
            return outcome
        for key, value in {**changes, **extra}.items():
            setattr(task, key, value)
        task.stop_requested = outcome.stop_requested
        log.info("task %s: %s", new, message, extra={"task_id": task.id})
        self.bus.publish(TaskChange(task.id, str(new), "status"))
        if new.terminal:
            self._ended(task.id)
        return outcome

    async def end(self, task: Task, status: Status, kind: str, message: str, **changes: Any) -> Outcome:
        """To an end state; a process task's uid goes back to the pool (a model keeps its
        uid: its files are its own)."""
        release = task.type == "process"
        outcome = await self.move(task, status, kind, message,
                                  release_owner=task_owner(task.id) if release else None, **changes)
        if outcome.applied and release and task.uid is not None and self.identities.mode == "dynamic":
            await asyncio.to_thread(self.identities.remove_home, task.uid)
        return outcome

    async def request_stop(self, task_id: str, why: str) -> bool:
        """Record that a starting or running task is to stop; False when it is neither."""
        ev = event(task_id, "stop_requested", f"stop requested {why}")

        def write(conn: sqlite3.Connection) -> Status | None:
            if not q.request_stop(conn, task_id):
                return None
            q.insert_event(conn, ev)
            return q.status_of(conn, task_id)

        status = await self.db.write(write)
        if status is None:
            return False
        self._stop_why[task_id] = why
        self.bus.publish(TaskChange(task_id, str(status), "stop_requested"))
        return True

    def stop_why(self, task_id: str) -> str:
        return self._stop_why.get(task_id, "by user")

    # ---- waiting for an end ------------------------------------------------------------

    def finished(self, task_id: str) -> asyncio.Event:
        """Set once the task has reached an end state (through this agent)."""
        return self._finished.setdefault(task_id, asyncio.Event())

    def forget(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self._finished.pop(task_id, None)

    def _ended(self, task_id: str) -> None:
        self._stop_why.pop(task_id, None)
        self.finished(task_id).set()
        for callback in self._on_end:
            callback(task_id)
