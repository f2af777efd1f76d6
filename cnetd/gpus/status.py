"""The node's GPUs with what is taken of them, for /api/node, /api/resources, the dashboard,
/metrics and the node's record in the cluster."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnetd.gpus.assignment import free_gpus, unreserved_memory
from cnetd.gpus.inventory import Inventory
from cnetd.store import gpus as gq
from cnetd.store.db import Database


@dataclass(frozen=True)
class GpuStatus:
    inventory: Inventory
    held: tuple[gq.Held, ...]

    @property
    def free(self) -> int:
        """GPUs nobody holds, whole or in part."""
        return len(free_gpus(self.inventory, self.held))

    @property
    def largest_unreserved(self) -> int:
        """The most memory a gpu_memory request could get on one GPU now."""
        return max(unreserved_memory(self.inventory, self.held).values(), default=0)

    def holders(self, uuid: str) -> list[str]:
        return [h.task_id for h in self.held if h.gpu_uuid == uuid]

    def to_json(self) -> dict[str, Any]:
        room = unreserved_memory(self.inventory, self.held)
        return {
            **self.inventory.to_json(),
            "free": self.free,
            "devices": [
                {**g.to_json(), "tasks": self.holders(g.uuid), "unreserved_memory": max(room.get(g.uuid, 0), 0)}
                for g in self.inventory.gpus
            ],
        }


def task_gpu_usage(inventory: Inventory, uuids: tuple[str, ...], owns: Callable[[int], bool]) -> dict[str, Any]:
    """A task's GPU figures: the memory NVML accounts to its processes (owns(pid) says which
    are its own) and the utilisation of its GPUs (a shared GPU's is every sharer's)."""
    if not uuids:
        return {}
    memory = sum(p.memory_used for p in inventory.processes if p.uuid in uuids and owns(p.pid))
    busy = [g.utilization for u in uuids if (g := inventory.by_uuid(u)) is not None and g.utilization is not None]
    return {"gpu_memory_bytes": memory, "gpu_utilization": round(sum(busy) / len(busy), 1) if busy else None}


async def gpu_status(db: Database, inventory: Inventory) -> GpuStatus:
    held = await db.read(gq.held) if inventory.count else []
    return GpuStatus(inventory, tuple(held))
