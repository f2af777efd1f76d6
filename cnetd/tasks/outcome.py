"""How a task ended, in words a person can act on: from its exit status and what the agent
knows about why it was stopped (a stop request, its timeout, its disk limit, a start that
failed inside the sandbox)."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from cnetd.supervisor.base import ExitStatus
from cnetd.supervisor.disk import format_bytes
from cnetd.tasks.model import Status, Task

LOST_REASON = "lost: process vanished while the agent was down"


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def failure_reason(exit: ExitStatus, task: Task) -> str | None:
    """None for success, else a reason a person can act on."""
    if exit.lost:
        return LOST_REASON
    if exit.oom_killed:
        limit = task.resources.memory_limit
        return f"out of memory (limit {format_bytes(limit)})" if limit else "out of memory"
    if exit.code == 0:
        return None
    if exit.signal:
        try:
            name = signal.Signals(exit.signal).name
        except ValueError:
            name = f"signal {exit.signal}"
        return f"killed by {name} (exit code {exit.code})"
    return f"exit code {exit.code}"


@dataclass(frozen=True)
class Ending:
    status: Status
    kind: str  # the event type
    reason: str | None
    message: str


def ending(task: Task, exit: ExitStatus, *, stop_why: str, timed_out: bool, disk_exceeded: str | None,
           start_problem: str | None, gpu_exceeded: str | None = None) -> Ending:
    """task as the store holds it now (its stop_requested decides first: `stopped` is never
    overwritten by the exit that the stop caused)."""
    if task.stop_requested:
        code = f" (exit code {exit.code})" if exit.code is not None else ""
        return Ending(Status.STOPPED, "stopped", None, f"stopped {stop_why}{code}")
    if timed_out:
        assert task.timeout is not None
        reason = f"timed out after {format_duration(task.timeout)}"
        return Ending(Status.FAILED, "failed", reason, reason)
    if disk_exceeded:
        return Ending(Status.FAILED, "failed", disk_exceeded, disk_exceeded)
    if gpu_exceeded:
        return Ending(Status.FAILED, "failed", gpu_exceeded, gpu_exceeded)
    if start_problem is not None:
        reason = f"spawn failed: {start_problem}"
        return Ending(Status.FAILED, "failed", reason, reason)
    failed = failure_reason(exit, task)
    if failed is None:
        return Ending(Status.COMPLETED, "completed", None, "completed (exit code 0)")
    return Ending(Status.FAILED, "failed", failed, failed)
