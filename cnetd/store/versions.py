"""Queries on model versions (model_versions) and each name's default/previous/canary
pointers (model_pointers)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from cnetd.store.tasks import insert_event
from cnetd.tasks.model import TaskEvent

VERSION_EVENT_TYPES = ("version", "promoted", "rolled_back", "rollout", "rollout_ended", "retired")


@dataclass(frozen=True)
class VersionRow:
    model_id: str
    name: str
    version: int
    promote: str  # auto | manual
    state: str  # training | ready | failed | retired
    created_at: str
    reason: str | None = None
    sha256: str | None = None
    size: int | None = None
    artifact: str | None = None  # the agent's copy of the model file (absolute)
    files: tuple[str, ...] = ()  # sidecar files copied beside it (names)
    source: str = "training"  # training | registered
    ready_at: str | None = None


@dataclass(frozen=True)
class PointerRow:
    name: str
    default_id: str | None
    previous_id: str | None
    previous_until: str | None
    canary: dict[str, Any] | None
    updated_at: str


def _version(row: sqlite3.Row) -> VersionRow:
    return VersionRow(
        model_id=row["model_id"], name=row["name"], version=row["version"], promote=row["promote"],
        state=row["state"], created_at=row["created_at"], reason=row["reason"], sha256=row["sha256"],
        size=row["size"], artifact=row["artifact"], files=tuple(json.loads(row["files"] or "[]")),
        source=row["source"], ready_at=row["ready_at"],
    )


def next_version(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)).fetchone()
    return int(row[0] or 0) + 1


def insert_version(conn: sqlite3.Connection, model_id: str, name: str, promote: str, created_at: str,
                   source: str = "training") -> int:
    """The deploy's version: the next number of its name (inside the deploy's transaction)."""
    number = next_version(conn, name)
    conn.execute(
        "INSERT INTO model_versions (model_id, name, version, promote, source, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (model_id, name, number, promote, source, created_at),
    )
    return number


def set_ready(conn: sqlite3.Connection, model_id: str, sha256: str, size: int, artifact: str,
              files: list[str], at: str) -> None:
    conn.execute(
        "UPDATE model_versions SET state = 'ready', reason = NULL, sha256 = ?, size = ?, artifact = ?, files = ?, "
        "ready_at = ? WHERE model_id = ?",
        (sha256, size, artifact, json.dumps(files), at, model_id),
    )


def set_state(conn: sqlite3.Connection, model_id: str, state: str, reason: str | None) -> None:
    conn.execute("UPDATE model_versions SET state = ?, reason = ? WHERE model_id = ?", (state, reason, model_id))


def get_version(conn: sqlite3.Connection, model_id: str) -> VersionRow | None:
    row = conn.execute("SELECT * FROM model_versions WHERE model_id = ?", (model_id,)).fetchone()
    return _version(row) if row else None


def versions_of(conn: sqlite3.Connection, name: str) -> list[VersionRow]:
    """The versions of a name, oldest first."""
    rows = conn.execute("SELECT * FROM model_versions WHERE name = ? ORDER BY version", (name,))
    return [_version(r) for r in rows]


def all_versions(conn: sqlite3.Connection) -> list[VersionRow]:
    return [_version(r) for r in conn.execute("SELECT * FROM model_versions ORDER BY name, version")]


def artifacts_in_use(conn: sqlite3.Connection) -> set[str]:
    """Artifacts of versions that are not retired."""
    rows = conn.execute("SELECT artifact FROM model_versions WHERE artifact IS NOT NULL AND state != 'retired'")
    return {r[0] for r in rows}


def _pointer(row: sqlite3.Row) -> PointerRow:
    return PointerRow(
        name=row["name"], default_id=row["default_id"], previous_id=row["previous_id"],
        previous_until=row["previous_until"], canary=None if row["canary"] is None else json.loads(row["canary"]),
        updated_at=row["updated_at"],
    )


def get_pointer(conn: sqlite3.Connection, name: str) -> PointerRow | None:
    row = conn.execute("SELECT * FROM model_pointers WHERE name = ?", (name,)).fetchone()
    return _pointer(row) if row else None


def all_pointers(conn: sqlite3.Connection) -> list[PointerRow]:
    return [_pointer(r) for r in conn.execute("SELECT * FROM model_pointers ORDER BY name")]


def put_pointer(conn: sqlite3.Connection, pointer: PointerRow) -> None:
    conn.execute(
        "INSERT INTO model_pointers (name, default_id, previous_id, previous_until, canary, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET default_id = excluded.default_id, "
        "previous_id = excluded.previous_id, previous_until = excluded.previous_until, canary = excluded.canary, "
        "updated_at = excluded.updated_at",
        (pointer.name, pointer.default_id, pointer.previous_id, pointer.previous_until,
         None if pointer.canary is None else json.dumps(pointer.canary), pointer.updated_at),
    )


def add_event(conn: sqlite3.Connection, event: TaskEvent) -> None:
    insert_event(conn, event)


def version_events(conn: sqlite3.Connection, name: str, limit: int = 200) -> list[TaskEvent]:
    """Version events (promotions, rollbacks, rollouts) on the deploy tasks of a name, oldest first."""
    marks = ", ".join("?" for _ in VERSION_EVENT_TYPES)
    rows = conn.execute(
        f"SELECT e.* FROM task_events e JOIN model_versions v ON v.model_id = e.task_id "
        f"WHERE v.name = ? AND e.type IN ({marks}) ORDER BY e.id DESC LIMIT ?",
        (name, *VERSION_EVENT_TYPES, limit),
    ).fetchall()
    return [TaskEvent(task_id=r["task_id"], time=r["time"], type=r["type"], message=r["message"], id=r["id"])
            for r in reversed(rows)]
