"""What the node's GPUs are and what runs on them, as one reading of NVML (or of its test
double) sees them. Plain data: the reader fills it in, everybody else only reads it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NVIDIA_MAJOR = 195  # /dev/nvidia<N> (minor N), /dev/nvidiactl (minor 255)
CTL_MINOR = 255


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index (CUDA orders differently unless CUDA_DEVICE_ORDER=PCI_BUS_ID)
    uuid: str  # "GPU-..." : what tasks are given in CUDA_VISIBLE_DEVICES
    name: str
    minor: int  # /dev/nvidia<minor>
    memory_total: int  # bytes
    memory_used: int  # bytes
    utilization: int | None = None  # percent of the last sample period the GPU was busy
    mig_mode: bool = False
    pci_bus_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuProcess:
    """One process NVML accounts GPU memory to (per-process accounting)."""

    pid: int  # as the agent's PID namespace sees it
    uuid: str  # the GPU it uses
    memory_used: int  # bytes


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    source: str = "nvml"  # "nvml" or "simulated" (the test double)
    reason: str | None = None  # why there are no GPUs, in one line, when there are none
    processes: tuple[GpuProcess, ...] = field(default=(), repr=False)

    @property
    def count(self) -> int:
        return len(self.gpus)

    def by_uuid(self, uuid: str) -> Gpu | None:
        return next((g for g in self.gpus if g.uuid == uuid), None)

    def memory_of(self, pids: set[int]) -> dict[str, int]:
        """GPU uuid -> bytes NVML accounts to these processes."""
        used: dict[str, int] = {}
        for p in self.processes:
            if p.pid in pids:
                used[p.uuid] = used.get(p.uuid, 0) + p.memory_used
        return used

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "driver_version": self.driver_version,
            "source": self.source,
            "reason": self.reason,
            "devices": [g.to_json() for g in self.gpus],
        }
