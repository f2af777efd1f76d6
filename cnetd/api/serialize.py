"""JSON shapes of tasks, models and events, as the original API's clients expect them."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from cnetd.ml.catalog import Model
from cnetd.security.redact import redact_env
from cnetd.tasks.model import Task, TaskEvent


def task_json(task: Task, enforcement: dict[str, bool] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": task.id,
        "name": task.name,
        "type": task.type,
        "kind": task.kind,
        "status": str(task.status),
        "command": task.command,
        "args": task.args,
        "env": redact_env(task.env),
        "working_dir": task.working_dir,
        "resources": {k: v for k, v in asdict(task.resources).items() if v is not None},
        "created_at": task.created_at,
        "started_at": task.started_at,
        "stopped_at": task.stopped_at,
        "exit_code": task.exit_code,
        "reason": task.reason,
        "progress": task.progress,
        "result": task.result,
        "log_file": task.log_file,
        "timeout": task.timeout,
        "model_id": task.model_id,
        "node_id": task.node_id,
        "unit": task.unit,
        "sandbox": task.sandbox,
        "run_as": task.run_as,
        "uid": task.uid,
        "program": task.program,
        "environment": task.environment,
        "usage": task.usage,
        "gpus": task.gpus,
    }
    if enforcement is not None:
        data["limits_enforced"] = enforcement
    return data


def model_json(
    model: Model, enforcement: dict[str, bool] | None = None, serving: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`serving` is the live serving state (ServingManager.describe); without it, the stored one."""
    data = task_json(model.task, enforcement)
    data.update(
        model_type=model.record.model_type,
        model_path=model.record.model_path,
        script_path=model.record.script_path,
        serving=serving if serving is not None else model.record.serving,
    )
    return data


def event_json(event: TaskEvent) -> dict[str, Any]:
    return {"id": event.id, "time": event.time, "type": event.type, "message": event.message}


def json_bytes(data: Any) -> bytes:
    """UTF-8 JSON, with non-ASCII text as itself. Text holding a lone surrogate (a hostile
    worker's reply, a name decoded from bad bytes) has no UTF-8 form: such a document is
    written with \\u escapes instead, which is still valid JSON, rather than failing the answer."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(data).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_bytes(data), status=status, content_type="application/json", charset="utf-8")
