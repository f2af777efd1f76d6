"""What a task page (and a model page, which is its deploy task's page plus the model)
shows: the summary, the event timeline, the log tail, the usage chart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnetd.agent import Agent
from cnetd.ml.catalog import Model
from cnetd.tasks.model import Status, Task
from cnetd.ui.chart import gpu_series, usage_series

LOG_TAIL = 300


@dataclass(frozen=True)
class LogTail:
    lines: list[tuple[int, str]]
    last_seq: int
    hidden: int  # lines kept before the first one shown, not shown
    dropped: str | None  # what retention dropped before those, in the marker's words, when the marker is not shown


async def find_model(agent: Agent, task: Task) -> Model | None:
    """The model whose deploy task this is (None for any other task)."""
    return await agent.models.find(task.id) if task.type == "ml_model" else None


LIFECYCLE = (Status.PENDING, Status.STARTING, Status.RUNNING)  # then its end, whichever it is


def stage(task: Task) -> int:
    """How far through its life a task is. Never goes down: transitions only go forward
    and a stop request is never taken back. A task page's summary has two writers, the
    live stream and the Stop button's answer, whose messages can arrive in either order;
    the page (app.js) drops a summary of an earlier stage than the one it shows."""
    step = LIFECYCLE.index(task.status) if task.status in LIFECYCLE else len(LIFECYCLE)
    return 2 * step + int(task.stop_requested)


def summary_context(agent: Agent, task: Task, model: Model | None) -> dict[str, Any]:
    active = not task.status.terminal
    show_progress = task.progress is not None or (active and task.type == "ml_model" and task.kind == "train")
    return {
        "task": task,
        "stage": stage(task),
        "model": model,
        "active": active,
        "show_progress": show_progress,
        "enforced": agent.enforcement(task.sandbox),
        "python_env": agent.environments.summary(task.environment),
        "remote": None,  # a task another node has (pages.remote_page)
    }


async def timeline_context(agent: Agent, task: Task) -> dict[str, Any]:
    return {"task": task, "events": await agent.tasks.events(task.id)}


async def log_tail(agent: Agent, task_id: str, lines: int = LOG_TAIL) -> LogTail:
    """The last lines. Retention leaves its marker line at seq = the number of lines it
    dropped (1..dropped are gone), so the lines kept and not shown are those between the
    marker and the first line shown; the marker's own words say what was dropped."""
    rows, dropped, marker = await agent.logs.tail_and_dropped(task_id, lines)
    if not rows:
        return LogTail(rows, 0, 0, None)
    first = rows[0][0]
    hidden = max(first - 1 - dropped, 0)
    if dropped and first > dropped:  # the marker is not among the lines shown
        return LogTail(rows, rows[-1][0], hidden, marker or f"{dropped} earlier line{'s' if dropped != 1 else ''} dropped")
    return LogTail(rows, rows[-1][0], hidden, None)


def usage_context(agent: Agent, task: Task) -> dict[str, Any]:
    samples = agent.tasks.usage_history(task.id)
    cpu, memory = usage_series(samples, task.resources.cpu_limit, task.resources.memory_limit)
    return {
        "task": task,
        "cpu": cpu,
        "memory": memory,
        "gpu": gpu_series(samples, task.resources.gpu_memory),
        "running": task.status in (Status.PENDING, Status.STARTING, Status.RUNNING),
        "span": samples[-1].at - samples[0].at if len(samples) > 1 else 0.0,
    }
