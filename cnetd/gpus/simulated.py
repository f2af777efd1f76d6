"""The test double of NvmlReader: GPUs described by a JSON file instead of read from NVML.

It exists because no machine the project is tested on has an NVIDIA GPU, and the agent under
test is a separate process that a test cannot patch. It is used only when the operator names
the file in gpus.simulate_file (the config file or CNET_GPU_SIMULATE_FILE, both the
operator's); a request can never choose it. The file must belong to the agent's user and be
writable by nobody else, or it is refused (a task must not be able to invent GPUs). It is
read afresh at every refresh, so a test scripts what NVML would report over time:

    {"driver_version": "550.54.15",
     "gpus": [{"uuid": "GPU-0f1e...", "name": "Simulated A100", "minor": 0,
               "memory_total": 8000000000, "memory_used": 0, "utilization": 0}],
     "processes": [{"pid": 4242, "uuid": "GPU-0f1e...", "memory_used": 1500000000}],
     "error": null}

"error" set to a text stands for NVML failing (no driver): 0 GPUs and that reason.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cnetd.gpus.inventory import Gpu, GpuProcess, Inventory


class SimulatedReader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Inventory:
        try:
            data = self._load()
            return _inventory(data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return Inventory(source="simulated", reason=f"gpus.simulate_file {self.path}: {exc}")

    def _load(self) -> Any:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ValueError("must belong to the agent's user and be writable by nobody else")
            return json.loads(f.read())

    def close(self) -> None:
        pass


def _inventory(data: Any) -> Inventory:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("error"):
        return Inventory(source="simulated", reason=str(data["error"]))
    gpus = tuple(
        Gpu(index=i, uuid=str(g["uuid"]), name=str(g.get("name", "Simulated GPU")), minor=int(g.get("minor", i)),
            memory_total=int(g["memory_total"]), memory_used=int(g.get("memory_used", 0)),
            utilization=None if g.get("utilization") is None else int(g["utilization"]),
            mig_mode=bool(g.get("mig_mode", False)), pci_bus_id=str(g.get("pci_bus_id", f"00000000:{i + 1:02x}:00.0")))
        for i, g in enumerate(data.get("gpus") or [])
    )
    processes = tuple(GpuProcess(pid=int(p["pid"]), uuid=str(p["uuid"]), memory_used=int(p["memory_used"]))
                      for p in data.get("processes") or [])
    reason = None if gpus else "no GPU in gpus.simulate_file"
    return Inventory(gpus, str(data.get("driver_version") or "simulated"), "simulated", reason, processes)
