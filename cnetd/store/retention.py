"""Queries for task retention: which ended tasks are past the bounds, deleting them with
their events and log rows in bounded batches, and giving the freed pages back to the disk.

Never deleted: a task that has not ended, and the deploy task of a model that exists (a
model's id is its deploy task's id). Prediction and serving-worker tasks of a model are
ordinary ended tasks.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

ENDED = ("completed", "failed", "stopped")
_ENDED_SQL = ", ".join(f"'{s}'" for s in ENDED)
# Evaluated per row; `+status` keeps the planner on the seq / stopped_at order instead of
# the status index (most rows are ended, so that index would read nearly all of them).
_DELETABLE = f"+status IN ({_ENDED_SQL}) AND NOT EXISTS (SELECT 1 FROM models WHERE models.id = tasks.id)"
AUTO_VACUUM_INCREMENTAL = 2


def count_bound_seq(conn: sqlite3.Connection, max_tasks: int) -> int | None:
    """The seq at and below which deletable tasks are beyond the newest max_tasks of them;
    None when there are no more than max_tasks."""
    row = conn.execute(
        f"SELECT seq FROM tasks WHERE {_DELETABLE} ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_tasks,)
    ).fetchone()
    return int(row[0]) if row else None


def expired_ids(conn: sqlite3.Connection, up_to_seq: int | None, ended_before: str | None, limit: int) -> list[str]:
    """Up to `limit` deletable tasks, oldest first: those at or below up_to_seq (the count
    bound), then those that ended before ended_before (the age bound)."""
    found: dict[str, None] = {}
    if up_to_seq is not None:
        rows = conn.execute(
            f"SELECT id FROM tasks WHERE seq <= ? AND {_DELETABLE} ORDER BY seq LIMIT ?", (up_to_seq, limit)
        )
        found.update((r[0], None) for r in rows)
    if ended_before is not None and len(found) < limit:
        rows = conn.execute(
            f"SELECT id FROM tasks WHERE stopped_at < ? AND {_DELETABLE} ORDER BY stopped_at LIMIT ?",
            (ended_before, limit),
        )
        found.update((r[0], None) for r in rows)
    return list(found)[:limit]


@dataclass
class Deleted:
    task_ids: list[str] = field(default_factory=list)
    log_lines: int = 0
    events: int = 0


def delete_tasks(conn: sqlite3.Connection, task_ids: list[str], row_budget: int) -> Deleted:
    """Delete these tasks with their events and log rows, touching about row_budget log
    rows at most: the tasks whose lines fit go whole; a first task with more lines than
    that loses only its oldest ones, and its row stays until a later call, so nothing is
    ever left without its task. Call inside one write. Tasks that are not (or no longer)
    deletable are skipped."""
    out = Deleted()
    marks = ", ".join("?" for _ in task_ids)
    lines_of = dict(conn.execute(
        f"SELECT tasks.id, (SELECT COUNT(*) FROM log_lines WHERE log_lines.task_id = tasks.id) "
        f"FROM tasks WHERE id IN ({marks}) AND {_DELETABLE}", task_ids,
    ).fetchall())
    whole: list[str] = []
    for task_id in task_ids:  # in the order given: oldest first
        if task_id not in lines_of:
            continue
        if out.log_lines + lines_of[task_id] > row_budget and whole:
            break
        if lines_of[task_id] > row_budget:  # alone too big for one batch: its oldest lines now
            out.log_lines += conn.execute(
                "DELETE FROM log_lines WHERE task_id = ? AND seq IN "
                "(SELECT seq FROM log_lines WHERE task_id = ? ORDER BY seq LIMIT ?)",
                (task_id, task_id, row_budget),
            ).rowcount
            return out
        whole.append(task_id)
        out.log_lines += lines_of[task_id]
    if whole:
        marks = ", ".join("?" for _ in whole)
        conn.execute(f"DELETE FROM log_lines WHERE task_id IN ({marks})", whole)
        out.events = conn.execute(f"DELETE FROM task_events WHERE task_id IN ({marks})", whole).rowcount
        conn.execute(f"DELETE FROM log_cursors WHERE task_id IN ({marks})", whole)
        conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", whole)
        out.task_ids = whole
    return out


def existing_ids(conn: sqlite3.Connection, task_ids: list[str]) -> set[str]:
    marks = ", ".join("?" for _ in task_ids)
    return {r[0] for r in conn.execute(f"SELECT id FROM tasks WHERE id IN ({marks})", task_ids)} if task_ids else set()


# ---- giving space back ------------------------------------------------------------


def auto_vacuum_mode(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])


def free_pages(conn: sqlite3.Connection) -> tuple[int, int]:
    """(pages on the free list, page size in bytes)."""
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0]), int(conn.execute("PRAGMA page_size").fetchone()[0])


def incremental_vacuum(conn: sqlite3.Connection, max_pages: int) -> int:
    """Return up to max_pages free pages to the disk (the file shrinks at the next
    checkpoint); call inside one write. Returns how many pages were freed."""
    pages = min(max_pages, free_pages(conn)[0])
    # Python's sqlite3 steps a statement without result columns once, and each step of
    # incremental_vacuum frees one page: hence one statement per page.
    for _ in range(pages):
        conn.execute("PRAGMA incremental_vacuum(1)")
    return pages


def checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the WAL into the database file (which then shrinks to its pages) and empty the
    WAL; outside any transaction. False when a reader kept it from completing."""
    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return not busy


def switch_to_incremental_vacuum(conn: sqlite3.Connection) -> None:
    """The one-time VACUUM that lets an existing file give space back; outside any
    transaction. All or nothing: a failure leaves the file as it was."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("VACUUM")
