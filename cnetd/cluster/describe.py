"""This node as its record in the cluster says it (records.NodeRecord): who it is, where
other agents reach it, its labels, its capacity and what of it is free.

Capacity: the logical CPUs, the memory and the size of the file system that holds the
state dir (as the resource sampler last read them, so no file is read on the event loop),
and GPUs. Free: capacity less the limits that the tasks which have not ended were given
(a limit a task was not given counts as nothing), never below zero. Free is what this
node has promised, not what its processes happen to use now: what a scheduler can count on.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from cnetd.cluster.records import NodeRecord, Resources
from cnetd.config import Config
from cnetd.gpus.monitor import GpuMonitor
from cnetd.gpus.status import gpu_status
from cnetd.limits import ResourceLimits
from cnetd.metrics.resources import ResourceSampler
from cnetd.node import NodeIdentity, advertised_url, node_labels
from cnetd.store import tasks as q
from cnetd.store.db import Database


def demand(limits: list[ResourceLimits]) -> Resources:
    """What these tasks were given, together."""
    return Resources(
        cpu=sum(limit.cpu_limit or 0.0 for limit in limits),
        memory=sum(limit.memory_limit or 0 for limit in limits),
        disk=sum(limit.disk_limit or 0 for limit in limits),
        gpus=sum(limit.gpu_limit or 0 for limit in limits),
        gpu_memory=sum(limit.gpu_memory or 0 for limit in limits),
    )


def at_least_zero(r: Resources) -> Resources:
    return Resources(cpu=max(r.cpu, 0.0), memory=max(r.memory, 0), disk=max(r.disk, 0), gpus=max(r.gpus, 0),
                     gpu_memory=max(r.gpu_memory, 0))


class NodeDescriber:
    def __init__(self, config: Config, identity: NodeIdentity, db: Database, resources: ResourceSampler,
                 sandbox: str, started_at: str, gpus: GpuMonitor | None = None) -> None:
        self._gpus = gpus
        self.identity = identity
        self.url = advertised_url(config)
        self.labels = node_labels(config)
        self._db = db
        self._resources = resources
        self._sandbox = sandbox
        self._started_at = started_at
        self.applied_revision: Callable[[], int] = lambda: 0  # set by the cluster: the assignments taken

    def capacity(self) -> Resources:
        totals = self._resources.totals()
        return Resources(
            cpu=float(totals.get("cpu", {}).get("cores") or 0),
            memory=int(totals.get("memory", {}).get("total") or 0),
            disk=int(totals.get("disk", {}).get("total") or 0),
            gpus=self._gpus.inventory.count if self._gpus is not None else 0,
            gpu_memory=max((g.memory_total for g in self._gpus.inventory.gpus), default=0) if self._gpus else 0,
        )

    async def free(self, capacity: Resources, limits: list[ResourceLimits]) -> Resources:
        """capacity less what the tasks that have not ended were given. GPUs: a GPU that
        holds shares counts as taken too, and the GPU memory left is the most unreserved on
        one GPU less what the tasks still pending asked for."""
        promised = demand(limits)
        if self._gpus is None or not self._gpus.inventory.count:
            return at_least_zero(capacity.minus(promised))
        status = await gpu_status(self._db, self._gpus.inventory)
        shared = {h.gpu_uuid for h in status.held if h.memory is not None}
        held_memory = sum(h.memory or 0 for h in status.held)
        free = capacity.minus(promised)
        return at_least_zero(msgspec.structs.replace(
            free, gpus=free.gpus - len(shared),
            gpu_memory=status.largest_unreserved - (promised.gpu_memory - held_memory)))

    async def room(self) -> tuple[float, int] | None:
        """(CPUs, bytes of memory) free for one more task, as `free` counts them; None while
        the capacity is not known yet (before the first resource sample)."""
        capacity = self.capacity()
        if capacity.memory <= 0 or capacity.cpu <= 0:
            return None
        free = capacity.minus(demand(await self._db.read(q.active_limits)))
        return free.cpu, free.memory

    async def __call__(self) -> NodeRecord:
        capacity = self.capacity()
        # Read before the tasks: every assignment up to it was created before this point, so
        # `free` below covers them all (the scheduler subtracts only its later placements).
        applied = self.applied_revision()
        free = await self.free(capacity, await self._db.read(q.active_limits))
        return NodeRecord(
            node_id=self.identity.node_id, name=self.identity.node_name, advertise_url=self.url,
            labels=dict(self.labels), capacity=capacity, free=free,
            sandbox=self._sandbox, version=self.identity.version, started_at=self._started_at,
            applied_revision=applied,
        )
