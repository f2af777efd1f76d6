"""/api/ml/models: the seed document's endpoints."""

from __future__ import annotations

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.cluster import delegate_create, node_param, placed_elsewhere, target_of
from cnetd.api.errors import error_response, read_json
from cnetd.api.logs import logs_response
from cnetd.api.params import bool_param
from cnetd.api.serialize import json_response, model_json
from cnetd.api.serving import warm_json
from cnetd.api.versions import deploy_id_of, model_by_name, name_of
from cnetd.errors import Conflict
from cnetd.ml.service import WarmPrediction
from cnetd.ml.serving.batcher import Rejected
from cnetd.tasks.model import Status

REQUEST_KEY = "X-Request-Key"  # the sticky key of the canary split
MODEL_VERSION = "X-Model-Version"  # the version that answered


async def list_models(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node = node_param(request)
    if node is not None:
        assert agent.cluster is not None  # node_param gives a node only in a cluster
        return json_response(await agent.cluster.view.tasks(node_id=None if node == "all" else node, models_only=True))
    return json_response([
        model_json(m, agent.enforcement(m.task.sandbox), agent.serving.describe(m.record)) for m in await agent.models.list()
    ])


async def deploy_model(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await read_json(request)
    where = await placed_elsewhere(request, "model", body)
    if where is not None:
        if where.remote is not None:
            return json_response(where.remote, status=201)
        model = await agent.models.get(where.task_id)
        return json_response(model_json(model, agent.enforcement(model.task.sandbox), agent.serving.describe(model.record)),
                             status=201)
    node_id = target_of(agent, body)
    if node_id is not None:
        return await delegate_create(request, body, node_id, "/api/ml/models")
    model = await agent.models.deploy(body)
    described = model_json(model, agent.enforcement(model.task.sandbox), agent.serving.describe(model.record))
    return json_response(described, status=201)


async def get_model(request: web.Request) -> web.Response:
    """A deploy id: that version's deploy task (as in the seed); a name: the model with its
    default version and versions."""
    agent = request.app[AGENT]
    key = request.match_info["id"]
    model = await agent.models.find(key)
    if model is None:
        return json_response(await model_by_name(agent, await name_of(agent, key)))
    body = model_json(model, agent.enforcement(model.task.sandbox), agent.serving.describe(model.record))
    body["version"] = agent.versions.version_of(model.record.id)
    body["default_version"] = agent.versions.pointer_json(model.record.name)["default_version"]
    return json_response(body)


async def stop_model(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    model_id = await deploy_id_of(agent, request.match_info["id"])
    message = "ML model stopped"
    try:
        model = await agent.models.stop(model_id)  # its warm workers too
    except Conflict:  # its task ended long ago: a ready version is retired, unless it is in use
        if not await agent.versions.stopped(model_id):
            raise
        model, message = await agent.models.get(model_id), "version retired"
    else:
        await agent.versions.stopped(model_id)  # retired unless it is the default, previous or canary
    body = model_json(model, agent.enforcement(model.task.sandbox), agent.serving.describe(model.record))
    body["message"] = message
    return json_response(body)


async def predict(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    wait = bool_param(request, "wait")
    key = request.match_info["id"]
    model_id = await deploy_id_of(agent, key)
    if wait and model_id != key:  # a name: its default version, or the canary for its share of keys
        routed = agent.versions.route(key, request.headers.get(REQUEST_KEY))
        model_id = routed.id if routed is not None else model_id
    response = await _predict(request, model_id)
    number = agent.versions.version_of(model_id)
    if number is not None:
        response.headers[MODEL_VERSION] = str(number)
    return response


async def _predict(request: web.Request, model_id: str) -> web.Response:
    agent = request.app[AGENT]
    wait = bool_param(request, "wait")
    try:
        outcome = await agent.models.predict(model_id, await read_json(request), wait)
    except Rejected as exc:
        # As on the task path: the model refusing its input is a 422 with its message.
        result = {"status": "error", "error": exc.message}
        return error_response(422, f"prediction failed: {exc.message}", {
            "prediction_task_id": None, "status": "failed", "prediction": None, "result": result,
            "reason": exc.message, "served_by": exc.details.get("worker"),
        })
    if isinstance(outcome, WarmPrediction):
        return json_response(warm_json(outcome))
    task = outcome.task
    if not outcome.waited:
        return json_response({"prediction_task_id": task.id, "message": "Prediction task created"}, status=201)
    body = {
        "prediction_task_id": task.id,
        "status": str(task.status),
        "prediction": (task.result or {}).get("prediction"),
        "result": task.result,
    }
    if task.status == Status.COMPLETED:
        return json_response({**body, "message": "Prediction completed"})
    if not task.status.terminal:
        return error_response(504, f"prediction task {task.id} did not finish in time; it is {task.status}", body)
    script_error = (task.result or {}).get("error") if isinstance(task.result, dict) else None
    message = f"prediction failed: {script_error or task.reason}"
    # The script rejecting its input is the caller's mistake; anything else is ours.
    status = 422 if script_error else 502
    return error_response(status, message, {**body, "reason": task.reason})


async def model_logs(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    model = await agent.models.get(await deploy_id_of(agent, request.match_info["id"]))
    return await logs_response(request, model.task.id)
