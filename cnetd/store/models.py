"""Queries on model records (a model is the deploy task plus what describes the model)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from cnetd.store.tasks import task_from_row
from cnetd.tasks.model import Task


@dataclass(frozen=True)
class ModelRecord:
    id: str  # the id of the deploy task, as in the original API
    name: str
    model_type: str
    model_path: str
    script_path: str
    created_at: str
    serving: dict[str, Any] | None = None


def insert_model(conn: sqlite3.Connection, model: ModelRecord) -> None:
    conn.execute(
        "INSERT INTO models (id, name, model_type, model_path, script_path, created_at, serving) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (model.id, model.name, model.model_type, model.model_path, model.script_path, model.created_at,
         None if model.serving is None else json.dumps(model.serving)),
    )


def _from_row(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        id=row["id"], name=row["name"], model_type=row["model_type"], model_path=row["model_path"],
        script_path=row["script_path"], created_at=row["created_at"],
        serving=None if row["serving"] is None else json.loads(row["serving"]),
    )


def get_model(conn: sqlite3.Connection, model_id: str) -> ModelRecord | None:
    row = conn.execute("SELECT * FROM models WHERE id = ?", (model_id,)).fetchone()
    return _from_row(row) if row else None


def list_models(conn: sqlite3.Connection) -> list[tuple[ModelRecord, Task]]:
    """Every model with its deploy task, newest first."""
    rows = conn.execute(
        "SELECT tasks.*, models.name AS model_name, models.model_type, models.model_path, models.script_path, "
        "models.created_at AS model_created_at, models.serving FROM models JOIN tasks USING (id) ORDER BY tasks.seq DESC"
    )
    out = []
    for row in rows:
        record = ModelRecord(
            id=row["id"], name=row["model_name"], model_type=row["model_type"], model_path=row["model_path"],
            script_path=row["script_path"], created_at=row["model_created_at"],
            serving=None if row["serving"] is None else json.loads(row["serving"]),
        )
        out.append((record, task_from_row(row)))
    return out

