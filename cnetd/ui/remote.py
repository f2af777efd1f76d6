"""A task or model that another node of the cluster has, for its page on this agent.

It is asked of the node that has it, through the cluster's peer client (that node's own
API: the task, its events, its last log lines), and shown read-only as of that moment: this
agent has no live stream of another node's task, nor its usage samples. When that node is
offline or does not answer, the page shows what the cluster view last knew (lost, when the
task had not ended). What another node answers is data to show, never trusted: it is read
into a Task field by field, and anything that does not fit is a 502 saying so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cnetd.agent import Agent
from cnetd.clock import utc_now
from cnetd.cluster.directory import ClusterUnavailable
from cnetd.cluster.records import NODE_ID_PATTERN
from cnetd.errors import BadGateway, DomainError, NotFound
from cnetd.limits import ResourceLimits
from cnetd.tasks.model import Status, Task, TaskEvent
from cnetd.ui.cluster import ClusterRow

LOG_LINES = 300
LIMIT_NAMES = ("cpu_limit", "memory_limit", "disk_limit", "gpu_limit", "max_pids")


@dataclass(frozen=True)
class RemoteModel:
    """What the model page shows of a model another node has (its record's fields)."""

    name: str
    model_type: str
    model_path: str
    script_path: str

    @property
    def record(self) -> RemoteModel:
        """The templates read a model's fields from its record, as they do for a Model."""
        return self


@dataclass(frozen=True)
class Remote:
    node_id: str
    node_status: str  # "online", or "offline" / "unreachable" when only the summary is known
    task: Task
    fetched_at: str
    summary_only: bool = False  # the node did not answer: task holds what the cluster view has
    problem: str | None = None  # why only the summary is shown
    lost: bool = False
    events: list[TaskEvent] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)
    enforced: dict[str, bool] = field(default_factory=dict)
    model: RemoteModel | None = None


def is_task_id(value: str) -> bool:
    return NODE_ID_PATTERN.match(value) is not None  # uuids, and ids a placement chose


async def find(agent: Agent, task_id: str, node_hint: str, as_model: bool) -> Remote | None:
    """The task (or model) as the node that has it says, None when no other node has it.
    node_hint: the node the page's link named (?node=), tried before the cluster view."""
    if agent.cluster is None or not is_task_id(task_id):
        return None
    view = agent.cluster.view
    owner = node_hint if node_hint and node_hint != agent.node_id and NODE_ID_PATTERN.match(node_hint) else None
    if owner is None:
        try:
            owner = await view.owner_of(task_id)
        except ClusterUnavailable as exc:
            raise NotFound(f"{task_id} is not on this node, and where else it is cannot be said now: {exc.message}",
                           {"id": task_id}) from None
        if owner is None or owner == agent.node_id:
            return None
    try:
        return await _ask(agent, owner, task_id, as_model)
    except NotFound:
        if node_hint and owner == node_hint:  # the link named a node that does not have it
            return await find(agent, task_id, "", as_model)
        return None
    except DomainError as exc:  # offline, no answer, or an answer that is not one
        try:
            summary = await view.find(task_id, owner)
        except ClusterUnavailable:
            summary = None
        if summary is None:
            raise NotFound(f"{task_id} is on node {owner}, which cannot show it now: {exc.message}",
                           {"id": task_id}) from None
        return _from_summary(ClusterRow.of(summary, agent.node_id), exc.message)


async def _ask(agent: Agent, node_id: str, task_id: str, as_model: bool) -> Remote:
    assert agent.cluster is not None
    peers = agent.cluster.peers
    quoted = quote(task_id, safe="")
    what = f"/api/ml/models/{quoted}" if as_model else f"/api/tasks/{quoted}"
    (status, body), (_, events), (_, lines) = await asyncio.gather(
        peers.json_call(node_id, "GET", what),
        peers.json_call(node_id, "GET", f"/api/tasks/{quoted}/events"),
        peers.json_call(node_id, "GET", f"/api/tasks/{quoted}/logs?lines={LOG_LINES}"),
    )
    if status == 404:
        raise NotFound(f"node {node_id} has no task {task_id}", {"id": task_id})
    if status != 200 or not isinstance(body, dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise BadGateway(f"node {node_id} answered {status}: {message or 'not a task'}", {"node_id": node_id})
    try:
        task = task_of(body, node_id)
        model = model_of(body) if as_model else None
        history = [TaskEvent(task_id, str(e["time"]), str(e["type"]), str(e["message"])) for e in events] \
            if isinstance(events, list) else []
        log = [(n, str(line)) for n, line in enumerate(lines, 1)] if isinstance(lines, list) else []
    except (KeyError, TypeError, ValueError) as exc:
        raise BadGateway(f"node {node_id} answered with a task this agent cannot read ({exc})",
                         {"node_id": node_id}) from None
    enforced = body.get("limits_enforced")
    return Remote(
        node_id=node_id, node_status="online", task=task, fetched_at=utc_now(), events=history, lines=log,
        enforced={str(k): bool(v) for k, v in enforced.items()} if isinstance(enforced, dict) else {},
        model=model,
    )


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _maybe(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _of(value: Any, kind: type, name: str) -> Any:
    """A container field: missing is empty, anything but `kind` is refused."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ValueError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def task_of(data: dict[str, Any], node_id: str) -> Task:
    """A task as another node's API describes it (task_json), for the templates; ValueError
    (or KeyError) for an answer that is not one."""
    resources = _of(data.get("resources"), dict, "resources")
    return Task(
        id=_text(data["id"]), name=_text(data["name"]), type=_text(data.get("type"), "process"),
        kind=_text(data.get("kind"), "run"), status=Status(data["status"]),
        command=_text(data.get("command")), args=[str(a) for a in _of(data.get("args"), list, "args")],
        env={str(k): str(v) for k, v in _of(data.get("env"), dict, "env").items()},
        working_dir=_text(data.get("working_dir")),
        resources=ResourceLimits(**{n: _maybe(resources.get(n), (int, float)) for n in LIMIT_NAMES}),
        created_at=_text(data.get("created_at")), log_file="", node_id=_text(data.get("node_id"), node_id),
        timeout=_maybe(data.get("timeout"), (int, float)), started_at=_maybe(data.get("started_at"), str),
        stopped_at=_maybe(data.get("stopped_at"), str), exit_code=_maybe(data.get("exit_code"), int),
        reason=_maybe(data.get("reason"), str), unit=_maybe(data.get("unit"), str),
        progress=_maybe(data.get("progress"), (int, float)),
        result=data.get("result") if isinstance(data.get("result"), dict) else None,
        model_id=_maybe(data.get("model_id"), str), sandbox=_maybe(data.get("sandbox"), str),
        run_as=_maybe(data.get("run_as"), str),
    )


def model_of(data: dict[str, Any]) -> RemoteModel:
    return RemoteModel(name=_text(data["name"]), model_type=_text(data.get("model_type")),
                       model_path=_text(data.get("model_path")), script_path=_text(data.get("script_path")))


def _from_summary(row: ClusterRow, problem: str) -> Remote:
    """What the cluster view knows of a task whose node did not answer."""
    try:
        status = Status(row.status)
    except ValueError:
        status = Status.PENDING
    task = Task(
        id=row.id, name=row.name, type=row.type, kind=row.kind, status=status, command="", args=[], env={},
        working_dir="", resources=ResourceLimits(), created_at=row.created_at, log_file="", node_id=row.node_id,
        started_at=row.started_at, stopped_at=row.stopped_at, exit_code=row.exit_code, reason=row.reason,
        progress=row.progress, model_id=row.model_id,
    )
    model = RemoteModel(row.name, "", "", "") if row.type == "ml_model" and row.model_id is None else None
    node_status = "offline" if row.node_status == "offline" else "unreachable"
    return Remote(node_id=row.node_id, node_status=node_status, task=task, fetched_at=utc_now(), summary_only=True,
                  problem=problem, lost=row.lost, model=model)

