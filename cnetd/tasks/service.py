"""TaskService: creates, schedules, watches, stops and recovers tasks.

Every status change goes through `_transition`, which checks the transition table,
persists the change and its event in one write, and tells the live views.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cnetd.background import cancel_all, cancel_and_wait
from cnetd.clock import seconds_since, utc_now
from cnetd.config import Config
from cnetd.errors import Conflict, Invalid, NotFound, Unavailable
from cnetd.logs.ingester import LogIngester
from cnetd.logs.output import progress_from_line, result_from_log
from cnetd.security.confine import Confinement
from cnetd.security.identity import model_owner, task_owner
from cnetd.security.privilege import TaskUser
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.store.identities import NoFreeUid
from cnetd.store.models import get_model
from cnetd.supervisor.base import ExitStatus, Handle, Sandbox, SpawnError
from cnetd.supervisor.disk import DiskMeter, format_bytes
from cnetd.supervisor.launcher import Launcher, model_dir_of
from cnetd.supervisor.membership import handle_owns_pid
from cnetd.tasks.bus import TaskBus, TaskChange
from cnetd.tasks.disk_guard import DiskGuard
from cnetd.tasks.model import ACTIVE, Status, Task, TaskEvent
from cnetd.tasks.request import NewTask, check_max_pids
from cnetd.tasks.states import check_transition, event
from cnetd.tasks.usage import Sample, UsageMonitor

log = logging.getLogger(__name__)

LOST_REASON = "lost: process vanished while the agent was down"
LONG_LIVED = ("serve",)  # task kinds outside the tasks.max_concurrent slots


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def failure_reason(exit: ExitStatus, task: Task) -> str | None:
    """None for success, else a reason a person can act on."""
    if exit.lost:
        return LOST_REASON
    if exit.oom_killed:
        limit = task.resources.memory_limit
        return f"out of memory (limit {format_bytes(limit)})" if limit else "out of memory"
    if exit.code == 0:
        return None
    if exit.signal:
        try:
            name = signal.Signals(exit.signal).name
        except ValueError:
            name = f"signal {exit.signal}"
        return f"killed by {name} (exit code {exit.code})"
    return f"exit code {exit.code}"


@dataclass
class _Watch:
    task: asyncio.Task[None]
    handle: Handle
    backend: Sandbox
    task_uid: int | None = None
    timed_out: bool = False
    disk_exceeded: str | None = None


class TaskService:
    def __init__(
        self, db: Database, launcher: Launcher, ingester: LogIngester, config: Config, node_id: str,
        confinement: Confinement,
    ) -> None:
        self.confinement = confinement
        self.db = db
        self.launcher = launcher
        self.ingester = ingester
        self.config = config
        self.node_id = node_id
        self.bus = TaskBus()
        self._watches: dict[str, _Watch] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._progress: dict[str, float] = {}
        self._stop_requests: set[str] = set()
        self._stop_why: dict[str, str] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # stops asked for without waiting
        self._kick = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._stopping_agent = False
        self._usage = UsageMonitor()
        self._disk = DiskGuard()

    # ---- queries -------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        task = await self.db.read(lambda c: q.get_task(c, task_id))
        if task is None:
            raise NotFound(f"task {task_id} not found", {"id": task_id})
        await self._usage.fresh(task_id)  # the one task asked for: its usage read now if stale
        return self._with_live_usage(task)

    async def list(self, **filters: Any) -> list[Task]:
        return [self._with_live_usage(t) for t in await self.db.read(lambda c: q.list_tasks(c, **filters))]

    def _with_live_usage(self, task: Task) -> Task:
        live = self._usage.latest(task.id)
        if live is not None and not task.status.terminal:
            task.usage = live
        return task

    def usage_history(self, task_id: str) -> list[Sample]:
        """The task's recent CPU and memory samples, oldest first (empty once forgotten)."""
        self._usage.look(task_id)  # a chart is open: a sample a second while it is
        return self._usage.samples(task_id)

    def peer_check(self, task_id: str) -> Callable[[int, int], str | None]:
        """For a worker socket: is (pid, uid) a process of this running task?"""

        def check(pid: int, uid: int) -> str | None:
            watch = self._watches.get(task_id)
            if watch is None:
                return f"task {task_id} is not running"
            expected = watch.task_uid if watch.task_uid is not None else os.geteuid()
            if uid != expected:
                return f"it runs as uid {uid}, the task as uid {expected}"
            if not handle_owns_pid(watch.handle, pid):
                return f"pid {pid} is not in the task's sandbox"
            return None

        return check

    async def events(self, task_id: str) -> list[TaskEvent]:
        await self.get(task_id)
        return await self.db.read(lambda c: q.list_events(c, task_id))

    async def counts(self) -> dict[str, int]:
        return await self.db.read(q.count_by_status)

    def forget(self, task_ids: list[str]) -> None:
        """Retention deleted these ended tasks: drop what is remembered of them."""
        for task_id in task_ids:
            self._finished.pop(task_id, None)

    # ---- creating --------------------------------------------------------------

    async def create(
        self, new: NewTask, also: Callable[[sqlite3.Connection, Task], None] | None = None
    ) -> Task:
        """Insert the task as pending (plus whatever `also` writes in the same
        transaction), then let the scheduler start it when a slot is free."""
        task_id = str(uuid.uuid4())
        owner = new.identity_owner or task_owner(task_id)
        self.confinement.check_path("working_dir", new.working_dir, self.launcher.base_dir)
        self.confinement.check_env(new.env)
        check_max_pids(new.resources, self.config.tasks.max_pids)
        user = await self.user_for_owner(owner)
        try:
            program = self.launcher.check_startable(new.command, new.working_dir, user)
        except SpawnError as exc:
            field = "working_dir" if str(exc).startswith("working_dir") else "command"
            raise Invalid(field, str(exc).split(": ", 1)[-1] if field == "working_dir" else str(exc)) from None
        self.confinement.check_command(new.command, program)
        timeout = new.timeout if new.timeout is not None else self.config.tasks.timeout
        task = Task(
            id=task_id,
            name=new.name,
            type=new.type,
            kind=new.kind,
            status=Status.PENDING,
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
        )

        def write(conn: sqlite3.Connection) -> None:
            task.uid = self.launcher.identities.allocate(conn, owner)
            q.insert_task(conn, task)
            q.insert_event(conn, event(task_id, "created", f"{task.type} task '{task.name}' created"))
            if also is not None:
                also(conn, task)

        try:
            await self.db.write(write)
        except NoFreeUid as exc:
            raise Unavailable(f"cannot run another task: {exc}; widen tasks.uid_range or wait for tasks to end") from None
        self._finished[task_id] = asyncio.Event()
        self._kick.set()
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

    # ---- scheduling --------------------------------------------------------------

    async def start_background(self) -> None:
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="task-scheduler")
        self._usage.start()
        self._disk.start()
        self._kick.set()

    async def _schedule_forever(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self._start_pending()
            except Exception:
                log.exception("scheduling failed")

    async def _start_pending(self) -> None:
        # Serving workers (kind "serve") live as long as a model is served: they start at
        # once and take none of the tasks.max_concurrent slots, which are for jobs that end
        # (else serving N replicas would starve training and predictions for good).
        for task in await self.db.read(lambda c: q.next_pending(c, None, kinds=LONG_LIVED)):
            await self._launch(task)
        active = await self.db.read(lambda c: q.count_active(c, exclude_kinds=LONG_LIVED))
        free = self.config.tasks.max_concurrent - active
        if free <= 0:
            return
        for task in await self.db.read(lambda c: q.next_pending(c, free, exclude_kinds=LONG_LIVED)):
            await self._launch(task)

    async def _launch(self, task: Task) -> None:
        changes: dict[str, Any] = {}
        if task.uid is None and self.launcher.identities.drops_privileges:
            # Written before tasks had uids (an older agent): never run it as the agent's user.
            owner = await self._owner_of(task)
            changes["uid"] = await self.db.write(lambda c: self.launcher.identities.allocate(c, owner))
        await self._transition(task, Status.STARTING, "starting", "starting the process", **changes)
        try:
            spec = self.launcher.spec_for(task)
            backend = self.launcher.sandbox
            handle = await backend.start(spec)
        except SpawnError as exc:
            await self._undo_launch_files(task.id)
            await self._finish(task, Status.FAILED, "failed", str(exc), reason=str(exc), stopped_at=utc_now())
            return
        except Exception as exc:  # a backend bug must not leave the task 'starting'
            log.exception("start failed", extra={"task_id": task.id})
            await self._undo_launch_files(task.id)
            reason = f"spawn failed: {exc}"
            await self._finish(task, Status.FAILED, "failed", reason, reason=reason, stopped_at=utc_now())
            return
        try:
            # Persist the handle before reporting running: a restarted agent needs it.
            await self._transition(
                task,
                Status.RUNNING,
                "started",
                f"running (pid {handle.pid}, sandbox {handle.backend}{', unit ' + handle.unit if handle.unit else ''}, "
                f"as {self.launcher.user_name(task)}{'' if task.uid is None else f' uid {task.uid}'})",
                started_at=utc_now(),
                handle=handle.to_json(),
                unit=handle.unit,
                sandbox=handle.backend,
                run_as=self.launcher.user_name(task),
            )
        except BaseException:
            # Nomad's rule: a start whose handle cannot be saved is undone.
            await backend.stop(handle, 0)
            await backend.release(handle)
            raise
        self._watch(task, backend, handle)
        if task.id in self._stop_requests:
            await backend.stop(handle, self.config.tasks.stop_grace)

    async def _owner_of(self, task: Task) -> str:
        """Whose uid a task runs under: its model's (by name), else its own."""
        if task.type == "ml_model":
            record = await self.db.read(lambda c: get_model(c, task.model_id or task.id))
            if record is not None:
                return model_owner(record.name)
        return task_owner(task.id)

    async def _undo_launch_files(self, task_id: str) -> None:
        """A start that failed leaves no launch spec (it holds the task's environment) and
        no TMPDIR behind."""
        await asyncio.to_thread(self.launcher.forget_files, task_id)
        await asyncio.to_thread(self.launcher.remove_tmp_dir, task_id)

    # ---- watching ---------------------------------------------------------------

    def _watch(self, task: Task, backend: Sandbox, handle: Handle) -> None:
        self.ingester.watch(task.id, task.log_file)
        self._finished.setdefault(task.id, asyncio.Event())
        self._usage.watch(task.id, backend, handle)  # sampled at once, then every 1-5 s
        runner = asyncio.create_task(self._run_watch(task, backend, handle), name=f"watch-{task.id}")
        self._watches[task.id] = _Watch(task=runner, handle=handle, backend=backend, task_uid=task.uid)

    async def _run_watch(self, task: Task, backend: Sandbox, handle: Handle) -> None:
        waiting = asyncio.ensure_future(backend.wait(handle))
        guards = [asyncio.create_task(self._enforce_timeout(task, waiting))]
        if task.resources.disk_limit:
            guards.append(asyncio.create_task(self._enforce_disk(task, waiting)))
        try:
            exit = await waiting
        finally:
            for guard in guards:
                guard.cancel()
            for guard in guards:
                try:
                    await guard
                except asyncio.CancelledError:
                    pass
                except Exception:  # a broken guard must not leave the task 'running' forever
                    log.exception("task guard failed", extra={"task_id": task.id})
        watch = self._watches.get(task.id)
        try:
            await self._record_exit(task, exit, watch)
        except Exception as exc:
            log.exception("recording the exit failed", extra={"task_id": task.id})
            current = await self.get(task.id)
            if not current.status.terminal:
                reason = f"internal error while recording the exit: {exc}"
                await self._finish(current, Status.FAILED, "failed", reason, reason=reason, exit_code=exit.code, stopped_at=utc_now())
        finally:
            self._watches.pop(task.id, None)
            self._usage.forget(task.id)
            with contextlib.suppress(Exception):
                await backend.release(handle)
            # Its processes are gone (wait returned): nothing uses its TMPDIR any more.
            await asyncio.to_thread(self.launcher.remove_tmp_dir, task.id)

    async def _enforce_timeout(self, task: Task, waiting: asyncio.Future[ExitStatus]) -> None:
        if not task.timeout:
            return
        elapsed = seconds_since(task.started_at) if task.started_at else 0.0
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), max(0.0, task.timeout - elapsed))
            return
        watch = self._watches.get(task.id)
        if watch is not None and not waiting.done():
            watch.timed_out = True
            log.info("task timed out after %s, stopping it", format_duration(task.timeout), extra={"task_id": task.id})
            await watch.backend.stop(watch.handle, self.config.tasks.stop_grace)

    async def _enforce_disk(self, task: Task, waiting: asyncio.Future[ExitStatus]) -> None:
        limit = task.resources.disk_limit
        assert limit is not None
        meter = DiskMeter(task.log_file, self._output_dirs(task), since=task.started_at, task_id=task.id)
        used = await self._disk.until_exceeded(meter, limit)  # measured with every other task's
        watch = self._watches.get(task.id)
        if watch is not None and not waiting.done():
            watch.disk_exceeded = f"disk limit exceeded (wrote {format_bytes(used, like=limit)}, limit {format_bytes(limit)})"
            await watch.backend.stop(watch.handle, self.config.tasks.stop_grace)

    def _output_dirs(self, task: Task) -> list[str]:
        tmp = [str(self.launcher.tmp_dir(task.id))]  # its own TMPDIR
        if task.kind in LONG_LIVED:
            return tmp  # a serving worker writes only its log; the shared dirs are other tasks' output
        cwd = self.launcher.working_dir(task.working_dir)
        # In its namespace a task writes only to its TMPDIR and its model's dir; without one
        # (or as the agent's own user) it may write its working dir too.
        confined = task.uid is not None and self.launcher.isolation.namespaces
        dirs = tmp if confined else [*tmp, str(cwd)]
        model_path = task.env.get("MODEL_PATH")
        if model_path:
            dirs.append(str(model_dir_of(cwd, model_path)))
        return dirs

    async def _record_exit(self, task: Task, exit: ExitStatus, watch: _Watch | None) -> None:
        # The processes are gone but the sandbox is not released yet: the final sample
        # still reads the cgroup's peak memory (a sub-second task gets its usage too).
        usage = await self._usage.finish(task.id)
        await self.ingester.drain(task.id)
        result = await asyncio.to_thread(result_from_log, task.log_file)
        current = await self.get(task.id)
        changes: dict[str, Any] = {"exit_code": exit.code, "stopped_at": utc_now()}
        if result is not None:
            changes["result"] = result
        if task.id in self._progress:
            changes["progress"] = self._progress.pop(task.id)
        if usage is not None:
            changes["usage"] = usage
        if current.stop_requested or task.id in self._stop_requests:
            status, kind, reason = Status.STOPPED, "stopped", None
            message = f"stopped {self._stop_why.pop(task.id, 'by user')}" + (
                f" (exit code {exit.code})" if exit.code is not None else "")
        elif watch is not None and watch.timed_out:
            assert task.timeout is not None
            status, kind, reason = Status.FAILED, "failed", f"timed out after {format_duration(task.timeout)}"
            message = reason
        elif watch is not None and watch.disk_exceeded:
            status, kind, reason = Status.FAILED, "failed", watch.disk_exceeded
            message = reason
        elif (problem := self.launcher.start_problem(task.id)) is not None:
            status, kind, reason = Status.FAILED, "failed", f"spawn failed: {problem}"
            message = reason
        else:
            reason = failure_reason(exit, task)
            status, kind = (Status.COMPLETED, "completed") if reason is None else (Status.FAILED, "failed")
            message = reason or "completed (exit code 0)"
        await self._finish(current, status, kind, message, reason=reason, **changes)
        if self.config.tasks.cleanup:
            self.launcher.forget_files(task.id)

    async def _finish(self, task: Task, status: Status, kind: str, message: str, **changes: Any) -> None:
        release = task.type == "process"  # a model keeps its uid: its files are its own
        await self._transition(task, status, kind, message, release_owner=task_owner(task.id) if release else None, **changes)
        if release and task.uid is not None and self.launcher.identities.mode == "dynamic":
            await asyncio.to_thread(self.launcher.identities.remove_home, task.uid)
        self._stop_requests.discard(task.id)
        self._stop_why.pop(task.id, None)
        self._finished.setdefault(task.id, asyncio.Event()).set()
        self._kick.set()

    # ---- progress ---------------------------------------------------------------

    async def on_log_lines(self, task_id: str, lines: list[str]) -> None:
        latest = None
        for line in lines:
            value = progress_from_line(line)
            if value is not None:
                latest = value
        if latest is None:
            return
        previous = self._progress.get(task_id)
        self._progress[task_id] = latest
        if previous is None or abs(latest - previous) >= 0.01 or latest in (0.0, 1.0):
            await self.db.write(lambda c: q.update_task(c, task_id, {"progress": latest}))
            self.bus.publish(TaskChange(task_id, "running", "progress"))

    # ---- stopping ---------------------------------------------------------------

    async def stop(self, task_id: str, wait: bool = True, why: str = "by user") -> Task:
        """why: who or what stopped it, for its events ("by user", "by the agent: ...")."""
        task = await self.get(task_id)
        if task.status.terminal:
            raise Conflict(f"task {task_id} has already ended ({task.status})", {"id": task_id, "status": str(task.status)})
        if task.status == Status.PENDING:
            await self._finish(task, Status.STOPPED, "stopped", f"stopped {why} before it started", stopped_at=utc_now())
            return await self.get(task_id)
        self._stop_requests.add(task_id)
        self._stop_why[task_id] = why
        await self.db.write(
            lambda c: (
                q.update_task(c, task_id, {"stop_requested": True}),
                q.insert_event(c, event(task_id, "stop_requested", f"stop requested {why}")),
            )
        )
        self.bus.publish(TaskChange(task_id, str(task.status), "stop_requested"))
        watch = self._watches.get(task_id)
        if watch is not None:
            stopping = watch.backend.stop(watch.handle, self.config.tasks.stop_grace)
            if wait:
                await stopping
            else:  # the caller shows "stop requested" now; the end arrives as a status change
                background = asyncio.create_task(stopping, name=f"stop-{task_id}")
                self._stopping.add(background)
                background.add_done_callback(self._stopped_in_background)
        if wait:
            await self.wait_terminal(task_id, self.config.tasks.stop_grace + 10)
        return await self.get(task_id)

    def _stopped_in_background(self, stopping: asyncio.Task[None]) -> None:
        self._stopping.discard(stopping)
        if not stopping.cancelled() and stopping.exception() is not None:
            log.error("stopping %s failed: %s", stopping.get_name(), stopping.exception())

    async def wait_terminal(self, task_id: str, timeout: float | None) -> Task:
        task = await self.get(task_id)
        if task.status.terminal:
            return task
        done = self._finished.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout)
        return await self.get(task_id)

    # ---- transitions -------------------------------------------------------------

    async def _transition(self, task: Task, new: Status, event_type: str, message: str,
                          release_owner: str | None = None, **changes: Any) -> None:
        check_transition(task.id, task.status, new)
        changes["status"] = new
        ev = event(task.id, event_type, message)

        def write(conn: sqlite3.Connection) -> None:
            q.update_task(conn, task.id, changes)
            q.insert_event(conn, ev)
            if release_owner is not None:
                self.launcher.identities.release(conn, release_owner)

        await self.db.write(write)
        for key, value in changes.items():
            setattr(task, key, value)
        log.info("task %s: %s", new, message, extra={"task_id": task.id})
        self.bus.publish(TaskChange(task.id, str(new), "status"))

    # ---- agent start and stop -------------------------------------------------------

    async def recover(self) -> None:
        """On boot: every task the store says is active is reattached or settled."""
        for task in await self.db.read(lambda c: q.list_tasks(c, statuses=[str(s) for s in ACTIVE], newest_first=False)):
            if task.handle is None:
                reason = "lost: the agent stopped while the task was starting"
                await self._finish(task, Status.FAILED, "failed", reason, reason=reason, stopped_at=utc_now())
                continue
            handle = Handle.from_json(task.handle)
            try:
                backend = self.launcher.backend_for(handle)
            except Exception as exc:
                reason = f"lost: its sandbox backend '{handle.backend}' is not available ({exc})"
                await self._finish(task, Status.FAILED, "failed", reason, reason=reason, stopped_at=utc_now())
                continue
            alive = await backend.recover(handle)
            message = (
                f"reattached after agent restart (pid {handle.pid})"
                if alive
                else "the process ended while the agent was down"
            )
            await self.db.write(lambda c, t=task, m=message: q.insert_event(c, event(t.id, "recovered", m)))
            if task.stop_requested:
                self._stop_requests.add(task.id)
            self._watch(task, backend, handle)
        known = await self.db.read(lambda c: {t.id for t in q.list_tasks(c)})
        removed = await self.launcher.sandbox.cleanup_orphans(known, self.launcher.run_dir)
        for item in removed:
            log.warning("removed leftover %s that belongs to no known task", item)
        for leftover in await asyncio.to_thread(self.launcher.remove_tmp_dirs_except, set(self._watches)):
            log.info("removed the TMPDIR of a task that is no longer running: %s", leftover)

    async def stop_background(self) -> None:
        """Stop starting pending tasks and sampling running ones; what runs is untouched."""
        await cancel_and_wait(self._scheduler)
        await self._usage.stop()

    async def shutdown(self) -> None:
        """Leave running tasks running (they outlive the agent) unless stop_on_exit."""
        self._stopping_agent = True
        await cancel_and_wait(self._scheduler)
        await self._usage.stop()
        await self._disk.stop()
        if self._stopping:  # stops under way finish (SIGKILL after the grace), not half-done
            await asyncio.wait(set(self._stopping), timeout=self.config.tasks.stop_grace + 5)
        if self.config.tasks.stop_on_exit:
            for task_id in list(self._watches):
                with contextlib.suppress(Exception):
                    await self.stop(task_id)
        await cancel_all(watch.task for watch in list(self._watches.values()))
        self._watches.clear()
        self.bus.close()

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
