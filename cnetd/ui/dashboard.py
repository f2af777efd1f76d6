"""The dashboard (/) and the nodes page (/nodes)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from markupsafe import Markup

from cnetd.agent import Agent
from cnetd.cluster.directory import ClusterUnavailable
from cnetd.ui.common import STATUSES, agent_of, renderer
from cnetd.ui.render import fragment_response, polled

RECENT = 10


def node_context(agent: Agent) -> dict[str, Any]:
    node = agent.node_json()  # what /api/node says
    return {"node": node, "sandbox": node["sandbox"]}


async def resources_fragment(request: web.Request) -> tuple[Markup, bool]:
    agent = agent_of(request)
    ctx = {"usage": agent.resources.usage(), "uptime": agent.uptime, "gpus": (await agent.gpu_status()).to_json()}
    inner = renderer(request).string(request, "_resources.html", ctx)
    markup, unchanged = polled(request, inner, "/fragments/resources", "resources", "2s")
    return markup, unchanged


async def activity_fragment(request: web.Request) -> tuple[Markup, bool]:
    agent = agent_of(request)
    counts = await agent.tasks.counts()
    recent = await agent.tasks.list(limit=RECENT)
    ctx = {"counts": counts, "total": sum(counts.values()), "statuses": STATUSES, "recent": recent}
    inner = renderer(request).string(request, "_activity.html", ctx)
    markup, unchanged = polled(request, inner, "/fragments/activity", "activity", "2s")
    return markup, unchanged


async def dashboard(request: web.Request) -> web.Response:
    agent = agent_of(request)
    resources, _ = await resources_fragment(request)
    activity, _ = await activity_fragment(request)
    ctx = {**node_context(agent), "resources": resources, "activity": activity, "nav": "dashboard"}
    return renderer(request).response(request, "dashboard.html", ctx)


async def resources_part(request: web.Request) -> web.Response:
    return fragment_response(*await resources_fragment(request))


async def activity_part(request: web.Request) -> web.Response:
    return fragment_response(*await activity_fragment(request))


async def cluster_fragment(request: web.Request) -> tuple[Markup, bool]:
    agent = agent_of(request)
    ctx: dict[str, Any] = {"cluster": None, "nodes": [], "problem": None, "this_node": agent.node_id}
    if agent.cluster is not None:
        ctx["cluster"] = agent.cluster.status_json()
        try:
            ctx["nodes"] = await agent.cluster.nodes_json()
        except ClusterUnavailable as exc:
            ctx["problem"] = exc.message
    inner = renderer(request).string(request, "_cluster.html", ctx)
    return polled(request, inner, "/fragments/cluster", "cluster", "2s")


async def cluster_part(request: web.Request) -> web.Response:
    return fragment_response(*await cluster_fragment(request))


async def nodes(request: web.Request) -> web.Response:
    agent = agent_of(request)
    cluster, _ = await cluster_fragment(request)
    ctx = {**node_context(agent), "totals": agent.resources.totals(), "cluster": cluster, "nav": "nodes"}
    return renderer(request).response(request, "nodes.html", ctx)
