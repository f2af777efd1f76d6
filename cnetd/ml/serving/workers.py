"""Worker tasks of served models: creating one (the model's command, env, working dir and
limits, a socket directory of its own), connecting to it once it listens, stopping it and
removing its socket. The replica runner and the rolling reload start and stop workers
only through this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Protocol

from cnetd.errors import Conflict, DomainError, NotFound
from cnetd.limits import ResourceLimits
from cnetd.ml.serving.client import ProtocolError, WorkerClient
from cnetd.ml.serving.served import Served
from cnetd.security.identity import model_owner
from cnetd.tasks.model import Task
from cnetd.tasks.request import NewTask
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")
WORKER_RELATIVE = "cnetd/ml/serving/worker.py"  # for cnetd.bundle.stable_copy in the one-file binary
WORKER_SOCKET = "worker.sock"
STARTUP_TIMEOUT = 300.0  # a worker that has not loaded its model by then is replaced
LOST_GRACE = 5.0  # after its connection ends, how long a worker may take to exit
CONNECT_POLL_MAX = 0.25


class SocketDirs(Protocol):
    """Where worker sockets live (the launcher's run dir)."""

    run_dir: Path

    def socket_dir(self, name: str, gid: int | None) -> Path: ...


def interpreter_for(command: str) -> str:
    """The model's python: its deploy command when that is a python, else python3."""
    return command if Path(command).name.startswith("python") else "python3"


def socket_of(task: Task) -> str | None:
    args = task.args
    for i, arg in enumerate(args[:-1]):
        if arg == "--socket":
            return args[i + 1]
    return None


async def created_after_all(creating: asyncio.Future[Task], label: str) -> Task | None:
    """The worker task made by a creation whose caller was cancelled meanwhile (it went on,
    shielded), or None when that creation failed: logged, as the caller is gone."""
    try:
        return await creating
    except DomainError as exc:  # e.g. the command is no longer allowed
        log.warning("model %s: its worker was not created: %s", label, exc.message)
    except Exception as exc:  # broad: the caller is being cancelled, and this must not replace that
        log.warning("model %s: creating its worker failed: %r", label, exc, exc_info=True)
    return None


def worker_busy_poll_us(busy_poll_us: int, resources: ResourceLimits) -> int:
    """How long a worker may poll for its next request: not at all under a CPU quota below
    one core, where polling would spend the quota and get the worker throttled."""
    if resources.cpu_limit is not None and resources.cpu_limit < 1:
        return 0
    return busy_poll_us


class WorkerTasks:
    def __init__(self, tasks: TaskService, sockets: SocketDirs, worker_script: Path = WORKER_SCRIPT,
                 busy_poll_us: int = 0) -> None:
        """worker_script: a worker.py that the model's python can read for as long as the
        worker lives (in the one-file binary: a stable copy under the state dir).
        busy_poll_us: serving.busy_poll_us, for the workers and the agent's end of them."""
        self.tasks = tasks
        self.sockets = sockets
        self.worker_script = worker_script
        self.busy_poll_us = busy_poll_us

    async def create(self, served: Served) -> Task:
        record, base = served.model.record, served.model.task
        owner = model_owner(record.name)
        # Its own directory: root's, writable by the model's group alone, so no other task
        # can take the name and the worker cannot move the directory.
        uid = await self.tasks.uid_for_owner(owner)
        socket = str(self.sockets.socket_dir(f"serve-{uuid.uuid4().hex[:12]}", uid) / WORKER_SOCKET)
        model = served.model_arg or record.model_path  # a version's own copy of its artifact, when it has one
        args = [str(self.worker_script), "--socket", socket, "--model", model, "--loader", served.spec.loader]
        if record.script_path:
            args += ["--script", record.script_path]
        if poll := worker_busy_poll_us(self.busy_poll_us, base.resources):
            args += ["--busy-poll-us", str(poll)]
        return await self.tasks.create(NewTask(
            name=f"{record.name}-serve",
            command=interpreter_for(base.command),
            args=args,
            env=dict(base.env),
            working_dir=base.working_dir,
            resources=base.resources,
            timeout=0.0,  # no timeout: a worker lives until serving stops
            type="ml_model",
            kind="serve",
            model_id=record.id,
            identity_owner=owner,
            environment=base.environment,  # the model's Python environment (cnetd.ml.envs)
        ))

    async def connect(self, task_id: str, socket: str | None, label: str) -> WorkerClient | None:
        """Connect once the worker listens; None when its task ends or it never gets ready."""
        if socket is None:
            log.error("worker %s has no --socket argument; replacing it", task_id)
            await self.stop(task_id)
            return None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        delay = 0.01
        while True:
            try:
                return await WorkerClient.connect(socket, task_id, self.tasks.peer_check(task_id),
                                                  busy_poll=self.busy_poll_us / 1e6)
            except (OSError, ProtocolError):
                pass
            # Wakes at once when the task ends; otherwise try the socket again.
            task = await self.tasks.wait_terminal(task_id, delay)
            if task.status.terminal:
                return None
            if time.monotonic() > deadline:
                log.error("model %s: worker %s not ready after %gs; replacing it", label, task_id, STARTUP_TIMEOUT)
                await self.stop(task_id, why=f"by the agent: not ready after {STARTUP_TIMEOUT:g}s")
                return None
            delay = min(delay * 1.5, CONNECT_POLL_MAX)

    async def wait_ended(self, task_id: str, timeout: float) -> Task:
        """The worker's task once it ended, or as it is after timeout."""
        return await self.tasks.wait_terminal(task_id, timeout)

    async def get(self, task_id: str) -> Task:
        return await self.tasks.get(task_id)

    async def stop(self, task_id: str, why: str = "by user") -> None:
        with contextlib.suppress(Conflict, NotFound):
            await self.tasks.stop(task_id, why=why)

    def remove_socket(self, socket: str | None) -> None:
        if socket:
            path = Path(socket)
            with contextlib.suppress(OSError):
                path.unlink()
            if path.name == WORKER_SOCKET and path.parent.parent == self.sockets.run_dir:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
