"""/api/ml/models/{id}/serve: start, change and stop warm serving; the warm path of
/api/ml/models/{id}/predict?wait=true (the answer's shape; ModelService decides)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.errors import error_response, read_json
from cnetd.api.params import bool_param, int_param
from cnetd.api.serialize import json_response, model_json
from cnetd.api.versions import deploy_id_of
from cnetd.errors import Conflict
from cnetd.ml.service import WarmPrediction

DEFAULT_READY_WAIT = 120
MAX_READY_WAIT = 600


async def _optional_json(request: web.Request) -> Any:
    """The body as JSON, or None when there is none (every serving setting is optional)."""
    if not (await request.read()).strip():
        return None
    return await read_json(request)


async def serve_model(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    model_id = await deploy_id_of(agent, request.match_info["id"])
    wait = bool_param(request, "wait")
    timeout = int_param(request, "timeout", DEFAULT_READY_WAIT, 1, MAX_READY_WAIT)
    model = await agent.serving.serve(model_id, await _optional_json(request))
    served = agent.serving.served(model_id)
    ready = False
    if wait and served is not None:
        ready = await agent.serving.wait_ready(model_id, timeout)
    model = await agent.models.get(model_id)
    body = model_json(model, agent.enforcement(model.task.sandbox), serving=agent.serving.describe(model.record))
    if not wait:
        return json_response(body, status=202)
    if served is None:
        body["message"] = "serving starts when training completes"
        return json_response(body, status=202)
    if ready:
        body["message"] = "serving"
        return json_response(body)
    workers = body["serving"]["workers"]
    errors = sorted({w["last_error"] for w in workers if w["last_error"]})
    message = f"not every replica of model {model.record.name} was ready after {timeout}s"
    if errors:
        message += f"; last worker error: {errors[-1]}"
    return error_response(504, message, {"model": body})


async def unserve_model(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    model_id = await deploy_id_of(agent, request.match_info["id"])
    if not await agent.serving.unserve(model_id):
        model = await agent.models.get(model_id)
        raise Conflict(f"model {model.record.name} is not being served", {"id": model_id})
    model = await agent.models.get(model_id)
    body = model_json(model, agent.enforcement(model.task.sandbox), serving=agent.serving.describe(model.record))
    body["message"] = "serving stopped"
    return json_response(body)


def warm_json(answer: WarmPrediction) -> dict[str, Any]:
    """POST /api/ml/models/{id}/predict?wait=true answered by a served model's worker: the
    seed's response keys (prediction_task_id is null: no task was created)."""
    result = {
        "status": "success",
        "model_path": answer.model_path,
        "prediction": answer.prediction,
        "served_by": answer.worker,
    }
    return {
        "prediction_task_id": None,
        "status": "completed",
        "prediction": answer.prediction,
        "result": result,
        "served_by": answer.worker,
        "message": "Prediction completed",
    }
