"""Which GPUs a task gets: whole ones (resources.gpu_limit) or a share of one
(resources.gpu_memory), decided from the GPUs NVML sees and what running tasks hold.

choose() is pure; the runner calls it inside the transaction that claims the task (pending ->
starting), with what the store says is held in that same transaction, so the decision and the
write cannot interleave with another task's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cnetd.errors import Invalid
from cnetd.gpus.inventory import Inventory
from cnetd.limits import ResourceLimits
from cnetd.store.gpus import Held
from cnetd.units import format_size as format_bytes


@dataclass(frozen=True)
class GpuRequest:
    whole: int = 0  # whole GPUs
    memory: int | None = None  # bytes on one shared GPU

    @classmethod
    def of(cls, limits: ResourceLimits) -> GpuRequest | None:
        if limits.gpu_memory:
            return cls(0, limits.gpu_memory)
        if limits.gpu_limit:
            return cls(limits.gpu_limit, None)
        return None

    def describe(self) -> str:
        if self.memory is not None:
            return f"{format_bytes(self.memory)} of GPU memory"
        return f"{self.whole} GPU{'s' if self.whole != 1 else ''}"


class Waiting(Exception):
    """Not enough GPUs free now; the message says what the task waits for."""


def check_request(limits: ResourceLimits, inventory: Inventory, key: str = "resources") -> None:
    """A request this node could never serve is a 400 (what is merely busy waits)."""
    if limits.gpu_memory and limits.gpu_limit:
        raise Invalid(f"{key}.gpu_memory", "asks for a share of one GPU: leave gpu_limit out (or 0) with it")
    request = GpuRequest.of(limits)
    if request is None:
        return
    why = f" ({inventory.reason})" if inventory.reason else ""
    if request.memory is not None:
        largest = max((g.memory_total for g in inventory.gpus), default=0)
        if request.memory > largest:
            has = f"its largest GPU has {format_bytes(largest)}" if inventory.gpus else f"this node has no GPU{why}"
            raise Invalid(f"{key}.gpu_memory", f"asks for {format_bytes(request.memory)}, but {has}")
        return
    if request.whole > inventory.count:
        raise Invalid(f"{key}.gpu_limit", f"asks for {request.describe()}, but this node has {inventory.count}{why}")


def free_gpus(inventory: Inventory, held: Sequence[Held]) -> list[str]:
    """The uuids of the GPUs nobody holds, whole or in part, in NVML's order."""
    taken = {h.gpu_uuid for h in held}
    return [g.uuid for g in inventory.gpus if g.uuid not in taken]


def unreserved_memory(inventory: Inventory, held: Sequence[Held]) -> dict[str, int]:
    """uuid -> bytes not reserved, for the GPUs no task holds whole."""
    whole = {h.gpu_uuid for h in held if h.memory is None}
    out = {g.uuid: g.memory_total for g in inventory.gpus if g.uuid not in whole}
    for h in held:
        if h.memory is not None and h.gpu_uuid in out:
            out[h.gpu_uuid] -= h.memory
    return out


def choose(request: GpuRequest, inventory: Inventory, held: Sequence[Held]) -> list[str]:
    """The uuids the task gets; Waiting when there are not enough free now."""
    if request.memory is not None:
        room = unreserved_memory(inventory, held)
        fits = [(left, uuid) for uuid, left in room.items() if left >= request.memory]
        if not fits:
            most = max(room.values(), default=0)
            raise Waiting(f"waiting for {request.describe()}: at most {format_bytes(max(most, 0))} unreserved on one GPU")
        return [min(fits)[1]]  # the fullest GPU it fits on: whole GPUs stay free for whole requests
    free = free_gpus(inventory, held)
    if len(free) < request.whole:
        raise Waiting(f"waiting for {request.describe()}: {len(free)} of {inventory.count} free")
    return free[: request.whole]
