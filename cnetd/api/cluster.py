"""/api/cluster/heartbeat (children report here), /api/nodes (this node and its children),
and /api/nodes/{node_id}/{api|v2}/... (any call passed through to a child)."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.errors import read_json
from cnetd.api.serialize import json_response
from cnetd.cluster import relay
from cnetd.cluster.report import parse_report
from cnetd.errors import NotFound
from cnetd.security.auth import bearer_token

PASSED_THROUGH = ("api/", "v2/")


def self_json(agent: Agent) -> dict[str, Any]:
    return {
        **agent.identity.brief(),
        "role": "self",
        "url": agent.federation.url,
        "status": "online",
        "sandbox": agent.sandbox_name,
        "parent": agent.federation.parent_json(),
    }


async def heartbeat(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    report = parse_report(await read_json(request))
    node = await agent.federation.registry.heartbeat(report, bearer_token(request))
    identity = agent.identity
    parent = {"node_id": identity.node_id, "node_name": identity.node_name, "url": agent.federation.url}
    return json_response({"accepted": True, "node": node, "parent": parent})


async def list_nodes(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response([self_json(agent), *await agent.federation.registry.list()])


async def get_node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node_id = request.match_info["node_id"]
    if node_id == agent.node_id:
        return json_response(self_json(agent))
    return json_response(await agent.federation.registry.get(node_id))


async def forget_node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node_id = request.match_info["node_id"]
    await agent.federation.registry.forget(node_id)
    return json_response({"node_id": node_id, "message": "node forgotten"})


async def pass_through(request: web.Request) -> web.StreamResponse:
    """The same call on a child: /api/nodes/c1/api/tasks/x is c1's /api/tasks/x, under the
    relay's rules (a plain path; JSON, SSE or text back; capped in size and time)."""
    agent = request.app[AGENT]
    started = time.monotonic()
    node_id = request.match_info["node_id"]
    # Pass the path on as it was sent (still percent-encoded): decoding it here would turn
    # an escaped "?" inside an id into structure. The relay refuses what could be read as
    # another path (dot segments, encoded separators).
    raw_tail = request.rel_url.raw_path.split("/", 4)[4]
    path = relay.checked_path("/" + raw_tail)
    if not raw_tail.startswith(PASSED_THROUGH):
        raise NotFound(f"only /api/... and /v2/... are passed through to nodes, not {path}", {"path": path})
    raw_query = request.rel_url.raw_query_string
    path_qs = path + (f"?{raw_query}" if raw_query else "")
    body = await request.read() if request.can_read_body else None
    answer = await agent.federation.call(node_id, request.method, path_qs, body, request.headers)
    async with answer:
        return await relay.relay(request, answer, node_id, agent.federation.relay_limits, started)


async def delegate_create(request: web.Request, body: dict[str, Any], node_id: str, path: str) -> web.StreamResponse:
    """POST body (without node_id) to the same path on the child; its answer, under the relay's rules."""
    agent = request.app[AGENT]
    started = time.monotonic()
    data = json.dumps(body).encode()
    answer = await agent.federation.call(node_id, "POST", path, data, {"Content-Type": "application/json"},
                                         field="node_id")
    async with answer:
        return await relay.relay(request, answer, node_id, agent.federation.relay_limits, started)
