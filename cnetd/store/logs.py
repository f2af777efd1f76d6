"""Queries on ingested log lines and the per-task ingestion cursors."""

from __future__ import annotations

import sqlite3


def get_cursor(conn: sqlite3.Connection, task_id: str) -> tuple[int, int]:
    """(byte offset reached in the log file, sequence number of the next line)."""
    row = conn.execute("SELECT offset, next_seq FROM log_cursors WHERE task_id = ?", (task_id,)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 1)


def append_lines(conn: sqlite3.Connection, task_id: str, first_seq: int, lines: list[str], offset: int) -> None:
    """Insert lines and advance the cursor: call inside one write transaction."""
    conn.executemany(
        "INSERT INTO log_lines (task_id, seq, line) VALUES (?, ?, ?)",
        [(task_id, first_seq + i, line) for i, line in enumerate(lines)],
    )
    conn.execute(
        "INSERT INTO log_cursors (task_id, offset, next_seq) VALUES (?, ?, ?) "
        "ON CONFLICT(task_id) DO UPDATE SET offset = excluded.offset, next_seq = excluded.next_seq",
        (task_id, offset, first_seq + len(lines)),
    )


def tail(conn: sqlite3.Connection, task_id: str, lines: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT seq, line FROM log_lines WHERE task_id = ? ORDER BY seq DESC LIMIT ?", (task_id, lines)
    ).fetchall()
    return [(r[0], r[1]) for r in reversed(rows)]


def after(conn: sqlite3.Connection, task_id: str, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT seq, line FROM log_lines WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?", (task_id, seq, limit)
    )
    return [(r[0], r[1]) for r in rows]


def trim(conn: sqlite3.Connection, task_id: str, keep: int) -> int:
    """Drop the oldest lines beyond `keep`; the gap in seq numbers marks what was dropped."""
    row = conn.execute("SELECT MAX(seq) FROM log_lines WHERE task_id = ?", (task_id,)).fetchone()
    if row[0] is None:
        return 0
    cursor = conn.execute("DELETE FROM log_lines WHERE task_id = ? AND seq <= ?", (task_id, row[0] - keep))
    return cursor.rowcount
