"""V2 calls that this node cannot answer itself, in a cluster: sent on to a node that has ready
replicas of the model (its serving endpoint in etcd), so that V2 sent to any agent keeps
being answered while some replica of the model is alive anywhere.

Nodes are tried in the EndpointTable's order (never-failed ones taking turns, then the
longest-ago failed); one that cannot be reached, or that answers 404, 409, 502 or 503 (it
lost the model or its workers meanwhile) while another is left, is marked failed and the
next is tried (an inference changes nothing, so sending it again is safe). The request goes
on as it came (body bytes, Content-Type or none, Inference-Header-Content-Length); the
answer comes back under the relay's rules (JSON, or binary tensor data for an infer;
capped; X-CNET-Node naming the node). A call
another agent passed on (it carries the cluster token) is answered here or not at all, so
nothing is passed around in a loop.

When no node has a ready replica but the model's desired state says it is served, the
answer is 503 `unavailable: no live node holds model <name> ...`.
"""

from __future__ import annotations

import time

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.bodylimit import body_of
from cnetd.api.jsonbody import BINARY_ROUTES
from cnetd.cluster import relay
from cnetd.cluster.etcd import EtcdError
from cnetd.errors import DomainError, Unavailable
from cnetd.security.cluster_token import is_peer

TRY_NEXT = frozenset({404, 409, 502, 503})


def _error(status: int, message: str) -> web.Response:
    response = web.json_response({"error": message}, status=status)
    if status in (429, 503):
        response.headers["Retry-After"] = "1"
    return response


async def answer_elsewhere(request: web.Request, name: str, version: str | None) -> web.StreamResponse | None:
    """Another node's answer to this V2 request, or None when no other node has a ready
    replica of the model (or this is not a cluster, or the call came from a peer)."""
    agent = request.app[AGENT]
    cluster = agent.cluster
    if cluster is None or cluster.failover is None or is_peer(request):
        return None
    table = cluster.failover.endpoints
    try:
        endpoints = await table.live(name, version)
    except EtcdError:
        return None
    if not endpoints:
        return None
    started = time.monotonic()
    try:
        path = relay.checked_path(request.rel_url.raw_path)
    except DomainError as exc:
        return _error(400, exc.message)
    raw_query = request.rel_url.raw_query_string
    path_qs = path + (f"?{raw_query}" if raw_query else "")
    body = await body_of(request) if request.body_exists else None
    tried: list[str] = []
    for i, endpoint in enumerate(endpoints):
        last = i == len(endpoints) - 1
        try:
            answer = await cluster.peers.call(endpoint.node_id, request.method, path_qs, body, request.headers)
        except DomainError as exc:
            table.failed(endpoint.node_id)
            tried.append(f"{endpoint.node_id}: {exc.message}")
            continue
        if answer.status in TRY_NEXT and not last:
            answer.close()
            table.failed(endpoint.node_id)
            tried.append(f"{endpoint.node_id}: answered {answer.status}")
            continue
        if answer.status < 500:
            table.answered(endpoint.node_id)
        async with answer:
            binary = request.match_info.route.name in BINARY_ROUTES
            return await relay.relay(request, answer, endpoint.node_id, cluster.peers.relay_limits, started, binary)
    return _error(503, f"unavailable: no node holding model {name} answered ({'; '.join(tried)})")


async def held_nowhere(request: web.Request, name: str, version: str | None) -> web.Response | None:
    """The 503 for a model the cluster should be serving but no live node holds, or None."""
    error = await held_nowhere_error(request.app[AGENT], name, version)
    return None if error is None else _error(error.status, error.message)


async def held_nowhere_error(agent: Agent, name: str, version: str | None) -> Unavailable | None:
    """What held_nowhere answers, for any transport (the gRPC service too)."""
    cluster = agent.cluster
    if cluster is None or cluster.failover is None:
        return None
    try:
        found = await cluster.failover.desired.get(name)
    except EtcdError:
        return None
    if found is None or found.record.state != "serving":
        return None
    record = found.record
    if version is not None and version != record.model_id:
        return None
    nodes = ", ".join(sorted(set(record.placements) | set(record.holders))) or "none"
    return Unavailable(f"unavailable: no live node holds model {record.name} (version {record.model_id}; "
                       f"it was served on {nodes})")
