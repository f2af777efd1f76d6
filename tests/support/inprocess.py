"""A TaskService built in-process the way the app builds it (real SQLite file, launcher, log
ingester), over a sandbox backend the test chooses; tasks as the agent's own user, without
a namespace (tests/support/launch.py), since nothing here starts a real process."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cnetd.background import cancel_all
from cnetd.config import Config, default_config
from cnetd.logs.ingester import LogIngester
from cnetd.security.confine import Confinement
from cnetd.store.db import Database
from cnetd.supervisor.base import Sandbox
from cnetd.supervisor.launcher import default_task_path
from cnetd.tasks.model import Status, Task
from cnetd.tasks.request import NewTask
from cnetd.tasks.service import TaskService
from tests.support.launch import make_launcher


def service_config(work: Path, **tasks: Any) -> Config:
    """The state dir is <work>/state; work is where tasks' working dirs are."""
    return default_config(work, state_dir=work / "state", tasks={"sandbox": "none", "stop_grace": "1s", **tasks})


class InProcessAgent:
    def __init__(self, service: TaskService, db: Database, ingester: LogIngester) -> None:
        self.service = service
        self.db = db
        self.ingester = ingester
        self.crashed = False

    async def crash(self) -> None:
        """Drop the agent as SIGKILL would: from now on nothing reaches its store, and all its
        work stops where it is (whatever it began in a sandbox is left as it is)."""
        self.crashed = True
        await self.db.close()
        await cancel_all(t for t in asyncio.all_tasks() if t is not asyncio.current_task())


@asynccontextmanager
async def task_service(config: Config, sandbox: Sandbox, start: bool = True) -> AsyncIterator[InProcessAgent]:
    """Open the store, recover, start the scheduler (unless start is False: the test then
    calls service.start_background() itself); on the way out stop it all as the app does,
    unless the test crashed it."""
    work = config.agent.state_dir.parent
    db = Database(config.agent.state_dir / "cnet.db")
    await db.open()
    launcher = make_launcher(config.agent.state_dir, work, config.tasks, sandbox)
    ingester = LogIngester(db, limits=config.logs)
    service = TaskService(db, launcher, ingester, config, "node-1",
                          Confinement([work], (), (), default_task_path(), state_dir=config.agent.state_dir))
    ingester.on_lines = service.on_log_lines
    agent = InProcessAgent(service, db, ingester)
    await ingester.start()
    try:
        await service.recover()
        if start:
            await service.start_background()
        yield agent
    finally:
        if not agent.crashed:
            await service.stop_background()
            await service.shutdown()
            await ingester.stop()
            await db.close()


def sleeper(name: str = "t") -> NewTask:
    """A task request; what it runs never runs (the scripted sandbox starts nothing)."""
    return NewTask(name=name, command=sys.executable, args=["-c", "pass"])


DEADLINE = 10.0


async def reached(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), DEADLINE)
    except TimeoutError:
        raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}") from None


async def until(condition: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll an async condition until it is truthy, with a deadline."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.01)


async def status_is(service: TaskService, task_id: str, *statuses: Status) -> Task | None:
    task = await service.get(task_id)
    return task if task.status in statuses else None


async def event_types(service: TaskService, task_id: str) -> list[str]:
    return [e.type for e in await service.events(task_id)]


async def now(value: Any) -> Any:
    """A value as an awaitable, for `until` on a plain condition."""
    return value
