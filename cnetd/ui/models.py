"""/models: the model list, the deploy form (with presets), a model's page, predict, stop."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.errors import Conflict, DomainError, Invalid, NotFound
from cnetd.ml.service import WarmPrediction
from cnetd.ui import detail, placing, presets, remote, serving
from cnetd.ui.cluster import cluster_list, node_choice, placement_choices, poll_every
from cnetd.ui.common import agent_of, check_same_origin, page, paging, redirect, renderer
from cnetd.ui.forms import DEPLOY_FIELDS, PLACEMENT_FIELDS, Form, body_to_form, deploy_body, input_data
from cnetd.ui.pages import detail_page, recent_predictions, remote_page
from cnetd.ui.render import fragment_response, is_htmx, polled

FIELDS = (*DEPLOY_FIELDS, *PLACEMENT_FIELDS)


def blank_form() -> Form:
    return Form(values={n: "" for n in FIELDS})


def preset_form(key: str | None) -> Form:
    chosen = presets.preset(key)
    return body_to_form(chosen.body, FIELDS) if chosen else blank_form()


async def _model_list(request: web.Request) -> tuple[Any, bool]:
    agent = agent_of(request)
    at = paging(request)
    node = node_choice(request)
    ctx: dict[str, Any] = {
        "page": at.page, "first": at.offset + 1, "node": node, "in_cluster": agent.cluster is not None,
        "this_node": agent.node_id, "problem": None, "rows": [], "models": [], "total": 0,
    }
    if node:
        found = await cluster_list(agent, node, models_only=True, limit=at.per_page + 1, offset=at.offset)
        ctx.update(rows=found.rows[: at.per_page], has_next=len(found.rows) > at.per_page, problem=found.problem)
    else:
        models = await agent.models.list()
        shown = models[at.offset : at.offset + at.per_page]
        ctx.update(models=[(m, serving.describe(agent, m)) for m in shown], total=len(models),
                   has_next=len(models) > at.offset + at.per_page)
    inner = renderer(request).string(request, "_model_list.html", ctx)
    query = {"node": node} if node else {}
    if at.page > 1:
        query["page"] = str(at.page)
    url = str(request.app.router["ui-models"].url_for().with_query(query))
    return polled(request, inner, url, "model-list", poll_every(node))


async def _page(request: web.Request, model_list: Any, form: Form, status: int = 200) -> web.Response:
    agent = agent_of(request)
    ctx = {
        "model_list": model_list, "form": form, "presets": presets.PRESETS,
        "ml_enabled": agent.config.ml.enabled, "nav": "models",
        "in_cluster": agent.cluster is not None, "node": node_choice(request),
        "placement": await placement_choices(agent),
    }
    return renderer(request).response(request, "models.html", ctx, status=status)


async def models_page(request: web.Request) -> web.Response:
    model_list, unchanged = await _model_list(request)
    if is_htmx(request):
        return fragment_response(model_list, unchanged)
    return await _page(request, model_list, preset_form(request.query.get("preset")))


async def _form_response(request: web.Request, form: Form) -> web.Response:
    ctx = {"form": form, "presets": presets.PRESETS, "placement": await placement_choices(agent_of(request))}
    return renderer(request).response(request, "_deploy_form.html", ctx)


async def deploy_form(request: web.Request) -> web.Response:
    """The form alone, filled from a preset (?preset=linear_regression) or blank."""
    form = preset_form(request.query.get("preset"))
    if not is_htmx(request):
        raise web.HTTPSeeOther(str(request.app.router["ui-models"].url_for().with_query(request.query)))
    return await _form_response(request, form)


async def deploy(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    form = Form.from_post(await request.post(), FIELDS)
    try:
        created = await placing.submit(agent, "model", deploy_body(form))
    except DomainError as exc:
        placing.show(form, exc, placed=form.get("placement") not in ("", "here"))
    else:
        query = {"node": created.node_id} if created.node_id != agent.node_id else {}
        return redirect(request, str(request.app.router["ui-model"].url_for(id=created.id).with_query(query)))
    if is_htmx(request):
        return await _form_response(request, form)
    model_list, _ = await _model_list(request)
    return await _page(request, model_list, form, status=422)


@page
async def model_page(request: web.Request) -> web.Response:
    agent = agent_of(request)
    model_id = request.match_info["id"]
    try:
        model = await agent.models.get(model_id)
    except NotFound:
        found = await remote.find(agent, model_id, request.query.get("node", ""), as_model=True)
        if found is None or found.model is None:
            raise
        return await remote_page(request, found, as_model=True)
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
