"""Launches run side by side (a start that blocks, as a slow systemd-run does, holds back no
other), bounded, with tasks.max_concurrent exact; and a release or a stop that fails is
logged with its task. In-process over the scripted FAKE sandbox (tests/support/
scripted_sandbox.py), whose start() blocks until the test lets it return: that makes "one
start is still under way" a state the test holds, not a race it hopes to win."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cnetd.tasks.model import Status
from cnetd.tasks.runner import LAUNCHES_AT_ONCE
from tests.support.inprocess import (
    now,
    reached,
    service_config,
    sleeper,
    status_is,
    task_service,
    until,
)
from tests.support.scripted_sandbox import ScriptedSandbox, World


async def test_a_start_that_blocks_does_not_hold_back_another(tmp_path: Path) -> None:
    sandbox = ScriptedSandbox(World())
    async with task_service(service_config(tmp_path), sandbox, start=False) as agent:
        service = agent.service
        slow = await service.create(sleeper("slow"))
        quick = await service.create(sleeper("quick"))
        gate = sandbox.hold_start(slow.id)
        await service.start_background()
        await until(lambda: status_is(service, quick.id, Status.RUNNING), "the quick task to run")
        assert (await service.get(slow.id)).status == Status.STARTING
        gate.set()
        await until(lambda: status_is(service, slow.id, Status.RUNNING), "the slow task to run")


async def test_max_concurrent_stays_exact_with_launches_side_by_side(tmp_path: Path) -> None:
    world = World()
    sandbox = ScriptedSandbox(world)
    async with task_service(service_config(tmp_path, max_concurrent=2), sandbox, start=False) as agent:
        service = agent.service
        tasks = [await service.create(sleeper(f"t{i}")) for i in range(6)]
        gates = {t.id: sandbox.hold_start(t.id) for t in tasks}
        await service.start_background()
        for task in tasks[:2]:
            await reached(sandbox.start_called(task.id), f"the start of {task.name}")
        counts = await service.counts()
        assert (counts["starting"], counts["pending"]) == (2, 4)
        for task in tasks:  # let each one start and end as its turn comes
            await reached(sandbox.start_called(task.id), f"the start of {task.name}")
            gates[task.id].set()
            await until(lambda t=task: status_is(service, t.id, Status.RUNNING), f"{task.name} to run")
            world.exit(task.id, 0)
        for task in tasks:
            await until(lambda t=task: status_is(service, t.id, Status.COMPLETED), f"{task.name} to end")
        assert world.most_alive <= 2
        assert world.starts == [t.id for t in tasks]  # oldest first


async def test_starts_under_way_are_bounded(tmp_path: Path) -> None:
    world = World()
    sandbox = ScriptedSandbox(world)
    async with task_service(service_config(tmp_path, max_concurrent=20), sandbox, start=False) as agent:
        service = agent.service
        tasks = [await service.create(sleeper(f"t{i}")) for i in range(LAUNCHES_AT_ONCE + 2)]
        gates = [sandbox.hold_start(t.id) for t in tasks]
        await service.start_background()
        for task in tasks[:LAUNCHES_AT_ONCE]:
            await reached(sandbox.start_called(task.id), f"the start of {task.name}")
        counts = await service.counts()
        assert (counts["starting"], counts["pending"]) == (LAUNCHES_AT_ONCE, 2)  # the others wait, not claimed
        assert len(world.starts) == LAUNCHES_AT_ONCE
        for gate in gates:
            gate.set()
        for task in tasks:
            await until(lambda t=task: status_is(service, t.id, Status.RUNNING), f"{task.name} to run")


async def test_a_release_that_fails_is_logged_with_its_task(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    sandbox = ScriptedSandbox(world)
    sandbox.fail_release = True
    async with task_service(service_config(tmp_path), sandbox) as agent:
        task = await agent.service.create(sleeper())
        await until(lambda: status_is(agent.service, task.id, Status.RUNNING), "it to run")
        with caplog.at_level(logging.ERROR):
            world.exit(task.id, 0)
            await until(lambda: now(task.id in world.released), "the release")
            await until(lambda: now(_logged(caplog, "releasing the sandbox", task.id)), "the log line")
        assert (await agent.service.get(task.id)).status == Status.COMPLETED


async def test_a_stop_that_fails_is_logged_with_its_task(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    sandbox = ScriptedSandbox(world)
    async with task_service(service_config(tmp_path), sandbox) as agent:
        task = await agent.service.create(sleeper())
        await until(lambda: status_is(agent.service, task.id, Status.RUNNING), "it to run")
        sandbox.fail_stop = True
        with caplog.at_level(logging.ERROR):
            await agent.service.stop(task.id, wait=False)
            await until(lambda: now(_logged(caplog, "stopping pid", task.id)), "the log line")
        sandbox.fail_stop = False
        world.exit(task.id, 143)
        await until(lambda: status_is(agent.service, task.id, Status.STOPPED), "it to end stopped")


def _logged(caplog: pytest.LogCaptureFixture, text: str, task_id: str) -> bool:
    return any(text in r.getMessage() and getattr(r, "task_id", None) == task_id and r.exc_info for r in caplog.records)
