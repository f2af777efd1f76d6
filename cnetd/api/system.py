"""/api/health, /api/node, /api/resources: what this node is and has."""

from __future__ import annotations

from aiohttp import web

from cnetd import __version__
from cnetd.agent import AGENT
from cnetd.api.serialize import json_response
from cnetd.security.cluster_token import is_peer
from cnetd.security.login import AUTHENTICATOR


def may_see_details(request: web.Request) -> bool:
    """/api/health answers anyone; what etcd endpoints fail, and why, only a caller with a token."""
    auth = request.app[AUTHENTICATOR]
    return not auth.enabled or is_peer(request) or auth.bearer_ok(request) or auth.session_ok(request)


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    body = {
        "status": "ok",
        "version": __version__,
        "node_id": agent.node_id,
        "uptime_seconds": round(agent.uptime, 3),
        "started_at": agent.started_at,
        "sandbox": agent.sandbox_summary(),
        "tasks": await agent.tasks.counts(),
        "tls": agent.config.agent.tls.enabled,
    }
    if agent.cluster is not None:  # a single node says nothing about a cluster
        body["cluster"] = agent.cluster.health
        if agent.cluster.health != "ok" and may_see_details(request):
            status = agent.cluster.membership.status
            body["cluster_detail"] = {
                "problem": status.problem, "since": status.since,
                "unreachable": [{"endpoint": endpoint, "error": why} for endpoint, why in status.unreachable],
            }
    return json_response(body)


async def node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response({**agent.node_json(), "gpus": (await agent.gpu_status()).to_json()})


async def resources(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response({**agent.resources.totals(), "gpu": (await agent.gpu_status()).to_json()})


async def resources_usage(request: web.Request) -> web.Response:
    return json_response(request.app[AGENT].resources.usage())
