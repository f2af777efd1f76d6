"""/models: the model list, the deploy form (with presets), a model's page, predict, stop."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.errors import Conflict, DomainError, Invalid
from cnetd.ml.service import WarmPrediction
from cnetd.ui import detail, presets, serving
from cnetd.ui.common import agent_of, check_same_origin, page, paging, redirect, renderer
from cnetd.ui.forms import DEPLOY_FIELDS, Form, body_to_form, deploy_body, input_data
from cnetd.ui.pages import detail_page, recent_predictions
from cnetd.ui.render import fragment_response, is_htmx, polled


def blank_form() -> Form:
    return Form(values={n: "" for n in DEPLOY_FIELDS})


def preset_form(key: str | None) -> Form:
    chosen = presets.preset(key)
    return body_to_form(chosen.body, DEPLOY_FIELDS) if chosen else blank_form()


async def _model_list(request: web.Request) -> tuple[Any, bool]:
    agent = agent_of(request)
    at = paging(request)
    models = await agent.models.list()
    shown = models[at.offset : at.offset + at.per_page]
    ctx = {
        "models": [(m, serving.describe(agent, m)) for m in shown],
        "total": len(models),
        "page": at.page,
        "has_next": len(models) > at.offset + at.per_page,
        "first": at.offset + 1,
    }
    inner = renderer(request).string(request, "_model_list.html", ctx)
    url = str(request.app.router["ui-models"].url_for().with_query({"page": str(at.page)} if at.page > 1 else {}))
    return polled(request, inner, url, "model-list", "2s")


def _page(request: web.Request, model_list: Any, form: Form, status: int = 200) -> web.Response:
    ctx = {
        "model_list": model_list, "form": form, "presets": presets.PRESETS,
        "ml_enabled": agent_of(request).config.ml.enabled, "nav": "models",
    }
    return renderer(request).response(request, "models.html", ctx, status=status)


async def models_page(request: web.Request) -> web.Response:
    model_list, unchanged = await _model_list(request)
    if is_htmx(request):
        return fragment_response(model_list, unchanged)
    return _page(request, model_list, preset_form(request.query.get("preset")))


async def deploy_form(request: web.Request) -> web.Response:
    """The form alone, filled from a preset (?preset=linear_regression) or blank."""
    form = preset_form(request.query.get("preset"))
    if not is_htmx(request):
        raise web.HTTPSeeOther(str(request.app.router["ui-models"].url_for().with_query(request.query)))
    return renderer(request).response(request, "_deploy_form.html", {"form": form, "presets": presets.PRESETS})


async def deploy(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    form = Form.from_post(await request.post(), DEPLOY_FIELDS)
    try:
        model = await agent.models.deploy(deploy_body(form))
    except Invalid as exc:
        form.fail(exc)
    except DomainError as exc:
        form.errors[""] = exc.message
    else:
        return redirect(request, str(request.app.router["ui-model"].url_for(id=model.record.id)))
    if is_htmx(request):
        return renderer(request).response(request, "_deploy_form.html", {"form": form, "presets": presets.PRESETS})
    model_list, _ = await _model_list(request)
    return _page(request, model_list, form, status=422)


@page
async def model_page(request: web.Request) -> web.Response:
    model = await agent_of(request).models.get(request.match_info["id"])
    return await detail_page(request, model.task, model, as_model=True)


@page
async def predict(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    model_id = request.match_info["id"]
    model = await agent.models.get(model_id)
    form = Form.from_post(await request.post(), ("input_data",))
    outcome = warm = None
    try:
        answer = await agent.models.predict(model_id, {"input_data": input_data(form.get("input_data"))}, wait=True)
        if isinstance(answer, WarmPrediction):
            warm = answer
        else:
            outcome = answer
    except Invalid as exc:
        form.fail(exc)
    except DomainError as exc:
        form.errors["input_data"] = exc.message
    ctx = {
        "model": model, "predict_form": form, "outcome": outcome, "warm": warm,
        "predictions": await recent_predictions(request, model_id), "oob": True,
    }
    if not is_htmx(request):
        # Without JavaScript: the whole model page, with the answer in it.
        return await detail_page(request, model.task, model, as_model=True, extra={**ctx, "oob": False})
    return renderer(request).response(request, "_predict.html", ctx)


@page
async def stop(request: web.Request) -> web.Response:
    """The model page's Stop: the model's warm workers and its deploy task, as
    DELETE /api/ml/models/{id} does."""
    check_same_origin(request)
    agent = agent_of(request)
    model_id = request.match_info["id"]
    try:
        model = await agent.models.stop(model_id, wait=False)
    except Conflict:
        model = await agent.models.get(model_id)  # it ended meanwhile: the summary shows how
    if not is_htmx(request):
        return redirect(request, str(request.app.router["ui-model"].url_for(id=model_id)))
    ctx = detail.summary_context(agent, model.task, model)
    return renderer(request).response(request, "_summary.html", ctx)
