"""The task page and the model page: one detail page, the model page adds the
predict form and the model's recent predictions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.ml.catalog import Model
from cnetd.tasks.model import Task
from cnetd.ui import detail, monitoring, serving, versions
from cnetd.ui.common import agent_of, renderer
from cnetd.ui.forms import Form
from cnetd.ui.live import usage_fragment
from cnetd.ui.remote import Remote

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
    versions_card = None
    if as_model and model is not None and getattr(agent, "versions", None) is not None:
        versions_card, _ = versions.card(request, await versions.card_context(request, model))
    monitoring_card = None
    if as_model and model is not None and (monitored := await monitoring.card_context(request, model)) is not None:
        monitoring_card, _ = monitoring.card(request, monitored)
    ctx = {
        **detail.summary_context(agent, task, model),
        **await detail.timeline_context(agent, task),
        "logs": logs,
        "usage": usage,
        "serving_card": serving_card,
        "versions_card": versions_card,
        "monitoring_card": monitoring_card,
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


async def remote_page(request: web.Request, found: Remote, as_model: bool) -> web.Response:
    """The same page for a task (or model) another node has: read-only, as that node
    answered when the page was made (no live stream, no usage chart, no predict form)."""
    task = found.task
    lines = found.lines
    ctx = {
        "task": task,
        "stage": detail.stage(task),
        "model": found.model,
        "active": not task.status.terminal and not found.lost,
        "show_progress": task.progress is not None,
        "enforced": found.enforced,
        "python_env": None,  # another node's environments are that node's to show
        "events": found.events,
        "logs": detail.LogTail(lines, lines[-1][0] if lines else 0, 0, None),
        "usage": None,
        "serving_card": None,
        "versions_card": None,  # versions and monitoring are the other node's to show
        "monitoring_card": None,
        "as_model": as_model,
        "predict_form": Form(values={"input_data": ""}),
        "outcome": None,
        "warm": None,
        "predictions": [],
        "nav": "models" if as_model else "tasks",
        "oob": False,
        "remote": found,
    }
    return renderer(request).response(request, "detail.html", ctx)
