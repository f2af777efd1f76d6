"""ServingManager: the life of every served model: serve, reconfigure and unserve it,
reattach to its workers after an agent restart, serve it once its training completes, and
answer what is served (by id, by name) and how it is doing.

A served model is a batcher in front of its replicas. Each replica slot is kept going by
the replica runner (cnetd.ml.serving.replica); when the model file changes, the rolling
reload (cnetd.ml.serving.reload) replaces the workers one slot at a time. Both start and
stop worker tasks through WorkerTasks (cnetd.ml.serving.workers).

Serving state is kept in the models table (`serving` column): awaiting_training (deploy body
asked for serving once training completes), serving, stopped, failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.errors import Conflict
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.serving.admission import Admission
from cnetd.ml.serving.batcher import Batcher, ModelMetrics, file_stamp
from cnetd.ml.serving.reload import RollingReload
from cnetd.ml.serving.replica import ReplicaRunner
from cnetd.ml.serving.scaling import Scaler
from cnetd.ml.serving.served import Replica, Served, stamp_json
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.ml.serving.workers import WORKER_RELATIVE, WORKER_SCRIPT, SocketDirs, WorkerTasks, socket_of
from cnetd.store import serving as sq
from cnetd.store.db import Database
from cnetd.store.models import ModelRecord, get_model
from cnetd.store.tasks import insert_event
from cnetd.tasks.model import ACTIVE, Status, Task
from cnetd.tasks.service import TaskService
from cnetd.tasks.states import event

log = logging.getLogger(__name__)

__all__ = ["WORKER_RELATIVE", "WORKER_SCRIPT", "Served", "ServingManager"]


class ServingManager:
    def __init__(
        self, db: Database, tasks: TaskService, catalog: ModelCatalog, sockets: SocketDirs,
        worker_script: Path = WORKER_SCRIPT, memory_budget: int | None = None, busy_poll_us: int = 0,
    ) -> None:
        """worker_script: a worker.py that the model's python can read for as long as the
        worker lives (in the one-file binary: a stable copy under the state dir).
        memory_budget: serving.memory_budget (the autoscaler's replicas stay within it).
        busy_poll_us: serving.busy_poll_us (client.py, worker.py)."""
        self.db = db
        self.tasks = tasks
        self.catalog = catalog
        self.workers = WorkerTasks(tasks, sockets, worker_script, busy_poll_us)
        self.runner = ReplicaRunner(self.workers)
        self.reload = RollingReload(self.workers)
        self.metrics: dict[str, tuple[str, ModelMetrics]] = {}  # model id -> (name, metrics)
        self._served: dict[str, Served] = {}
        self._lock = asyncio.Lock()
        self._bus_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str, int | None], None]] = []
        self.admission = Admission(memory_budget)  # the app sets its node_free
        self.scaler = Scaler(self.all_served, self.runner, self.admission, events=self._record_event)
        # The file a model is served from: a version's own copy of its artifact
        # (cnetd.ml.versions); None from the hook, or no hook: the model file itself.
        self.artifact_for: Callable[[Model], Awaitable[Path | None]] | None = None
        # A name's default version (cnetd.ml.versions): what find(name) answers when it is served.
        self.default_for: Callable[[str], str | None] | None = None

    def on_change(self, listener: Callable[[str, int | None], None]) -> None:
        """Call listener(model_id, replicas) after serving of a model was started, changed or
        stopped by serve() or unserve() (unless told not to notify), or started once its
        training completed: the cluster publishes the model's desired serving then.
        replicas: the number the caller asked for, None when it did not say. Keep it short."""
        self._listeners.append(listener)

    def _notify(self, model_id: str, replicas: int | None = None) -> None:
        for listener in self._listeners:
            try:
                listener(model_id, replicas)
            except Exception:  # a listener's mistake must not undo the serving change
                log.exception("a serving change listener failed for %s", model_id)

    # ---- queries ----------------------------------------------------------------------

    def served(self, model_id: str) -> Served | None:
        return self._served.get(model_id)

    def all_served(self) -> list[Served]:
        return list(self._served.values())

    def find(self, name: str, version: str | None = None) -> Served | None:
        """The served model called `name` (or whose id is `name`): its default version when
        that is served, else the newest of those that share the name. `version` is a model id."""
        if version is None and self.default_for is not None:  # the name's default version, when served
            chosen = self.default_for(name)
            if chosen is not None and (default := self._served.get(chosen)) is not None:
                return default
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
            "replicas": served.target,  # the current target (the autoscaler moves it between min and max)
            "ready_replicas": served.ready_replicas,
            "in_flight": served.in_flight,
            "queue_wait": round(served.batcher.queue_wait, 6),
            "scaling": served.scaling.to_json(),
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
                workers = await self.db.read(partial(sq.live_workers, model_id=record.id))
                keep = spec.max_replicas if spec.autoscaled else spec.replicas
                for extra in workers[keep:]:
                    await self.workers.stop(extra.id)
                self._start(model, spec, await self._file_for(model), adopt=workers[:keep])
                log.info("serving %s again: %d worker(s) to reattach", record.name, len(workers[:keep]))
            except Exception:
                log.exception("could not resume serving model %s", record.id)
        await self._check_awaiting()
        self._bus_task = asyncio.create_task(self._follow_bus(), name="serving-bus")
        self.scaler.start()

    async def stop(self) -> None:
        """Agent shutdown: let go of the workers (they keep running and are reattached)."""
        await cancel_and_wait(self._bus_task)
        await self.scaler.stop()
        for served in list(self._served.values()):
            await self._teardown(served, "the agent is shutting down", stop_workers=False)
        self._served.clear()

    # ---- serve / unserve ------------------------------------------------------------------

    async def serve(self, model_id: str, body: Any, notify: bool = True) -> Model:
        """Serve the model (or change its settings) on this node. notify: False for changes
        the cluster itself makes (a node's share of replicas), which are not published back."""
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
            elif (file := await self._servable_file(model)) is not None:
                await self._persist(model_id, "serving", spec)
                self._start(await self.catalog.get(model_id), spec, file)
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
        if notify:
            asked = isinstance(body, dict) and body.get("replicas") is not None
            self._notify(model_id, spec.replicas if asked else None)
        return await self.catalog.get(model_id)

    async def unserve(self, model_id: str, notify: bool = True, reason: str | None = None) -> bool:
        """Stop serving (workers end as `stopped`); False when it was not served. reason:
        why, when it is not the user's call (kept with the stored state)."""
        async with self._lock:
            model = await self.catalog.get(model_id)
            served = self._served.pop(model_id, None)
            stored = model.record.serving or {}
            if served is None and stored.get("state") not in ("serving", "awaiting_training"):
                return False
            spec = served.spec if served else ServingSpec.from_json(stored)
            await self._persist(model_id, "stopped", spec, reason=reason)
            if served is not None:
                await self._teardown(served, f"serving of model {model.record.name} was stopped", stop_workers=True)
            for task in await self.db.read(lambda c: sq.live_workers(c, model_id)):
                await self.workers.stop(task.id)
        if notify:
            self._notify(model_id)
        return True

    async def wait_ready(self, model_id: str, timeout: float) -> bool:
        """Wait until every wanted replica is ready; False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            served = self._served.get(model_id)
            if served is None:
                return False
            wanted = min(served.target, served.spec.replicas) if served.spec.autoscaled else served.spec.replicas
            if served.ready_replicas >= wanted:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            served.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(served.changed.wait(), remaining)

    async def _record_event(self, model_id: str, kind: str, message: str) -> None:
        await self.db.write(lambda c: insert_event(c, event(model_id, kind, message)))

    async def _persist(self, model_id: str, state: str, spec: ServingSpec, reason: str | None = None) -> None:
        value: dict[str, Any] = {"state": state, **spec.to_json(), "updated_at": utc_now()}
        if reason:
            value["reason"] = reason
        await self.db.write(lambda c: sq.set_serving(c, model_id, value))

    async def _file_for(self, model: Model) -> Path:
        found = await self.artifact_for(model) if self.artifact_for is not None else None
        return found if found is not None else self.catalog.model_file(model)

    async def _servable_file(self, model: Model) -> Path | None:
        """The file to serve the model from, None when there is none yet."""
        file = await self._file_for(model)
        return file if file.is_file() else None

    def _start(self, model: Model, spec: ServingSpec, model_file: Path, adopt: list[Task] | None = None) -> Served:
        _name, metrics = self.metrics.setdefault(model.record.id, (model.record.name, ModelMetrics()))
        batcher = Batcher(model.record.name, spec, model_file, metrics)
        served = Served(model=model, spec=spec, batcher=batcher, file_stamp=file_stamp(batcher.model_file))
        if model_file != self.catalog.model_file(model):
            served.model_arg = str(model_file)  # the workers load the version's own copy
        served.dispatcher = asyncio.create_task(batcher.run(), name=f"batcher-{model.record.id}")
        served.watcher = asyncio.create_task(self.reload.watch(served), name=f"model-file-{model.record.id}")
        resuming, adopt = adopt is not None, adopt or []
        # An autoscaled model's replicas beyond those adopted are started by the scaler,
        # admitted against the memory budget and the node's room; one that was unloaded
        # (min_replicas 0, no worker left) stays unloaded after an agent restart.
        served.target = max(spec.replicas, len(adopt)) if spec.autoscaled else spec.replicas
        if resuming and spec.autoscaled and spec.min_replicas == 0 and not adopt:
            served.target = 0
        for slot in range(len(adopt) if spec.autoscaled else spec.replicas):
            replica = Replica(slot=slot)
            if slot < len(adopt):
                replica.task_id, replica.socket = adopt[slot].id, socket_of(adopt[slot])
            self.runner.run(served, replica)
        self._served[model.record.id] = served
        self.scaler.attach(served)
        return served

    async def _reconfigure(self, served: Served, spec: ServingSpec) -> None:
        if spec.loader != served.spec.loader:
            # Workers load the model one way for life: replace them all.
            del self._served[served.id]
            await self._teardown(served, "serving is restarting with another loader", stop_workers=True)
            await self._persist(served.id, "serving", spec)
            self._start(served.model, spec, served.batcher.model_file)
            return
        await self._persist(served.id, "serving", spec)
        served.spec = spec
        served.batcher.configure(spec)
        if spec.autoscaled:  # the scaler moves the replicas within the new range
            self.scaler.attach(served)
            served.changed.set()
            return
        served.target = spec.replicas
        self.scaler.attach(served)
        while len(served.replicas) < spec.replicas:
            self.runner.run(served, Replica(slot=len(served.replicas)))
        surplus = served.replicas[spec.replicas:]
        del served.replicas[spec.replicas:]
        await asyncio.gather(*(self.runner.end(served, r, stop_worker=True) for r in surplus))
        served.changed.set()

    async def _teardown(self, served: Served, message: str, stop_workers: bool) -> None:
        """Stop serving here. A replacement being started and the replaced workers still
        answering their last batches are stopped even when the others are let go of."""
        self.scaler.detach(served)
        served.batcher.close(message)
        await cancel_and_wait(served.watcher)
        await asyncio.gather(*(self.runner.end(served, r, stop_worker=stop_workers) for r in served.replicas))
        await cancel_and_wait(*served.retiring)
        await cancel_and_wait(served.dispatcher)
        served.changed.set()

    # ---- serving once training completes -------------------------------------------------------

    async def _follow_bus(self) -> None:
        await self.tasks.bus.follow_ended(self._on_task_ended, self._check_awaiting, "serving after training")

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
                file = await self._file_for(model)
                await self._persist(record.id, "serving", spec)
                self._start(await self.catalog.get(record.id), spec, file)
                log.info("model %s trained: serving it with %d replica(s)", record.name, spec.replicas)
                self._notify(record.id, spec.replicas)
                return
            if model.task.status == Status.COMPLETED:
                reason = f"training completed without writing {model.record.model_path}"
            else:
                reason = f"training {model.task.status}" + (f": {model.task.reason}" if model.task.reason else "")
            await self._persist(record.id, "failed", spec, reason=reason)
            log.warning("model %s: not serving it: %s", record.name, reason)
