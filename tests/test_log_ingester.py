"""The ingester's polling with many quiet tasks: a log file that has not grown for a while is
looked at less often (one stat per QUIET_POLL, not a read every poll_interval), yet its new
lines still arrive, and a follower gets them within a poll_interval. Real SQLite, real files;
the quiet pace is stretched (monkeypatch) so that "less often" shows in a short test."""

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


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "cnet.db")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
async def ingester(db: Database, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LogIngester]:
    monkeypatch.setattr(ingester_module, "QUIET_AFTER", 0.3)
    monkeypatch.setattr(ingester_module, "QUIET_POLL", 3.0)
    ingester = LogIngester(db, poll_interval=POLL)
    await ingester.start()
    yield ingester
    await ingester.stop()


async def arrival(db: Database, task_id: str, line: str, timeout: float) -> float | None:
    """Seconds until `line` is stored, or None when it is not within timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if line in await stored(db, task_id):
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    return None


async def stored(db: Database, task_id: str) -> list[str]:
    rows = await db.read(lambda c: lq.tail(c, task_id, 100))
    return [line for _, line in rows]


async def test_a_quiet_log_is_looked_at_less_often_but_its_lines_still_arrive(
    ingester: LogIngester, db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "quiet.log"
    path.write_text("first\n")
    ingester.watch("quiet", path)
    assert await arrival(db, "quiet", "first", 2) is not None
    await asyncio.sleep(0.6)  # the file stays quiet for longer than QUIET_AFTER (a state, not a sync)
    with open(path, "a") as f:
        f.write("later\n")
    # not within a few poll intervals: the quiet file waits for its slower look...
    assert await arrival(db, "quiet", "later", 0.5) is None
    # ...which comes within QUIET_POLL
    assert await arrival(db, "quiet", "later", 3.5) is not None


async def test_a_follower_of_a_quiet_log_gets_its_lines_within_a_poll(
    ingester: LogIngester, db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "followed.log"
    path.write_text("first\n")
    ingester.watch("followed", path)
    assert await arrival(db, "followed", "first", 2) is not None
    await asyncio.sleep(0.6)  # quiet
    follower = asyncio.create_task(ingester.wait_for_lines("followed", 1, timeout=5))
    deadline = time.monotonic() + 2
    while "followed" not in ingester._new_lines:  # the follower is waiting
        assert time.monotonic() < deadline, "the follower never started waiting"
        await asyncio.sleep(0.005)
    t0 = time.monotonic()
    with open(path, "a") as f:
        f.write("news\n")
    assert await follower is True
    assert time.monotonic() - t0 < 1.0
    assert await stored(db, "followed") == ["first", "news"]


async def test_drain_takes_a_quiet_logs_last_lines_at_once(
    ingester: LogIngester, db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "ending.log"
    path.write_text("a\n")
    ingester.watch("ending", path)
    assert await arrival(db, "ending", "a", 2) is not None
    await asyncio.sleep(0.6)
    with open(path, "a") as f:
        f.write("b\nno newline")
    await ingester.drain("ending")  # as when the task's processes are gone
    assert await stored(db, "ending") == ["a", "b", "no newline"]
