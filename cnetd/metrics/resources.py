"""Node resources and usage from psutil, sampled in the background so that the
first request already gets a real CPU figure."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil

from cnetd.background import cancel_and_wait
from cnetd.config import ResourcesSection


class ResourceSampler:
    """usage() and totals() answer from the last sample, taken in a thread every
    resources.interval: psutil reads /proc and /sys files (one per CPU for the core count),
    which the event loop must not wait for on every request or node record."""

    def __init__(self, settings: ResourcesSection, disk_path: Path) -> None:
        self.settings = settings
        self.disk_path = disk_path
        self._latest: dict[str, Any] = {}
        self._totals: dict[str, Any] = {}
        self._cores: dict[str, int | None] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        psutil.cpu_percent(interval=None)  # prime: the next call measures from now
        self._cores = await asyncio.to_thread(_cores)
        self._latest, self._totals = await asyncio.to_thread(self._sample_all, 0.1)
        self._task = asyncio.create_task(self._run(), name="resource-sampler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval)
            self._latest, self._totals = await asyncio.to_thread(self._sample_all, None)

    def _sample_all(self, cpu_interval: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
        return self._sample(cpu_interval), self._sample_totals()

    def _sample(self, cpu_interval: float | None) -> dict[str, Any]:
        usage: dict[str, Any] = {"timestamp": time.time()}
        if self.settings.cpu:
            usage["cpu"] = {
                "percent": psutil.cpu_percent(interval=cpu_interval),
                "load_average": list(os.getloadavg()),
            }
        if self.settings.memory:
            vm = psutil.virtual_memory()
            usage["memory"] = {
                "total": vm.total, "used": vm.total - vm.available, "available": vm.available, "percent": vm.percent,
            }
        if self.settings.disk:
            du = psutil.disk_usage(str(self.disk_path))
            usage["disk"] = {
                "path": str(self.disk_path), "total": du.total, "used": du.used, "free": du.free, "percent": du.percent,
            }
        if self.settings.network:
            net = psutil.net_io_counters()
            usage["network"] = {"bytes_sent": net.bytes_sent, "bytes_recv": net.bytes_recv}
        return usage

    def usage(self) -> dict[str, Any]:
        return dict(self._latest)

    def totals(self) -> dict[str, Any]:
        """The node's capacity as of the last sample (what is available and free changes;
        the core counts are read once, at start)."""
        return {"cpu": dict(self._cores), **self._totals, "gpu": {"count": 0}}

    def _sample_totals(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        du = psutil.disk_usage(str(self.disk_path))
        return {
            "memory": {"total": vm.total, "available": vm.available},
            "disk": {"path": str(self.disk_path), "total": du.total, "free": du.free},
        }


def _cores() -> dict[str, int | None]:
    return {"cores": psutil.cpu_count(logical=True), "physical_cores": psutil.cpu_count(logical=False)}
