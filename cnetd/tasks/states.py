"""The legal task transitions, in one place. Each returns the event to persist.

A starting task is never set to stopped: a stop that arrives while its process is being
started is recorded (stop_requested) and carried out once the start has returned a handle,
so that "stopped" always means its processes are gone (or never existed).
"""

from __future__ import annotations

from cnetd.clock import utc_now
from cnetd.tasks.model import Status, TaskEvent

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PREPARING: frozenset({Status.PENDING, Status.STOPPED, Status.FAILED}),
    Status.PENDING: frozenset({Status.STARTING, Status.STOPPED, Status.FAILED}),
    Status.STARTING: frozenset({Status.RUNNING, Status.FAILED}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.STOPPED: frozenset(),
}


class IllegalTransition(Exception):
    pass


def allowed(current: Status, new: Status) -> bool:
    return new in ALLOWED[current]


def check_transition(task_id: str, current: Status, new: Status) -> None:
    if not allowed(current, new):
        raise IllegalTransition(f"task {task_id}: {current} -> {new} is not allowed")


def event(task_id: str, type_: str, message: str) -> TaskEvent:
    return TaskEvent(task_id=task_id, time=utc_now(), type=type_, message=message)
