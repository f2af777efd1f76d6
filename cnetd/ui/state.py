"""What the UI keeps while the agent runs: the renderer, a small ring buffer of
CPU/memory samples per running task (for the usage charts), and the event that
tells live streams the agent is shutting down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from cnetd.background import cancel_and_wait
from cnetd.agent import AGENT, Agent
from cnetd.supervisor.base import Handle
from cnetd.tasks.model import Status
from cnetd.ui.render import Renderer, templates_dir

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 1.0
SAMPLES_PER_TASK = 300  # five minutes at one sample a second
TASKS_REMEMBERED = 100  # finished tasks keep their chart until this many newer ones push it out


@dataclass(frozen=True)
class Sample:
    at: float  # time.time()
    cpu_percent: float | None
    memory_bytes: int | None


@dataclass
class UsageHistory:
    samples: OrderedDict[str, deque[Sample]] = field(default_factory=OrderedDict)

    def add(self, task_id: str, sample: Sample) -> None:
        ring = self.samples.get(task_id)
        if ring is None:
            ring = self.samples[task_id] = deque(maxlen=SAMPLES_PER_TASK)
            while len(self.samples) > TASKS_REMEMBERED:
                self.samples.popitem(last=False)
        ring.append(sample)

    def of(self, task_id: str) -> list[Sample]:
        return list(self.samples.get(task_id, ()))


class UsageSampler:
    """Samples every running task's usage through its sandbox backend's stats()."""

    def __init__(self, agent: Agent, history: UsageHistory, interval: float = SAMPLE_INTERVAL) -> None:
        self.agent = agent
        self.history = history
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ui-usage-sampler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:
                log.exception("sampling task usage failed")
            await asyncio.sleep(self.interval)

    async def sample_once(self) -> None:
        running = await self.agent.tasks.list(statuses=[str(Status.RUNNING)])
        for task in running:
            if not task.handle:
                continue
            try:
                handle = Handle.from_json(task.handle)
                usage = await self.agent.launcher.backend_for(handle).stats(handle)
            except Exception as exc:  # the process may have just ended
                log.debug("no usage sample for task %s: %s", task.id, exc)
                continue
            self.history.add(task.id, Sample(time.time(), usage.cpu_percent, usage.memory_bytes))


@dataclass
class UiState:
    renderer: Renderer
    history: UsageHistory
    closing: asyncio.Event
    _routes: set[tuple[str, str]] | None = None

    def has_route(self, app: web.Application, method: str, path: str) -> bool:
        """Whether the app serves METHOD path (a canonical path like /api/ml/models/{id}/serve)."""
        if self._routes is None:
            self._routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        return (method, path) in self._routes


UI = web.AppKey("ui", UiState)


async def ui_context(app: web.Application) -> AsyncIterator[None]:
    """Entered after the agent's context (add_ui_routes runs after it is registered)."""
    agent = app[AGENT]
    history = UsageHistory()
    state = UiState(renderer=Renderer(templates_dir(), agent.config.agent.node_name), history=history, closing=asyncio.Event())
    app[UI] = state
    sampler = UsageSampler(agent, history)
    sampler.start()
    try:
        yield
    finally:
        state.closing.set()
        await sampler.stop()


async def on_shutdown(app: web.Application) -> None:
    """End the live streams first, so that shutdown does not wait for browsers to hang up."""
    state = app.get(UI)
    if state is not None:
        state.closing.set()
