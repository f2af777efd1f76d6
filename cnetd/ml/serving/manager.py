"""ServingManager: the warm workers of every served model, their restarts, and the batcher
in front of them.

Each replica is a task of kind `serve` (the model's command, env, working dir and limits, in
its own sandbox) running `worker.py`, which loads the model and listens on a Unix socket in
<state_dir>/run. The agent connects to that socket; nothing else ties the two, so a worker
outlives an agent restart and the next agent connects to it again (the socket path is in
the task's args). A replica whose connection ends is replaced by a new task after an
exponential backoff; requests it held get a 503, queued ones wait for another replica.

Serving state is kept in the models table (`serving` column): awaiting_training (deploy body
asked for serving once training completes), serving, stopped, failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.errors import Conflict, DomainError, NotFound
from cnetd.ml.service import Model, ModelService
from cnetd.ml.serving.batcher import Answer, Batcher, Link, ModelMetrics
from cnetd.ml.serving.client import ProtocolError, WorkerClient
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.store import serving as sq
from cnetd.store.models import ModelRecord, get_model
from cnetd.tasks.model import ACTIVE, Status, Task
from cnetd.tasks.request import NewTask
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).resolve().with_name("worker.py")
WORKER_RELATIVE = "cnetd/ml/serving/worker.py"  # for cnetd.bundle.stable_copy in the one-file binary
WORKER_SOCKET = "worker.sock"
STARTUP_TIMEOUT = 300.0  # a worker that has not loaded its model by then is replaced
BACKOFF_START = 0.25
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a replica ready this long starts its backoff afresh
LOST_GRACE = 5.0  # after its connection ends, how long a worker may take to exit
CONNECT_POLL_MAX = 0.25
HUNG_CHECK_INTERVAL = 5.0
HUNG_AFTER_MIN = 60.0  # a worker holding a batch this long (and 3 request timeouts) is hung
HUNG_AFTER_TIMEOUTS = 3


@dataclass
class Replica:
    slot: int
    task_id: str | None = None
    socket: str | None = None
    state: str = "starting"  # starting | ready | restarting
    pid: int | None = None
    loader: str | None = None
    restarts: int = 0
    last_error: str | None = None
    ready_since: float | None = None
    runner: asyncio.Task[None] | None = None
    creating: asyncio.Future[Task] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot, "task_id": self.task_id, "state": self.state, "pid": self.pid,
            "loader": self.loader, "restarts": self.restarts, "last_error": self.last_error,
        }


@dataclass
class Served:
    model: Model
    spec: ServingSpec
    batcher: Batcher
    dispatcher: asyncio.Task[None] | None = None
    replicas: list[Replica] = field(default_factory=list)
    n_features: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.model.record.id

    @property
    def name(self) -> str:
        return self.model.record.name

    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.state == "ready")

    async def predict(self, instances: list[Any]) -> Answer:
        return await self.batcher.predict(instances)


def interpreter_for(command: str) -> str:
    """The model's python: its deploy command when that is a python, else python3."""
    return command if Path(command).name.startswith("python") else "python3"


def socket_of(task: Task) -> str | None:
    args = task.args
    for i, arg in enumerate(args[:-1]):
        if arg == "--socket":
            return args[i + 1]
    return None


class ServingManager:
    def __init__(
        self, tasks: TaskService, models: ModelService, run_dir: Path, worker_script: Path = WORKER_SCRIPT
    ) -> None:
        """worker_script: a worker.py that the model's python can read for as long as the
        worker lives (in the one-file binary: a stable copy under the state dir)."""
        self.tasks = tasks
        self.models = models
        self.run_dir = run_dir
        self.worker_script = worker_script
        self.metrics: dict[str, tuple[str, ModelMetrics]] = {}  # model id -> (name, metrics)
        self._served: dict[str, Served] = {}
        self._lock = asyncio.Lock()
        self._bus_task: asyncio.Task[None] | None = None

    # ---- queries ----------------------------------------------------------------------

    def served(self, model_id: str) -> Served | None:
        return self._served.get(model_id)

    def all_served(self) -> list[Served]:
        return list(self._served.values())

    def find(self, name: str, version: str | None = None) -> Served | None:
        """The served model called `name` (or whose id is `name`); the newest when several
        served models share the name. `version` is a model id."""
        best: Served | None = None
        for served in self._served.values():
            if served.id != name and served.name != name:
                continue
            if version is not None and served.id != version:
                continue
            if best is None or served.model.record.created_at > best.model.record.created_at:
                best = served
        return best

    def describe(self, record: ModelRecord) -> dict[str, Any] | None:
        served = self._served.get(record.id)
        if served is None:
            if not record.serving:
                return None
            return {**record.serving, "ready_replicas": 0, "queue_depth": 0, "workers": []}
        return {
            "state": "serving",
            **served.spec.to_json(),
            "ready_replicas": served.ready_replicas,
            "queue_depth": served.batcher.queue_depth,
            "in_flight_batches": served.batcher.in_flight,
            "n_features": served.n_features,
            "cached": len(served.batcher.cache) if served.batcher.cache is not None else 0,
            "workers": [r.to_json() for r in served.replicas],
        }

    # ---- agent start and stop -------------------------------------------------------------

    async def start(self) -> None:
        """After task recovery: reattach to the workers of served models, start what is
        missing, and pick up deploys that were waiting for training."""
        for record in await self.tasks.db.read(lambda c: sq.models_with_serving_state(c, ("serving",))):
            try:
                model = await self.models.get(record.id)
                spec = ServingSpec.from_json(record.serving or {})
                workers = await self.tasks.db.read(lambda c, i=record.id: sq.live_workers(c, i))
                for extra in workers[spec.replicas:]:
                    await self._stop_task(extra.id)
                self._start(model, spec, adopt=workers[: spec.replicas])
                log.info("serving %s again: %d worker(s) to reattach", record.name, len(workers[: spec.replicas]))
            except Exception:
                log.exception("could not resume serving model %s", record.id)
        await self._check_awaiting()
        self._bus_task = asyncio.create_task(self._follow_bus(), name="serving-bus")

    async def stop(self) -> None:
        """Agent shutdown: let go of the workers (they keep running and are reattached)."""
        await cancel_and_wait(self._bus_task)
        for served in list(self._served.values()):
            await self._teardown(served, "the agent is shutting down", stop_workers=False)
        self._served.clear()

    # ---- serve / unserve ------------------------------------------------------------------

    async def serve(self, model_id: str, body: Any) -> Model:
        async with self._lock:
            model = await self.models.get(model_id)
            current = self._served.get(model_id)
            stored = model.record.serving
            base = current.spec if current else (
                ServingSpec.from_json(stored) if stored and stored.get("state") == "awaiting_training" else None
            )
            spec = parse_spec(body, base=base)
            self.tasks.launcher.require_run_dir_reachable("serving")
            if current is not None:
                await self._reconfigure(current, spec)
            elif self.models.model_file(model).is_file():
                await self._persist(model_id, "serving", spec)
                self._start(await self.models.get(model_id), spec)
            elif not model.task.status.terminal:
                await self._persist(model_id, "awaiting_training", spec)
            else:
                state = f"its deploy task is {model.task.status}"
                if model.task.reason:
                    state += f": {model.task.reason}"
                raise Conflict(
                    f"model {model.record.name} has no model file to serve ({model.record.model_path}); {state}",
                    {"id": model_id, "model_path": model.record.model_path, "status": str(model.task.status)},
                )
            return await self.models.get(model_id)

    async def unserve(self, model_id: str) -> bool:
        """Stop serving (workers end as `stopped`); False when it was not served."""
        async with self._lock:
            model = await self.models.get(model_id)
            served = self._served.pop(model_id, None)
            stored = model.record.serving or {}
            if served is None and stored.get("state") not in ("serving", "awaiting_training"):
                return False
            spec = served.spec if served else ServingSpec.from_json(stored)
            await self._persist(model_id, "stopped", spec)
            if served is not None:
                await self._teardown(served, f"serving of model {model.record.name} was stopped", stop_workers=True)
            for task in await self.tasks.db.read(lambda c: sq.live_workers(c, model_id)):
                await self._stop_task(task.id)
            return True

    async def wait_ready(self, model_id: str, timeout: float) -> bool:
        """Wait until every wanted replica is ready; False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            served = self._served.get(model_id)
            if served is None:
                return False
            if served.ready_replicas >= served.spec.replicas:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            served.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(served.changed.wait(), remaining)

    async def _persist(self, model_id: str, state: str, spec: ServingSpec, reason: str | None = None) -> None:
        value: dict[str, Any] = {"state": state, **spec.to_json(), "updated_at": utc_now()}
        if reason:
            value["reason"] = reason
        await self.tasks.db.write(lambda c: sq.set_serving(c, model_id, value))

    def _start(self, model: Model, spec: ServingSpec, adopt: list[Task] | None = None) -> Served:
        name, metrics = self.metrics.setdefault(model.record.id, (model.record.name, ModelMetrics()))
        batcher = Batcher(model.record.name, spec, self.models.model_file(model), metrics)
        served = Served(model=model, spec=spec, batcher=batcher)
        served.dispatcher = asyncio.create_task(batcher.run(), name=f"batcher-{model.record.id}")
        adopt = adopt or []
        for slot in range(spec.replicas):
            replica = Replica(slot=slot)
            if slot < len(adopt):
                replica.task_id, replica.socket = adopt[slot].id, socket_of(adopt[slot])
            self._run(served, replica)
        self._served[model.record.id] = served
        return served

    def _run(self, served: Served, replica: Replica) -> None:
        served.replicas.append(replica)
        replica.runner = asyncio.create_task(
            self._run_replica(served, replica), name=f"replica-{served.id}-{replica.slot}"
        )

    async def _reconfigure(self, served: Served, spec: ServingSpec) -> None:
        if spec.loader != served.spec.loader:
            # Workers load the model one way for life: replace them all.
            del self._served[served.id]
            await self._teardown(served, "serving is restarting with another loader", stop_workers=True)
            await self._persist(served.id, "serving", spec)
            self._start(served.model, spec)
            return
        await self._persist(served.id, "serving", spec)
        served.spec = spec
        served.batcher.configure(spec)
        while len(served.replicas) < spec.replicas:
            self._run(served, Replica(slot=len(served.replicas)))
        surplus = served.replicas[spec.replicas:]
        del served.replicas[spec.replicas:]
        await asyncio.gather(*(self._end_replica(r, stop_worker=True) for r in surplus))
        served.changed.set()

    async def _teardown(self, served: Served, message: str, stop_workers: bool) -> None:
        served.batcher.close(message)
        await asyncio.gather(*(self._end_replica(r, stop_worker=stop_workers) for r in served.replicas))
        await cancel_and_wait(served.dispatcher)
        served.changed.set()

    async def _end_replica(self, replica: Replica, stop_worker: bool) -> None:
        await cancel_and_wait(replica.runner)
        if replica.creating is not None:
            # Cancelled while its worker task was being created: that task exists now.
            with contextlib.suppress(Exception):
                task = await replica.creating
                replica.task_id, replica.socket = task.id, socket_of(task)
            replica.creating = None
        if stop_worker and replica.task_id is not None:
            await self._stop_task(replica.task_id)
            self._remove_socket(replica.socket)

    async def _stop_task(self, task_id: str) -> None:
        with contextlib.suppress(Conflict, NotFound):
            await self.tasks.stop(task_id)

    # ---- one replica ------------------------------------------------------------------------

    async def _create_worker(self, served: Served) -> Task:
        record, base = served.model.record, served.model.task
        # Its own directory, writable by the task user alone: nobody else can take the name.
        socket = str(self.tasks.launcher.private_run_dir(f"serve-{uuid.uuid4().hex[:12]}") / WORKER_SOCKET)
        args = [str(self.worker_script), "--socket", socket, "--model", record.model_path, "--loader", served.spec.loader]
        if record.script_path:
            args += ["--script", record.script_path]
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
        ))

    async def _run_replica(self, served: Served, replica: Replica) -> None:
        """Keep one replica going: create its worker task (unless adopting one), connect,
        serve through it until the connection ends, replace it after a backoff."""
        backoff = BACKOFF_START
        label = f"{served.name}/{replica.slot}"
        while True:
            try:
                healthy = await self._run_worker_once(served, replica, label)
            except DomainError as exc:  # e.g. the command is no longer allowed
                replica.creating = None
                replica.last_error = f"cannot start a worker: {exc.message}"
                log.error("model %s: %s", label, replica.last_error)
                healthy = False
            except Exception as exc:
                replica.creating = None
                replica.last_error = f"worker supervision failed: {exc!r}"
                log.exception("model %s: worker supervision failed", label)
                healthy = False
            if healthy:
                backoff = BACKOFF_START
            replica.state = "restarting"
            served.changed.set()
            log.warning("model %s: restarting its worker in %gs (%s)", label, backoff, replica.last_error)
            await asyncio.sleep(backoff)  # the backoff itself, not a synchronisation
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_worker_once(self, served: Served, replica: Replica, label: str) -> bool:
        """One worker's life; True when it was ready long enough to reset the backoff."""
        if replica.task_id is None:
            replica.state = "starting"
            # Shielded: when the replica is ended meanwhile, _end_replica still gets the task.
            replica.creating = asyncio.ensure_future(self._create_worker(served))
            task = await asyncio.shield(replica.creating)
            replica.creating = None
            replica.task_id, replica.socket = task.id, socket_of(task)
        task_id = replica.task_id
        lost = "it never became ready"
        healthy = False
        client = await self._connect(replica, label)
        if client is not None:
            lost = await self._serve_through(served, replica, client)
            healthy = replica.ready_since is not None and time.monotonic() - replica.ready_since >= HEALTHY_AFTER
        task = await self.tasks.wait_terminal(task_id, LOST_GRACE)
        if not task.status.terminal:
            log.warning("model %s: worker %s lost its channel (%s) but still runs; replacing it", label, task_id, lost)
            await self._stop_task(task_id)
            task = await self.tasks.get(task_id)
        self._remove_socket(replica.socket)
        replica.last_error = task.reason or f"worker {task.status}: {lost}"
        replica.task_id = replica.socket = None
        replica.pid = replica.ready_since = None
        replica.restarts += 1
        served.batcher.metrics.worker_restarts += 1
        log.warning("model %s: worker %s ended: %s", label, task_id, replica.last_error)
        return healthy

    async def _connect(self, replica: Replica, label: str) -> WorkerClient | None:
        """Connect once the worker listens; None when its task ends or it never gets ready."""
        assert replica.task_id is not None
        if replica.socket is None:
            log.error("worker %s has no --socket argument; replacing it", replica.task_id)
            await self._stop_task(replica.task_id)
            return None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        delay = 0.01
        while True:
            try:
                return await WorkerClient.connect(replica.socket, replica.task_id)
            except (OSError, ProtocolError):
                pass
            # Wakes at once when the task ends; otherwise try the socket again.
            task = await self.tasks.wait_terminal(replica.task_id, delay)
            if task.status.terminal:
                return None
            if time.monotonic() > deadline:
                log.error("model %s: worker %s not ready after %gs; replacing it", label, replica.task_id, STARTUP_TIMEOUT)
                await self._stop_task(replica.task_id)
                return None
            delay = min(delay * 1.5, CONNECT_POLL_MAX)

    async def _serve_through(self, served: Served, replica: Replica, client: WorkerClient) -> str:
        """Lend the worker to the batcher until its channel ends; say why it ended. A worker
        that holds a batch far longer than any request may wait is taken for hung."""
        assert replica.task_id is not None and client.hello is not None
        link = Link(client, replica.task_id)
        replica.state = "ready"
        replica.pid = client.hello.pid
        replica.loader = client.hello.loader
        replica.ready_since = time.monotonic()
        if client.hello.n_features is not None:
            served.n_features = client.hello.n_features
        served.batcher.add(link)
        served.changed.set()
        log.info("model %s: worker %s ready (pid %d, %s)", served.name, replica.task_id, client.hello.pid, client.hello.loader)
        try:
            while not client.closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.closed.wait(), HUNG_CHECK_INTERVAL)
                age = client.oldest_age()
                hung_after = max(HUNG_AFTER_MIN, HUNG_AFTER_TIMEOUTS * served.spec.timeout_ms / 1000)
                if age is not None and age > hung_after:
                    log.error("model %s: worker %s has not answered for %.0fs; replacing it", served.name, replica.task_id, age)
                    client.abort(f"no answer for {age:.0f}s: the worker seems hung")
            return client.lost_reason
        finally:
            served.batcher.remove(link)
            replica.state = "restarting"
            served.changed.set()
            await client.close()

    def _remove_socket(self, socket: str | None) -> None:
        if socket:
            path = Path(socket)
            with contextlib.suppress(OSError):
                path.unlink()
            if path.name == WORKER_SOCKET and path.parent.parent == self.run_dir:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()

    # ---- serving once training completes -------------------------------------------------------

    async def _follow_bus(self) -> None:
        while True:
            queue = self.tasks.bus.subscribe()
            try:
                while True:
                    change = await queue.get()
                    if change is None:
                        break  # dropped as a slow subscriber, or the bus closed
                    if change.kind == "status" and Status(change.status).terminal:
                        try:
                            await self._on_task_ended(change.task_id)
                        except Exception:
                            log.exception("serving after training failed for %s", change.task_id)
            finally:
                self.tasks.bus.unsubscribe(queue)
            await self._check_awaiting()

    async def _on_task_ended(self, task_id: str) -> None:
        record = await self.tasks.db.read(lambda c: get_model(c, task_id))
        if record is not None and record.serving and record.serving.get("state") == "awaiting_training":
            await self._settle_awaiting(record)

    async def _check_awaiting(self) -> None:
        for record in await self.tasks.db.read(lambda c: sq.models_with_serving_state(c, ("awaiting_training",))):
            try:
                await self._settle_awaiting(record)
            except Exception:
                log.exception("serving after training failed for %s", record.id)

    async def _settle_awaiting(self, record: ModelRecord) -> None:
        async with self._lock:
            model = await self.models.get(record.id)
            stored = model.record.serving or {}
            if stored.get("state") != "awaiting_training" or model.task.status in ACTIVE or model.task.status == Status.PENDING:
                return
            spec = ServingSpec.from_json(stored)
            if model.task.status == Status.COMPLETED and self.models.model_file(model).is_file():
                await self._persist(record.id, "serving", spec)
                self._start(await self.models.get(record.id), spec)
                log.info("model %s trained: serving it with %d replica(s)", record.name, spec.replicas)
                return
            if model.task.status == Status.COMPLETED:
                reason = f"training completed without writing {model.record.model_path}"
            else:
                reason = f"training {model.task.status}" + (f": {model.task.reason}" if model.task.reason else "")
            await self._persist(record.id, "failed", spec, reason=reason)
            log.warning("model %s: not serving it: %s", record.name, reason)
