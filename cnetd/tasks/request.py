"""POST /api/tasks: the body (a typed declaration) and NewTask, what TaskService creates a
task from (the serving manager and ModelService build a NewTask directly)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from cnetd.bodies.decode import decode_body
from cnetd.errors import Invalid
from cnetd.limits import ResourceLimits
from cnetd.ml.envs.spec import EnvironmentBody
from cnetd.tasks.fields import (
    Args,
    Duration,
    Env,
    Name,
    NodeId,
    PathText,
    PlacementField,
    RequiredText,
    ResourcesBody,
    not_blank,
    resource_limits,
    seconds,
    short_components,
)


@dataclass(frozen=True)
class NewTask:
    name: str
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = "."
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    timeout: float | None = None
    type: str = "process"
    kind: str = "run"
    model_id: str | None = None
    identity_owner: str | None = None  # whose uid it runs under; None: a uid of its own
    environment_request: EnvironmentBody | None = None  # the environment the request asks for
    environment: str | None = None  # the key of its environment (a model's later tasks: its deploy's)
    internal: bool = False  # made by the agent (an environment build): its command and paths are the agent's


class NewTaskBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A process task (the original's POST /api/tasks body). A field sent as null is left out."""

    name: Name
    type: Annotated[Literal["process"], Meta(
        extra={"invalid": 'must be "process" here (ML models are deployed with POST /api/ml/models)'},
    )] = "process"
    command: Annotated[RequiredText, Meta(description="the program: a name looked up on the agent's PATH, or a path")]
    args: Args | None = None
    env: Env | None = None
    working_dir: Annotated[PathText, Meta(description="relative to the agent's directory (default .)")] | None = None
    resources: ResourcesBody | None = None
    timeout: Duration | None = None
    node_id: NodeId | None = None
    placement: PlacementField | None = None
    environment: EnvironmentBody | None = None

    def to_new_task(self) -> NewTask:
        return NewTask(
            name=self.name,
            command=not_blank("command", self.command),
            args=list(self.args or []),
            env=dict(self.env or {}),
            working_dir=short_components("working_dir", "." if self.working_dir is None else self.working_dir),
            resources=resource_limits(self.resources, ResourceLimits()),
            timeout=seconds("timeout", self.timeout),
            environment_request=self.environment,
        )


def parse_new_task(body: Any) -> NewTask:
    """The body of POST /api/tasks (node_id already taken out by the API: cluster.target_of)."""
    return decode_body(body, NewTaskBody).to_new_task()


def check_max_pids(resources: ResourceLimits, ceiling: int, key: str = "resources") -> None:
    """A task may lower its pids limit below tasks.max_pids, never raise it: the node's
    protection against a fork bomb is the operator's to loosen, not a caller's."""
    if resources.max_pids is not None and resources.max_pids > ceiling:
        raise Invalid(f"{key}.max_pids", f"must be at most tasks.max_pids ({ceiling}), got {resources.max_pids}")
