"""Queries for warm serving: the models' `serving` column and their worker tasks."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from cnetd.store.models import ModelRecord, get_model
from cnetd.store.tasks import task_from_row
from cnetd.tasks.model import Task


def set_serving(conn: sqlite3.Connection, model_id: str, serving: dict[str, Any] | None) -> None:
    conn.execute(
        "UPDATE models SET serving = ? WHERE id = ?",
        (None if serving is None else json.dumps(serving), model_id),
    )


def models_with_serving_state(conn: sqlite3.Connection, states: tuple[str, ...]) -> list[ModelRecord]:
    rows = conn.execute("SELECT id FROM models WHERE serving IS NOT NULL ORDER BY created_at").fetchall()
    out = []
    for (model_id,) in rows:
        record = get_model(conn, model_id)
        if record is not None and record.serving and record.serving.get("state") in states:
            out.append(record)
    return out


def models_named(conn: sqlite3.Connection, name: str) -> list[ModelRecord]:
    """Models whose name is `name` (or whose id is), newest first."""
    rows = conn.execute(
        "SELECT id FROM models WHERE name = ? OR id = ? ORDER BY created_at DESC, rowid DESC", (name, name)
    ).fetchall()
    return [r for (model_id,) in rows if (r := get_model(conn, model_id)) is not None]


def live_workers(conn: sqlite3.Connection, model_id: str) -> list[Task]:
    """The model's serve tasks that have not ended, oldest first."""
    rows = conn.execute(
        "SELECT * FROM tasks WHERE model_id = ? AND kind = 'serve' "
        "AND status IN ('pending', 'starting', 'running') ORDER BY seq",
        (model_id,),
    )
    return [task_from_row(r) for r in rows]
