"""ServingManager: the warm workers of every served model, their restarts, and the batcher
in front of them.

Each replica is a task of kind `serve` (the model's command, env, working dir and limits, in
its own sandbox) running `worker.py`, which loads the model and listens on a Unix socket in
<state_dir>/run. The agent connects to that socket; nothing else ties the two, so a worker
outlives an agent restart and the next agent connects to it again (the socket path is in
the task's args). A replica whose connection ends is replaced by a new task after an
exponential backoff; requests it held get a 503, queued ones wait for another replica.

When the model file changes while it is served (a new deploy retrained it, an operator
replaced it), the workers are replaced one replica at a time: a worker is started for the
slot, the slot's traffic moves to it once it is ready, and the old worker is stopped once
its in-flight batches are answered. A replacement that cannot load the file leaves the old
workers serving; the error is shown and the file is tried again when it changes again.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from cnetd.background import cancel_and_wait
from cnetd.clock import format_time, utc_now
from cnetd.errors import Conflict, DomainError, NotFound
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.serving.batcher import Answer, Batcher, Link, ModelMetrics, file_stamp
from cnetd.ml.serving.client import ProtocolError, WorkerClient
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.security.identity import model_owner
from cnetd.store import serving as sq
from cnetd.store.db import Database
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
FILE_CHECK_INTERVAL = 1.0  # how often a served model's file is looked at (one stat)
RETIRE_GRACE = 5.0  # a replaced worker has its requests' timeout and this long to answer them
RELOAD_RETRY_START = 1.0  # a replacement that failed although the file loads elsewhere: retry after
RELOAD_RETRY_MAX = 60.0
RELOAD_FAILED = "reload failed: "

Stamp = tuple[int, int]  # [mtime_ns, size] of a model file


def stamp_json(stamp: Stamp | None) -> list[int] | None:
    return list(stamp) if stamp is not None else None


def describe_stamp(stamp: Stamp) -> str:
    modified = datetime.fromtimestamp(stamp[0] / 1e9, timezone.utc)
    return f"modified {format_time(modified)}, {stamp[1]} bytes"


@dataclass
class Offer:
    """A ready replacement worker, offered to a replica's runner to switch to."""

    task_id: str
    socket: str | None
    client: WorkerClient
    accepted: asyncio.Future[bool]


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
    model_stamp: Stamp | None = None  # of the file its worker loaded (from the hello)
    loaded_at: str | None = None
    reloads: int = 0  # workers of this slot replaced because the model file changed
    successor_task_id: str | None = None  # the worker being started to replace this one
    offer: Offer | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # an offer is waiting

    def to_json(self) -> dict[str, Any]:
        return {
            "slot": self.slot, "task_id": self.task_id, "state": self.state, "pid": self.pid,
            "loader": self.loader, "restarts": self.restarts, "last_error": self.last_error,
            "model_stamp": stamp_json(self.model_stamp), "loaded_at": self.loaded_at,
            "reloads": self.reloads, "successor_task_id": self.successor_task_id,
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
    watcher: asyncio.Task[None] | None = None
    retiring: set[asyncio.Task[None]] = field(default_factory=set)  # replaced workers finishing their batches
    file_stamp: Stamp | None = None  # the model file as last seen holding still
    reload_state: str = "idle"  # idle | reloading | failed
    reload_error: str | None = None
    reloads: int = 0  # reloads completed: every ready worker moved to a changed file
    last_reload_at: str | None = None
    failed_stamp: Stamp | None = None  # a file that could not be loaded: not tried again
    retry_at: float = 0.0
    retry_delay: float = RELOAD_RETRY_START

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


class ServingManager:
    def __init__(
        self, db: Database, tasks: TaskService, catalog: ModelCatalog, sockets: SocketDirs,
        worker_script: Path = WORKER_SCRIPT,
    ) -> None:
        """worker_script: a worker.py that the model's python can read for as long as the
        worker lives (in the one-file binary: a stable copy under the state dir)."""
        self.db = db
        self.tasks = tasks
        self.catalog = catalog
        self.sockets = sockets
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
            "model_stamp": stamp_json(served.file_stamp),
            "reload_state": served.reload_state,
            "reload_error": served.reload_error,
            "reloads": served.reloads,
            "last_reload_at": served.last_reload_at,
            "workers": [r.to_json() for r in served.replicas],
        }

    # ---- agent start and stop -------------------------------------------------------------

    async def start(self) -> None:
        """After task recovery: reattach to the workers of served models, start what is
        missing, and pick up deploys that were waiting for training."""
        for record in await self.db.read(lambda c: sq.models_with_serving_state(c, ("serving",))):
            try:
                model = await self.catalog.get(record.id)
                spec = ServingSpec.from_json(record.serving or {})
                workers = await self.db.read(lambda c, i=record.id: sq.live_workers(c, i))
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
            model = await self.catalog.get(model_id)
            current = self._served.get(model_id)
            stored = model.record.serving
            base = current.spec if current else (
                ServingSpec.from_json(stored) if stored and stored.get("state") == "awaiting_training" else None
            )
            spec = parse_spec(body, base=base)
            if current is not None:
                await self._reconfigure(current, spec)
            elif self.catalog.model_file(model).is_file():
                await self._persist(model_id, "serving", spec)
                self._start(await self.catalog.get(model_id), spec)
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
            return await self.catalog.get(model_id)

    async def unserve(self, model_id: str) -> bool:
        """Stop serving (workers end as `stopped`); False when it was not served."""
        async with self._lock:
            model = await self.catalog.get(model_id)
            served = self._served.pop(model_id, None)
            stored = model.record.serving or {}
            if served is None and stored.get("state") not in ("serving", "awaiting_training"):
                return False
            spec = served.spec if served else ServingSpec.from_json(stored)
            await self._persist(model_id, "stopped", spec)
            if served is not None:
                await self._teardown(served, f"serving of model {model.record.name} was stopped", stop_workers=True)
            for task in await self.db.read(lambda c: sq.live_workers(c, model_id)):
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
        await self.db.write(lambda c: sq.set_serving(c, model_id, value))

    def _start(self, model: Model, spec: ServingSpec, adopt: list[Task] | None = None) -> Served:
        name, metrics = self.metrics.setdefault(model.record.id, (model.record.name, ModelMetrics()))
        batcher = Batcher(model.record.name, spec, self.catalog.model_file(model), metrics)
        served = Served(model=model, spec=spec, batcher=batcher, file_stamp=file_stamp(batcher.model_file))
        served.dispatcher = asyncio.create_task(batcher.run(), name=f"batcher-{model.record.id}")
        served.watcher = asyncio.create_task(self._watch_file(served), name=f"model-file-{model.record.id}")
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
        """Stop serving here. A replacement being started and the replaced workers still
        answering their last batches are stopped even when the others are let go of."""
        served.batcher.close(message)
        await cancel_and_wait(served.watcher)
        await asyncio.gather(*(self._end_replica(r, stop_worker=stop_workers) for r in served.replicas))
        await cancel_and_wait(*served.retiring)
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

    async def _stop_task(self, task_id: str, why: str = "by user") -> None:
        with contextlib.suppress(Conflict, NotFound):
            await self.tasks.stop(task_id, why=why)

    # ---- one replica ------------------------------------------------------------------------

    async def _create_worker(self, served: Served) -> Task:
        record, base = served.model.record, served.model.task
        owner = model_owner(record.name)
        # Its own directory: root's, writable by the model's group alone, so no other task
        # can take the name and the worker cannot move the directory.
        uid = await self.tasks.uid_for_owner(owner)
        socket = str(self.sockets.socket_dir(f"serve-{uuid.uuid4().hex[:12]}", uid) / WORKER_SOCKET)
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
            identity_owner=owner,
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
        lost = "it never became ready"
        healthy = False
        client = await self._connect(replica, label)
        link = Link(client, replica.task_id) if client is not None else None
        while client is not None and link is not None:
            lost, handover = await self._serve_through(served, replica, client, link)
            if handover is None:
                healthy = replica.ready_since is not None and time.monotonic() - replica.ready_since >= HEALTHY_AFTER
                break
            client, link = handover  # the model file changed: serve on through its replacement
        task_id = replica.task_id
        assert task_id is not None
        task = await self.tasks.wait_terminal(task_id, LOST_GRACE)
        if not task.status.terminal:
            log.warning("model %s: worker %s lost its channel (%s) but still runs; replacing it", label, task_id, lost)
            await self._stop_task(task_id, why=f"by the agent: it lost its channel ({lost})")
            task = await self.tasks.get(task_id)
        self._remove_socket(replica.socket)
        replica.last_error = task.reason or f"worker {task.status}: {lost}"
        replica.task_id = replica.socket = None
        replica.pid = replica.ready_since = None
        replica.model_stamp = replica.loaded_at = None
        replica.restarts += 1
        served.batcher.metrics.worker_restarts += 1
        log.warning("model %s: worker %s ended: %s", label, task_id, replica.last_error)
        return healthy

    async def _connect(self, replica: Replica, label: str) -> WorkerClient | None:
        """Connect once the worker listens; None when its task ends or it never gets ready."""
        assert replica.task_id is not None
        return await self._connect_to(replica.task_id, replica.socket, label)

    async def _connect_to(self, task_id: str, socket: str | None, label: str) -> WorkerClient | None:
        if socket is None:
            log.error("worker %s has no --socket argument; replacing it", task_id)
            await self._stop_task(task_id)
            return None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        delay = 0.01
        while True:
            try:
                return await WorkerClient.connect(socket, task_id, self.tasks.peer_check(task_id))
            except (OSError, ProtocolError):
                pass
            # Wakes at once when the task ends; otherwise try the socket again.
            task = await self.tasks.wait_terminal(task_id, delay)
            if task.status.terminal:
                return None
            if time.monotonic() > deadline:
                log.error("model %s: worker %s not ready after %gs; replacing it", label, task_id, STARTUP_TIMEOUT)
                await self._stop_task(task_id, why=f"by the agent: not ready after {STARTUP_TIMEOUT:g}s")
                return None
            delay = min(delay * 1.5, CONNECT_POLL_MAX)

    async def _serve_through(
        self, served: Served, replica: Replica, client: WorkerClient, link: Link
    ) -> tuple[str, tuple[WorkerClient, Link] | None]:
        """Lend the worker to the batcher until its channel ends (say why), or until a
        replacement is offered (the model file changed): then the replacement takes the
        traffic, the old worker is retired, and the replacement's client and link are returned. A worker
        that holds a batch far longer than any request may wait is taken for hung."""
        assert replica.task_id is not None and client.hello is not None
        hello = client.hello
        replica.state = "ready"
        replica.pid = hello.pid
        replica.loader = hello.loader
        replica.model_stamp = hello.model_stamp
        moment = datetime.fromtimestamp(hello.loaded_at, timezone.utc) if hello.loaded_at is not None else None
        replica.loaded_at = format_time(moment) if moment is not None else utc_now()
        replica.ready_since = time.monotonic()
        if hello.n_features is not None:
            served.n_features = hello.n_features
        served.batcher.add(link)
        served.changed.set()
        log.info("model %s: worker %s ready (pid %d, %s)", served.name, replica.task_id, hello.pid, hello.loader)
        closed = asyncio.ensure_future(client.closed.wait())
        handed_over = False
        try:
            while not client.closed.is_set():
                offer = self._take_offer(replica)
                if offer is not None:
                    handover = self._hand_over(served, replica, client, link, offer)
                    handed_over = True
                    return client.lost_reason, handover
                replica.wake.clear()
                wake = asyncio.ensure_future(replica.wake.wait())
                try:
                    await asyncio.wait((closed, wake), timeout=HUNG_CHECK_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                age = client.oldest_age()
                hung_after = max(HUNG_AFTER_MIN, HUNG_AFTER_TIMEOUTS * served.spec.timeout_ms / 1000)
                if age is not None and age > hung_after:
                    log.error("model %s: worker %s has not answered for %.0fs; replacing it", served.name, replica.task_id, age)
                    client.abort(f"no answer for {age:.0f}s: the worker seems hung")
            return client.lost_reason, None
        finally:
            closed.cancel()
            if not handed_over:
                self._refuse_offer(replica)
                served.batcher.remove(link)
                replica.state = "restarting"
                served.changed.set()
                await client.close()

    # ---- reloading when the model file changes ---------------------------------------------

    @staticmethod
    def _take_offer(replica: Replica) -> Offer | None:
        offer, replica.offer = replica.offer, None
        if offer is None or offer.accepted.done():
            return None
        if offer.client.closed.is_set():  # the replacement died while on offer: keep the old one
            offer.accepted.set_result(False)
            return None
        return offer

    @staticmethod
    def _refuse_offer(replica: Replica) -> None:
        offer, replica.offer = replica.offer, None
        if offer is not None and not offer.accepted.done():
            offer.accepted.set_result(False)

    def _hand_over(
        self, served: Served, replica: Replica, client: WorkerClient, link: Link, offer: Offer
    ) -> tuple[WorkerClient, Link]:
        """Switch the slot to the offered worker in one step (the batcher sees the new link
        before the old one goes, so the queue always has somewhere to go), and retire the
        old worker in the background."""
        new_link = Link(offer.client, offer.task_id)
        served.batcher.add(new_link)
        served.batcher.remove(link)
        old_task, old_socket = replica.task_id, replica.socket
        assert old_task is not None
        replica.task_id, replica.socket = offer.task_id, offer.socket
        replica.reloads += 1
        if replica.last_error is not None and replica.last_error.startswith(RELOAD_FAILED):
            replica.last_error = None
        served.batcher.metrics.reloads += 1
        offer.accepted.set_result(True)
        retire = asyncio.create_task(
            self._retire(served, old_task, old_socket, client), name=f"retire-{old_task}"
        )
        served.retiring.add(retire)
        retire.add_done_callback(served.retiring.discard)
        log.info("model %s/%d: worker %s takes over from %s (the model file changed)",
                 served.name, replica.slot, offer.task_id, old_task)
        return offer.client, new_link

    async def _retire(self, served: Served, task_id: str, socket: str | None, client: WorkerClient) -> None:
        """Let a replaced worker answer the batches it holds (up to the requests' own
        timeout), then stop it: its task ends `stopped`."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.drained(), served.spec.timeout_ms / 1000 + RETIRE_GRACE)
        finally:
            await client.close()
            await self._stop_task(task_id, why="by the agent: the model file changed and a new worker took over")
            self._remove_socket(socket)
            log.info("model %s: replaced worker %s stopped", served.name, task_id)

    def _stale(self, served: Served, stamp: Stamp) -> list[Replica]:
        """Ready replicas whose worker loaded another version of the file. (A worker that
        did not say what it loaded is left alone; one that is starting loads the file as
        it is now.)"""
        return [r for r in served.replicas if r.state == "ready" and r.model_stamp is not None and r.model_stamp != stamp]

    async def _watch_file(self, served: Served) -> None:
        """Look at the model file every FILE_CHECK_INTERVAL; once a change has held still
        for one interval (not missing, not still being written), replace the workers that
        hold another version of it."""
        path = served.batcher.model_file
        seen = served.file_stamp
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)  # the polling period itself
            stamp = file_stamp(path)
            if stamp is None or stamp != seen:
                seen = stamp  # missing, or changed since the last look: wait until it holds still
                continue
            served.file_stamp = stamp
            if stamp == served.failed_stamp or time.monotonic() < served.retry_at:
                continue
            if not self._stale(served, stamp):
                if served.reload_state != "idle":
                    # e.g. a file that failed was put back as it was: nothing to do any more
                    served.reload_state, served.reload_error, served.failed_stamp = "idle", None, None
                continue
            try:
                await self._roll(served, stamp)
            except Exception as exc:
                log.exception("model %s: reloading the changed model file failed", served.name)
                self._reload_failed(served, None, stamp, f"reload supervision failed: {exc!r}")

    async def _roll(self, served: Served, stamp: Stamp) -> None:
        """Replace the stale workers one at a time; stop at the first that cannot load."""
        stale = self._stale(served, stamp)
        log.info("model %s: the model file changed (%s); replacing %d worker(s) one at a time",
                 served.name, describe_stamp(stamp), len(stale))
        served.reload_state = "reloading"
        served.changed.set()
        replaced = 0
        for replica in stale:
            if replica not in served.replicas or replica.state != "ready" or replica.model_stamp in (None, stamp):
                continue  # ended, restarting (it loads the file as it is) or already done
            outcome, error = await self._replace_worker(served, replica)
            if outcome == "failed":
                assert error is not None
                self._reload_failed(served, replica, stamp, error)
                return
            replaced += outcome == "replaced"
        served.reload_state = "idle"
        served.reload_error = None
        served.failed_stamp = None
        served.retry_at, served.retry_delay = 0.0, RELOAD_RETRY_START
        if replaced:
            served.reloads += 1
            served.last_reload_at = utc_now()
            log.info("model %s: reloaded: %d worker(s) replaced", served.name, replaced)
        served.changed.set()

    async def _replace_worker(self, served: Served, replica: Replica) -> tuple[str, str | None]:
        """Start a worker for the slot, wait until it is ready and offer it to the slot's
        runner. ("replaced", None), ("skipped", None) when the slot could not take it (its
        worker ended meanwhile: its restart loads the new file anyway), or ("failed", why)."""
        label = f"{served.name}/{replica.slot}"
        creating = asyncio.ensure_future(self._create_worker(served))
        try:
            task = await asyncio.shield(creating)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                created = await creating
                await self._stop_task(created.id)
                self._remove_socket(socket_of(created))
            raise
        except DomainError as exc:  # e.g. the command is no longer allowed
            return "failed", f"cannot start a worker: {exc.message}"
        socket = socket_of(task)
        replica.successor_task_id = task.id
        served.changed.set()
        log.info("model %s: worker %s started to replace %s", label, task.id, replica.task_id)
        client: WorkerClient | None = None
        offer: Offer | None = None
        try:
            client = await self._connect_to(task.id, socket, label)
            if client is None:
                ended = await self.tasks.wait_terminal(task.id, LOST_GRACE)
                if not ended.status.terminal:
                    await self._stop_task(task.id)
                    ended = await self.tasks.get(task.id)
                return "failed", self._failure_of(ended)
            if replica not in served.replicas or replica.state != "ready" or replica.offer is not None:
                return "skipped", None
            offer = Offer(task.id, socket, client, asyncio.get_running_loop().create_future())
            replica.offer = offer
            replica.wake.set()
            await asyncio.shield(offer.accepted)
            return ("replaced" if offer.accepted.result() else "skipped"), None
        finally:
            if replica.offer is offer:
                replica.offer = None
            replica.successor_task_id = None
            if offer is not None and not offer.accepted.done():
                offer.accepted.set_result(False)  # cancelled while offered: the runner must not take it
            if offer is None or not offer.accepted.result():
                if client is not None:
                    await client.close()
                await self._stop_task(task.id)
                self._remove_socket(socket)
            served.changed.set()

    @staticmethod
    def _failure_of(task: Task) -> str:
        text = f"worker {task.id} {task.status}"
        if task.reason:
            text += f" ({task.reason})"
        result = task.result if isinstance(task.result, dict) else {}
        said = result.get("error") or result.get("message")
        if isinstance(said, str) and said:
            text += f": {said}"
        return text

    def _reload_failed(self, served: Served, replica: Replica | None, stamp: Stamp, error: str) -> None:
        message = f"{RELOAD_FAILED}the changed model file ({describe_stamp(stamp)}) could not be loaded: {error}"
        if any(r.model_stamp == stamp for r in served.replicas):
            # Another worker loaded this very file: something else went wrong. Try again.
            delay = served.retry_delay
            served.retry_at = time.monotonic() + delay
            served.retry_delay = min(delay * 2, RELOAD_RETRY_MAX)
            message += f"; trying again in {delay:g}s"
        else:
            served.failed_stamp = stamp
            message += "; the workers keep serving the model they loaded until the file changes again"
        if replica is not None:
            replica.last_error = message
        served.reload_state = "failed"
        served.reload_error = message
        served.batcher.metrics.reload_failures += 1
        served.changed.set()
        log.error("model %s: %s", served.name, message)

    def _remove_socket(self, socket: str | None) -> None:
        if socket:
            path = Path(socket)
            with contextlib.suppress(OSError):
                path.unlink()
            if path.name == WORKER_SOCKET and path.parent.parent == self.sockets.run_dir:
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
        record = await self.db.read(lambda c: get_model(c, task_id))
        if record is not None and record.serving and record.serving.get("state") == "awaiting_training":
            await self._settle_awaiting(record)

    async def _check_awaiting(self) -> None:
        for record in await self.db.read(lambda c: sq.models_with_serving_state(c, ("awaiting_training",))):
            try:
                await self._settle_awaiting(record)
            except Exception:
                log.exception("serving after training failed for %s", record.id)

    async def _settle_awaiting(self, record: ModelRecord) -> None:
        async with self._lock:
            model = await self.catalog.get(record.id)
            stored = model.record.serving or {}
            if stored.get("state") != "awaiting_training" or model.task.status in ACTIVE or model.task.status == Status.PENDING:
                return
            spec = ServingSpec.from_json(stored)
            if model.task.status == Status.COMPLETED and self.catalog.model_file(model).is_file():
                await self._persist(record.id, "serving", spec)
                self._start(await self.catalog.get(record.id), spec)
                log.info("model %s trained: serving it with %d replica(s)", record.name, spec.replicas)
                return
            if model.task.status == Status.COMPLETED:
                reason = f"training completed without writing {model.record.model_path}"
            else:
                reason = f"training {model.task.status}" + (f": {model.task.reason}" if model.task.reason else "")
            await self._persist(record.id, "failed", spec, reason=reason)
            log.warning("model %s: not serving it: %s", record.name, reason)
