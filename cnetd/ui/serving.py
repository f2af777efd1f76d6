"""Warm serving on the model page: its state and serve / stop-serving. Shown only when
this agent has the serving API (POST/DELETE /api/ml/models/{id}/serve) and its
ServingManager. (The predict form's warm path is ModelService.predict's.)"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.agent import Agent
from cnetd.errors import DomainError, Invalid
from cnetd.ml.catalog import Model
from cnetd.ui.common import agent_of, check_same_origin, page, redirect, renderer, ui_of
from cnetd.ui.forms import Form
from cnetd.ui.render import fragment_response, is_htmx, polled
from cnetd.ui.scalechart import Chart, chart

SERVE_PATH = "/api/ml/models/{id}/serve"
ACTIVE_STATES = ("serving", "awaiting_training")


def manager(agent: Agent) -> Any | None:
    return getattr(agent, "serving", None)


def available(request: web.Request) -> bool:
    ui = ui_of(request)
    return (
        manager(agent_of(request)) is not None
        and ui.has_route(request.app, "POST", SERVE_PATH)
        and ui.has_route(request.app, "DELETE", SERVE_PATH)
    )


def describe(agent: Agent, model: Model) -> dict[str, Any] | None:
    """The live serving state when the manager has one, else what the store says."""
    serving = manager(agent)
    if serving is not None:
        try:
            return serving.describe(model.record)  # type: ignore[no-any-return]
        except Exception:  # a UI must not fail on a part it only shows
            return model.record.serving
    return model.record.serving


def replicas_chart(agent: Agent, model: Model) -> Chart | None:
    """The replicas of the last minutes, for a model whose replicas the autoscaler moves."""
    serving = manager(agent)
    served = serving.served(model.record.id) if serving is not None else None
    if served is None or not served.spec.autoscaled:
        return None
    return chart(list(served.scaling.history), served.spec.max_replicas)


def card_context(request: web.Request, model: Model, form: Form | None = None) -> dict[str, Any]:
    state = describe(agent_of(request), model)
    return {
        "chart": replicas_chart(agent_of(request), model),
        "model": model,
        "task": model.task,
        "state": state,
        "active": bool(state and state.get("state") in ACTIVE_STATES),
        "serve_form": form or Form(values={"replicas": str((state or {}).get("replicas") or 1)}),
    }


def card(request: web.Request, ctx: dict[str, Any]) -> tuple[Any, bool]:
    inner = renderer(request).string(request, "_serving.html", ctx)
    url = str(request.app.router["ui-model-serving"].url_for(id=ctx["model"].record.id))
    return polled(request, inner, url, "serving", "3s")


@page
async def serving_part(request: web.Request) -> web.Response:
    model = await agent_of(request).models.get(request.match_info["id"])
    return fragment_response(*card(request, card_context(request, model)))


@page
async def serve(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    model_id = request.match_info["id"]
    form = Form.from_post(await request.post(), ("replicas",))
    try:
        replicas = form.get("replicas").strip() or "1"
        if not replicas.isdigit():
            raise Invalid("replicas", f"must be a whole number between 1 and 64, got {replicas!r}")
        await manager(agent).serve(model_id, {"replicas": int(replicas)})  # type: ignore[union-attr]
    except Invalid as exc:
        form.fail(exc)
    except DomainError as exc:
        form.errors[""] = exc.message
    return await _answer(request, model_id, form)


@page
async def unserve(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    model_id = request.match_info["id"]
    form = None
    try:
        await manager(agent).unserve(model_id)  # type: ignore[union-attr]
    except DomainError as exc:
        form = Form(values={"replicas": "1"}, errors={"": exc.message})
    return await _answer(request, model_id, form)


async def _answer(request: web.Request, model_id: str, form: Form | None) -> web.Response:
    if not is_htmx(request):
        return redirect(request, str(request.app.router["ui-model"].url_for(id=model_id)))
    model = await agent_of(request).models.get(model_id)
    markup, _ = card(request, card_context(request, model, form))
    return fragment_response(markup)
