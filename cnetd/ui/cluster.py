"""The cluster as the lists and forms show it: which node's tasks a list shows (?node=),
the rows of the cluster-wide lists (from the summaries every node mirrors into etcd), and
the nodes a placement may name. Without a cluster section none of this is shown."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cnetd.agent import Agent
from cnetd.cluster.directory import ClusterUnavailable
from cnetd.cluster.records import NODE_ID_PATTERN
from cnetd.ui.common import agent_of

ALL = "all"
# A cluster-wide list reads every node's summaries from etcd each time (about 45 ms for
# 2,000: bench/ui_render.py --cluster), so its page polls less often than this node's list.
CLUSTER_POLL = "5s"
LOCAL_POLL = "2s"


def poll_every(node: str) -> str:
    return CLUSTER_POLL if node else LOCAL_POLL


def node_choice(request: web.Request) -> str:
    """A list page's ?node=: "all" (the whole cluster) or another node's id; "" for this
    node's own store (also for anything else, and always on a single node)."""
    agent = agent_of(request)
    value = request.query.get("node", "")
    if agent.cluster is None or value == agent.node_id:
        return ""
    return value if value == ALL or NODE_ID_PATTERN.match(value) else ""


@dataclass(frozen=True)
class ClusterRow:
    """One task or model of a cluster-wide list (a ClusterTask of GET /api/tasks?node=all)."""

    id: str
    name: str
    type: str
    kind: str
    status: str
    node_id: str
    node_status: str
    lost: bool
    here: bool  # on this node
    reason: str | None = None
    progress: float | None = None
    model_id: str | None = None
    serving: str | None = None
    created_at: str = ""
    started_at: str | None = None
    stopped_at: str | None = None
    exit_code: int | None = None

    @classmethod
    def of(cls, row: dict[str, Any], this_node: str) -> ClusterRow:
        return cls(
            id=row["id"], name=row["name"], type=row["type"], kind=row["kind"], status=row["status"],
            node_id=row["node_id"], node_status=row.get("node_status", "online"), lost=bool(row.get("lost")),
            here=row["node_id"] == this_node, reason=row.get("reason"), progress=row.get("progress"),
            model_id=row.get("model_id"), serving=row.get("serving"), created_at=row.get("created_at") or "",
            started_at=row.get("started_at"), stopped_at=row.get("stopped_at"), exit_code=row.get("exit_code"),
        )


@dataclass(frozen=True)
class ClusterList:
    rows: list[ClusterRow]
    problem: str | None = None  # etcd did not answer: the list cannot be shown


async def cluster_list(agent: Agent, node: str, *, limit: int, offset: int, status: str | None = None,
                       type_: str | None = None, kind: str | None = None, models_only: bool = False) -> ClusterList:
    """What the cluster view has, as GET /api/tasks?node=... (or /api/ml/models) lists it."""
    assert agent.cluster is not None
    try:
        found = await agent.cluster.view.tasks(
            node_id=None if node == ALL else node, status=status, type_=type_, kind=kind,
            models_only=models_only, limit=limit, offset=offset)
    except ClusterUnavailable as exc:
        return ClusterList([], exc.message)
    return ClusterList([ClusterRow.of(row, agent.node_id) for row in found])


@dataclass(frozen=True)
class NodeOption:
    node_id: str
    name: str
    here: bool


@dataclass(frozen=True)
class PlacementChoices:
    """What the forms' placement choice offers: shown only in a cluster."""

    this_node: str
    nodes: list[NodeOption]  # online nodes, this one first
    problem: str | None = None  # etcd did not answer: only this node can be chosen by name


async def placement_choices(agent: Agent) -> PlacementChoices | None:
    if agent.cluster is None:
        return None
    try:
        nodes = await agent.cluster.nodes_json()
    except ClusterUnavailable as exc:
        return PlacementChoices(agent.node_id, [NodeOption(agent.node_id, agent.identity.node_name, True)], exc.message)
    online = [NodeOption(n["node_id"], n.get("name") or n["node_id"], n["node_id"] == agent.node_id)
              for n in nodes if n.get("status") == "online"]
    online.sort(key=lambda n: (not n.here, n.node_id))
    return PlacementChoices(agent.node_id, online)
