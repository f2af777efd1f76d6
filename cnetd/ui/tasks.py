"""/tasks: every task with filters, the start-a-process form, a task's page, stop."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from cnetd.errors import Conflict, DomainError, NotFound
from cnetd.tasks.model import TASK_KINDS, TASK_TYPES
from cnetd.ui import detail, placing, remote
from cnetd.ui.cluster import cluster_list, node_choice, placement_choices, poll_every
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
from cnetd.ui.forms import PLACEMENT_FIELDS, TASK_FIELDS, Form, task_body
from cnetd.ui.pages import detail_page, remote_page
from cnetd.ui.render import fragment_response, is_htmx, polled

KINDS = TASK_KINDS
FIELDS = (*TASK_FIELDS, *PLACEMENT_FIELDS)


async def _task_list(request: web.Request) -> tuple[Any, bool, dict[str, str]]:
    agent = agent_of(request)
    filters = {
        "status": choice(request, "status", STATUSES),
        "type": choice(request, "type", TASK_TYPES),
        "kind": choice(request, "kind", KINDS),
    }
    node = node_choice(request)
    at = paging(request)
    problem = None
    if node:
        found = await cluster_list(agent, node, status=filters["status"] or None, type_=filters["type"] or None,
                                   kind=filters["kind"] or None, limit=at.per_page + 1, offset=at.offset)
        rows: list[Any] = list(found.rows)
        problem = found.problem
    else:
        rows = await agent.tasks.list(
            statuses=[filters["status"]] if filters["status"] else None,
            type_=filters["type"] or None,
            kind=filters["kind"] or None,
            limit=at.per_page + 1,
            offset=at.offset,
        )
    query = {k: v for k, v in filters.items() if v}
    if node:
        query["node"] = node
    ctx = {
        "tasks": rows[: at.per_page],
        "page": at.page,
        "has_next": len(rows) > at.per_page,
        "first": at.offset + 1,
        "filters": query,
        "filtered": any(filters.values()),
        "in_cluster": agent.cluster is not None,
        "node": node,
        "this_node": agent.node_id,
        "problem": problem,
    }
    inner = renderer(request).string(request, "_task_list.html", ctx)
    if at.page > 1:
        query["page"] = str(at.page)
    url = str(request.app.router["ui-tasks"].url_for().with_query(query))
    markup, unchanged = polled(request, inner, url, "task-list", poll_every(node))
    return markup, unchanged, {**filters, "node": node}


async def _form_page(request: web.Request, form: Form, filters: dict[str, str], task_list: Any,
                     status: int = 200) -> web.Response:
    agent = agent_of(request)
    ctx = {
        "task_list": task_list, "filters": filters, "statuses": STATUSES, "types": TASK_TYPES, "kinds": KINDS,
        "form": form, "nav": "tasks", "in_cluster": agent.cluster is not None,
        "placement": await placement_choices(agent),
    }
    return renderer(request).response(request, "tasks.html", ctx, status=status)


async def tasks_page(request: web.Request) -> web.Response:
    task_list, unchanged, filters = await _task_list(request)
    if is_htmx(request):
        return fragment_response(task_list, unchanged)
    return await _form_page(request, Form(values={n: "" for n in FIELDS}), filters, task_list)


async def create_task(request: web.Request) -> web.Response:
    check_same_origin(request)
    agent = agent_of(request)
    form = Form.from_post(await request.post(), FIELDS)
    try:
        created = await placing.submit(agent, "task", task_body(form))
    except DomainError as exc:
        placing.show(form, exc, placed=form.get("placement") not in ("", "here"))
    else:
        query = {"node": created.node_id} if created.node_id != agent.node_id else {}
        return redirect(request, str(request.app.router["ui-task"].url_for(id=created.id).with_query(query)))
    if is_htmx(request):  # 200, so htmx swaps the form in (the errors are not a failure of the page)
        ctx = {"form": form, "placement": await placement_choices(agent)}
        return renderer(request).response(request, "_task_form.html", ctx)
    task_list, _, filters = await _task_list(request)
    return await _form_page(request, form, filters, task_list, status=422)


@page
async def task_page(request: web.Request) -> web.Response:
    agent = agent_of(request)
    task_id = request.match_info["id"]
    try:
        task = await agent.tasks.get(task_id)
    except NotFound:
        found = await remote.find(agent, task_id, request.query.get("node", ""), as_model=False)
        if found is None:
            raise
        return await remote_page(request, found, as_model=False)
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
