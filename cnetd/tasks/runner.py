"""Runs tasks: starts pending ones when a slot is free, watches each until its processes are
gone, and records how it ended.

Starting: the scheduler picks the oldest pending tasks that fit in tasks.max_concurrent
(serving workers take no slot) and launches each on its own, at most LAUNCHES_AT_ONCE at a
time, so one slow `systemd-run` delays no other start. A launch claims its task
(pending -> starting, guarded in the store, so a task stopped since it was picked is never
started), starts it, and saves its handle before it reports it running; a start whose
handle cannot be saved is undone (Nomad's rule). A stop that arrived while it was starting
is carried out as soon as the handle is saved.

Watching: the exit, its timeout and its disk limit; then the exit is recorded under the
task's lock, from what the store holds (a stop request recorded before it wins).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnetd.background import cancel_all, cancel_and_wait, wait_event
from cnetd.clock import seconds_since, utc_now
from cnetd.config import Config
from cnetd.gpus.assignment import GpuRequest, Waiting, choose
from cnetd.gpus.devices import GpuGrant, device_nodes
from cnetd.gpus.inventory import Inventory
from cnetd.gpus.status import task_gpu_usage
from cnetd.logs.ingester import LogIngester
from cnetd.logs.output import progress_from_line, result_from_log
from cnetd.security.identity import model_owner, task_owner
from cnetd.store import gpus as gq
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.store.models import get_model
from cnetd.supervisor.base import ExitStatus, Handle, Sandbox, SpawnError
from cnetd.supervisor.disk import DiskMeter, format_bytes
from cnetd.supervisor.launcher import Launcher, model_dir_of
from cnetd.supervisor.membership import handle_owns_pid
from cnetd.tasks.bus import TaskChange
from cnetd.tasks.disk_guard import DiskGuard
from cnetd.tasks.model import Status, Task
from cnetd.tasks.outcome import ending, format_duration
from cnetd.tasks.transitions import Also, Outcome, TaskStates
from cnetd.tasks.usage import UsageMonitor

log = logging.getLogger(__name__)

LONG_LIVED = ("serve",)  # task kinds outside the tasks.max_concurrent slots
LAUNCHES_AT_ONCE = 4  # starts under way at once; the others wait, still pending
LAUNCH_DRAIN = 5.0  # seconds a stopping agent waits for starts under way before cancelling them
STOPS_DRAIN_EXTRA = 5.0  # seconds past tasks.stop_grace a stopping agent waits for stops under way
LOST_STARTING = "lost: the agent stopped while the task was starting"


@dataclass
class Watch:
    task: asyncio.Task[None]
    handle: Handle
    backend: Sandbox
    task_uid: int | None = None
    timed_out: bool = False
    disk_exceeded: str | None = None
    gpu_exceeded: str | None = None


class TaskRunner:
    def __init__(self, db: Database, states: TaskStates, launcher: Launcher, ingester: LogIngester,
                 config: Config, usage: UsageMonitor) -> None:
        self.db = db
        self.states = states
        self.launcher = launcher
        self.ingester = ingester
        self.config = config
        self.usage = usage
        self._watches: dict[str, Watch] = {}
        self._progress: dict[str, float] = {}
        self._launches: dict[str, asyncio.Task[None]] = {}  # launches under way, by task id
        self._queued: dict[str, bool] = {}  # launches not yet claimed -> whether they take a slot
        self._slots = asyncio.Semaphore(LAUNCHES_AT_ONCE)
        self._stopping: set[asyncio.Task[None]] = set()  # stops asked for without waiting
        self._kick = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._closing = False  # the agent stops: launches that have not claimed their task yet do not
        self._disk = DiskGuard()
        self._gpus_of: dict[str, tuple[str, ...]] = {}  # running tasks with GPUs -> their uuids
        usage.gpu_usage = self._gpu_usage
        self._waiting_for_gpus = False  # the last scheduling pass left a task waiting for GPUs
        # GPUs that appear (a driver loaded late) or change may let a waiting task start
        launcher.gpus.on_refresh(lambda _inventory: self._kick.set() if self._waiting_for_gpus else None)
        states.on_end(lambda _task_id: self._kick.set())

    # ---- what the service asks ---------------------------------------------------------

    def kick(self) -> None:
        """Something changed that may let a pending task start."""
        self._kick.set()

    def watch_of(self, task_id: str) -> Watch | None:
        return self._watches.get(task_id)

    # ---- the scheduler ------------------------------------------------------------------

    def start(self) -> None:
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="task-scheduler")
        self._disk.start()
        self._kick.set()

    async def stop_scheduling(self) -> None:
        """No more starts: the scheduler stops; starts under way get LAUNCH_DRAIN seconds to
        save their handles (so a restarted agent reattaches them), then are cancelled (the
        backend kills what it began, the task fails as lost)."""
        self._closing = True  # launches still waiting for their turn leave their task pending
        await cancel_and_wait(self._scheduler)
        self._scheduler = None
        under_way = list(self._launches.values())
        if not under_way:
            return
        log.info("waiting up to %.0fs for %d task starts under way", LAUNCH_DRAIN, len(under_way))
        _, late = await asyncio.wait(under_way, timeout=LAUNCH_DRAIN)
        if late:
            log.warning("%d task starts not done after %.0fs; cancelling them", len(late), LAUNCH_DRAIN)
            await cancel_all(late)

    async def _schedule_forever(self) -> None:
        while True:
            await wait_event(self._kick, None)
            self._kick.clear()
            try:
                await self._start_pending()
            except Exception:
                log.exception("scheduling failed")

    async def _start_pending(self) -> None:
        # Serving workers (kind "serve") live as long as a model is served: they start at
        # once and take none of the tasks.max_concurrent slots, which are for jobs that end
        # (else serving N replicas would starve training and predictions for good).
        gate = await self._gpu_gate()
        for task in await self.db.read(lambda c: q.next_pending(c, None, kinds=LONG_LIVED)):
            if await gate(task):
                self._begin(task, takes_slot=False)
        # A slot is taken by each task starting or running (the store counts those) and by
        # each launch that waits for its turn to claim its still pending task.
        active = await self.db.read(lambda c: q.count_active(c, exclude_kinds=LONG_LIVED))
        queued = sum(self._queued.values())
        free = self.config.tasks.max_concurrent - active - queued
        if free <= 0:
            return
        # A task waiting for GPUs takes no slot and holds up no task behind it: with GPUs on
        # the node every pending task is looked at.
        limit = None if self.launcher.gpus.inventory.count else free + queued
        picked = await self.db.read(lambda c: q.next_pending(c, limit, exclude_kinds=LONG_LIVED))
        for task in [t for t in picked if t.id not in self._launches]:
            if free <= 0:
                break
            if await gate(task):
                self._begin(task, takes_slot=True)
                free -= 1

    async def _gpu_gate(self) -> Callable[[Task], Any]:
        """A check for this scheduling pass: may the task start as far as GPUs go? One that
        may not is left pending with the reason (`waiting for 1 GPU: 0 of 2 free`). GPUs
        given to a task earlier in the pass count as taken; the claim decides for good."""
        inventory = self.launcher.gpus.inventory
        held: list[gq.Held] = []
        read = False
        self._waiting_for_gpus = False

        async def gate(task: Task) -> bool:
            nonlocal held, read
            request = GpuRequest.of(task.resources)
            if request is None or task.id in self._launches:
                return True
            if not read:
                held, read = await self.db.read(gq.held), True
            try:
                uuids = choose(request, inventory, held)
            except Waiting as exc:
                self._waiting_for_gpus = True
                await self._note_waiting(task, str(exc))
                return False
            held = [*held, *(gq.Held(task.id, u, request.memory) for u in uuids)]
            return True

        return gate

    async def _note_waiting(self, task: Task, reason: str) -> None:
        if task.reason == reason:
            return

        def write(conn: sqlite3.Connection) -> bool:
            if q.status_of(conn, task.id) != Status.PENDING:
                return False
            q.update_task(conn, task.id, {"reason": reason})
            return True

        if await self.db.write(write):
            task.reason = reason
            self.states.bus.publish(TaskChange(task.id, "pending", "reason"))

    def _begin(self, task: Task, takes_slot: bool) -> None:
        if task.id in self._launches:
            return
        self._queued[task.id] = takes_slot
        launch = asyncio.create_task(self.launch(task), name=f"launch-{task.id}")
        self._launches[task.id] = launch
        launch.add_done_callback(functools.partial(self._launch_done, task.id))

    def _launch_done(self, task_id: str, launch: asyncio.Task[None]) -> None:
        self._launches.pop(task_id, None)
        self._queued.pop(task_id, None)
        if not launch.cancelled() and launch.exception() is not None:
            log.error("launch failed", exc_info=launch.exception(), extra={"task_id": task_id})
        self._kick.set()  # a launch that did not claim its task leaves its slot free

    # ---- one launch ----------------------------------------------------------------------

    async def launch(self, task: Task) -> None:
        """Start a task picked while pending (task is that snapshot): claim it, start it,
        save its handle."""
        async with self._slots:
            if self._closing or not await self._claim(task):
                return
            started = await self._start(task)
            if started is None:
                return
            backend, handle = started
            stop_now = await self._save_handle(task, backend, handle)
        if stop_now:  # a stop came while it was starting
            self.signal_stop(task.id)

    async def _claim(self, task: Task) -> bool:
        """pending -> starting, unless the store says otherwise (a stop came first), with its
        GPUs chosen and written in the same transaction (not enough free: it stays pending)."""
        steps: list[Also] = []
        if task.uid is None and self.launcher.identities.drops_privileges:
            # Written before tasks had uids (an older agent): never run it as the agent's user.
            owner = await self._owner_of(task)
            identities = self.launcher.identities

            def allocate(conn: sqlite3.Connection) -> dict[str, Any]:
                return {"uid": identities.allocate(conn, owner)}

            steps.append(allocate)
        request = GpuRequest.of(task.resources)
        if request is not None:
            inventory = self.launcher.gpus.inventory

            def assign(conn: sqlite3.Connection) -> dict[str, Any]:
                held = [h for h in gq.held(conn) if h.task_id != task.id]
                gq.assign(conn, task.id, choose(request, inventory, held), request.memory)
                return {}

            steps.append(assign)

        def also(conn: sqlite3.Connection) -> dict[str, Any]:
            return {k: v for step in steps for k, v in step(conn).items()}

        changes: dict[str, Any] = {"reason": None} if task.reason else {}
        try:
            async with self.states.lock(task.id):
                outcome = await self.states.move(task, Status.STARTING, "starting", "starting the process",
                                                 also=also if steps else None, **changes)
        except Waiting as exc:  # taken meanwhile by a task claimed at the same time
            self._queued.pop(task.id, None)
            await self._note_waiting(task, str(exc))
            return False
        self._queued.pop(task.id, None)  # from here on the store counts it (or it is not started)
        return outcome.applied

    async def _grant_for(self, task: Task) -> GpuGrant | None:
        """What the launch gets on a node with GPUs: the GPUs the claim wrote for it."""
        inventory = self.launcher.gpus.inventory
        if not inventory.count:
            return None
        held = await self.db.read(lambda c: gq.of_task(c, task.id)) if GpuRequest.of(task.resources) else []
        return grant_of(inventory, held, self.launcher.gpus.settings.device_dir)

    async def _start(self, task: Task) -> tuple[Sandbox, Handle] | None:
        backend = self.launcher.sandbox
        try:
            grant = await self._grant_for(task)
            if grant is not None:
                task.gpus = list(grant.uuids)
            spec = self.launcher.spec_for(task, grant)
            return backend, await backend.start(spec)
        except SpawnError as exc:
            await self._undo_launch_files(task.id)
            await self._fail_start(task, str(exc))
        except asyncio.CancelledError:  # the agent stops: the backend killed what it began
            await self._undo_launch_files(task.id)
            await self._fail_start(task, LOST_STARTING)
            raise
        except Exception as exc:  # a backend bug must not leave the task 'starting'
            log.exception("start failed", extra={"task_id": task.id})
            await self._undo_launch_files(task.id)
            await self._fail_start(task, f"spawn failed: {exc}")
        return None

    async def _save_handle(self, task: Task, backend: Sandbox, handle: Handle) -> bool:
        """starting -> running with the handle; True when a stop is waiting. The write is
        seen through to its end even when the agent is stopping meanwhile (it runs on the
        writer thread anyway): the task is then either known with its handle, or undone."""
        user = self.launcher.user_name(task)
        message = (f"running (pid {handle.pid}, sandbox {handle.backend}"
                   f"{', unit ' + handle.unit if handle.unit else ''}, "
                   f"as {user}{'' if task.uid is None else f' uid {task.uid}'})")
        cancelled = False
        error: Exception | None = None
        outcome: Outcome | None = None
        async with self.states.lock(task.id):
            write = asyncio.ensure_future(self.states.move(
                task, Status.RUNNING, "started", message, started_at=utc_now(), handle=handle.to_json(),
                unit=handle.unit, sandbox=handle.backend, run_as=user,
            ))
            try:
                try:
                    outcome = await asyncio.shield(write)
                except asyncio.CancelledError:
                    cancelled = True
                    outcome = await write
            except Exception as exc:
                error = exc
            if outcome is not None and outcome.applied:
                self.watch(task, backend, handle)
        if outcome is None:
            log.error("the handle of pid %d could not be saved (%s); undoing the start", handle.pid, error,
                      extra={"task_id": task.id})
            await self._undo_start(task, backend, handle)
            await self._fail_start(task, f"spawn failed: its handle could not be saved ({error})")
        elif not outcome.applied:
            log.error("the task is %s now, no longer starting; undoing its start", outcome.status,
                      extra={"task_id": task.id})
            await self._undo_start(task, backend, handle)
        if cancelled:
            raise asyncio.CancelledError
        return outcome is not None and outcome.applied and outcome.stop_requested

    async def _undo_start(self, task: Task, backend: Sandbox, handle: Handle) -> None:
        try:
            await backend.stop(handle, 0)
            await backend.release(handle)
        except Exception:
            log.exception("undoing the start of pid %d failed", handle.pid, extra={"task_id": task.id})
        await self._undo_launch_files(task.id)

    async def _fail_start(self, task: Task, reason: str) -> None:
        try:
            async with self.states.lock(task.id):
                await self.states.end(task, Status.FAILED, "failed", reason, reason=reason, stopped_at=utc_now())
        except Exception:
            log.exception("recording the failed start failed (%s); the next start settles it", reason,
                          extra={"task_id": task.id})

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

    # ---- stopping --------------------------------------------------------------------------

    def signal_stop(self, task_id: str) -> asyncio.Task[None] | None:
        """SIGTERM the task's processes, SIGKILL after tasks.stop_grace; the exit that follows
        is recorded as `stopped` (the store says a stop was asked for). A task without a
        handle yet is stopped by its launch once it has one. Returns the stop under way."""
        watch = self._watches.get(task_id)
        if watch is None:
            return None
        stopping = asyncio.create_task(self._stop(task_id, watch), name=f"stop-{task_id}")
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        return stopping

    async def _stop(self, task_id: str, watch: Watch) -> None:
        try:
            await watch.backend.stop(watch.handle, self.config.tasks.stop_grace)
        except Exception:
            log.exception("stopping pid %d failed", watch.handle.pid, extra={"task_id": task_id})

    # ---- watching ------------------------------------------------------------------------------

    def watch(self, task: Task, backend: Sandbox, handle: Handle) -> None:
        """Follow a running task (started now, or reattached after an agent restart)."""
        self.ingester.watch(task.id, task.log_file)
        self.states.finished(task.id)
        if task.gpus:
            self._gpus_of[task.id] = tuple(task.gpus)
        self.usage.watch(task.id, backend, handle)  # sampled at once, then every 1-5 s
        runner = asyncio.create_task(self._run_watch(task, backend, handle), name=f"watch-{task.id}")
        self._watches[task.id] = Watch(task=runner, handle=handle, backend=backend, task_uid=task.uid)

    async def _run_watch(self, task: Task, backend: Sandbox, handle: Handle) -> None:
        waiting = asyncio.ensure_future(backend.wait(handle))
        guards = [asyncio.create_task(self._enforce_timeout(task, waiting))]
        if task.resources.disk_limit:
            guards.append(asyncio.create_task(self._enforce_disk(task, waiting)))
        if task.resources.gpu_memory:
            guards.append(asyncio.create_task(self._enforce_gpu_memory(task, handle, waiting)))
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
            await self._record_internal_error(task, exit, exc)
        finally:
            self._watches.pop(task.id, None)
            self._gpus_of.pop(task.id, None)
            self.usage.forget(task.id)
            try:
                await backend.release(handle)
            except Exception:
                log.exception("releasing the sandbox of pid %d failed", handle.pid, extra={"task_id": task.id})
            # Its processes are gone (wait returned): nothing uses its TMPDIR any more.
            await asyncio.to_thread(self.launcher.remove_tmp_dir, task.id)

    async def _enforce_timeout(self, task: Task, waiting: asyncio.Future[ExitStatus]) -> None:
        if not task.timeout:
            return
        elapsed = seconds_since(task.started_at) if task.started_at else 0.0
        done, _ = await asyncio.wait({waiting}, timeout=max(0.0, task.timeout - elapsed))
        if done:
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

    async def _enforce_gpu_memory(self, task: Task, handle: Handle, waiting: asyncio.Future[ExitStatus]) -> None:
        """Stop the task once NVML accounts more GPU memory to its processes than it asked for."""
        limit = task.resources.gpu_memory
        assert limit is not None
        monitor = self.launcher.gpus
        while not waiting.done():
            used = await asyncio.to_thread(gpu_memory_of, monitor.inventory, handle)
            if used > limit:
                watch = self._watches.get(task.id)
                if watch is not None:
                    watch.gpu_exceeded = (f"GPU memory limit exceeded (used {format_bytes(used, like=limit)}, "
                                          f"limit {format_bytes(limit)})")
                    log.info("%s; stopping it", watch.gpu_exceeded, extra={"task_id": task.id})
                    await watch.backend.stop(watch.handle, self.config.tasks.stop_grace)
                return
            reading: asyncio.Future[Any] = asyncio.ensure_future(monitor.next_reading())
            try:
                await asyncio.wait([waiting, reading], return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(reading)

    def _gpu_usage(self, task_id: str, handle: Handle) -> dict[str, Any]:
        uuids = self._gpus_of.get(task_id)
        if not uuids:
            return {}
        return task_gpu_usage(self.launcher.gpus.inventory, uuids, functools.partial(handle_owns_pid, handle))

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

    async def _record_exit(self, task: Task, exit: ExitStatus, watch: Watch | None) -> None:
        # The processes are gone but the sandbox is not released yet: the final sample
        # still reads the cgroup's peak memory (a sub-second task gets its usage too).
        usage = await self.usage.finish(task.id)
        await self.ingester.drain(task.id)
        result = await asyncio.to_thread(result_from_log, task.log_file)
        problem = await asyncio.to_thread(self.launcher.start_problem, task.id)
        changes: dict[str, Any] = {"exit_code": exit.code, "stopped_at": utc_now()}
        if result is not None:
            changes["result"] = result
        if task.id in self._progress:
            changes["progress"] = self._progress.pop(task.id)
        if usage is not None:
            changes["usage"] = usage
        async with self.states.lock(task.id):
            current = await self.states.read(task.id)
            if current is None or current.status.terminal:
                log.warning("exit %s not recorded: the task is %s", exit, current.status if current else "gone",
                            extra={"task_id": task.id})
                return
            end = ending(current, exit, stop_why=self.states.stop_why(task.id),
                         timed_out=watch is not None and watch.timed_out,
                         disk_exceeded=watch.disk_exceeded if watch is not None else None, start_problem=problem,
                         gpu_exceeded=watch.gpu_exceeded if watch is not None else None)
            await self.states.end(current, end.status, end.kind, end.message, reason=end.reason, **changes)
        if self.config.tasks.cleanup:
            await asyncio.to_thread(self.launcher.forget_files, task.id)

    async def _record_internal_error(self, task: Task, exit: ExitStatus, exc: Exception) -> None:
        try:
            async with self.states.lock(task.id):
                current = await self.states.read(task.id)
                if current is not None and not current.status.terminal:
                    reason = f"internal error while recording the exit: {exc}"
                    await self.states.end(current, Status.FAILED, "failed", reason, reason=reason,
                                          exit_code=exit.code, stopped_at=utc_now())
        except Exception:
            log.exception("recording the failure failed too; the next start settles the task", extra={"task_id": task.id})

    # ---- progress ----------------------------------------------------------------------------

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
            self.states.bus.publish(TaskChange(task_id, "running", "progress"))

    # ---- the agent stops ------------------------------------------------------------------------

    async def shutdown(self, stop_on_exit: bool, stop: Callable[[str], Any]) -> None:
        """Stops under way finish (SIGKILL after the grace), and with stop_on_exit every
        running task is stopped, all at once; each for at most tasks.stop_grace +
        STOPS_DRAIN_EXTRA seconds. Then the watchers are let go: the tasks run on."""
        await self._disk.stop()
        bound = self.config.tasks.stop_grace + STOPS_DRAIN_EXTRA
        stopping: set[asyncio.Future[Any]] = set(self._stopping)
        if stop_on_exit and self._watches:
            log.info("stopping %d running tasks (tasks.stop_on_exit)", len(self._watches))
            stopping |= {asyncio.ensure_future(stop(task_id)) for task_id in list(self._watches)}
        if stopping:
            log.info("waiting up to %.0fs for %d stops under way", bound, len(stopping))
            _, late = await asyncio.wait(stopping, timeout=bound)
            if late:
                log.warning("%d stops not done after %.0fs; leaving them", len(late), bound)
                await cancel_all(late)
            for done in stopping - late:
                if not done.cancelled() and done.exception() is not None:
                    log.error("stopping a task failed: %s", done.exception())
        await cancel_all(watch.task for watch in list(self._watches.values()))
        self._watches.clear()



def grant_of(inventory: Inventory, held: list[gq.Held], device_dir: Any) -> GpuGrant:
    uuids = tuple(h.gpu_uuid for h in held if inventory.by_uuid(h.gpu_uuid) is not None)
    memory = next((h.memory for h in held if h.memory is not None), None)
    gpu = inventory.by_uuid(uuids[0]) if uuids else None
    return GpuGrant(uuids=uuids, memory=memory, memory_total=gpu.memory_total if gpu is not None else None,
                    devices=device_nodes(inventory, uuids, device_dir))


def gpu_memory_of(inventory: Inventory, handle: Handle) -> int:
    """Bytes of GPU memory NVML accounts to the task's processes (on every GPU)."""
    return sum(p.memory_used for p in inventory.processes if handle_owns_pid(handle, p.pid))
