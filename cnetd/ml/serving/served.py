"""What the agent knows about a served model while it serves it: its spec, its batcher, its
replica slots and the state of a rolling reload. Plain state: the manager, the replica
runner and the rolling reload change it; nothing here starts or stops anything."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cnetd.background import wait_event
from cnetd.clock import format_time
from cnetd.errors import Unavailable
from cnetd.ml.catalog import Model
from cnetd.ml.serving.batcher import Answer, Batcher
from cnetd.ml.serving.client import WorkerClient
from cnetd.ml.serving.scalestate import ScalingState
from cnetd.ml.serving.spec import ServingSpec
from cnetd.tasks.model import Task

RELOAD_RETRY_START = 1.0  # a replacement that failed although the file loads elsewhere: retry after
RELOAD_FAILED = "reload failed: "  # how a replica's last_error says its replacement could not load

Stamp = tuple[int, int]  # [mtime_ns, size] of a model file


def stamp_json(stamp: Stamp | None) -> list[int] | None:
    return list(stamp) if stamp is not None else None


def describe_stamp(stamp: Stamp) -> str:
    modified = datetime.fromtimestamp(stamp[0] / 1e9, UTC)
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
    # The autoscaler's view (cnetd.ml.serving.scaling): the replicas it wants now, the
    # requests in the agent (cold: those that arrived while no replica was ready), when the
    # model was last used, replicas being stopped (they still hold their memory).
    target: int = 0
    in_flight: int = 0
    cold: int = 0
    arrivals: int = 0
    last_used: float = field(default_factory=time.monotonic)
    draining: int = 0
    scaling: ScalingState = field(default_factory=ScalingState)
    demand: Callable[[Served], None] | None = None  # a request found no replica: start one now
    model_arg: str | None = None  # what workers load when it is not the model's path (a version's own copy)

    @property
    def id(self) -> str:
        return self.model.record.id

    @property
    def name(self) -> str:
        return self.model.record.name

    @property
    def ready_replicas(self) -> int:
        return sum(1 for r in self.replicas if r.state == "ready")

    async def predict(self, instances: list[Any] | np.ndarray[Any, Any]) -> Answer:
        """instances: a list of samples, or one array of them along its first dimension.
        An autoscaled model with no ready replica (unloaded, or all starting) has one started
        and the request waits for it up to cold_start_timeout; such a request is not load."""
        self.arrivals += 1
        self.in_flight += 1
        self.last_used = time.monotonic()
        cold = self.spec.autoscaled and not self.batcher.links
        if cold:
            self.cold += 1
        try:
            if cold:
                await self._wait_for_replica()
            return await self.batcher.predict(instances)
        finally:
            self.in_flight -= 1
            if cold:
                self.cold -= 1
            self.last_used = time.monotonic()

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: about one cold start."""
        return max(1, math.ceil(self.scaling.last_cold_start or 1.0))

    async def _wait_for_replica(self) -> None:
        waiting = self.cold - 1  # the others that wait, not this one
        if waiting >= self.spec.max_queue:
            raise Unavailable(
                f"model {self.name} is starting a replica and {waiting} requests already wait for it "
                f"(max_queue {self.spec.max_queue})", {"waiting": waiting}, retry_after=self.retry_after())
        if self.demand is not None:
            self.demand(self)
        deadline = time.monotonic() + self.spec.cold_start_timeout
        while not self.batcher.links:
            if self.dispatcher is not None and self.dispatcher.done():
                return  # serving stopped: the batcher says so
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = f"; {self.scaling.waiting}" if self.scaling.waiting else ""
                raise Unavailable(
                    f"model {self.name}: no replica was ready within cold_start_timeout "
                    f"({self.spec.cold_start_timeout:g}s){why}", {"cold_start_timeout": self.spec.cold_start_timeout},
                    retry_after=self.retry_after())
            self.changed.clear()
            await wait_event(self.changed, remaining)
        began = self.scaling.cold_since
        if began is not None:
            self.scaling.cold_since = None
            self.scaling.last_cold_start = time.monotonic() - began
            self.scaling.cold_starts.observe(self.scaling.last_cold_start)
