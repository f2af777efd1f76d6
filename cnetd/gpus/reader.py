"""The one seam between the agent and NVML: a GpuReader reads the node's GPUs and the
processes that use them. NvmlReader is the real one (nvidia-ml-py, imported as pynvml);
SimulatedReader (simulated.py) is its test double, used only when the operator names a file
in gpus.simulate_file. Nothing else in the agent imports pynvml."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Protocol

from cnetd.gpus.inventory import Gpu, GpuProcess, Inventory

log = logging.getLogger(__name__)


class GpuReader(Protocol):
    def read(self) -> Inventory:
        """The GPUs and their processes now; an Inventory with a reason, never an error."""
        ...

    def close(self) -> None: ...


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlReader:
    """NVML through nvidia-ml-py. The library or the driver may be missing: then every read
    says so in its reason (the agent runs with 0 GPUs), and the next read tries again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._problem: str | None = None

    def _init(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml  # type: ignore[import-untyped]
        except ImportError:
            self._problem = "nvidia-ml-py is not installed (no pynvml module)"
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._problem = f"NVML did not start: {_text(exc)} (no NVIDIA driver on this node?)"
            return None
        except OSError as exc:
            self._problem = f"NVML did not start: {exc}"
            return None
        self._nvml, self._problem = pynvml, None
        return pynvml

    def read(self) -> Inventory:
        with self._lock:
            nvml = self._init()
            if nvml is None:
                return Inventory(reason=self._problem)
            try:
                return self._read(nvml)
            except nvml.NVMLError as exc:
                return Inventory(reason=f"NVML read failed: {_text(exc)}")

    def _read(self, nvml: Any) -> Inventory:
        gpus: list[Gpu] = []
        processes: list[GpuProcess] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(h))
            memory = nvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(Gpu(
                index=index, uuid=uuid, name=_text(nvml.nvmlDeviceGetName(h)),
                minor=int(nvml.nvmlDeviceGetMinorNumber(h)),
                memory_total=int(memory.total), memory_used=int(memory.used),
                utilization=getattr(_optional(nvml, nvml.nvmlDeviceGetUtilizationRates, h), "gpu", None),
                mig_mode=bool((_optional(nvml, nvml.nvmlDeviceGetMigMode, h) or [False])[0]),
                pci_bus_id=_text(getattr(_optional(nvml, nvml.nvmlDeviceGetPciInfo, h), "busId", "")),
            ))
            for proc in _optional(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, h) or []:
                used = getattr(proc, "usedGpuMemory", None)
                processes.append(GpuProcess(pid=int(proc.pid), uuid=uuid, memory_used=int(used or 0)))
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        reason = None if gpus else "NVML sees no GPU on this node"
        return Inventory(tuple(gpus), driver, "nvml", reason, tuple(processes))

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                with contextlib.suppress(self._nvml.NVMLError):
                    self._nvml.nvmlShutdown()
                self._nvml = None


def _optional(nvml: Any, read: Any, handle: Any) -> Any:
    """A figure some GPUs do not have (utilisation under MIG, MIG mode on consumer cards)."""
    try:
        return read(handle)
    except nvml.NVMLError:
        return None
