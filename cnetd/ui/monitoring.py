"""The model page's monitoring card: per-version charts of the last hour's roll-ups
(latency, throughput, errors) and each version's input drift, refreshed by polling."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.ml.catalog import Model
from cnetd.ui import versioncharts
from cnetd.ui.common import agent_of, page, renderer
from cnetd.ui.render import fragment_response, polled

WINDOW, WINDOW_SECONDS = "1h", 3600
DRIFT_NOTICE = 1.0  # a score from which a feature is marked as drifted


async def card_context(request: web.Request, model: Model) -> dict[str, Any] | None:
    monitor = agent_of(request).monitor
    if monitor is None:
        return None
    series = await monitor.series(model.record.id, WINDOW, WINDOW_SECONDS)
    return {
        "model": model, "series": series, "charts": versioncharts.build(series),
        "drift_notice": DRIFT_NOTICE, "this_id": model.record.id,
    }


def card(request: web.Request, ctx: dict[str, Any]) -> tuple[Any, bool]:
    inner = renderer(request).string(request, "_monitoring.html", ctx)
    url = str(request.app.router["ui-model-monitoring"].url_for(id=ctx["model"].record.id))
    return polled(request, inner, url, "monitoring", "15s")


@page
async def monitoring_part(request: web.Request) -> web.Response:
    model = await agent_of(request).models.get(request.match_info["id"])
    ctx = await card_context(request, model)
    if ctx is None:
        return web.Response(status=204)
    return fragment_response(*card(request, ctx))
