"""The task record and its closed sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from cnetd.limits import ResourceLimits

TaskType = Literal["process", "ml_model"]
TaskKind = Literal["train", "predict", "evaluate", "serve", "run", "env"]
TASK_TYPES: tuple[str, ...] = ("process", "ml_model")
ML_KINDS: tuple[str, ...] = ("train", "predict", "evaluate", "serve")
# "env": the build of a Python environment (cnetd.ml.envs), made by the agent, never by a request
TASK_KINDS: tuple[str, ...] = (*ML_KINDS, "run", "env")


class Status(StrEnum):
    PREPARING = "preparing"  # waits for its Python environment to be built
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED})
ACTIVE = frozenset({Status.STARTING, Status.RUNNING})


@dataclass
class Task:
    id: str
    name: str
    type: str
    kind: str
    status: Status
    command: str
    args: list[str]
    env: dict[str, str]
    working_dir: str
    resources: ResourceLimits
    created_at: str
    log_file: str
    node_id: str
    timeout: float | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    unit: str | None = None
    progress: float | None = None
    result: dict[str, Any] | None = None
    model_id: str | None = None
    sandbox: str | None = None
    handle: str | None = None
    stop_requested: bool = False
    usage: dict[str, Any] | None = None  # last CPU/memory sample; live while running
    run_as: str | None = None  # the user its processes ran as, set when it starts
    uid: int | None = None  # the uid its processes run as (None: the agent's own user)
    program: str | None = None  # command resolved to an absolute path at submit
    environment: str | None = None  # the key of the Python environment it runs in (cnetd.ml.envs)
    seq: int | None = None
    gpus: list[str] = field(default_factory=list)  # uuids of the GPUs it was given (read, never written)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskEvent:
    task_id: str
    time: str
    type: str
    message: str
    id: int | None = None
