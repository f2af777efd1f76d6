"""A model's versions on its page: each version's state, role (default, previous, canary),
sha and size, with Promote, Roll back, Start canary and Abort (cnetd.ml.versions), and the
running rollout's progress with the canary's numbers beside the default's."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.errors import DomainError, Invalid
from cnetd.ml.catalog import Model
from cnetd.ml.versions.bodies import RolloutBody
from cnetd.ui.common import agent_of, check_same_origin, page, redirect, renderer
from cnetd.ui.forms import Form
from cnetd.ui.render import fragment_response, is_htmx, polled

ROLLOUT_FIELDS = ("version", "canary_percent", "duration")


async def card_context(request: web.Request, model: Model, form: Form | None = None) -> dict[str, Any]:
    agent = agent_of(request)
    name = model.record.name
    pointers, roles = agent.versions.pointer_json(name), agent.versions.roles(name)
    try:
        rows = await agent.versions.versions(name)
    except DomainError:
        rows = []
    candidates = [r.version for r in rows if r.state == "ready" and roles.get(r.model_id) != "default"]
    return {
        "model": model, "name": name, "rows": rows, "roles": roles, "pointers": pointers,
        "rollout": pointers["rollout"], "candidates": candidates,
        "form": form or Form(values={"version": str(candidates[-1]) if candidates else "", "canary_percent": "10",
                                     "duration": "5m"}),
    }


def card(request: web.Request, ctx: dict[str, Any]) -> tuple[Any, bool]:
    inner = renderer(request).string(request, "_versions.html", ctx)
    url = str(request.app.router["ui-model-versions"].url_for(id=ctx["model"].record.id))
    return polled(request, inner, url, "versions", "3s")


@page
async def versions_part(request: web.Request) -> web.Response:
    model = await agent_of(request).models.get(request.match_info["id"])
    return fragment_response(*card(request, await card_context(request, model)))


def _number(form: Form, field: str) -> int:
    text = form.get(field).strip()
    if not text.isdigit() or len(text) > 9:
        raise Invalid(field, f"must be a version number, got {text[:20]!r}")
    return int(text)


async def _act(request: web.Request, fields: tuple[str, ...], action: str) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    model = await agent.models.get(request.match_info["id"])
    name = model.record.name
    form = Form.from_post(await request.post(), fields)
    try:
        if action == "promote":
            await agent.versions.promote(name, _number(form, "version"))
        elif action == "rollback":
            await agent.versions.rollback(name)
        elif action == "abort":
            await agent.versions.abort(name)
        else:
            percent = form.get("canary_percent").strip() or "10"
            try:
                share = float(percent)
            except ValueError:
                raise Invalid("canary_percent", f"must be a number between 0 and 100, got {percent[:20]!r}") from None
            if not 0 < share <= 100:
                raise Invalid("canary_percent", "must be more than 0 and at most 100")
            body = RolloutBody(version=_number(form, "version"), canary_percent=share,
                               duration=form.get("duration").strip() or "5m")
            await agent.versions.rollout(name, body)
    except Invalid as exc:
        form.fail(exc)
    except DomainError as exc:
        form.errors[""] = exc.message
    if not is_htmx(request):
        return redirect(request, str(request.app.router["ui-model"].url_for(id=model.record.id)))
    shown = None  # the card's own rollout form
    if form.errors:
        errors = form.errors if action == "rollout" else {"": next(iter(form.errors.values()))}
        values = {k: form.get(k) for k in ROLLOUT_FIELDS} if action == "rollout" else None
        shown = Form(values=values or (await card_context(request, model))["form"].values, errors=errors)
    markup, _ = card(request, await card_context(request, model, shown))
    return fragment_response(markup)


@page
async def promote(request: web.Request) -> web.Response:
    return await _act(request, ("version",), "promote")


@page
async def rollback(request: web.Request) -> web.Response:
    return await _act(request, (), "rollback")


@page
async def rollout(request: web.Request) -> web.Response:
    return await _act(request, ROLLOUT_FIELDS, "rollout")


@page
async def abort(request: web.Request) -> web.Response:
    return await _act(request, (), "abort")
