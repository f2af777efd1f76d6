"""GET /api/ml/models/{id}/metrics: a model's per-version roll-ups (by name or deploy id)."""

from __future__ import annotations

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.serialize import json_response
from cnetd.errors import Unavailable
from cnetd.ml.monitor.window import parse_window


async def model_metrics(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    window, seconds = parse_window(request.query.get("window"))
    if agent.monitor is None:
        raise Unavailable("model monitoring is not running on this agent")
    return json_response(await agent.monitor.series(request.match_info["id"], window, seconds))
