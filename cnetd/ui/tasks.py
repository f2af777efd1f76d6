"""/tasks: every task with filters, the start-a-process form, a task's page, stop."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from cnetd.errors import Conflict, DomainError, Invalid
from cnetd.tasks.model import ML_KINDS, TASK_TYPES
from cnetd.tasks.request import parse_new_task
from cnetd.ui import detail
from cnetd.ui.common import (
    STATUSES,
    agent_of,
    check_same_origin,
    choice,
    page,
    paging,
    redirect,
    renderer,
)
from cnetd.ui.forms import TASK_FIELDS, Form, task_body
from cnetd.ui.pages import detail_page
from cnetd.ui.render import fragment_response, is_htmx, polled

KINDS = (*ML_KINDS, "run")


async def _task_list(request: web.Request) -> tuple[Any, bool, dict[str, str]]:
    agent = agent_of(request)
    filters = {
        "status": choice(request, "status", STATUSES),
        "type": choice(request, "type", TASK_TYPES),
        "kind": choice(request, "kind", KINDS),
    }
    at = paging(request)
    rows = await agent.tasks.list(
        statuses=[filters["status"]] if filters["status"] else None,
        type_=filters["type"] or None,
        kind=filters["kind"] or None,
        limit=at.per_page + 1,
        offset=at.offset,
    )
    ctx = {
        "tasks": rows[: at.per_page],
        "page": at.page,
        "has_next": len(rows) > at.per_page,
        "first": at.offset + 1,
        "filters": filters,
        "filtered": any(filters.values()),
    }
    inner = renderer(request).string(request, "_task_list.html", ctx)
    query = {k: v for k, v in filters.items() if v}
    if at.page > 1:
        query["page"] = str(at.page)
    url = str(request.app.router["ui-tasks"].url_for().with_query(query))
    markup, unchanged = polled(request, inner, url, "task-list", "2s")
    return markup, unchanged, filters


def _form_page(request: web.Request, form: Form, filters: dict[str, str], task_list: Any, status: int = 200) -> web.Response:
    ctx = {
        "task_list": task_list, "filters": filters, "statuses": STATUSES, "types": TASK_TYPES, "kinds": KINDS,
        "form": form, "nav": "tasks",
    }
    return renderer(request).response(request, "tasks.html", ctx, status=status)


async def tasks_page(request: web.Request) -> web.Response:
    task_list, unchanged, filters = await _task_list(request)
    if is_htmx(request):
        return fragment_response(task_list, unchanged)
    return _form_page(request, Form(values={n: "" for n in TASK_FIELDS}), filters, task_list)


async def create_task(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    form = Form.from_post(await request.post(), TASK_FIELDS)
    try:
        task = await agent.tasks.create(parse_new_task(task_body(form)))
    except Invalid as exc:
        form.fail(exc)
    except DomainError as exc:
        form.errors[""] = exc.message
    else:
        return redirect(request, str(request.app.router["ui-task"].url_for(id=task.id)))
    if is_htmx(request):  # 200, so htmx swaps the form in (the errors are not a failure of the page)
        return renderer(request).response(request, "_task_form.html", {"form": form})
    task_list, _, filters = await _task_list(request)
    return _form_page(request, form, filters, task_list, status=422)


@page
async def task_page(request: web.Request) -> web.Response:
    agent = agent_of(request)
    task = await agent.tasks.get(request.match_info["id"])
    model = await detail.find_model(agent, task)
    return await detail_page(request, task, model, as_model=False)


@page
async def stop_task(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    task_id = request.match_info["id"]
    with contextlib.suppress(Conflict):  # it ended meanwhile: the summary below shows how
        await agent.tasks.stop(task_id, wait=False)
    task = await agent.tasks.get(task_id)
    model = await detail.find_model(agent, task)
    if not is_htmx(request):
        name = "ui-model" if model is not None else "ui-task"
        return redirect(request, str(request.app.router[name].url_for(id=task_id)))
    ctx = detail.summary_context(agent, task, model)
    return renderer(request).response(request, "_summary.html", ctx)
