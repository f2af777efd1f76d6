"""The JSON file that SimulatedReader (cnetd/gpus/simulated.py) reads instead of NVML: a
test double, because no machine these tests run on has an NVIDIA GPU. A test writes the
GPUs, and later the per-process memory NVML would account, and the agent reads the file at
each gpus.refresh."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GIB = 2**30


def gpu(n: int, memory: int = 8 * GIB) -> dict[str, Any]:
    return {"uuid": f"GPU-{n:08x}-0000-4000-8000-00000000000{n}", "name": f"Simulated GPU {n}", "minor": n,
            "memory_total": memory, "memory_used": 0, "utilization": 10 * n}


class FakeGpus:
    def __init__(self, path: Path, count: int = 2, memory: int = 8 * GIB) -> None:
        self.path = path
        self.gpus = [gpu(n, memory) for n in range(count)]
        self.processes: list[dict[str, Any]] = []
        self.error: str | None = None
        self.write()

    @property
    def uuids(self) -> list[str]:
        return [g["uuid"] for g in self.gpus]

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"driver_version": "550.54.15", "gpus": self.gpus,
                                   "processes": self.processes, "error": self.error}))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)  # the agent never reads half a file

    def account(self, pid: int, uuid: str, memory_used: int) -> None:
        """NVML's per-process accounting says pid uses this much of that GPU."""
        self.processes.append({"pid": pid, "uuid": uuid, "memory_used": memory_used})
        self.write()
