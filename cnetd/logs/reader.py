"""Reading a task's ingested log lines: the last N, the ones after a sequence number, and
waiting for the next. The API's log endpoints and the UI's task page read through this
one service.

Where retention dropped lines, the store keeps a marker line in their place, so both reads
go across it like any line."""

from __future__ import annotations

import sqlite3

from cnetd.errors import NotFound
from cnetd.logs.ingester import LogIngester
from cnetd.store import logs as lq
from cnetd.store import tasks as q
from cnetd.store.db import Database

Line = tuple[int, str]  # (sequence number from 1, the line)


class LogReader:
    def __init__(self, db: Database, ingester: LogIngester) -> None:
        self.db = db
        self.ingester = ingester

    async def tail(self, task_id: str, lines: int) -> list[Line]:
        """The task's last `lines` lines, oldest first; NotFound for an unknown task."""

        def read(conn: sqlite3.Connection) -> list[Line] | None:
            if q.get_task(conn, task_id) is None:
                return None
            return lq.tail(conn, task_id, lines)

        rows = await self.db.read(read)
        if rows is None:
            raise NotFound(f"task {task_id} not found", {"id": task_id})
        return rows

    async def tail_and_dropped(self, task_id: str, lines: int) -> tuple[list[Line], int, str | None]:
        """tail(), with how many of the first lines retention dropped and the marker line that
        says so (store.logs.dropped), read together: a trim between two reads would make the
        count disagree with the lines."""

        def read(conn: sqlite3.Connection) -> tuple[list[Line], int, str | None] | None:
            if q.get_task(conn, task_id) is None:
                return None
            return (lq.tail(conn, task_id, lines), *lq.dropped(conn, task_id))

        found = await self.db.read(read)
        if found is None:
            raise NotFound(f"task {task_id} not found", {"id": task_id})
        return found

    async def after(self, task_id: str, seq: int, limit: int = 1000) -> list[Line]:
        """Up to `limit` lines after sequence number `seq`, oldest first."""
        return await self.db.read(lambda c: lq.after(c, task_id, seq, limit))

    async def wait_for_lines(self, task_id: str, after_seq: int, timeout: float) -> bool:
        """Wait until a line past after_seq is stored; False when timeout passed first."""
        return await self.ingester.wait_for_lines(task_id, after_seq, timeout)
