"""The ingester's polling with many quiet tasks: a log file that has not grown for a while is
looked at less often (one stat per QUIET_POLL, not a read every poll_interval), yet its new
lines still arrive, and a follower gets them within a poll_interval. Real SQLite, real files.

The quiet pace is stretched far beyond a test's length, and the ingester's clock is real time
plus jumps the test makes: "quiet for longer than QUIET_AFTER" and "its quiet look is due" are
facts the test sets, not sleeps, so "not looked at before its beat" holds however slow the
machine is. How many passes the ingester made is told by a busy neighbour log, read at every
pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cnetd.logs import ingester as ingester_module
from cnetd.logs.ingester import LogIngester
from cnetd.store import logs as lq
from cnetd.store.db import Database

POLL = 0.05
DEADLINE = 15.0  # real seconds a condition may take on a loaded machine


class ManualClock:
    """The ingester's monotonic clock: real time, plus the jumps the test makes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def ingester(db: Database, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LogIngester]:
    # Stretched: within a test only the clock's jumps make a file quiet or bring its quiet look.
    monkeypatch.setattr(ingester_module, "QUIET_AFTER", 300.0)
    monkeypatch.setattr(ingester_module, "QUIET_POLL", 600.0)
    ingester = LogIngester(db, poll_interval=POLL, clock=clock)
    await ingester.start()
    yield ingester
    await ingester.stop()


class Neighbour:
    """A busy log, written before each pass it waits for: it never turns quiet, so it is read
    at every pass, and each of its lines that is stored proves one more pass."""

    def __init__(self, ingester: LogIngester, db: Database, path: Path) -> None:
        self.db, self.path, self.count = db, path, 0
        path.write_text("")
        ingester.watch("busy", path)

    async def passes(self, n: int) -> None:
        for _ in range(n):
            self.count += 1
            with open(self.path, "a") as f:
                f.write(f"tick {self.count}\n")
            await until_stored(self.db, "busy", f"tick {self.count}")


@pytest.fixture
def busy(ingester: LogIngester, db: Database, tmp_path: Path) -> Neighbour:
    return Neighbour(ingester, db, tmp_path / "busy.log")


async def quiet_for_a_while(clock: ManualClock, busy: Neighbour) -> None:
    """Files that did not grow are now quiet for longer than QUIET_AFTER, and the ingester has
    seen them so. The jump is more than a quiet beat and lands on a beat, so a quiet file's next
    look is a whole QUIET_POLL away, and a file seen quiet by a pass that began before the jump
    (the neighbour too) is due again at once. Three passes of the neighbour mean that a whole
    pass began after the jump (the first may have begun before it, the second may still run)."""
    beat, now = ingester_module.QUIET_POLL, clock()
    assert beat > ingester_module.QUIET_AFTER
    clock.advance((now // beat + 2) * beat - now)
    await busy.passes(3)


async def until_stored(db: Database, task_id: str, line: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while line not in await stored(db, task_id):
        assert time.monotonic() < deadline, f"{line!r} of {task_id} was not stored within {timeout}s"
        await asyncio.sleep(0.01)


async def stored(db: Database, task_id: str) -> list[str]:
    rows = await db.read(lambda c: lq.tail(c, task_id, 100))
    return [line for _, line in rows]


async def test_a_quiet_log_is_looked_at_less_often_but_its_lines_still_arrive(
    ingester: LogIngester, db: Database, clock: ManualClock, busy: Neighbour, tmp_path: Path
) -> None:
    path = tmp_path / "quiet.log"
    path.write_text("first\n")
    ingester.watch("quiet", path)
    await until_stored(db, "quiet", "first")
    await quiet_for_a_while(clock, busy)
    with open(path, "a") as f:
        f.write("later\n")
    # pass after pass, the busy log is read while the quiet file waits for its slower look...
    await busy.passes(10)
    assert await stored(db, "quiet") == ["first"]
    # ...which comes on its beat, at most QUIET_POLL on
    clock.advance(ingester_module.QUIET_POLL)
    await until_stored(db, "quiet", "later")


async def test_a_follower_of_a_quiet_log_gets_its_lines_within_a_poll(
    ingester: LogIngester, db: Database, clock: ManualClock, busy: Neighbour, tmp_path: Path
) -> None:
    path = tmp_path / "followed.log"
    path.write_text("first\n")
    ingester.watch("followed", path)
    await until_stored(db, "followed", "first")
    await quiet_for_a_while(clock, busy)
    follower = asyncio.create_task(ingester.wait_for_lines("followed", 1, timeout=DEADLINE))
    deadline = time.monotonic() + DEADLINE
    while "followed" not in ingester._new_lines:  # the follower is waiting
        assert time.monotonic() < deadline, "the follower never started waiting"
        await asyncio.sleep(0.005)
    with open(path, "a") as f:
        f.write("news\n")
    assert await follower is True
    assert await stored(db, "followed") == ["first", "news"]


async def test_drain_takes_a_quiet_logs_last_lines_at_once(
    ingester: LogIngester, db: Database, clock: ManualClock, busy: Neighbour, tmp_path: Path
) -> None:
    path = tmp_path / "ending.log"
    path.write_text("a\n")
    ingester.watch("ending", path)
    await until_stored(db, "ending", "a")
    await quiet_for_a_while(clock, busy)
    with open(path, "a") as f:
        f.write("b\nno newline")
    await ingester.drain("ending")  # as when the task's processes are gone
    assert await stored(db, "ending") == ["a", "b", "no newline"]
