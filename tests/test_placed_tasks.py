"""Tasks created under an id a cluster placement chose: a placement delivered twice (a
watch replayed after a reconnect, two deliveries racing) makes one task that runs once.
In-process TaskService on a real SQLite file over the scripted fake sandbox, which counts
starts."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from cnetd.tasks.model import Status
from tests.support.inprocess import event_types, service_config, sleeper, status_is, task_service, until
from tests.support.scripted_sandbox import ScriptedSandbox, World


async def test_a_placement_delivered_twice_makes_one_task_that_runs_once(tmp_path: Path) -> None:
    world = World()
    async with task_service(service_config(tmp_path), ScriptedSandbox(world)) as agent:
        task_id = str(uuid.uuid4())
        first, second = await asyncio.gather(
            agent.service.create(sleeper("placed"), task_id=task_id),
            agent.service.create(sleeper("placed"), task_id=task_id),
        )
        again = await agent.service.create(sleeper("placed"), task_id=task_id)
        assert first.id == second.id == again.id == task_id
        await until(lambda: status_is(agent.service, task_id, Status.RUNNING), "the placed task to run")
        assert [t.id for t in await agent.service.list()] == [task_id]
        assert world.starts.count(task_id) == 1
        assert (await event_types(agent.service, task_id)).count("created") == 1
