"""Tasks written straight through the store's own functions, as the task service would
have left them, for tests and benches that need many (or old) tasks without running them.
"""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cnetd.clock import format_time
from cnetd.limits import ResourceLimits
from cnetd.store import logs as lq
from cnetd.store import models as mq
from cnetd.store import tasks as q
from cnetd.tasks.model import Status, Task, TaskEvent


def ago(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def make_task(
    state_dir: Path, status: Status, ended: datetime | None = None, *, kind: str = "run",
    model_id: str | None = None, name: str = "t", started: datetime | None = None,
) -> Task:
    """A task record; `ended` is its stopped_at (None for one that has not ended)."""
    task_id = str(uuid.uuid4())
    started = started or (ended - timedelta(seconds=1) if ended else ago(seconds=1))
    return Task(
        id=task_id, name=name, type="ml_model" if model_id or kind != "run" else "process", kind=kind,
        status=status, command="python3", args=["-c", "print(1)"], env={"A": "1"}, working_dir=".",
        resources=ResourceLimits(cpu_limit=0.5), created_at=format_time(started - timedelta(seconds=1)),
        log_file=str(state_dir / "logs" / f"{task_id}.log"), node_id="node-1", timeout=300.0,
        started_at=format_time(started), stopped_at=format_time(ended) if ended else None,
        exit_code=0 if status == Status.COMPLETED else (1 if ended else None),
        reason="exit code 1" if status == Status.FAILED else None, model_id=model_id, sandbox="none",
    )


def record(conn: sqlite3.Connection, task: Task, lines: list[str], model_name: str | None = None) -> None:
    """Insert the task, its events and its log lines (and its model row when model_name is
    given: the task is then that model's deploy task). Call inside one write."""
    q.insert_task(conn, task)
    if model_name is not None:
        mq.insert_model(conn, mq.ModelRecord(
            id=task.id, name=model_name, model_type="linear", model_path="models/m.json",
            script_path="scripts/m.py", created_at=task.created_at,
        ))
    q.insert_event(conn, TaskEvent(task.id, task.created_at, "created", f"process task '{task.name}' created"))
    if task.started_at:
        q.insert_event(conn, TaskEvent(task.id, task.started_at, "started", "running (pid 4242, sandbox none)"))
    if task.stopped_at:
        q.insert_event(conn, TaskEvent(task.id, task.stopped_at, str(task.status), task.reason or "completed (exit code 0)"))
    if lines:
        size = sum(len(line.encode()) + 1 for line in lines)
        lq.append_lines(conn, task.id, 1, lines, size)


def write_log_file(task: Task, lines: list[str]) -> None:
    path = Path(task.log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
