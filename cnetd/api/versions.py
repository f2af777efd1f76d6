"""/api/ml/models/{id-or-name}/versions, promote, rollback, rollout: a model's versions and
its default/previous/canary pointers (cnetd.ml.versions)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.errors import read_json
from cnetd.api.serialize import json_response
from cnetd.bodies.decode import decode_body
from cnetd.errors import NotFound
from cnetd.ml.versions.bodies import PromoteBody, RegisterBody, RolloutBody
from cnetd.ml.versions.service import Switch, VersionRow


async def name_of(agent: Agent, id_or_name: str) -> str:
    """The model name a route's {id} names: a deploy id's name, or a name with versions."""
    model = await agent.models.find(id_or_name)
    if model is not None:
        return model.record.name
    if agent.versions.default_id(id_or_name) is not None or await agent.models.named(id_or_name):
        return id_or_name
    raise NotFound(f"model {id_or_name} not found", {"id": id_or_name})


async def deploy_id_of(agent: Agent, id_or_name: str) -> str:
    """A deploy id as it is; a name: its default version's deploy (its newest when it has none)."""
    if agent.serving.served(id_or_name) is not None:  # a served deploy id: known without a store read (a thread hop)
        return id_or_name
    if await agent.models.find(id_or_name) is not None:
        return id_or_name
    default = agent.versions.default_id(id_or_name)
    if default is not None:
        return default
    named = await agent.models.named(id_or_name)
    if named:
        return named[0].id
    raise NotFound(f"model {id_or_name} not found", {"id": id_or_name})


async def version_json(agent: Agent, row: VersionRow, roles: dict[str, str]) -> dict[str, Any]:
    model = await agent.models.find(row.model_id)
    served = agent.serving.served(row.model_id)
    return {
        "version": row.version,
        "model_id": row.model_id,
        "state": row.state,
        "reason": row.reason,
        "role": roles.get(row.model_id),
        "sha256": row.sha256,
        "size": row.size,
        "artifact": row.artifact,
        "sidecars": list(row.files),
        "source": row.source,
        "promote": row.promote,
        "created_at": row.created_at,
        "ready_at": row.ready_at,
        "served": served is not None,
        "ready_replicas": served.ready_replicas if served is not None else 0,
        "training_status": str(model.task.status) if model is not None else None,
        "training_result": model.task.result if model is not None else None,
    }


async def versions_list(agent: Agent, name: str) -> dict[str, Any]:
    """The name's pointers and its versions, each with its role as those pointers say."""
    pointers, roles = agent.versions.pointer_json(name), agent.versions.roles(name)  # one moment's
    rows = await agent.versions.versions(name)
    return {"name": name, **pointers, "versions": [await version_json(agent, row, roles) for row in rows]}


async def model_by_name(agent: Agent, name: str) -> dict[str, Any]:
    """GET /api/ml/models/{name}: the model with its pointers and versions."""
    return {**await versions_list(agent, name), "events": (await agent.versions.events(name))[-50:]}


async def list_versions(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return json_response(await versions_list(agent, await name_of(agent, request.match_info["id"])))


async def register_version(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = await name_of(agent, request.match_info["id"])
    body = decode_body(await read_json(request), RegisterBody)
    row = await agent.versions.recorder.register(name, body.artifact, body.promote)
    agent.versions.note_registered(row)
    return json_response(await version_json(agent, row, agent.versions.roles(name)), status=201)


def _switch_json(agent: Agent, name: str, switch: Switch) -> dict[str, Any]:
    return {"name": name, "version": switch.version, "model_id": switch.model_id, "reloaded": switch.reloaded,
            "message": switch.message, **agent.versions.pointer_json(name)}


async def promote(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = await name_of(agent, request.match_info["id"])
    body = decode_body(await read_json(request), PromoteBody)
    return json_response(_switch_json(agent, name, await agent.versions.promote(name, body.version)))


async def rollback(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = await name_of(agent, request.match_info["id"])
    return json_response(_switch_json(agent, name, await agent.versions.rollback(name)))


async def rollout(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = await name_of(agent, request.match_info["id"])
    body = decode_body(await read_json(request), RolloutBody)
    canary = await agent.versions.rollout(name, body)
    return json_response({"name": name, "message": f"rollout of version {canary.version} started",
                          **agent.versions.pointer_json(name)}, status=202)


async def abort_rollout(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    name = await name_of(agent, request.match_info["id"])
    canary = await agent.versions.abort(name)
    return json_response({"name": name, "message": f"rollout of version {canary.version} aborted",
                          **agent.versions.pointer_json(name)})
