"""/api/health, /api/node, /api/resources: what this node is and has."""

from __future__ import annotations

from aiohttp import web

from cnetd import __version__
from cnetd.agent import AGENT
from cnetd.api.serialize import json_response


async def health(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response({
        "status": "ok",
        "version": __version__,
        "node_id": agent.node_id,
        "uptime_seconds": round(agent.uptime, 3),
        "started_at": agent.started_at,
        "sandbox": agent.sandbox_summary(),
        "tasks": await agent.tasks.counts(),
        "tls": agent.config.agent.tls.enabled,
    })


async def node(request: web.Request) -> web.Response:
    return json_response(request.app[AGENT].node_json())


async def resources(request: web.Request) -> web.Response:
    return json_response(request.app[AGENT].resources.totals())


async def resources_usage(request: web.Request) -> web.Response:
    return json_response(request.app[AGENT].resources.usage())
