"""/api/nodes (every node of the cluster, from etcd), /api/nodes/{node_id}/{api|v2}/... (any
call passed through to that node), and /api/cluster/member (for the other agents only).

Without a cluster section the agent is a single node: /api/nodes lists it alone, and there
is no other node to pass a call to."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.bodylimit import body_of
from cnetd.api.errors import read_json
from cnetd.api.serialize import json_response
from cnetd.clock import utc_now
from cnetd.cluster import relay
from cnetd.cluster.directory import NodeEntry
from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.placing import Kind, PlaceRequest, Where, invalid_from
from cnetd.cluster.records import NODE_ID_PATTERN
from cnetd.errors import Invalid, NotFound
from cnetd.security.cluster_token import is_peer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PASSED_THROUGH = ("api/", "v2/")
NOT_IN_A_CLUSTER = "this agent is not part of a cluster (its config has no cluster section)"


async def this_node(agent: Agent) -> dict[str, Any]:
    """A single node's own entry, shaped like those etcd gives in a cluster."""
    entry = NodeEntry(await agent.describe(), "online", utc_now(), 0)
    return entry.to_json()


async def list_nodes(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    if agent.cluster is None:
        return json_response([{**await this_node(agent), "scheduler": False}])
    return json_response(await agent.cluster.nodes_json())


async def get_node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node_id = request.match_info["node_id"]
    if agent.cluster is None:
        if node_id == agent.node_id:
            return json_response({**await this_node(agent), "scheduler": False})
        raise NotFound(f"node {node_id} is not this node, and {NOT_IN_A_CLUSTER}", {"node_id": node_id})
    entry = await agent.cluster.directory.get(node_id)
    if entry is None:
        raise NotFound(f"node {node_id} is not in the cluster (GET /api/nodes lists its nodes)", {"node_id": node_id})
    return json_response(agent.cluster.node_json(entry))


async def member(request: web.Request) -> web.Response:
    """This node's membership, for another agent of the cluster (who am I talking to?)."""
    agent = request.app[AGENT]
    assert agent.cluster is not None  # the cluster token middleware answers 404 without a cluster
    return json_response({"node_id": agent.node_id, **agent.cluster.status_json()})


async def place(request: web.Request) -> web.Response:
    """For a posting agent: the scheduler places its work (409 when this agent is not the scheduler)."""
    agent = request.app[AGENT]
    assert agent.cluster is not None  # the cluster token middleware answers 404 without a cluster
    try:
        asked = msgspec.convert(await read_json(request), PlaceRequest)
        placement, demand = asked.checked()
    except (msgspec.ValidationError, ValueError) as exc:
        raise invalid_from(exc, "body") from None
    placed = await agent.cluster.placing.place_here(asked.task_id, asked.kind, asked.body, demand, placement,
                                                    asked.posted_by)
    return json_response(msgspec.to_builtins(placed))


async def placed_elsewhere(request: web.Request, kind: Kind, body: Any) -> Where | None:
    """A create body with "placement": where the scheduler put it, once its node created it.
    None: no placement, or one that means this node on an agent with no cluster (run it here)."""
    if not isinstance(body, dict) or body.get("placement") is None:
        return None
    agent = request.app[AGENT]
    if agent.cluster is None:
        if body["placement"] == "auto" or body["placement"] == {"node_id": agent.node_id}:
            del body["placement"]
            return None
        raise Invalid("placement", f"needs a cluster, but {NOT_IN_A_CLUSTER}; leave it out, or use \"auto\"")
    return await agent.cluster.placing.submit(kind, body)


def peers_of(agent: Agent, node_id: str) -> PeerCaller:
    if agent.cluster is None:
        raise NotFound(f"no node {node_id} to pass the call to: {NOT_IN_A_CLUSTER}", {"node_id": node_id})
    return agent.cluster.peers


async def pass_through(request: web.Request) -> web.StreamResponse:
    """The same call on another node: /api/nodes/b/api/tasks/x is b's /api/tasks/x, under
    the relay's rules (a plain path; JSON, SSE or text back; capped in size and time)."""
    started = time.monotonic()
    node_id = request.match_info["node_id"]
    # Pass the path on as it was sent (still percent-encoded): decoding it here would turn
    # an escaped "?" inside an id into structure. The relay refuses what could be read as
    # another path (dot segments, encoded separators).
    raw_tail = request.rel_url.raw_path.split("/", 4)[4]
    path = relay.checked_path("/" + raw_tail)
    if not raw_tail.startswith(PASSED_THROUGH):
        raise NotFound(f"only /api/... and /v2/... are passed through to nodes, not {path}", {"path": path})
    return await forward(request, node_id, path, started)


async def forward(request: web.Request, node_id: str, path: str, started: float) -> web.StreamResponse:
    """This request's method, query and body, sent to path on node_id; its answer relayed."""
    peers = peers_of(request.app[AGENT], node_id)
    raw_query = request.rel_url.raw_query_string
    path_qs = path + (f"?{raw_query}" if raw_query else "")
    body = await body_of(request) if request.body_exists else None
    answer = await peers.call(node_id, request.method, path_qs, body, request.headers)
    async with answer:
        return await relay.relay(request, answer, node_id, peers.relay_limits, started, relay.is_v2_infer(path))


# Routes about one task or model, by id: in a cluster, a call for an id this node does not
# have goes to the node that has it.
OWNED_ROUTES = frozenset({
    "task", "task-stop", "task-logs", "task-events", "task-stats",
    "model", "model-stop", "model-predict", "model-logs", "model-serve", "model-unserve",
})


async def owner_elsewhere(request: web.Request) -> str | None:
    agent = request.app[AGENT]
    route = request.match_info.route
    if agent.cluster is None or is_peer(request) or route.name not in OWNED_ROUTES:
        return None  # a peer's call is answered here or not at all: no relay loops
    owner = await agent.cluster.view.owner_of(request.match_info["id"])
    return owner if owner is not None and owner != agent.node_id else None


async def answered_here_or_by_owner(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer; for a task or model this node does not have, asked for by id,
    the answer of the node that has it (the gate's last step, cnetd/api/gate.py)."""
    started = time.monotonic()
    try:
        return await handler(request)
    except NotFound:
        owner = await owner_elsewhere(request)
        if owner is None:
            raise
    return await forward(request, owner, request.rel_url.raw_path, started)


def node_param(request: web.Request) -> str | None:
    """?node=: "all" (the whole cluster) or a node id (that node's), from the cluster view;
    None: this node's own store. On a single node "all" and its own id are this node."""
    agent = request.app[AGENT]
    node = request.query.get("node") or None
    if node is None or node == agent.node_id:
        return None
    if node != "all" and not NODE_ID_PATTERN.match(node):
        raise Invalid("node", f'must be "all" or a node id (GET /api/nodes lists them), got {node!r}')
    if agent.cluster is None:
        if node == "all":
            return None
        raise NotFound(f"node {node} is not this node, and {NOT_IN_A_CLUSTER}", {"node": node})
    return node


def target_of(agent: Agent, body: Any) -> str | None:
    """The node a create request names in "node_id" (taken out of body), or None for this node."""
    if not isinstance(body, dict) or "node_id" not in body:
        return None
    node_id = body.pop("node_id")
    if node_id is None or node_id == agent.node_id:
        return None
    if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
        raise Invalid("node_id", "must be a node id (GET /api/nodes lists them)")
    if agent.cluster is None:
        raise Invalid("node_id", f"names another node, but {NOT_IN_A_CLUSTER}; leave it out or name this node "
                                 f"({agent.node_id})")
    return node_id


async def delegate_create(request: web.Request, body: dict[str, Any], node_id: str, path: str) -> web.StreamResponse:
    """POST body (without node_id) to the same path on that node; its answer, under the relay's rules."""
    agent = request.app[AGENT]
    started = time.monotonic()
    peers = peers_of(agent, node_id)
    data = json.dumps(body).encode()
    answer = await peers.call(node_id, "POST", path, data, {"Content-Type": "application/json"}, field="node_id")
    async with answer:
        return await relay.relay(request, answer, node_id, peers.relay_limits, started)
