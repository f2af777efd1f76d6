"""The OpenAPI document is true to the router, and the agent survives a fuzz run
against it: no 5xx, every response as documented."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from cnetd.api.openapi import DOCUMENT
from cnetd.api.routes import add_api_routes
from cnetd.cluster.placing import PlaceRequest
from cnetd.ml.bodies import DeploymentBody, PredictRequestBody
from cnetd.ml.serving.spec import ServingSpecBody
from cnetd.ml.versions.bodies import PromoteBody, RegisterBody, RolloutBody
from cnetd.tasks.request import NewTaskBody
from tests.support.agent import AgentProcess

TOKEN = "fuzz-token-0123456789abcdef"
DOCUMENTED_PREFIXES = ("/api/", "/v2", "/metrics")


def router_operations() -> set[tuple[str, str]]:
    app = web.Application()
    add_api_routes(app)
    ops = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD", "*") or not path.startswith(DOCUMENTED_PREFIXES):
            continue
        ops.add((route.method.lower(), path))
    return ops


def document_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}


def test_document_matches_the_router() -> None:
    assert document_operations() == router_operations()


def test_document_is_valid_openapi_3_1() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            assert op["responses"], f"{method} {path} documents no response"


def test_every_operation_documents_the_host_and_task_caller_refusals() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            for code in ("403", "421"):
                assert code in op["responses"], f"{method} {path} does not document {code}"
                assert op["responses"][code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "tls" in DOCUMENT["components"]["schemas"]["Health"]["properties"]


def test_every_unsafe_operation_documents_the_json_only_rule() -> None:
    """The gate (jsonbody.media_problem) answers 415 on any POST or DELETE with a non-JSON body."""
    missing = [f"{method} {path}" for path, item in DOCUMENT["paths"].items() for method, op in item.items()
               if method in ("post", "put", "patch", "delete") and "415" not in op["responses"]]
    assert missing == []


def test_served_document_is_the_same(agent: AgentProcess) -> None:
    reply = agent.api.get("/api/openapi.json")
    assert reply.status == 200 and reply.body["paths"].keys() == DOCUMENT["paths"].keys()
    assert reply.body == json.loads(json.dumps(DOCUMENT))


# Which declaration checks which operation's body; written out here, not taken from openapi.py.
DECLARED_BODIES: dict[str, type[msgspec.Struct]] = {
    "createTask": NewTaskBody,
    "deployModel": DeploymentBody,
    "predict": PredictRequestBody,
    "serveModel": ServingSpecBody,
    "clusterPlace": PlaceRequest,
    "registerVersion": RegisterBody,
    "promoteVersion": PromoteBody,
    "startRollout": RolloutBody,
}
HAND_WRITTEN_BODIES = {"v2Infer", "v2InferVersion"}  # the Open Inference Protocol's own shape (protocol.py)


def declared_components() -> dict[str, Any]:
    """msgspec's JSON Schema of the declarations, named as the document names them."""
    _, components = msgspec.json.schema_components(
        list(DECLARED_BODIES.values()), ref_template="#/components/schemas/{name}",
    )
    text = json.dumps(components)
    for name in components:
        text = text.replace(f'"#/components/schemas/{name}"', f'"#/components/schemas/{name.removesuffix("Body")}"')
        text = text.replace(f'"title": "{name}"', f'"title": "{name.removesuffix("Body")}"')
    renamed = {name.removesuffix("Body"): schema for name, schema in json.loads(text).items()}
    for schema in renamed.values():
        if "description" in schema:
            schema["description"] = " ".join(schema["description"].split())
    return renamed


def referenced(schema: Any, components: dict[str, Any], seen: set[str]) -> set[str]:
    """The component names a schema reaches through $ref."""
    if isinstance(schema, dict):
        ref = schema.get("$ref", "")
        if ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] not in seen:
            name = ref.rsplit("/", 1)[1]
            seen.add(name)
            referenced(components[name], components, seen)
        for value in schema.values():
            referenced(value, components, seen)
    elif isinstance(schema, list):
        for value in schema:
            referenced(value, components, seen)
    return seen


def test_served_request_bodies_are_the_declarations(agent: AgentProcess) -> None:
    """The drift test: each request body in the served document is exactly the JSON Schema of
    the declaration that checks it, down to every component it refers to."""
    served = agent.api.get("/api/openapi.json").body
    components = served["components"]["schemas"]
    declared = declared_components()
    operations = {op["operationId"]: op for item in served["paths"].values() for op in item.values()}
    with_bodies = {op_id for op_id, op in operations.items() if "requestBody" in op}
    assert with_bodies == DECLARED_BODIES.keys() | HAND_WRITTEN_BODIES
    for op_id, declaration in DECLARED_BODIES.items():
        schema = operations[op_id]["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{declaration.__name__.removesuffix('Body')}"}, op_id
        for name in referenced(schema, components, set()):
            assert components[name] == declared[name], f"{op_id}: component {name} differs from its declaration"
    assert operations["serveModel"]["requestBody"]["required"] is False  # every serving setting is optional


@pytest.mark.slow
def test_fuzzing_finds_no_server_error_and_no_undocumented_answer(agent_factory) -> None:  # type: ignore[no-untyped-def]
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists() and shutil.which("schemathesis") is None:
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    agent: AgentProcess = agent_factory({
        "auth": {"tokens": [TOKEN]},
        # Fuzzed bodies must not run arbitrary programs: only `true` may start.
        "tasks": {"allowed_commands": ["true"], "max_concurrent": 4},
    }).start()
    def fuzz(*selection: str, max_time: int) -> None:
        result = subprocess.run(
            [str(cli), "run", f"{agent.url}/api/openapi.json",
             "-H", f"Authorization: Bearer {TOKEN}",
             "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--phases", "examples,coverage,fuzzing",
             "--max-examples", "25",
             # One worker: two threads in hypothesis's lambda-source parsing can crash CPython 3.11's
             # ast.parse ("AST constructor recursion depth mismatch"), a tool error, not an API one.
             "--workers", "1",
             "--max-time", str(max_time),
             "--seed", "1",
             *selection],
            capture_output=True, text=True, timeout=max_time + 250, cwd=agent.workdir,
            env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false", "NO_COLOR": "1"},
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]

    fuzz(max_time=150)
    assert "Traceback" not in agent.log_text()
