"""At start: every task the store says is starting or running is either reattached or failed,
and whatever runs here that was not reattached is destroyed (Nomad's rule: recover or
destroy, never half-known).

A task is reattached when its saved handle can be read and its backend is available; its
watcher then records its exit (at once when it ended while the agent was down). A task
without a handle (the agent stopped while it was starting), with a handle this agent cannot
read (damaged, or written by a newer agent), or whose backend is gone, fails with a `lost:`
reason; then each backend in use destroys its tasks that were not reattached, so nothing of
a failed task keeps running. One task that cannot be recovered never stops the agent from
starting.
"""

from __future__ import annotations

import asyncio
import logging

from cnetd.clock import utc_now
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.supervisor.base import Handle, UnreadableHandle
from cnetd.supervisor.launcher import Launcher
from cnetd.tasks.model import ACTIVE, Status, Task
from cnetd.tasks.runner import LOST_STARTING, TaskRunner
from cnetd.tasks.states import event
from cnetd.tasks.transitions import TaskStates

log = logging.getLogger(__name__)

UNREADABLE_HANDLE = "lost: unreadable handle"


class Recovery:
    def __init__(self, db: Database, states: TaskStates, runner: TaskRunner, launcher: Launcher) -> None:
        self.db = db
        self.states = states
        self.runner = runner
        self.launcher = launcher

    async def run(self) -> set[str]:
        """Reattach or fail every active task, destroy what was not reattached; returns the
        ids of the tasks reattached."""
        active = await self.db.read(
            lambda c: q.list_tasks(c, statuses=[str(s) for s in ACTIVE], newest_first=False))
        reattached: set[str] = set()
        for task in active:
            try:
                if await self._recover(task):
                    reattached.add(task.id)
            except Exception as exc:
                log.exception("recovering the task failed; failing it", extra={"task_id": task.id})
                await self._fail(task, f"lost: it could not be recovered ({exc})")
        await self._destroy_the_rest(reattached)
        for leftover in await asyncio.to_thread(self.launcher.remove_tmp_dirs_except, reattached):
            log.info("removed the TMPDIR of a task that is no longer running: %s", leftover)
        return reattached

    async def _recover(self, task: Task) -> bool:
        if task.handle is None:
            await self._fail(task, LOST_STARTING)
            return False
        try:
            handle = Handle.from_json(task.handle)
        except UnreadableHandle as exc:
            log.error("its saved handle cannot be read (%s): failing the task and destroying what it left running",
                      exc, extra={"task_id": task.id})
            await self._fail(task, UNREADABLE_HANDLE)
            return False
        try:
            backend = self.launcher.backend_for(handle)
        except Exception as exc:
            await self._fail(task, f"lost: its sandbox backend '{handle.backend}' is not available ({exc})")
            return False
        alive = await backend.recover(handle)
        message = f"reattached after agent restart (pid {handle.pid})" if alive else "the process ended while the agent was down"
        await self.db.write(lambda c: q.insert_event(c, event(task.id, "recovered", message)))
        self.runner.watch(task, backend, handle)
        return True

    async def _fail(self, task: Task, reason: str) -> None:
        async with self.states.lock(task.id):
            await self.states.end(task, Status.FAILED, "failed", reason, reason=reason, stopped_at=utc_now())

    async def _destroy_the_rest(self, reattached: set[str]) -> None:
        for backend in self.launcher.backends_to_sweep():
            try:
                removed = await backend.cleanup_orphans(reattached, self.launcher.run_dir)
            except Exception:
                log.exception("removing what the %s backend runs for tasks not reattached failed", backend.name)
                continue
            for task_id in removed:
                log.warning("destroyed what the %s backend still ran or kept for a task not reattached at start",
                            backend.name, extra={"task_id": task_id})
