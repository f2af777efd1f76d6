"""Queries on Python environments (cnetd.ml.envs) and the tasks that wait for or use them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from cnetd.store.tasks import task_from_row
from cnetd.tasks.model import Status, Task


@dataclass(frozen=True)
class EnvironmentRecord:
    key: str
    spec: dict[str, Any]
    interpreter: str
    status: str  # building | ready | failed
    created_at: str
    build_task_id: str | None = None
    reason: str | None = None
    installer: str | None = None
    ready_at: str | None = None
    last_used: str | None = None
    size_bytes: int | None = None
    build_seconds: float | None = None


COLUMNS = ("key", "spec", "interpreter", "status", "created_at", "build_task_id", "reason", "installer", "ready_at",
           "last_used", "size_bytes", "build_seconds")
TERMINAL = tuple(str(s) for s in Status if s.terminal)


def _from_row(row: sqlite3.Row) -> EnvironmentRecord:
    data = {c: row[c] for c in COLUMNS}
    data["spec"] = json.loads(data["spec"])
    return EnvironmentRecord(**data)


def get(conn: sqlite3.Connection, key: str) -> EnvironmentRecord | None:
    row = conn.execute("SELECT * FROM environments WHERE key = ?", (key,)).fetchone()
    return _from_row(row) if row else None


def list_all(conn: sqlite3.Connection) -> list[EnvironmentRecord]:
    return [_from_row(r) for r in conn.execute("SELECT * FROM environments ORDER BY created_at DESC")]


def with_status(conn: sqlite3.Connection, status: str) -> list[EnvironmentRecord]:
    return [_from_row(r) for r in conn.execute("SELECT * FROM environments WHERE status = ?", (status,))]


def put(conn: sqlite3.Connection, record: EnvironmentRecord) -> None:
    """Insert or replace the row (a failed or removed environment is built again under its key)."""
    row = {c: getattr(record, c) for c in COLUMNS}
    row["spec"] = json.dumps(record.spec)
    conn.execute(f"INSERT OR REPLACE INTO environments ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})",
                 [row[c] for c in COLUMNS])


def update(conn: sqlite3.Connection, key: str, **changes: Any) -> None:
    unknown = set(changes) - set(COLUMNS[2:])
    if unknown:
        raise ValueError(f"not an environment column: {sorted(unknown)}")
    assignments = ", ".join(f"{c} = ?" for c in changes)
    conn.execute(f"UPDATE environments SET {assignments} WHERE key = ?", [*changes.values(), key])


def delete(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM environments WHERE key = ?", (key,))


def tasks_using(conn: sqlite3.Connection, key: str) -> list[str]:
    """Ids of the tasks with this environment that have not ended (preparing ones too)."""
    marks = ", ".join("?" for _ in TERMINAL)
    rows = conn.execute(f"SELECT id FROM tasks WHERE environment = ? AND status NOT IN ({marks}) ORDER BY seq",
                        (key, *TERMINAL))
    return [r[0] for r in rows]


def users_by_environment(conn: sqlite3.Connection) -> dict[str, list[str]]:
    marks = ", ".join("?" for _ in TERMINAL)
    found: dict[str, list[str]] = {}
    for key, task_id in conn.execute(
        f"SELECT environment, id FROM tasks WHERE environment IS NOT NULL AND status NOT IN ({marks}) ORDER BY seq",
        TERMINAL,
    ):
        found.setdefault(key, []).append(task_id)
    return found


def served_environments(conn: sqlite3.Connection) -> set[str]:
    """Environments of models that are to be served (their workers start in them again)."""
    rows = conn.execute(
        "SELECT DISTINCT t.environment FROM models m JOIN tasks t ON t.id = m.id "
        "WHERE t.environment IS NOT NULL AND m.serving IS NOT NULL "
        "AND json_extract(m.serving, '$.state') IN ('serving', 'awaiting_training')"
    )
    return {r[0] for r in rows}


def preparing_tasks(conn: sqlite3.Connection, key: str) -> list[Task]:
    rows = conn.execute("SELECT * FROM tasks WHERE environment = ? AND status = 'preparing' ORDER BY seq", (key,))
    return [task_from_row(r) for r in rows]
