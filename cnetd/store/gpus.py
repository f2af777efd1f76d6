"""Queries on GPU assignments (migration 0008). Functions take a connection."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Held:
    task_id: str
    gpu_uuid: str
    memory: int | None  # None: the whole GPU


def held(conn: sqlite3.Connection) -> list[Held]:
    """Every assignment of a task that is starting or running: what is taken now."""
    rows = conn.execute(
        "SELECT a.task_id, a.gpu_uuid, a.memory FROM gpu_assignments a JOIN tasks t ON t.id = a.task_id"
        " WHERE t.status IN ('starting', 'running') ORDER BY t.seq"
    )
    return [Held(*row) for row in rows]


def of_task(conn: sqlite3.Connection, task_id: str) -> list[Held]:
    rows = conn.execute("SELECT task_id, gpu_uuid, memory FROM gpu_assignments WHERE task_id = ? ORDER BY gpu_uuid",
                        (task_id,))
    return [Held(*row) for row in rows]


def assign(conn: sqlite3.Connection, task_id: str, uuids: list[str], memory: int | None) -> None:
    conn.execute("DELETE FROM gpu_assignments WHERE task_id = ?", (task_id,))  # a task started again
    conn.executemany("INSERT INTO gpu_assignments (task_id, gpu_uuid, memory) VALUES (?, ?, ?)",
                     [(task_id, uuid, memory) for uuid in uuids])
