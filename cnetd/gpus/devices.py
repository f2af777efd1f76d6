"""The device nodes a task with GPUs may open, and what its environment says about them.

A task on a node with GPUs may open only the standard pseudo devices (the sandbox's list)
and the nodes of its own GPUs plus the driver's shared ones; it is told its GPUs by UUID in
CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID (CUDA's own order differs from
NVML's without it). These variables are set by the agent after the request's own env, so a
request cannot widen them (the device rules would stop it anyway)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cnetd.gpus.inventory import CTL_MINOR, NVIDIA_MAJOR, Inventory

SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "TF_FORCE_GPU_ALLOW_GROWTH",
           "CNET_GPU_MEMORY_LIMIT", "CNET_GPU_MEMORY_FRACTION")


@dataclass(frozen=True)
class DeviceNode:
    path: str
    major: int
    minor: int


def _char_device(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISCHR(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def device_nodes(inventory: Inventory, uuids: tuple[str, ...], device_dir: Path) -> tuple[DeviceNode, ...]:
    """The nodes of these GPUs and the driver's shared nodes (those that exist; nvidia<N>
    and nvidiactl have fixed numbers and are allowed even before the driver made them)."""
    nodes: list[DeviceNode] = []
    for uuid in uuids:
        gpu = inventory.by_uuid(uuid)
        if gpu is None:
            continue
        path = device_dir / f"nvidia{gpu.minor}"
        major, minor = _char_device(path) or (NVIDIA_MAJOR, gpu.minor)
        nodes.append(DeviceNode(str(path), major, minor))
    if not uuids:
        return ()
    for name in SHARED_NODES:
        path = device_dir / name
        found = _char_device(path)
        if found is None and name == "nvidiactl":
            found = (NVIDIA_MAJOR, CTL_MINOR)
        if found is not None:
            nodes.append(DeviceNode(str(path), *found))
    return tuple(nodes)


@dataclass(frozen=True)
class GpuGrant:
    """What one launch gets on a node with GPUs (none given is a grant of no GPU)."""

    uuids: tuple[str, ...] = ()
    memory: int | None = None  # bytes, for a share of one GPU
    memory_total: int | None = None  # of that GPU
    devices: tuple[DeviceNode, ...] = ()

    def env(self) -> dict[str, str]:
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.uuids), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if self.memory is not None:
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # TensorFlow takes what it needs, not the whole GPU
            env["CNET_GPU_MEMORY_LIMIT"] = str(self.memory)
            if self.memory_total:  # for torch.cuda.set_per_process_memory_fraction
                env["CNET_GPU_MEMORY_FRACTION"] = f"{min(1.0, self.memory / self.memory_total):.4f}"
        return env

    def device_numbers(self) -> tuple[tuple[int, int], ...]:
        return tuple((d.major, d.minor) for d in self.devices)
