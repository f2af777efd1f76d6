"""The agent's stop is bounded.

Why it sometimes took more than 30 s (an agent left running after SIGTERM, idle in its event
loop): Python 3.11's `asyncio.wait_for(event.wait(), t)` returns normally instead of raising
when the cancellation arrives in the same turn as the event is set; the background loops
(usage sampler, log ingester) waited that way, so such a loop swallowed its one
cancellation and ran on, and the shutdown waited for its end for ever. Loops now wait with
`wait_event` (asyncio.timeout: never swallows), and `cancel_all` cancels again a task that
is still running a second later and gives up after a bound, naming it in the log.
These tests put the cancellation and the wake-up in the same turn on purpose: deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from cnetd.background import cancel_all, cancel_and_wait, wait_event
from cnetd.logs.ingester import LogIngester
from cnetd.store.db import Database
from cnetd.supervisor.base import Handle
from cnetd.tasks.usage import UsageMonitor
from tests.support.scripted_sandbox import ScriptedSandbox, World

BOUND = 3.0  # seconds any of these stops may take; before the fix they never ended


async def ends_within(coro: Coroutine[Any, Any, None], what: str) -> None:
    """Run coro; fail if it has not ended after BOUND seconds (asyncio.wait: it does not
    cancel it, so a stop that would have hung shows as one)."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=BOUND)
    if not done:
        task.cancel()
        raise AssertionError(f"{what} did not end within {BOUND}s")
    task.result()


async def parked() -> None:
    """Let the background loops reach their wait."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_wait_for_on_3_11_swallows_a_cancel_that_meets_the_event_and_wait_event_does_not() -> None:
    async def loop_with(how: str) -> str:
        while True:
            if how == "wait_for":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 3600)
            else:
                await wait_event(event, 3600)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                return "went on after its cancellation"
            event.clear()

    outcomes = {}
    for how in ("wait_for", "wait_event"):
        event = asyncio.Event()
        task = asyncio.create_task(loop_with(how))
        await parked()
        event.set()  # woken ...
        task.cancel()  # ... and cancelled in the same turn
        done, _ = await asyncio.wait({task}, timeout=BOUND)
        assert done, how
        outcomes[how] = "cancelled" if task.cancelled() else task.result()
    assert outcomes["wait_event"] == "cancelled"
    # What the agent's loops did before: on 3.11 the cancellation is lost (a later Python may fix it).
    assert outcomes["wait_for"] in ("went on after its cancellation", "cancelled")


async def test_the_usage_sampler_stops_when_woken_as_it_is_cancelled() -> None:
    world = World()
    sandbox = ScriptedSandbox(world)
    for task_id in ("a", "b"):
        world.spawn(task_id)
    monitor = UsageMonitor()
    monitor.start()
    monitor.watch("a", sandbox, Handle(backend=sandbox.name, pid=1, pid_start=1, exit_path="/x/a.exit"))
    await parked()  # "a" sampled; the sampler waits for its next round, a second away

    async def wake_and_stop() -> None:  # in one turn: woken, then told to stop
        monitor.watch("b", sandbox, Handle(backend=sandbox.name, pid=2, pid_start=1, exit_path="/x/b.exit"))
        await monitor.stop()

    await ends_within(wake_and_stop(), "the sampler's stop")


async def test_the_log_ingester_stops_when_woken_as_it_is_cancelled(tmp_path: Path) -> None:
    db = Database(tmp_path / "cnet.db")
    await db.open()
    try:
        ingester = LogIngester(db, poll_interval=60)
        await ingester.start()
        await parked()
        (tmp_path / "t.log").write_text("a line\n")

        async def wake_and_stop() -> None:  # in one turn: woken, then told to stop
            ingester.watch("t", tmp_path / "t.log")
            await ingester.stop()

        await ends_within(wake_and_stop(), "the ingester's stop")
    finally:
        await db.close()


async def test_a_task_that_ignores_its_cancellation_is_cancelled_again_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed once, as wait_for did
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="stubborn-loop")
    await parked()
    with caplog.at_level(logging.WARNING):
        await ends_within(cancel_and_wait(task), "the cancellation")
    assert task.cancelled()
    assert any("stubborn-loop" in r.getMessage() and "cancelling again" in r.getMessage() for r in caplog.records)


async def test_the_owner_gives_up_on_a_task_that_never_ends_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def immortal() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(immortal(), name="immortal-loop")
    await parked()
    with caplog.at_level(logging.ERROR):
        await ends_within(cancel_all([task], recancel_after=0.05, give_up_after=0.3), "giving up")
    assert not task.done()
    assert any("gave up waiting for immortal-loop" in r.getMessage() for r in caplog.records)
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=BOUND)


async def test_a_cancelled_owner_is_not_kept_waiting_by_what_it_cancels() -> None:
    """The old cancel_and_wait suppressed every CancelledError while it awaited, its own too."""
    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)

    child = asyncio.create_task(slow_to_end())
    await parked()
    owner = asyncio.create_task(cancel_and_wait(child))
    await parked()
    owner.cancel()
    done, _ = await asyncio.wait({owner}, timeout=BOUND)
    assert done and owner.cancelled()
    child.cancel()
    await asyncio.wait({child}, timeout=BOUND)
