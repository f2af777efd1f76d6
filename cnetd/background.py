"""Owned background tasks: every one is cancelled and awaited when its owner stops.

Two habits keep a stop bounded on Python 3.11:
  - a loop that waits for a wake-up event with a timeout uses `wait_event`, never
    `asyncio.wait_for(event.wait(), t)`: 3.11's wait_for returns the result instead of
    raising when the cancellation arrives in the same turn as the event is set, so the loop
    goes on and whoever awaits its end waits for ever (seen as an agent that did not stop on
    SIGTERM);
  - `cancel_all` does not trust one cancellation: a task still running RECANCEL_AFTER
    seconds after it was cancelled is named in the log and cancelled again, and after
    GIVE_UP_AFTER the owner goes on without it (with an error in the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_AFTER = 1.0  # seconds a cancelled task gets before it is cancelled again
GIVE_UP_AFTER = 5.0  # seconds after which the owner stops waiting for it


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until event is set (True) or timeout seconds have passed (False); a cancellation
    always propagates, whenever it arrives."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def resolve(future: asyncio.Future[None]) -> None:
    """Set future's result unless it is done: for a reader callback that may fire again
    before the waiter has run and removed it."""
    if not future.done():
        future.set_result(None)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | asyncio.Future[Any] | None) -> None:
    """Cancel every task given (None is skipped) and wait until each has ended."""
    await cancel_all(tasks)


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | asyncio.Future[Any] | None],
                     recancel_after: float = RECANCEL_AFTER, give_up_after: float = GIVE_UP_AFTER) -> None:
    """Cancel the tasks and wait until they have ended: one still running recancel_after
    seconds later is cancelled again (and named in the log), until give_up_after. A task
    that ended with an error is logged, not raised: its owner is stopping anyway."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    pending = {t for t in running if not t.done()}
    started = time.monotonic()
    while pending:
        left = give_up_after - (time.monotonic() - started)
        if left <= 0:
            log.error("gave up waiting for %s: still running %.0fs after being cancelled",
                      _names(pending), give_up_after)
            break
        _, pending = await asyncio.wait(pending, timeout=min(recancel_after, left))
        if pending and time.monotonic() - started < give_up_after:
            log.warning("%s still running %.1fs after being cancelled; cancelling again",
                        _names(pending), time.monotonic() - started)
            for task in pending:
                task.cancel()
    for task in running:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("background task %s ended with an error", _names([task]), exc_info=task.exception())


def _names(tasks: Iterable[asyncio.Future[Any]]) -> str:
    return ", ".join(sorted(t.get_name() if isinstance(t, asyncio.Task) else repr(t) for t in tasks))
