"""Queries on ingested log lines and the per-task ingestion cursors.

When a task's stored log passes logs.max_lines_per_task or logs.max_bytes_per_task, its
oldest lines are deleted and one marker line takes the place of the newest line dropped
(at seq = the number of lines dropped), so `tail` and `after` read across it like any line.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

MAX_LINES_KEY = "logs.max_lines_per_task"
MAX_BYTES_KEY = "logs.max_bytes_per_task"


@dataclass(frozen=True)
class Stored:
    """What a task's stored log holds after an append."""

    last_seq: int  # seq of the newest line
    dropped: int  # lines 1..dropped are gone (the marker sits at seq = dropped)
    stored_bytes: int  # UTF-8 bytes of the lines kept, the marker not counted

    @property
    def lines(self) -> int:
        return self.last_seq - self.dropped


def marker(dropped: int, key: str) -> str:
    return f"[cnet: {dropped} earlier lines dropped ({key})]"


def utf8_len(line: str) -> int:
    return len(line.encode())


def get_cursor(conn: sqlite3.Connection, task_id: str) -> tuple[int, int]:
    """(byte offset reached in the log file, sequence number of the next line)."""
    row = conn.execute("SELECT offset, next_seq FROM log_cursors WHERE task_id = ?", (task_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 1)


def append_lines(conn: sqlite3.Connection, task_id: str, first_seq: int, lines: list[str], offset: int) -> Stored:
    """Insert lines and advance the cursor: call inside one write transaction."""
    conn.executemany(
        "INSERT INTO log_lines (task_id, seq, line) VALUES (?, ?, ?)",
        [(task_id, first_seq + i, line) for i, line in enumerate(lines)],
    )
    added = sum(utf8_len(line) for line in lines)
    row = conn.execute(
        "INSERT INTO log_cursors (task_id, offset, next_seq, stored_bytes) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(task_id) DO UPDATE SET offset = excluded.offset, next_seq = excluded.next_seq, "
        "stored_bytes = stored_bytes + excluded.stored_bytes "
        "RETURNING next_seq, dropped, stored_bytes",
        (task_id, offset, first_seq + len(lines), added),
    ).fetchone()
    return Stored(last_seq=int(row[0]) - 1, dropped=int(row[1]), stored_bytes=int(row[2]))


def tail(conn: sqlite3.Connection, task_id: str, lines: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT seq, line FROM log_lines WHERE task_id = ? ORDER BY seq DESC LIMIT ?", (task_id, lines)
    ).fetchall()
    return [(r[0], r[1]) for r in reversed(rows)]


def dropped(conn: sqlite3.Connection, task_id: str) -> tuple[int, str | None]:
    """How many of the task's first lines retention dropped, and the marker line that says so
    (None when none was dropped, or they were dropped before markers were kept)."""
    row = conn.execute(
        "SELECT c.dropped, l.line FROM log_cursors c "
        "LEFT JOIN log_lines l ON l.task_id = c.task_id AND l.seq = c.dropped WHERE c.task_id = ?", (task_id,)
    ).fetchone()
    return (0, None) if row is None else (int(row[0]), row[1])


def after(conn: sqlite3.Connection, task_id: str, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT seq, line FROM log_lines WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?", (task_id, seq, limit)
    )
    return [(r[0], r[1]) for r in rows]


def trim(conn: sqlite3.Connection, task_id: str, stored: Stored, max_lines: int | None, max_bytes: int | None) -> int:
    """Drop the oldest lines until at most max_lines lines and max_bytes bytes are kept
    (None: no bound), leaving the marker where they were. Call inside the write that
    appended (with what append_lines returned); returns how many lines this dropped."""
    cut, key = stored.dropped, ""
    if max_lines is not None and stored.lines > max_lines:
        cut, key = stored.last_seq - max_lines, MAX_LINES_KEY
    kept_bytes = stored.stored_bytes - _bytes_between(conn, task_id, stored.dropped, cut)
    if max_bytes is not None and kept_bytes > max_bytes:
        oldest_first = conn.execute(
            "SELECT seq, length(CAST(line AS BLOB)) FROM log_lines WHERE task_id = ? AND seq > ? ORDER BY seq",
            (task_id, cut),
        )
        try:
            for seq, size in oldest_first:
                kept_bytes -= size
                cut, key = seq, MAX_BYTES_KEY
                if kept_bytes <= max_bytes:
                    break
        finally:
            oldest_first.close()
    if cut == stored.dropped:
        return 0
    conn.execute("DELETE FROM log_lines WHERE task_id = ? AND seq <= ?", (task_id, cut))
    conn.execute("INSERT INTO log_lines (task_id, seq, line) VALUES (?, ?, ?)", (task_id, cut, marker(cut, key)))
    conn.execute(
        "UPDATE log_cursors SET dropped = ?, stored_bytes = ? WHERE task_id = ?", (cut, max(0, kept_bytes), task_id)
    )
    return cut - stored.dropped


def _bytes_between(conn: sqlite3.Connection, task_id: str, after_seq: int, up_to: int) -> int:
    if up_to <= after_seq:
        return 0
    row = conn.execute(
        "SELECT COALESCE(SUM(length(CAST(line AS BLOB))), 0) FROM log_lines WHERE task_id = ? AND seq > ? AND seq <= ?",
        (task_id, after_seq, up_to),
    ).fetchone()
    return int(row[0])
