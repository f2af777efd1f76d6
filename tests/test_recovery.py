"""Recover or destroy, never half-known (Nomad's rule), in-process: TaskService on a real
SQLite file over the scripted FAKE sandbox (tests/support/scripted_sandbox.py: its processes
outlive one agent, so a crash and the next start are chosen by the test rather than timed).
The same rule against a real agent and real cgroups is in tests/test_agent_sandboxed.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from cnetd.supervisor.base import Handle, UnreadableHandle
from cnetd.tasks.model import Status
from cnetd.tasks.recovery import UNREADABLE_HANDLE
from cnetd.tasks.service import TaskService
from tests.support.inprocess import (
    service_config,
    sleeper,
    status_is,
    task_service,
    until,
)
from tests.support.scripted_sandbox import ScriptedSandbox, World

BAD_HANDLES = {
    "damaged": "{\"backend\": \"scripted\", \"pid\": 4",
    "newer": None,  # the task's own handle with a field this agent does not know
    "wrong type": None,  # its own handle with pid as a string
    "not an object": "[1, 2]",
}


def rewrite_handle(state_dir: Path, task_id: str, how: str) -> None:
    """What a damaged disk or a newer agent leaves in the task's handle column."""
    conn = sqlite3.connect(state_dir / "cnet.db")
    try:
        (saved,) = conn.execute("SELECT handle FROM tasks WHERE id = ?", (task_id,)).fetchone()
        data = json.loads(saved)
        text = BAD_HANDLES[how]
        if how == "newer":
            text = json.dumps({**data, "pidfd_inode": 1234, "version": 2})
        elif how == "wrong type":
            text = json.dumps({**data, "pid": str(data["pid"])})
        with conn:
            conn.execute("UPDATE tasks SET handle = ? WHERE id = ?", (text, task_id))
    finally:
        conn.close()


async def two_running(service: TaskService) -> tuple[str, str]:
    a = await service.create(sleeper("a"))
    b = await service.create(sleeper("b"))
    for task in (a, b):
        await until(lambda t=task: status_is(service, t.id, Status.RUNNING), f"{task.name} to run")
    return a.id, b.id


@pytest.mark.parametrize("how", sorted(BAD_HANDLES))
async def test_an_unreadable_handle_fails_its_task_and_destroys_it_while_others_are_reattached(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    config = service_config(tmp_path)
    async with task_service(config, ScriptedSandbox(world)) as agent:
        bad, good = await two_running(agent.service)
        await agent.crash()
    rewrite_handle(config.agent.state_dir, bad, how)
    assert world.running() == {bad, good}

    async with task_service(config, ScriptedSandbox(world)) as agent:  # it starts
        service = agent.service
        failed = await service.get(bad)
        assert (failed.status, failed.reason) == (Status.FAILED, UNREADABLE_HANDLE)
        assert bad not in world.running(), "the task failed as lost but its processes run on"
        assert any("handle cannot be read" in r.getMessage() and getattr(r, "task_id", None) == bad
                   for r in caplog.records)

        assert (await service.get(good)).status == Status.RUNNING
        assert service.runner.watch_of(good) is not None  # reattached: its exit is recorded
        world.exit(good, 0)
        await until(lambda: status_is(service, good, Status.COMPLETED), "the reattached task's exit")

        later = await service.create(sleeper("later"))  # and the agent works
        await until(lambda: status_is(service, later.id, Status.RUNNING), "a new task to run")


async def test_a_task_that_ended_with_a_stop_request_while_the_agent_was_down_is_stopped(tmp_path: Path) -> None:
    """The stop request is read from the store after a restart, not from the memory of the
    agent that received it."""
    world = World()
    config = service_config(tmp_path)
    first = ScriptedSandbox(world)
    async with task_service(config, first) as agent:
        (task_id, _) = await two_running(agent.service)
        gate = first.hold_stop(task_id)
        stopping = asyncio.create_task(agent.service.stop(task_id))
        await asyncio.wait_for(first.stop_called(task_id).wait(), 10)  # requested and stored
        await agent.crash()
        assert stopping.cancelled() and not gate.is_set()
    world.exit(task_id, 143)  # the signal arrived anyway
    async with task_service(config, ScriptedSandbox(world)) as agent:
        done = await until(lambda: status_is(agent.service, task_id, Status.STOPPED, Status.FAILED), "its end")
        assert done.status == Status.STOPPED


def test_a_handle_is_refused_unless_this_agent_could_have_written_it() -> None:
    good = Handle(backend="cgroup", pid=10, pid_start=5, exit_path="/x/t.exit", cgroup={"unified": "/sys/fs/cgroup/c/t"})
    assert Handle.from_json(good.to_json()) == good
    for text, problem in [
        ("", "not JSON"),
        ("null", "not an object"),
        (json.dumps({**json.loads(good.to_json()), "extra": 1}), "unknown fields ['extra']"),
        (json.dumps({"backend": "cgroup", "pid": 10, "exit_path": "/x"}), "pid_start is missing"),
        (json.dumps({**json.loads(good.to_json()), "pid": True}), "pid is a bool"),
        (json.dumps({**json.loads(good.to_json()), "cgroup": {"unified": 3}}), "cgroup is not a map"),
    ]:
        with pytest.raises(UnreadableHandle, match=problem.replace("[", r"\[").replace("]", r"\]")):
            Handle.from_json(text)
