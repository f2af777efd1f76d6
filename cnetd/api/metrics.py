"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.metrics.collect import render
from cnetd.metrics.prometheus import CONTENT_TYPE


async def metrics(request: web.Request) -> web.Response:
    text = await render(request.app[AGENT])
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
