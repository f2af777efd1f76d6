"""What the agent knows about a served model while it serves it: its spec, its batcher, its
replica slots and the state of a rolling reload. Plain state: the manager, the replica
runner and the rolling reload change it; nothing here starts or stops anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from cnetd.clock import format_time
from cnetd.ml.catalog import Model
from cnetd.ml.serving.batcher import Answer, Batcher
from cnetd.ml.serving.client import WorkerClient
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
        """instances: a list of samples, or one array of them along its first dimension."""
        return await self.batcher.predict(instances)
