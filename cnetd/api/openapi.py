"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json.

The request bodies' schemas are not written here: they come from the bodies' typed
declarations (NewTaskBody, DeploymentBody, ...), which also check the bodies. Tests compare
the document with the router (every /api, /v2 and /metrics route is described, nothing else
is) and with the declarations, and a fuzz run checks the agent's answers against it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from cnetd import __version__
from cnetd.api.serialize import json_response
from cnetd.bodies.schema import body_components, public_name
from cnetd.cluster.placing import PlaceRequest
from cnetd.ml.bodies import DeploymentBody, PredictRequestBody
from cnetd.ml.serving.protocol import MAX_DIMENSIONS, MAX_ELEMENTS
from cnetd.ml.serving.spec import ServingSpecBody
from cnetd.ml.versions.bodies import PromoteBody, RegisterBody, RolloutBody
from cnetd.tasks.model import TASK_KINDS, TASK_TYPES, Status
from cnetd.tasks.request import NewTaskBody

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": STRING}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": STRING}
NODE_PARAM = {"name": "node_id", "in": "path", "required": True, "schema": STRING}
VERSION_PARAM = {"name": "version", "in": "path", "required": True, "schema": STRING}

RESOURCES_OUT: Schema = {
    "type": "object",
    "properties": {
        "cpu_limit": {"type": "number"},
        "memory_limit": {"type": "integer"},
        "disk_limit": {"type": "integer"},
        "gpu_limit": {"type": "integer"},
        "gpu_memory": {"type": "integer", "description": "bytes of one shared GPU's memory"},
        "max_pids": {"type": "integer"},
    },
}
GPU_DEVICE: Schema = {
    "type": "object",
    "required": ["index", "uuid", "name", "minor", "memory_total", "memory_used"],
    "properties": {
        "index": {"type": "integer"}, "uuid": STRING, "name": STRING, "minor": {"type": "integer"},
        "memory_total": {"type": "integer"}, "memory_used": {"type": "integer"},
        "utilization": nullable({"type": "integer"}), "mig_mode": {"type": "boolean"}, "pci_bus_id": STRING,
        "tasks": {"type": "array", "items": STRING, "description": "the tasks holding it now"},
        "unreserved_memory": {"type": "integer", "description": "bytes gpu_memory requests can still get (0 when held whole)"},
    },
}
GPUS: Schema = {
    "type": "object",
    "description": "the node's GPUs as NVML last read them, and what of them is taken",
    "required": ["count", "free", "reason", "devices"],
    "properties": {
        "count": {"type": "integer"}, "free": {"type": "integer", "description": "GPUs nobody holds"},
        "driver_version": nullable(STRING), "source": {"enum": ["nvml", "simulated"]},
        "reason": nullable({"type": "string", "description": "why there are no GPUs (no driver, no library)"}),
        "devices": {"type": "array", "items": GPU_DEVICE},
    },
}
# The request bodies, by operation; their components come from these declarations.
REQUEST_BODIES: dict[str, type[msgspec.Struct]] = {
    "createTask": NewTaskBody,
    "deployModel": DeploymentBody,
    "predict": PredictRequestBody,
    "serveModel": ServingSpecBody,
    "registerVersion": RegisterBody,
    "promoteVersion": PromoteBody,
    "startRollout": RolloutBody,
    "clusterPlace": PlaceRequest,
}

TASK: Schema = {
    "type": "object",
    "required": ["id", "name", "type", "kind", "status", "command", "args", "env", "working_dir",
                 "resources", "created_at", "started_at", "stopped_at", "exit_code", "reason",
                 "progress", "result", "log_file"],
    "properties": {
        "id": STRING,
        "name": STRING,
        "type": {"enum": list(TASK_TYPES)},
        "kind": {"enum": list(TASK_KINDS)},
        "status": {"enum": [str(s) for s in Status]},
        "command": STRING,
        "args": {"type": "array", "items": STRING},
        "env": {
            "type": "object", "additionalProperties": STRING,
            "description": "values of secret-looking names, and passwords and tokens inside URLs, are <redacted>",
        },
        "working_dir": STRING,
        "resources": RESOURCES_OUT,
        "created_at": TIME,
        "started_at": nullable(TIME),
        "stopped_at": nullable(TIME),
        "exit_code": nullable({"type": "integer"}),
        "reason": nullable(STRING),
        "progress": nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "result": nullable({"type": "object"}),
        "log_file": STRING,
        "timeout": nullable({"type": "number"}),
        "model_id": nullable(STRING),
        "node_id": STRING,
        "unit": nullable(STRING),
        "sandbox": nullable(STRING),
        "run_as": nullable({"type": "string", "description": "the user its processes ran as (tasks.run_as)"}),
        "uid": nullable({
            "type": "integer",
            "description": "the uid its processes run as: its own, its model's, or tasks.run_as (null: the agent's own user)",
        }),
        "program": nullable({
            "type": "string",
            "description": "the command resolved to an absolute path at submit, with the agent's PATH: what runs",
        }),
        "environment": nullable({
            "type": "string",
            "description": "the key of the Python environment it runs in (GET /api/environments/{key}); for a task of "
                           "kind env, the one it builds. While it is built the task is `preparing`; the task runs with its "
                           "bin/ first on PATH, and a command without a slash is looked up there first when it starts",
        }),
        "usage": nullable({"type": "object"}),
        "gpus": {"type": "array", "items": STRING, "description": "UUIDs of the GPUs it was given"},
        "limits_enforced": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}

ENVIRONMENT: Schema = {
    "type": "object",
    "required": ["key", "status", "requirements", "inherit", "python", "interpreter", "installer", "build_task_id",
                 "reason", "created_at", "ready_at", "last_used", "size_bytes", "build_seconds", "tasks"],
    "properties": {
        "key": {"type": "string", "description": "hash of the normalised spec and the interpreter"},
        "status": {"enum": ["building", "ready", "failed", "removed"]},
        "requirements": {"type": "array", "items": STRING},
        "inherit": {"type": "boolean"},
        "python": STRING,
        "interpreter": STRING,
        "installer": nullable({"enum": ["uv", "pip"]}),
        "build_task_id": nullable({"type": "string", "description": "its (last) build, a task of kind env"}),
        "reason": nullable({"type": "string", "description": "why its build failed"}),
        "created_at": TIME,
        "ready_at": nullable(TIME),
        "last_used": nullable(TIME),
        "size_bytes": nullable({"type": "integer"}),
        "build_seconds": nullable({"type": "number"}),
        "tasks": {"type": "array", "items": STRING, "description": "tasks using it that have not ended"},
    },
}

RESPONSE_SCHEMAS: dict[str, Schema] = {
    "EnvironmentRecord": ENVIRONMENT,
    "Error": {
        "type": "object",
        "required": ["error", "status", "timestamp", "details"],
        "properties": {"error": STRING, "status": {"type": "integer"}, "timestamp": TIME, "details": {"type": "object"}},
    },
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": STRING}},
    "Task": TASK,
    "Model": {
        "allOf": [
            ref("Task"),
            {
                "type": "object",
                "required": ["model_type", "model_path", "script_path"],
                "properties": {
                    "model_type": STRING, "model_path": STRING, "script_path": STRING,
                    "serving": nullable(ref("Serving")),
                },
            },
        ]
    },
    "Serving": {
        "type": "object",
        "description": "How the model is served here: its settings (the serveModel body's), and while served, "
                       "its replicas, requests and the autoscaler's last decisions (docs/serving.md)",
        "properties": {
            "state": STRING,
            "replicas": {"type": "integer", "description": "the current target (the autoscaler moves it between "
                                                           "min_replicas and max_replicas)"},
            "ready_replicas": {"type": "integer"},
            "min_replicas": {"type": "integer"}, "max_replicas": {"type": "integer"},
            "in_flight": {"type": "integer", "description": "requests in the agent: queued, waiting for a replica, "
                                                            "or at a worker"},
            "queue_wait": {"type": "number", "description": "seconds the oldest queued request has waited"},
            "scaling": {
                "type": "object",
                "properties": {
                    "panic": {"type": "boolean"},
                    "waiting": nullable(STRING),
                    "last_cold_start_seconds": nullable({"type": "number"}),
                    "decisions": {"type": "array", "items": {
                        "type": "object",
                        "properties": {"at": TIME, "kind": STRING, "from": {"type": "integer"},
                                       "to": {"type": "integer"}, "reason": STRING},
                    }},
                },
            },
        },
        "additionalProperties": True,
    },
    "Event": {
        "type": "object",
        "required": ["id", "time", "type", "message"],
        "properties": {"id": {"type": "integer"}, "time": TIME, "type": STRING, "message": STRING},
    },
    "PredictionCreated": {
        "type": "object",
        "required": ["prediction_task_id", "message"],
        "properties": {"prediction_task_id": STRING, "message": STRING},
    },
    "PredictionResult": {
        "type": "object",
        "required": ["prediction_task_id", "status", "prediction", "message"],
        "properties": {
            "prediction_task_id": nullable(STRING),
            "status": STRING,
            "prediction": {},
            "result": nullable({"type": "object"}),
            "message": STRING,
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "version", "uptime_seconds", "sandbox"],
        "properties": {
            "status": STRING, "version": STRING, "node_id": STRING, "uptime_seconds": {"type": "number"},
            "started_at": TIME, "sandbox": {"type": "object"}, "tasks": {"type": "object"},
            "tls": {"type": "boolean", "description": "whether the API is served over HTTPS (agent.tls)"},
            "cluster": {"enum": ["ok", "degraded"], "description": "only with a cluster section: ok while this node "
                        "is registered in etcd, degraded while etcd does not answer (tasks keep running)"},
            "cluster_detail": {"type": "object", "description": "why degraded: the problem and the etcd endpoints that "
                               "do not answer (only to a caller with a token, or when auth is off)"},
        },
    },
    "Node": {"type": "object", "required": ["node_id", "node_name", "region", "datacenter"], "properties": {
        "node_id": STRING, "node_name": STRING, "region": STRING, "datacenter": STRING,
        "url": STRING, "cluster": nullable({"type": "object", "description": "this node's membership (no cluster: null)"}),
        "gpus": GPUS}},
    "NodeTotals": {"type": "object", "properties": {"cpu": {"type": "object"}, "memory": {"type": "object"},
                                                     "disk": {"type": "object"}, "gpu": GPUS}},
    "Object": {"type": "object"},
    "NodeResources": {
        "type": "object",
        "required": ["cpu", "memory", "disk", "gpus"],
        "properties": {"cpu": {"type": "number", "description": "cores"}, "memory": {"type": "integer", "description": "bytes"},
                       "disk": {"type": "integer", "description": "bytes"}, "gpus": {"type": "integer"},
                       "gpu_memory": {"type": "integer", "description": "bytes on one GPU: in a capacity the largest "
                                      "GPU's, free the most a gpu_memory request could get on one GPU"}},
    },
    "ClusterNode": {
        "type": "object",
        "required": ["node_id", "name", "status", "labels", "capacity", "free", "sandbox", "version", "last_seen",
                     "advertise_url"],
        "properties": {
            "node_id": STRING, "name": STRING,
            "status": {"enum": ["online", "offline"], "description": "online while the node's lease in etcd lives"},
            "labels": {"type": "object", "additionalProperties": STRING,
                       "description": "region, datacenter and the node's agent.labels"},
            "capacity": ref("NodeResources"),
            "free": {**ref("NodeResources"), "description": "capacity less the limits of the node's tasks that have not ended"},
            "sandbox": STRING, "version": STRING, "started_at": nullable(TIME), "updated_at": nullable(TIME),
            "last_seen": nullable(TIME), "advertise_url": STRING,
            "scheduler": {"type": "boolean", "description": "this node is the elected scheduler that places work"},
        },
    },
    "ClusterTask": {
        "type": "object",
        "description": "a task or model as its node mirrors it into etcd (GET /api/tasks?node=all)",
        "required": ["id", "name", "type", "kind", "status", "node_id", "node_status"],
        "properties": {
            "id": STRING, "name": STRING, "type": STRING, "kind": STRING, "status": STRING, "node_id": STRING,
            "created_at": STRING, "started_at": nullable(TIME), "stopped_at": nullable(TIME),
            "exit_code": nullable({"type": "integer"}), "reason": nullable(STRING),
            "progress": nullable({"type": "number"}), "model_id": nullable(STRING), "serving": nullable(STRING),
            "updated_at": STRING, "node_status": {"enum": ["online", "offline"]},
            "lost": {"type": "boolean", "description": "its node went offline before it ended"},
        },
    },
    "ClusterMember": {
        "type": "object",
        "required": ["node_id", "state", "lease_id", "node_revision"],
        "properties": {
            "node_id": STRING, "health": {"enum": ["ok", "degraded"]}, "state": {"enum": ["online", "degraded"]},
            "lease_id": nullable(STRING), "node_revision": nullable({"type": "integer"}), "problem": nullable(STRING),
            "unreachable": {"type": "array", "items": {"type": "object"}}, "advertise_url": STRING,
        },
    },
    "V2Tensor": {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": STRING,
            "shape": {
                "type": "array", "maxItems": MAX_DIMENSIONS, "items": {"type": "integer", "minimum": 0, "maximum": MAX_ELEMENTS},
                "description": f"at most {MAX_DIMENSIONS} dimensions of at most {MAX_ELEMENTS}; only the first (batch) may be 0",
            },
            "datatype": STRING,
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
    },
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": STRING,
            "inputs": {"type": "array", "minItems": 1, "items": ref("V2Tensor")},
            "outputs": {"type": "array", "items": {"type": "object"}},
            "parameters": {"type": "object"},
        },
    },
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": STRING, "model_version": STRING, "id": STRING,
            "outputs": {"type": "array", "items": ref("V2Tensor")},
        },
    },
    "ModelMetrics": {
        "type": "object",
        "description": "A model's per-version roll-ups (serving.rollup_interval each) over a window",
        "required": ["name", "window", "window_seconds", "interval_seconds", "step_seconds", "since", "until", "versions"],
        "properties": {
            "name": STRING, "window": STRING, "window_seconds": {"type": "integer"}, "interval_seconds": {"type": "number"},
            "step_seconds": {"type": "number", "description": "the span of one point: the roll-up interval, or "
                             "longer where a long window's roll-ups are merged (1440 points per version at most)"},
            "since": STRING, "until": STRING,
            "versions": {"type": "array", "items": {
                "type": "object",
                "required": ["version", "model_id", "serving", "role", "totals", "points", "drift"],
                "properties": {
                    "version": STRING, "model_id": STRING, "serving": {"type": "boolean"},
                    "role": nullable({"enum": ["default", "previous", "canary"]}),
                    "totals": {"type": "object", "properties": {
                        "count": {"type": "integer"}, "errors": {"type": "integer"},
                        "error_rate": {"type": ["number", "null"]}, "max_p99_ms": {"type": ["number", "null"]}}},
                    "points": {"type": "array", "items": {"type": "object", "properties": {
                        "at": STRING, "seconds": {"type": "number"}, "count": {"type": "integer"},
                        "errors": {"type": "integer"}, "throughput": {"type": ["number", "null"]},
                        "p50_ms": {"type": ["number", "null"]}, "p95_ms": {"type": ["number", "null"]},
                        "p99_ms": {"type": ["number", "null"]}}}},
                    "drift": {"type": ["object", "null"], "description": "input drift against the training result's "
                              "input_stats (null without them): observed and skipped instances, and per feature its "
                              "train_mean, train_std, served_mean, served_std and score (|served mean - train mean| / "
                              "train std)"},
                },
            }},
        },
    },
    "ModelVersion": {
        "type": "object",
        "required": ["version", "model_id", "state", "sha256", "size", "created_at", "training_result"],
        "properties": {
            "version": {"type": "integer"}, "model_id": STRING,
            "state": {"enum": ["training", "ready", "failed", "retired"]},
            "reason": nullable(STRING),
            "role": nullable({"enum": ["default", "previous", "canary"]}),
            "sha256": nullable(STRING), "size": nullable({"type": "integer"}),
            "artifact": nullable({"type": "string", "description": "the agent's own copy of the artifact"}),
            "sidecars": {"type": "array", "items": STRING, "description": "files copied beside it"},
            "source": {"enum": ["training", "registered"]}, "promote": {"enum": ["auto", "manual"]},
            "created_at": TIME, "ready_at": nullable(TIME), "served": {"type": "boolean"},
            "ready_replicas": {"type": "integer"}, "training_status": nullable(STRING),
            "training_result": nullable({"type": "object"}),
        },
    },
    "ModelPointers": {
        "type": "object",
        "description": "a model name's default, previous default and canary versions (and its rollout)",
        "required": ["name", "default_version", "previous_version", "canary_version", "rollout"],
        "properties": {
            "name": STRING, "default_version": nullable({"type": "integer"}),
            "previous_version": nullable({"type": "integer"}),
            "previous_warm_until": nullable({"type": "number", "description": "unix time"}),
            "canary_version": nullable({"type": "integer"}),
            "rollout": nullable({"type": "object", "description": "the canary's settings, progress and the "
                                                                  "canary's and default's requests, errors and p99"}),
            "versions": {"type": "array", "items": {"$ref": "#/components/schemas/ModelVersion"}},
            "events": {"type": "array", "items": {"type": "object"}},
            "version": {"type": "integer"}, "model_id": STRING, "reloaded": {"type": "boolean"}, "message": STRING,
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": STRING, "versions": {"type": "array", "items": STRING}, "platform": STRING,
                       "inputs": {"type": "array"}, "outputs": {"type": "array"}},
    },
}

BODY_SCHEMAS = body_components(*dict.fromkeys(REQUEST_BODIES.values()))
if BODY_SCHEMAS.keys() & RESPONSE_SCHEMAS.keys():
    raise ValueError(f"body declarations named like response schemas: {BODY_SCHEMAS.keys() & RESPONSE_SCHEMAS.keys()}")
SCHEMAS: dict[str, Schema] = {**RESPONSE_SCHEMAS, **BODY_SCHEMAS}

ERROR_TEXT = {
    400: "a malformed body (not JSON, or nested over 64 levels), a wrong field or a refused path (the message names it)",
    401: "a token is required (when auth.tokens is set)",
    403: "the caller is one of this agent's tasks (or a local socket whose owner cannot be told) and sent no valid token",
    404: "no such id",
    409: "the task has already ended, or the model has no model file yet",
    413: "the body is larger than 1 MiB (V2 infer and predict: serving.max_request_bytes, 64 MiB unless set; the "
         "message names the bound)",
    415: "a body (or a Content-Type) that is not application/json, on any POST or DELETE (V2 infer also takes "
         "application/octet-stream with Inference-Header-Content-Length)",
    421: "the Host header does not name this agent (see agent.allowed_hosts)",
    422: "the model's script rejected the input; for placed work: no node of the cluster fits (details.reasons: a line per node)",
    429: "the model's request queue is full",
    502: "a worker or another node answered with something unusable (the message says what)",
    503: "storage, a worker, another node or etcd unavailable (the message says which); an unloaded model whose "
         "replica was not ready within cold_start_timeout, or too many requests waiting for it (with Retry-After)",
    504: "no answer in time",
}


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


# Answers any request can get before it reaches its route: the token check, the check that
# tasks do not call without a token, the Host check. The last two use the full envelope on
# /v2 too (it has V2Error's "error").
GUARD_ERRORS = (401,)
ENVELOPE_GUARD_ERRORS = (403, 421)


def guard_responses() -> Schema:
    return {str(code): {"description": ERROR_TEXT[code], "content": json_content(ref("Error"))}
            for code in ENVELOPE_GUARD_ERRORS}


def responses(ok: dict[int, tuple[str, Schema]], errors: tuple[int, ...], v2: bool = False) -> Schema:
    out: Schema = {str(code): {"description": text, "content": json_content(schema)} for code, (text, schema) in ok.items()}
    for code in (*errors, *GUARD_ERRORS):
        out[str(code)] = {"description": ERROR_TEXT[code], "content": json_content(ref("V2Error" if v2 else "Error"))}
    return {**out, **guard_responses()}


def body(schema_name: str, required: bool = True) -> Schema:
    return {"required": required, "content": json_content(ref(schema_name))}


def declared_body(op_id: str, required: bool = True) -> Schema:
    """The request body of an operation: the component of its declaration (REQUEST_BODIES)."""
    return body(public_name(REQUEST_BODIES[op_id].__name__), required)


WRITE_ERRORS = (400, 413, 415, 503)


def operation(summary: str, resp: Schema, params: list[Schema] | None = None, request: Schema | None = None,
              op_id: str = "") -> Schema:
    op: Schema = {"summary": summary, "operationId": op_id, "responses": resp}
    if params:
        op["parameters"] = params
    if request:
        op["requestBody"] = request
    return op


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


LINES = query("lines", {"type": "integer", "minimum": 1, "maximum": 10000}, "how many of the last lines (default 100)")
FOLLOW = query("follow", {"type": "boolean"}, "stream new lines as server-sent events until the task ends")
LAST_EVENT_ID = {
    "name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
    "description": "with follow=1: resume after this event id (what an EventSource sends when it reconnects): every "
                   "line after it instead of the last `lines`; anything but an id this stream sent is a 400",
}
LOG_RESPONSES = {
    "200": {
        "description": "the last lines as a JSON array of strings (text/event-stream with follow=1)",
        "content": {**json_content({"type": "array", "items": STRING}), "text/event-stream": {"schema": STRING}},
    },
    **{k: v for k, v in responses({}, (400, 404)).items()},
}


ELSEWHERE = (". In a cluster, a model with no ready replica on this node is answered by a node that has one "
             "(X-CNET-Node names it); 503 'unavailable: no live node holds model ...' when none does")


# The V2 binary tensor data extension: a JSON header (V2InferRequest / V2InferResponse) of
# Inference-Header-Content-Length bytes, then each tensor's raw bytes (parameters.binary_data_size).
V2_BINARY = {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "Inference-Header-Content-Length bytes of JSON header, then the tensors' little-endian bytes "
                   "in order (parameters.binary_data_size each; BYTES elements have 4-byte length prefixes)"}}}
V2_BINARY_HEADER = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                    "schema": {"type": "integer", "minimum": 1},
                    "description": "with Content-Type application/octet-stream: the JSON header's length in bytes"}


def v2_infer_operation(params: list[Schema], suffix: str) -> Schema:
    answers = responses({200: ("outputs (binary when an output asks for binary_data, or the request for "
                               "binary_data_output)", ref("V2InferResponse"))},
                        (400, 404, 409, 413, 415, 429, 502, 503, 504), v2=True)
    answers["200"]["content"].update(V2_BINARY)
    request_body = body("V2InferRequest")
    request_body["content"].update(V2_BINARY)
    extra = [REQUEST_KEY_HEADER] if not suffix else []  # the bare name follows the canary split
    return operation(f"V2 inference{ELSEWHERE}", answers, [*params, V2_BINARY_HEADER, *extra], request_body,
                     op_id=f"v2Infer{suffix}")


REQUEST_KEY_HEADER: Schema = {
    "name": "X-Request-Key", "in": "header", "required": False, "schema": STRING,
    "description": "the sticky key of a rollout's canary split (else the request's id, else chance)",
}


def v2_model_paths(base: str, extra_params: list[Schema], suffix: str) -> dict[str, Schema]:
    params = [NAME_PARAM, *extra_params]
    return {
        base: {"get": operation(f"V2 model metadata{ELSEWHERE}", responses(
            {200: ("metadata", ref("V2ModelMetadata"))}, (404, 502, 503, 504), v2=True), params,
            op_id=f"v2ModelMetadata{suffix}")},
        base + "/ready": {"get": operation(f"V2 model readiness{ELSEWHERE}", responses(
            {200: ("ready", ref("Object"))}, (404, 502, 503, 504), v2=True), params, op_id=f"v2ModelReady{suffix}")},
        base + "/infer": {"post": v2_infer_operation(params, suffix)},
    }


NODE_QUERY = query("node", STRING, '"all": every node of the cluster, or one node id: that node\'s, as mirrored '
                   "in etcd (ClusterTask rows); omitted or this node's id: this node's own store")


def build_document() -> Schema:
    task_list_params = [
        query("status", {"enum": [str(s) for s in Status]}, "only tasks in this status"),
        query("type", {"enum": list(TASK_TYPES)}, "only tasks of this type"),
        query("kind", {"enum": list(TASK_KINDS)}, "only tasks of this kind"),
        query("model_id", STRING, "only the tasks of this model"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "at most this many (default 1000)"),
        query("offset", {"type": "integer", "minimum": 0, "maximum": 10**9}, "skip this many"),
        NODE_QUERY,
    ]
    paths: dict[str, Schema] = {
        "/api/health": {"get": operation("Liveness, version, sandbox and task counts", responses(
            {200: ("healthy", ref("Health"))}, ()), op_id="health")},
        "/api/node": {"get": operation("This node", responses({200: ("node", ref("Node"))}, ()), op_id="node")},
        "/api/resources": {
            "get": operation("Node totals", responses({200: ("totals", ref("NodeTotals"))}, ()), op_id="resources"),
        },
        "/api/resources/usage": {
            "get": operation("Node usage now", responses({200: ("usage", ref("Object"))}, ()), op_id="resourcesUsage"),
        },
        "/api/openapi.json": {
            "get": operation("This document", responses({200: ("OpenAPI 3.1", ref("Object"))}, ()), op_id="openapi"),
        },
        "/api/cluster/member": {"get": operation(
            "This node's membership of the cluster, for another agent: only with the cluster token in "
            "X-CNET-Cluster-Token (401 without it or with a wrong one; 404 on an agent with no cluster)",
            responses({200: ("membership", ref("ClusterMember"))}, (404,)), op_id="clusterMember")},
        "/api/cluster/place": {"post": operation(
            "For another agent of the cluster: the scheduler places a piece of work (409 when this agent is "
            "not the scheduler, 422 when no node fits)",
            responses({200: ("placed", ref("Object"))}, (400, 404, 409, 415, 422, 503)), None,
            declared_body("clusterPlace"), op_id="clusterPlace")},
        "/api/cluster/artifacts/{model_id}": {"get": operation(
            "The trained model file of a model this node has, for another agent of the cluster that is to serve "
            "it too: only with the cluster token (401 otherwise; 404 on an agent with no cluster). Headers "
            "X-CNET-Artifact-SHA256 and X-CNET-Artifact-Size say what the bytes are; 409 when the model has no "
            "file here, or its file is not a regular file reached through real directories in the model roots",
            {"200": {"description": "the file's bytes", "headers": {
                "X-CNET-Artifact-SHA256": {"schema": STRING, "description": "sha256 of the bytes, hex"},
                "X-CNET-Artifact-Size": {"schema": {"type": "integer"}, "description": "how many bytes"}},
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
             **responses({}, (400, 404, 409))},
            [{"name": "model_id", "in": "path", "required": True, "schema": STRING}], op_id="clusterArtifact")},
        "/api/nodes": {"get": operation("Every node of the cluster, online first (a single node: itself)", responses(
            {200: ("nodes", {"type": "array", "items": ref("ClusterNode")})}, (503,)), op_id="listNodes")},
        "/api/nodes/{node_id}": {
            "get": operation("One node of the cluster", responses(
                {200: ("node", ref("ClusterNode"))}, (404, 503)), [NODE_PARAM], op_id="getNode"),
        },
        "/api/nodes/{node_id}/{tail}": {
            method: operation(
                f"{method.upper()} /{{tail}} on that node (tail starts with api/ or v2/): its answer, when it "
                "is JSON, server-sent events or plain text of at most 16 MiB (nosniff, sandboxed), or for a V2 infer "
                "binary tensor data (application/octet-stream with Inference-Header-Content-Length, both ways; up to "
                "serving.max_request_bytes when that is more); a path with dot segments or encoded separators is "
                "refused",
                {"default": {"description": "the node's answer, whatever its status"},
                 **responses({}, (400, 404, 413, 415, 502, 503, 504))},
                [NODE_PARAM, {"name": "tail", "in": "path", "required": True, "schema": STRING}],
                op_id=f"passThrough{method.capitalize()}")
            for method in ("get", "post", "delete")
        },
        "/api/tasks": {
            "get": operation("Every task, newest first", responses(
                {200: ("tasks", {"type": "array", "items": {"anyOf": [ref("Task"), ref("ClusterTask")]}})},
                (400, 404, 503)), task_list_params, op_id="listTasks"),
            "post": operation("Start a process task", responses(
                {201: ("created (pending until a slot is free)", ref("Task"))}, (*WRITE_ERRORS, 422, 502, 504)),
                None, declared_body("createTask"), op_id="createTask"),
        },
        "/api/tasks/{id}": {
            "get": operation("One task", responses({200: ("task", ref("Task"))}, (404,)), [ID_PARAM], op_id="getTask"),
            "delete": operation("Stop a task (status becomes stopped)", responses(
                {200: ("stopped", ref("Task"))}, (404, 409, 415, 503)), [ID_PARAM], op_id="stopTask"),
        },
        "/api/tasks/{id}/logs": {"get": {"summary": "A task's log lines", "operationId": "taskLogs",
                                         "parameters": [ID_PARAM, LINES, FOLLOW, LAST_EVENT_ID], "responses": LOG_RESPONSES}},
        "/api/tasks/{id}/events": {"get": operation("A task's history", responses(
            {200: ("events", {"type": "array", "items": ref("Event")})}, (404,)), [ID_PARAM], op_id="taskEvents")},
        "/api/tasks/{id}/stats": {"get": operation("A task's CPU and memory now", responses(
            {200: ("usage", ref("Object"))}, (404,)), [ID_PARAM], op_id="taskStats")},
        "/api/environments": {"get": operation(
            "Every Python environment of this node (built once per spec, shared by the tasks that ask for it), "
            "newest first", responses({200: ("environments", {"type": "array", "items": ref("EnvironmentRecord")})}, ()),
            op_id="listEnvironments")},
        "/api/environments/{key}": {"get": operation("One Python environment", responses(
            {200: ("environment", ref("EnvironmentRecord"))}, (404,)),
            [{"name": "key", "in": "path", "required": True, "schema": STRING}], op_id="getEnvironment")},
        "/api/ml/models": {
            "get": operation("Every model", responses(
                {200: ("models", {"type": "array", "items": {"anyOf": [ref("Model"), ref("ClusterTask")]}})},
                (400, 404, 503)), [NODE_QUERY], op_id="listModels"),
            "post": operation("Deploy a model (creates its training task)", responses(
                {201: ("deployed", ref("Model"))}, (*WRITE_ERRORS, 409, 422, 502, 504)),
                None, declared_body("deployModel"), op_id="deployModel"),
        },
        "/api/ml/models/{id}": {
            "get": operation("One model", responses({200: ("model", ref("Model"))}, (404,)), [ID_PARAM], op_id="getModel"),
            "delete": operation("Stop a model's task", responses(
                {200: ("stopped", ref("Model"))}, (404, 409, 415, 503)), [ID_PARAM], op_id="stopModel"),
        },
        "/api/ml/models/{id}/predict": {"post": operation(
            "Predict: a prediction task, or with wait=true the prediction itself",
            responses({200: ("prediction (wait=true)", ref("PredictionResult")),
                       201: ("prediction task created", ref("PredictionCreated"))},
                      (*WRITE_ERRORS, 404, 409, 422, 429, 502, 504)),
            [ID_PARAM, query("wait", {"type": "boolean"}, "wait for the prediction"), REQUEST_KEY_HEADER],
            declared_body("predict"), op_id="predict")},
        "/api/ml/models/{id}/logs": {"get": {"summary": "A model's log lines", "operationId": "modelLogs",
                                             "parameters": [ID_PARAM, LINES, FOLLOW, LAST_EVENT_ID], "responses": LOG_RESPONSES}},
        "/api/ml/models/{id}/metrics": {"get": operation(
            "Per-version roll-ups (count, errors, p50/p95/p99 latency) and input drift of a model, by name or deploy id",
            responses({200: ("series per version", ref("ModelMetrics"))}, (400, 404)),
            [ID_PARAM, query("window", {"type": "string", "pattern": "^[1-9][0-9]{0,6}[smhd]$", "default": "1h"},
                             "how far back: a whole number and s, m, h or d, from 1m to 31d")],
            op_id="modelMetrics")},
        "/api/ml/models/{id}/serve": {
            "post": operation("Serve the model from warm workers", responses(
                {200: ("serving", ref("Model")), 202: ("starting", ref("Model"))}, (*WRITE_ERRORS, 404, 409, 504)),
                [ID_PARAM, query("wait", {"type": "boolean"}, "wait until a worker is ready")],
                declared_body("serveModel", required=False), op_id="serveModel"),
            "delete": operation("Stop serving the model", responses(
                {200: ("not served", ref("Model"))}, (404, 409, 415, 503)), [ID_PARAM], op_id="unserveModel"),
        },
        "/api/ml/models/{id}/versions": {
            "get": operation("A model's versions ({id}: a deploy id or a model name)", responses(
                {200: ("versions", ref("ModelPointers"))}, (404,)), [ID_PARAM], op_id="listVersions"),
            "post": operation("Register an existing model file as the model's next version (no training)", responses(
                {201: ("registered", ref("ModelVersion"))}, (*WRITE_ERRORS, 404, 409)), [ID_PARAM],
                declared_body("registerVersion"), op_id="registerVersion"),
        },
        "/api/ml/models/{id}/promote": {"post": operation(
            "Make a version the default at once (warmed first when the model is served)", responses(
                {200: ("promoted", ref("ModelPointers"))}, (*WRITE_ERRORS, 404, 409)), [ID_PARAM],
            declared_body("promoteVersion"), op_id="promoteVersion")},
        "/api/ml/models/{id}/rollback": {"post": operation(
            "The previous default becomes the default (a pointer switch inside serving.rollback_window; "
            "after it, the version is served again first and reloaded says so)", responses(
                {200: ("rolled back", ref("ModelPointers"))}, (404, 409, 415, 503)), [ID_PARAM], op_id="rollback")},
        "/api/ml/models/{id}/rollout": {"post": operation(
            "Start a canary: a sticky share of the requests for a while, then promoted or rolled back", responses(
                {202: ("started", ref("ModelPointers"))}, (*WRITE_ERRORS, 404, 409)), [ID_PARAM],
            declared_body("startRollout"), op_id="startRollout")},
        "/api/ml/models/{id}/rollout/abort": {"post": operation(
            "End the running rollout now; the default stays", responses(
                {200: ("aborted", ref("ModelPointers"))}, (404, 409, 415, 503)), [ID_PARAM], op_id="abortRollout")},
        "/v2": {
            "get": operation("V2 server metadata", responses({200: ("metadata", ref("Object"))}, (), v2=True), op_id="v2Server"),
        },
        "/v2/health/live": {
            "get": operation("V2 liveness", responses({200: ("live", ref("Object"))}, (), v2=True), op_id="v2Live"),
        },
        "/v2/health/ready": {
            "get": operation("V2 readiness", responses({200: ("ready", ref("Object"))}, (503,), v2=True), op_id="v2Ready"),
        },
        **v2_model_paths("/v2/models/{name}", [], ""),
        **v2_model_paths("/v2/models/{name}/versions/{version}", [VERSION_PARAM], "Version"),
        "/metrics": {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics",
            "responses": {"200": {"description": "text exposition format", "content": {"text/plain": {"schema": STRING}}},
                          "401": {"description": ERROR_TEXT[401], "content": json_content(ref("Error"))},
                          **guard_responses()},
        }},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "CNET Agent API",
            "version": __version__,
            "description": "Deploy ML model scripts and process tasks on this node. Errors are "
                           "{error, status, timestamp, details}; V2 (Open Inference Protocol) errors are {error}.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


DOCUMENT = build_document()


async def openapi(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)
