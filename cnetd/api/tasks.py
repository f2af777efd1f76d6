"""/api/tasks: every task, of any type."""

from __future__ import annotations

from typing import TypedDict

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.cluster import delegate_create, node_param, placed_elsewhere, target_of
from cnetd.api.errors import read_json
from cnetd.api.logs import logs_response
from cnetd.api.params import choice_param, int_param
from cnetd.api.serialize import event_json, json_response, task_json
from cnetd.tasks.model import TASK_KINDS, TASK_TYPES, Status
from cnetd.tasks.request import parse_new_task

STATUSES = tuple(str(s) for s in Status)
KINDS = TASK_KINDS


class _Filters(TypedDict):
    """The query's filters, as both TaskService.list and ClusterView.tasks take them."""

    type_: str | None
    kind: str | None
    model_id: str | None
    limit: int
    offset: int


async def list_tasks(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    status = choice_param(request, "status", STATUSES)
    filters: _Filters = {
        "type_": choice_param(request, "type", TASK_TYPES),
        "kind": choice_param(request, "kind", KINDS),
        "model_id": request.query.get("model_id") or None,
        "limit": int_param(request, "limit", 1000, 1, 10_000),
        "offset": int_param(request, "offset", 0, 0, 10**9),
    }
    node = node_param(request)
    if node is not None:
        assert agent.cluster is not None  # node_param gives a node only in a cluster
        return json_response(await agent.cluster.view.tasks(
            node_id=None if node == "all" else node, status=status, **filters))
    tasks = await agent.tasks.list(statuses=[status] if status else None, **filters)
    return json_response([task_json(t, agent.enforcement(t.sandbox)) for t in tasks])


async def create_task(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request)
    where = await placed_elsewhere(request, "task", body)
    if where is not None:
        if where.remote is not None:
            return json_response(where.remote, status=201)
        task = await agent.tasks.get(where.task_id)
        return json_response(task_json(task, agent.enforcement(task.sandbox)), status=201)
    node_id = target_of(agent, body)
    if node_id is not None:
        return await delegate_create(request, body, node_id, "/api/tasks")
    new = parse_new_task(body)
    task = await agent.tasks.create(new)
    return json_response(task_json(task, agent.enforcement(task.sandbox)), status=201)


async def get_task(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    task = await agent.tasks.get(request.match_info["id"])
    return json_response(task_json(task, agent.enforcement(task.sandbox)))


async def stop_task(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    task = await agent.tasks.stop(request.match_info["id"])
    body = task_json(task, agent.enforcement(task.sandbox))
    body["message"] = "Task stopped"
    return json_response(body)


async def task_logs(request: web.Request) -> web.StreamResponse:
    return await logs_response(request, request.match_info["id"])


async def task_events(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    events = await agent.tasks.events(request.match_info["id"])
    return json_response([event_json(e) for e in events])


async def task_stats(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    task = await agent.tasks.get(request.match_info["id"])
    usage = await agent.tasks.usage_now(task)
    return json_response({"id": task.id, "status": str(task.status), "sandbox": task.sandbox, "usage": usage})
