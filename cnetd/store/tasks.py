"""Every query on tasks and their events. Functions take a connection; callers pick
the writer (Database.write) or the reader (Database.read)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

from cnetd.limits import ResourceLimits
from cnetd.tasks.model import Status, Task, TaskEvent

TASK_COLUMNS = [
    "id", "name", "type", "kind", "status", "command", "args", "env", "working_dir", "resources", "timeout", "created_at",
    "started_at", "stopped_at", "exit_code", "reason", "unit", "log_file", "progress", "result", "model_id", "node_id",
    "sandbox", "handle", "stop_requested", "usage", "run_as", "uid", "program", "environment",
]
JSON_COLUMNS = {"args", "env", "result", "usage"}
# Columns a transition may change (never the identity or the request).
MUTABLE = {
    "status", "started_at", "stopped_at", "exit_code", "reason", "unit", "progress",
    "result", "sandbox", "handle", "stop_requested", "usage", "run_as", "uid",
}


def _to_row(task: Task) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column in TASK_COLUMNS:
        value = getattr(task, column)
        if column in JSON_COLUMNS:
            value = None if value is None else json.dumps(value, ensure_ascii=False)
        elif column == "resources":
            value = json.dumps({k: v for k, v in asdict(value).items() if v is not None})
        elif column == "status":
            value = str(value)
        elif column == "stop_requested":
            value = int(value)
        row[column] = value
    return row


def task_from_row(row: sqlite3.Row) -> Task:
    data = {column: row[column] for column in TASK_COLUMNS}
    for column in JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    data["resources"] = ResourceLimits(**json.loads(data["resources"]))
    data["status"] = Status(data["status"])
    data["stop_requested"] = bool(data["stop_requested"])
    return Task(**data, seq=row["seq"])


def insert_task(conn: sqlite3.Connection, task: Task) -> int:
    row = _to_row(task)
    columns = ", ".join(row)
    marks = ", ".join(f":{c}" for c in row)
    cursor = conn.execute(f"INSERT INTO tasks ({columns}) VALUES ({marks})", row)
    return int(cursor.lastrowid or 0)


def _column_values(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - MUTABLE
    if unknown:
        raise ValueError(f"not a mutable task column: {sorted(unknown)}")
    values = {}
    for column, value in changes.items():
        if column in JSON_COLUMNS and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        elif column == "status":
            value = str(value)
        elif column == "stop_requested":
            value = int(value)
        values[column] = value
    return values


def update_task(conn: sqlite3.Connection, task_id: str, changes: dict[str, Any]) -> None:
    """Columns other than the status (a status changes only through change_status)."""
    if "status" in changes:
        raise ValueError("a task's status changes only through change_status, guarded on the current one")
    values = _column_values(changes)
    assignments = ", ".join(f"{c} = :{c}" for c in values)
    conn.execute(f"UPDATE tasks SET {assignments} WHERE id = :_id", {**values, "_id": task_id})


def change_status(conn: sqlite3.Connection, task_id: str, expected: Status, changes: dict[str, Any]) -> bool:
    """Write the new status (and the other changes) only while the stored status is still
    `expected`; False, with nothing written, when it is not (or the task is gone)."""
    if "status" not in changes:
        raise ValueError("change_status needs the new status")
    values = _column_values(changes)
    assignments = ", ".join(f"{c} = :{c}" for c in values)
    cursor = conn.execute(
        f"UPDATE tasks SET {assignments} WHERE id = :_id AND status = :_expected",
        {**values, "_id": task_id, "_expected": str(expected)},
    )
    return cursor.rowcount == 1


def request_stop(conn: sqlite3.Connection, task_id: str) -> bool:
    """Mark a starting or running task as asked to stop; False when it is not one."""
    cursor = conn.execute(
        "UPDATE tasks SET stop_requested = 1 WHERE id = ? AND status IN ('starting', 'running')", (task_id,)
    )
    return cursor.rowcount == 1


def insert_event(conn: sqlite3.Connection, event: TaskEvent) -> None:
    conn.execute(
        "INSERT INTO task_events (task_id, time, type, message) VALUES (?, ?, ?, ?)",
        (event.task_id, event.time, event.type, event.message),
    )


# Each task read for callers carries the GPUs it was given (gpu_assignments, by uuid).
WITH_GPUS = "SELECT *, (SELECT group_concat(gpu_uuid) FROM gpu_assignments WHERE task_id = tasks.id) AS gpu_uuids FROM tasks"


def _with_gpus(row: sqlite3.Row) -> Task:
    task = task_from_row(row)
    task.gpus = sorted(row["gpu_uuids"].split(",")) if row["gpu_uuids"] else []
    return task


def get_task(conn: sqlite3.Connection, task_id: str) -> Task | None:
    row = conn.execute(f"{WITH_GPUS} WHERE id = ?", (task_id,)).fetchone()
    return _with_gpus(row) if row else None


def list_tasks(
    conn: sqlite3.Connection,
    *,
    statuses: list[str] | None = None,
    type_: str | None = None,
    kind: str | None = None,
    model_id: str | None = None,
    ids: list[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = True,
) -> list[Task]:
    where, params = _filters(statuses, type_, kind, model_id, ids)
    order = "DESC" if newest_first else "ASC"
    sql = f"{WITH_GPUS} {where} ORDER BY seq {order}"
    if limit is not None:
        sql += " LIMIT ? OFFSET ?"
        params += [limit, offset]
    return [_with_gpus(r) for r in conn.execute(sql, params)]


def _filters(
    statuses: list[str] | None, type_: str | None, kind: str | None, model_id: str | None,
    ids: list[str] | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
        params += statuses
    if ids is not None:
        clauses.append(f"id IN ({', '.join('?' for _ in ids)})" if ids else "0")
        params += ids
    for column, value in (("type", type_), ("kind", kind), ("model_id", model_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    counts = {str(s): 0 for s in Status}
    for status, n in conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status"):
        counts[status] = n
    return counts


def _kind_clause(kinds: tuple[str, ...], exclude_kinds: tuple[str, ...]) -> tuple[str, list[str]]:
    if kinds:
        return f" AND kind IN ({', '.join('?' for _ in kinds)})", list(kinds)
    if exclude_kinds:
        return f" AND kind NOT IN ({', '.join('?' for _ in exclude_kinds)})", list(exclude_kinds)
    return "", []


def count_active(conn: sqlite3.Connection, exclude_kinds: tuple[str, ...] = ()) -> int:
    clause, params = _kind_clause((), exclude_kinds)
    row = conn.execute(f"SELECT COUNT(*) FROM tasks WHERE status IN ('starting', 'running'){clause}", params).fetchone()
    return int(row[0])


def next_pending(
    conn: sqlite3.Connection, limit: int | None, kinds: tuple[str, ...] = (), exclude_kinds: tuple[str, ...] = ()
) -> list[Task]:
    """The oldest pending tasks (of `kinds`, or not of `exclude_kinds`); limit None: all."""
    clause, params = _kind_clause(kinds, exclude_kinds)
    rows = conn.execute(
        f"SELECT * FROM tasks WHERE status = 'pending'{clause} ORDER BY seq LIMIT ?", [*params, -1 if limit is None else limit]
    )
    return [task_from_row(r) for r in rows]


def list_events(conn: sqlite3.Connection, task_id: str) -> list[TaskEvent]:
    rows = conn.execute(
        "SELECT id, task_id, time, type, message FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
    )
    return [TaskEvent(task_id=r["task_id"], time=r["time"], type=r["type"], message=r["message"], id=r["id"]) for r in rows]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
    )


def stop_is_requested(conn: sqlite3.Connection, task_id: str) -> bool:
    row = conn.execute("SELECT stop_requested FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return bool(row and row[0])


def status_of(conn: sqlite3.Connection, task_id: str) -> Status | None:
    row = conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
    return Status(row[0]) if row else None


def active_limits(conn: sqlite3.Connection) -> list[ResourceLimits]:
    """The resource limits of every task that has not ended (what this node has promised)."""
    terminal = [str(s) for s in Status if s.terminal]
    rows = conn.execute(f"SELECT resources FROM tasks WHERE status NOT IN ({', '.join('?' for _ in terminal)})",
                        terminal)
    return [ResourceLimits(**json.loads(resources)) for (resources,) in rows]
