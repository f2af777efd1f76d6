"""/api/ml/models/{id}/serve: start, change and stop warm serving; the warm path of
/api/ml/models/{id}/predict?wait=true."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.api.errors import error_response, read_json
from cnetd.api.params import bool_param, int_param
from cnetd.api.serialize import json_response, model_json
from cnetd.errors import Conflict, Invalid
from cnetd.ml.serving.batcher import Rejected
from cnetd.ml.serving.manager import Served
from cnetd.ml.serving.protocol import instances_from_input_data
from cnetd.tasks.request import reject_unknown, require_object

DEFAULT_READY_WAIT = 120
MAX_READY_WAIT = 600


async def _optional_json(request: web.Request) -> Any:
    """The body as JSON, or None when there is none (every serving setting is optional)."""
    if not (await request.read()).strip():
        return None
    return await read_json(request)


async def serve_model(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    model_id = request.match_info["id"]
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
    model_id = request.match_info["id"]
    if not await agent.serving.unserve(model_id):
        model = await agent.models.get(model_id)
        raise Conflict(f"model {model.record.name} is not being served", {"id": model_id})
    model = await agent.models.get(model_id)
    body = model_json(model, agent.enforcement(model.task.sandbox), serving=agent.serving.describe(model.record))
    body["message"] = "serving stopped"
    return json_response(body)


async def predict_warm(request: web.Request, served: Served) -> web.Response:
    """POST /api/ml/models/{id}/predict?wait=true for a served model: the seed's response
    keys, answered by a worker (prediction_task_id is null: no task was created)."""
    body = require_object(await read_json(request))
    reject_unknown(body, {"input_data"})
    if "input_data" not in body:
        raise Invalid("input_data", "is required")
    instances, single = instances_from_input_data(body["input_data"], served.n_features)
    try:
        answer = await served.predict(instances)
    except Rejected as exc:
        # As on the task path: the model refusing its input is a 422 with its message.
        result = {"status": "error", "error": exc.message}
        return error_response(422, f"prediction failed: {exc.message}", {
            "prediction_task_id": None, "status": "failed", "prediction": None, "result": result,
            "reason": exc.message, "served_by": exc.details.get("worker"),
        })
    prediction = answer.predictions[0] if single else answer.predictions
    result = {
        "status": "success",
        "model_path": served.model.record.model_path,
        "prediction": prediction,
        "served_by": answer.worker,
    }
    return json_response({
        "prediction_task_id": None,
        "status": "completed",
        "prediction": prediction,
        "result": result,
        "served_by": answer.worker,
        "message": "Prediction completed",
    })
