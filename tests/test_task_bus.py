"""TaskBus.follow_ended, which the serving manager and the versions layer both follow
training with: every terminal status reaches on_ended, other changes do not, a failing
on_ended does not stop the follower, and a follower dropped for being slow catches up
through missed() and keeps following."""

from __future__ import annotations

import asyncio

from cnetd.tasks.bus import TaskBus, TaskChange
from tests.support.waiting import wait_until_async


async def test_terminal_statuses_reach_on_ended_and_a_drop_calls_missed() -> None:
    bus = TaskBus(queue_size=4)
    ended: list[str] = []
    missed: list[int] = []

    async def on_ended(task_id: str) -> None:
        if task_id == "bad":
            raise RuntimeError("a follower's own mistake")
        ended.append(task_id)

    async def catch_up() -> None:
        missed.append(len(ended))

    follower = asyncio.create_task(bus.follow_ended(on_ended, catch_up, "test"))
    try:
        await wait_until_async(lambda: bus._subscribers, 5, "the follower to subscribe", 0.001)
        bus.publish(TaskChange("a", "running", "status"))
        bus.publish(TaskChange("bad", "failed", "status"))
        bus.publish(TaskChange("b", "completed", "status"))
        bus.publish(TaskChange("c", "completed", "progress"))
        await wait_until_async(lambda: ended == ["b"], 5, "b to reach on_ended", 0.001)

        for i in range(10):  # more than the queue holds, without yielding: the follower is dropped
            bus.publish(TaskChange(f"lost-{i}", "completed", "status"))
        await wait_until_async(lambda: missed and bus._subscribers, 5, "missed() and a new subscription", 0.001)
        bus.publish(TaskChange("d", "stopped", "status"))
        await wait_until_async(lambda: ended[-1] == "d", 5, "d to reach on_ended", 0.001)
        assert missed and not any(t.startswith("lost-") and int(t[5:]) >= 4 for t in ended)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
