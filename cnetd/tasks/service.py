"""TaskService: what the API, the UI and the other services ask of tasks (create, read,
stop, wait), over three parts with one job each:

  - transitions.TaskStates: every status change, guarded on the status the store holds,
    with its event in the same write, and the per-task lock that serialises stop, launch
    and exit-recording of one task;
  - runner.TaskRunner: starts pending tasks, watches them, records how they ended;
  - recovery.Recovery: at start, reattaches or fails every active task and destroys what
    was not reattached.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import os
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from functools import partial
from typing import Any, Protocol, TypeVar

from cnetd.background import wait_event
from cnetd.clock import utc_now
from cnetd.config import Config
from cnetd.errors import Conflict, Invalid, NotFound, Unavailable
from cnetd.gpus.assignment import check_request
from cnetd.logs.ingester import LogIngester
from cnetd.ml.envs.spec import EnvironmentBody, EnvSpec
from cnetd.security.confine import Confinement
from cnetd.security.identity import task_owner
from cnetd.security.privilege import TaskUser
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.store.identities import NoFreeUid
from cnetd.supervisor.base import Handle, SpawnError
from cnetd.supervisor.launcher import Launcher
from cnetd.supervisor.membership import handle_owns_pid
from cnetd.tasks.bus import TaskBus
from cnetd.tasks.model import Status, Task, TaskEvent
from cnetd.tasks.recovery import Recovery
from cnetd.tasks.request import NewTask, check_max_pids
from cnetd.tasks.runner import TaskRunner
from cnetd.tasks.states import event
from cnetd.tasks.transitions import TaskStates
from cnetd.tasks.usage import Sample, UsageMonitor

log = logging.getLogger(__name__)
T = TypeVar("T")


class EnvironmentGate(Protocol):
    """Where tasks that run in a Python environment are created (cnetd.ml.envs.service)."""

    async def spec_of(self, body: EnvironmentBody, working_dir: str, owner: str) -> EnvSpec: ...

    async def create_in(self, spec: EnvSpec, create: Callable[[str, bool], Awaitable[T]]) -> T: ...

    async def create_in_key(self, key: str, create: Callable[[str, bool], Awaitable[T]]) -> T: ...


class TaskService:
    def __init__(
        self, db: Database, launcher: Launcher, ingester: LogIngester, config: Config, node_id: str,
        confinement: Confinement,
    ) -> None:
        self.confinement = confinement
        self.db = db
        self.launcher = launcher
        self.config = config
        self.node_id = node_id
        self.bus = TaskBus()
        self._usage = UsageMonitor()
        self.states = TaskStates(db, launcher.identities, self.bus)
        self.runner = TaskRunner(db, self.states, launcher, ingester, config, self._usage)
        self.recovery = Recovery(db, self.states, self.runner, launcher)
        self.on_log_lines = self.runner.on_log_lines  # the ingester's hook: progress lines
        self.environments: EnvironmentGate | None = None  # set by cnetd.ml.envs.Environments

    # ---- queries -------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        task = await self.db.read(lambda c: q.get_task(c, task_id))
        if task is None:
            raise NotFound(f"task {task_id} not found", {"id": task_id})
        await self._usage.fresh(task_id)  # the one task asked for: its usage read now if stale
        return self._with_live_usage(task)

    async def exists(self, task_id: str) -> bool:
        return await self.db.read(lambda c: q.get_task(c, task_id)) is not None

    # Below this method a bare `list` in an annotation would name it: write builtins.list.
    async def list(self, **filters: Any) -> list[Task]:
        return [self._with_live_usage(t) for t in await self.db.read(lambda c: q.list_tasks(c, **filters))]

    def _with_live_usage(self, task: Task) -> Task:
        live = self._usage.latest(task.id)
        if live is not None and not task.status.terminal:
            task.usage = live
        return task

    def usage_history(self, task_id: str) -> builtins.list[Sample]:
        """The task's recent CPU and memory samples, oldest first (empty once forgotten)."""
        self._usage.look(task_id)  # a chart is open: a sample a second while it is
        return self._usage.samples(task_id)

    def peer_check(self, task_id: str) -> Callable[[int, int], str | None]:
        """For a worker socket: is (pid, uid) a process of this running task?"""

        def check(pid: int, uid: int) -> str | None:
            watch = self.runner.watch_of(task_id)
            if watch is None:
                return f"task {task_id} is not running"
            expected = watch.task_uid if watch.task_uid is not None else os.geteuid()
            if uid != expected:
                return f"it runs as uid {uid}, the task as uid {expected}"
            if not handle_owns_pid(watch.handle, pid):
                return f"pid {pid} is not in the task's sandbox"
            return None

        return check

    async def events(self, task_id: str) -> builtins.list[TaskEvent]:
        await self.get(task_id)
        return await self.db.read(lambda c: q.list_events(c, task_id))

    async def counts(self) -> dict[str, int]:
        return await self.db.read(q.count_by_status)

    def forget(self, task_ids: builtins.list[str]) -> None:
        """Retention deleted these ended tasks: drop what is remembered of them."""
        self.states.forget(task_ids)

    # ---- creating --------------------------------------------------------------

    async def create(
        self, new: NewTask, also: Callable[[sqlite3.Connection, Task], None] | None = None,
        task_id: str | None = None,
    ) -> Task:
        """Insert the task as pending (plus whatever `also` writes in the same
        transaction), then let the scheduler start it when a slot is free.

        task_id: the id a cluster placement chose (the posting agent answers with it);
        creating it again returns the task already made, so a replayed placement runs once."""
        if task_id is not None:
            # partial, not a lambda: the lambda would see task_id as str | None
            existing = await self.db.read(partial(q.get_task, task_id=task_id))
            if existing is not None:
                return existing
        else:
            task_id = str(uuid.uuid4())
        owner = new.identity_owner or task_owner(task_id)
        program = new.command if new.internal else await self._checked_program(new, owner)
        gate = self.environments
        if new.internal or (new.environment_request is None and new.environment is None):
            return await self._insert(new, program, task_id, also)
        if gate is None:
            raise Invalid("environment", "Python environments are not available on this node")
        chosen = dataclasses.replace(new, environment_request=None)

        async def insert(key: str, ready: bool) -> Task:
            return await self._insert(dataclasses.replace(chosen, environment=key), program, task_id, also,
                                      preparing=not ready)

        if new.environment_request is not None:
            spec = await gate.spec_of(new.environment_request, new.working_dir, owner)
            return await gate.create_in(spec, insert)
        assert new.environment is not None
        return await gate.create_in_key(new.environment, insert)

    async def _checked_program(self, new: NewTask, owner: str) -> str:
        """The request's paths, variables and command checked; the program it will run."""
        self.confinement.check_path("working_dir", new.working_dir, self.launcher.base_dir)
        self.confinement.check_env(new.env)
        check_max_pids(new.resources, self.config.tasks.max_pids)
        check_request(new.resources, self.launcher.gpus.inventory)
        user = await self.user_for_owner(owner)
        try:
            program = self.launcher.check_startable(new.command, new.working_dir, user)
        except SpawnError as exc:
            field = "working_dir" if str(exc).startswith("working_dir") else "command"
            raise Invalid(field, str(exc).split(": ", 1)[-1] if field == "working_dir" else str(exc)) from None
        self.confinement.check_command(new.command, program)
        return program

    async def _insert(self, new: NewTask, program: str, task_id: str,
                      also: Callable[[sqlite3.Connection, Task], None] | None, preparing: bool = False) -> Task:
        owner = new.identity_owner or task_owner(task_id)
        timeout = new.timeout if new.timeout is not None else self.config.tasks.timeout
        task = Task(
            id=task_id,
            name=new.name,
            type=new.type,
            kind=new.kind,
            status=Status.PREPARING if preparing else Status.PENDING,
            command=new.command,
            args=list(new.args),
            env=dict(new.env),
            working_dir=new.working_dir,
            resources=new.resources,
            created_at=utc_now(),
            log_file=str(self.launcher.log_path(task_id)),
            node_id=self.node_id,
            timeout=timeout,
            model_id=new.model_id,
            sandbox=self.launcher.sandbox.name,
            program=program,
            environment=new.environment,
        )

        def write(conn: sqlite3.Connection) -> None:
            task.uid = self.launcher.identities.allocate(conn, owner)
            q.insert_task(conn, task)
            q.insert_event(conn, event(task_id, "created", f"{task.type} task '{task.name}' created"))
            if preparing:
                q.insert_event(conn, event(task_id, "preparing", f"waiting for its environment {task.environment} to be built"))
            if also is not None:
                also(conn, task)

        try:
            await self.db.write(write)
        except sqlite3.IntegrityError:
            if (existing := await self.db.read(lambda c: q.get_task(c, task.id))) is not None:
                return existing  # the same placement, created meanwhile by another delivery
            raise
        except NoFreeUid as exc:
            raise Unavailable(f"cannot run another task: {exc}; widen tasks.uid_range or wait for tasks to end") from None
        self.states.finished(task_id)
        self.runner.kick()
        return task

    async def user_for_owner(self, owner: str) -> TaskUser | None:
        """Who the owner's tasks run as, for checks before its task is written: its uid if
        it has one, else a user who owns nothing yet."""
        identities = self.launcher.identities
        uid = await self.db.read(lambda c: identities.known_uid(c, owner))
        return identities.user(uid) if uid is not None else identities.stranger()

    async def uid_for_owner(self, owner: str) -> int | None:
        """The owner's uid, handed out now if it has none (serving needs it before its
        worker task exists, for the socket directory's group)."""
        try:
            return await self.db.write(lambda c: self.launcher.identities.allocate(c, owner))
        except NoFreeUid as exc:
            raise Unavailable(f"cannot run another task: {exc}") from None

    # ---- stopping ---------------------------------------------------------------

    async def stop(self, task_id: str, wait: bool = True, why: str = "by user") -> Task:
        """why: who or what stopped it, for its events ("by user", "by the agent: ...").
        Decided under the task's lock from what the store holds: a pending task is stopped
        at once (a launch that picked it finds it stopped and leaves it); a starting or
        running one is marked to stop and signalled (a starting one by its launch, as soon
        as its handle is saved); an ended one is a Conflict."""
        async with self.states.lock(task_id):
            task = await self._stored(task_id)
            if task.status in (Status.PENDING, Status.PREPARING):
                outcome = await self.states.end(task, Status.STOPPED, "stopped", f"stopped {why} before it started",
                                                stopped_at=utc_now())
                if outcome.applied:
                    return await self.get(task_id)
                task = await self._stored(task_id)  # picked meanwhile: stop it as a started one
            if task.status.terminal or not await self.states.request_stop(task_id, why):
                ended = await self._stored(task_id)
                raise Conflict(f"task {task_id} has already ended ({ended.status})", {"id": task_id, "status": str(ended.status)})
        stopping = self.runner.signal_stop(task_id)
        if wait:
            if stopping is not None:
                await asyncio.shield(stopping)  # a caller that gives up does not cut the stop short
            await self.wait_terminal(task_id, self.config.tasks.stop_grace + 10)
        return await self.get(task_id)

    async def _stored(self, task_id: str) -> Task:
        task = await self.states.read(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found", {"id": task_id})
        return task

    async def wait_terminal(self, task_id: str, timeout: float | None) -> Task:
        task = await self.get(task_id)
        if task.status.terminal:
            return task
        done = self.states.finished(task_id)
        await wait_event(done, timeout)
        return await self.get(task_id)

    # ---- agent start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """On boot: every task the store says is active is reattached or failed, and what
        runs here that was not reattached is destroyed."""
        await self.recovery.run()

    async def start_background(self) -> None:
        self.runner.start()
        self._usage.start()

    async def stop_background(self) -> None:
        """Stop starting pending tasks and sampling running ones; what runs is untouched."""
        await self.runner.stop_scheduling()
        await self._usage.stop()

    async def shutdown(self) -> None:
        """Leave running tasks running (they outlive the agent) unless stop_on_exit."""
        await self.runner.stop_scheduling()
        await self._usage.stop()
        await self.runner.shutdown(self.config.tasks.stop_on_exit, self._stop_on_exit)
        self.bus.close()

    async def _stop_on_exit(self, task_id: str) -> None:
        with contextlib.suppress(Conflict, NotFound):  # it ended meanwhile
            await self.stop(task_id, why="by the agent: it is stopping (tasks.stop_on_exit)")

    # ---- usage now (for /api/tasks/{id}/stats and /metrics) -------------------------------

    async def usage_now(self, task: Task) -> dict[str, Any] | None:
        """A running task's CPU and memory: the sampler's latest (at most a sample interval
        old; asking the sandbox again would shorten the sampler's CPU window), else the
        sandbox's answer now. None when the task is not running or its sandbox cannot say."""
        if task.status != Status.RUNNING:
            return None
        if task.usage is not None:
            return task.usage
        if not task.handle:
            return None
        try:
            handle = Handle.from_json(task.handle)
            return asdict(await self.launcher.backend_for(handle).stats(handle))
        except Exception as exc:  # it ended while we looked, or its backend cannot say
            log.debug("no usage for task %s: %s", task.id, exc)
            return None
