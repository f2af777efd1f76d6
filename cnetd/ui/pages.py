"""The task page and the model page: one detail page, the model page adds the
predict form and the model's recent predictions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.ml.catalog import Model
from cnetd.tasks.model import Task
from cnetd.ui import detail, serving
from cnetd.ui.common import agent_of, renderer
from cnetd.ui.forms import Form
from cnetd.ui.live import usage_fragment

RECENT_PREDICTIONS = 10


async def recent_predictions(request: web.Request, model_id: str) -> list[Task]:
    return await agent_of(request).tasks.list(model_id=model_id, kind="predict", limit=RECENT_PREDICTIONS)


async def detail_page(
    request: web.Request, task: Task, model: Model | None, as_model: bool, extra: dict[str, Any] | None = None
) -> web.Response:
    agent = agent_of(request)
    logs = await detail.log_tail(agent, task.id)
    usage, _ = usage_fragment(request, detail.usage_context(agent, task))
    serving_card = None
    if as_model and model is not None and serving.available(request):
        serving_card, _ = serving.card(request, serving.card_context(request, model))
    ctx = {
        **detail.summary_context(agent, task, model),
        **await detail.timeline_context(agent, task),
        "logs": logs,
        "usage": usage,
        "serving_card": serving_card,
        "as_model": as_model,
        "predict_form": Form(values={"input_data": ""}),
        "outcome": None,
        "warm": None,
        "predictions": await recent_predictions(request, task.id) if as_model else [],
        "nav": "models" if as_model else "tasks",
        "oob": False,
        **(extra or {}),
    }
    return renderer(request).response(request, "detail.html", ctx)
