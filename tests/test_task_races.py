"""The store is the authority on a task's status, and stop, launch and exit-recording of one
task never interleave their decisions.

In-process: TaskService on a real SQLite file with the scripted FAKE sandbox of
tests/support/scripted_sandbox.py, whose start() and stop() wait on events the test sets.
It is a fake so that each interleaving below happens in the order the test chooses (a stop
while a start is under way, an exit while a stop is, a stop while the scheduler holds the
task it picked, a crash between the start and the saved handle), every time; with real
processes these orders would be timing luck.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from cnetd.errors import Conflict
from cnetd.store import tasks as q
from cnetd.tasks.model import Status, Task
from cnetd.tasks.runner import LAUNCHES_AT_ONCE, LOST_STARTING
from cnetd.tasks.service import TaskService
from tests.support.inprocess import (
    DEADLINE,
    event_types,
    now,
    reached,
    service_config,
    sleeper,
    status_is,
    task_service,
    until,
)
from tests.support.scripted_sandbox import ScriptedSandbox, World


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sandbox(world: World) -> ScriptedSandbox:
    return ScriptedSandbox(world)


# ---- a stop and a launch ---------------------------------------------------------------------


async def test_a_pending_task_stopped_while_the_scheduler_holds_it_never_runs(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    """The scheduler picks a batch; every launch slot is held by a start that blocks, so the
    last task of the batch waits, picked but not started, when its stop lands."""
    async with task_service(service_config(tmp_path, max_concurrent=10), sandbox, start=False) as agent:
        service = agent.service
        blockers = [await service.create(sleeper(f"blocker-{i}")) for i in range(LAUNCHES_AT_ONCE)]
        target = await service.create(sleeper("target"))
        gates = [sandbox.hold_start(b.id) for b in blockers]
        await service.start_background()
        for blocker in blockers:
            await reached(sandbox.start_called(blocker.id), f"the start of {blocker.name}")

        stopped = await service.stop(target.id)
        assert stopped.status == Status.STOPPED

        for gate in gates:
            gate.set()
        for blocker in blockers:
            await until(lambda b=blocker: status_is(service, b.id, Status.RUNNING), f"{blocker.name} to run")
        # A task submitted now is launched after the held one had its turn (in either order).
        after = await service.create(sleeper("after"))
        await until(lambda: status_is(service, after.id, Status.RUNNING), "the task submitted after to run")
        assert target.id not in world.starts, "a stopped task was started"
        assert (await service.get(target.id)).status == Status.STOPPED
        assert await event_types(service, target.id) == ["created", "stopped"]


async def test_a_launch_that_picked_a_task_before_its_stop_does_not_start_it(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    async with task_service(service_config(tmp_path), sandbox, start=False) as agent:
        service = agent.service
        task = await service.create(sleeper())
        picked = await service.get(task.id)  # the scheduler's snapshot: pending
        await service.stop(task.id)  # lands before the launch writes anything
        await service.runner.launch(picked)  # the launch goes on from its snapshot
        assert world.starts == []
        assert (await service.get(task.id)).status == Status.STOPPED


async def test_a_stop_decided_on_a_stale_pending_task_does_not_overwrite_running(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    """The other order: the stop read the task while pending, the launch then ran it; the
    stop's write finds it running and writes nothing (nothing was signalled: a `stopped`
    written there would be a task that runs while it says stopped)."""
    async with task_service(service_config(tmp_path), sandbox, start=False) as agent:
        service = agent.service
        task = await service.create(sleeper())
        seen_by_stop = await service.get(task.id)  # pending
        await service.runner.launch(dataclasses.replace(seen_by_stop))
        assert (await service.get(task.id)).status == Status.RUNNING

        outcome = await service.states.end(seen_by_stop, Status.STOPPED, "stopped", "stopped by user before it started")
        assert (outcome.applied, outcome.status) == (False, Status.RUNNING)
        assert (await service.get(task.id)).status == Status.RUNNING
        assert "stopped" not in await event_types(service, task.id)

        stopped = await service.stop(task.id)  # a stop decided now stops it for real
        assert stopped.status == Status.STOPPED and world.processes[task.id].signals == ["TERM"]


async def test_a_stop_during_the_launch_is_carried_out_once_the_handle_is_saved(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    async with task_service(service_config(tmp_path), sandbox, start=False) as agent:
        service = agent.service
        task = await service.create(sleeper())
        gate = sandbox.hold_start(task.id)
        await service.start_background()
        await reached(sandbox.start_called(task.id), "the start")

        stopping = asyncio.create_task(service.stop(task.id))
        starting = await until(lambda: _stop_recorded(service, task.id), "the stop to be recorded")
        assert starting.status == Status.STARTING  # no handle yet: nothing to signal
        assert world.processes[task.id].signals == []

        gate.set()
        stopped = await asyncio.wait_for(stopping, DEADLINE)
        assert stopped.status == Status.STOPPED and stopped.handle is not None
        assert world.processes[task.id].signals == ["TERM"]
        assert await event_types(service, task.id) == ["created", "starting", "stop_requested", "started", "stopped"]


async def _stop_recorded(service: TaskService, task_id: str) -> Task | None:
    task = await service.get(task_id)
    return task if task.stop_requested else None


# ---- an exit and a stop --------------------------------------------------------------------------


async def running_task(service: TaskService, name: str = "t") -> Task:
    task = await service.create(sleeper(name))
    await until(lambda: status_is(service, task.id, Status.RUNNING), "the task to run")
    return task


async def test_an_exit_while_the_stop_is_being_delivered_ends_stopped(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    async with task_service(service_config(tmp_path), sandbox) as agent:
        service = agent.service
        task = await running_task(service)
        gate = sandbox.hold_stop(task.id)
        stopping = asyncio.create_task(service.stop(task.id))
        await reached(sandbox.stop_called(task.id), "the stop to reach the sandbox")
        world.exit(task.id, 0)  # it ends on its own before the signal
        ended = await until(lambda: status_is(service, task.id, Status.STOPPED, Status.COMPLETED), "its end")
        gate.set()
        await asyncio.wait_for(stopping, DEADLINE)
        assert (ended.status, ended.exit_code, ended.reason) == (Status.STOPPED, 0, None)
        events = await service.events(task.id)
        assert [e.type for e in events][-2:] == ["stop_requested", "stopped"]
        assert events[-1].message == "stopped by user (exit code 0)"


async def test_a_stop_after_the_exit_was_recorded_is_a_conflict_and_writes_nothing(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    async with task_service(service_config(tmp_path), sandbox) as agent:
        service = agent.service
        task = await running_task(service)
        world.exit(task.id, 0)
        await until(lambda: status_is(service, task.id, Status.COMPLETED), "completed")
        with pytest.raises(Conflict):
            await service.stop(task.id)
        done = await service.get(task.id)
        assert (done.status, done.stop_requested) == (Status.COMPLETED, False)
        assert "stop_requested" not in await event_types(service, task.id)


async def test_a_stop_landing_as_the_exit_is_recorded_is_decided_once(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World) -> None:
    """The exit and the stop arrive in the same turn: whichever takes the task's lock first
    decides, and the other follows what the store then says: either stopped (with the
    stop's events) or completed with a Conflict, never a mix."""
    async with task_service(service_config(tmp_path), sandbox) as agent:
        service = agent.service
        task = await running_task(service)
        world.exit(task.id, 0)
        try:
            await service.stop(task.id)
            conflict = False
        except Conflict:
            conflict = True
        done = await until(lambda: status_is(service, task.id, Status.STOPPED, Status.COMPLETED), "its end")
        events = await event_types(service, task.id)
        if conflict:
            assert done.status == Status.COMPLETED and "stop_requested" not in events
        else:
            assert done.status == Status.STOPPED and events[-2:] == ["stop_requested", "stopped"]


# ---- a crash or a failure between the start and the saved handle ------------------------------


async def test_a_crash_before_the_handle_is_saved_leaves_nothing_running(
        tmp_path: Path, world: World) -> None:
    config = service_config(tmp_path)
    first = ScriptedSandbox(world)
    async with task_service(config, first, start=False) as agent:
        task = await agent.service.create(sleeper())
        first.hold_start(task.id)  # the process exists; its handle is not back yet
        await agent.service.start_background()
        await reached(first.start_called(task.id), "the start")
        first.agent_crashed = True
        await agent.crash()
    assert world.running() == {task.id}  # it outlived the agent, and no handle names it

    async with task_service(config, ScriptedSandbox(world)) as agent:
        recovered = await agent.service.get(task.id)
        assert (recovered.status, recovered.reason) == (Status.FAILED, LOST_STARTING)
        assert world.running() == set(), "a task failed as lost still runs"
        assert world.destroyed == [task.id]


async def test_a_handle_the_store_refuses_to_save_undoes_the_start(
        tmp_path: Path, sandbox: ScriptedSandbox, world: World, caplog: pytest.LogCaptureFixture) -> None:
    config = service_config(tmp_path)
    async with task_service(config, sandbox, start=False) as agent:
        service = agent.service
        task = await service.create(sleeper())
        gate = sandbox.hold_start(task.id)
        await service.start_background()
        await reached(sandbox.start_called(task.id), "the start")
        # A real SQLite refusal (as a full or read-only disk gives one), not a mock.
        await agent.db.maintain(lambda c: c.execute("PRAGMA query_only = 1"))
        with caplog.at_level(logging.ERROR):
            gate.set()
            await until(lambda: now(task.id in world.released), "the start to be undone")
        assert world.running() == set(), "a start whose handle was not saved still runs"
        assert service.runner.watch_of(task.id) is None
        assert any("could not be saved" in r.getMessage() and getattr(r, "task_id", None) == task.id
                   for r in caplog.records)
        await agent.db.maintain(lambda c: c.execute("PRAGMA query_only = 0"))
        assert (await service.get(task.id)).status == Status.STARTING  # its failure could not be written either

    async with task_service(config, ScriptedSandbox(world)) as agent:  # the next start settles it
        settled = await agent.service.get(task.id)
        assert (settled.status, settled.reason) == (Status.FAILED, LOST_STARTING)


# ---- the store ---------------------------------------------------------------------------------


async def test_the_store_writes_a_status_only_over_the_one_expected(tmp_path: Path, sandbox: ScriptedSandbox) -> None:
    async with task_service(service_config(tmp_path), sandbox, start=False) as agent:
        task = await agent.service.create(sleeper())
        db = agent.db
        assert await db.write(lambda c: q.change_status(c, task.id, Status.RUNNING, {"status": Status.STOPPED})) is False
        assert await db.write(lambda c: q.status_of(c, task.id)) == Status.PENDING
        assert await db.write(lambda c: q.request_stop(c, task.id)) is False  # pending: nothing to signal
        with pytest.raises(ValueError, match="change_status"):
            await db.write(lambda c: q.update_task(c, task.id, {"status": Status.STOPPED}))
        assert await db.write(lambda c: q.change_status(c, task.id, Status.PENDING, {"status": Status.STARTING})) is True
        assert await db.write(lambda c: q.request_stop(c, task.id)) is True
