"""The node's GPUs as last read: one reading at start, then one every gpus.refresh in a
worker thread (NVML calls block). Everybody reads `inventory`; nobody waits for NVML."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cnetd.background import cancel_and_wait
from cnetd.config import GpusSection
from cnetd.gpus.inventory import Inventory
from cnetd.gpus.reader import GpuReader, NvmlReader
from cnetd.gpus.simulated import SimulatedReader

log = logging.getLogger(__name__)


def reader_for(settings: GpusSection) -> GpuReader | None:
    if not settings.enabled:
        return None
    if settings.simulate_file is not None:
        log.warning("gpus.simulate_file is set: GPUs are read from %s, not from NVML (a test set-up)",
                    settings.simulate_file)
        return SimulatedReader(settings.simulate_file)
    return NvmlReader()


class GpuMonitor:
    def __init__(self, settings: GpusSection, reader: GpuReader | None = None) -> None:
        self.settings = settings
        self.reader = reader if reader is not None else reader_for(settings)
        self.inventory = Inventory(reason="gpus.enabled is false") if self.reader is None else Inventory(reason="not read yet")
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Inventory], None]] = []
        self._tick = asyncio.Event()  # set (and replaced) at each reading

    def on_refresh(self, listener: Callable[[Inventory], None]) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self.refresh()
        inv = self.inventory
        if inv.count:
            log.info("%d GPU%s (%s, driver %s): %s", inv.count, "s" if inv.count != 1 else "", inv.source,
                     inv.driver_version, ", ".join(f"{g.index}: {g.name} {g.uuid}" for g in inv.gpus))
        else:
            log.info("no GPUs: %s", inv.reason)
        if self.reader is not None:
            self._task = asyncio.create_task(self._run(), name="gpu-monitor")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self.reader is not None:
            await asyncio.to_thread(self.reader.close)

    async def refresh(self) -> Inventory:
        if self.reader is None:
            return self.inventory
        self.inventory = await asyncio.to_thread(self.reader.read)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        for listener in self._listeners:
            try:
                listener(self.inventory)
            except Exception:
                log.exception("a GPU refresh listener failed")
        return self.inventory

    async def next_reading(self) -> Inventory:
        """The inventory of the next reading, once it is there."""
        await self._tick.wait()
        return self.inventory

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh)
            try:
                await self.refresh()
            except Exception:
                log.exception("reading the GPUs failed")
