"""Every bad input gets a 4xx in the error envelope, naming what was wrong; nothing
is created by a rejected request."""

from __future__ import annotations

import json

import pytest

from cnetd.api.errors import error_response
from cnetd.api.serialize import json_response
from tests.support.agent import AgentProcess

GOOD_TASK = {"name": "ok", "command": "true"}


def assert_error(reply, status: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert reply.status == status, reply.text
    assert set(reply.body) == {"error", "status", "timestamp", "details"}
    assert reply.body["status"] == status
    for needle in needles:
        assert needle in reply.body["error"], reply.body["error"]


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({"command": "true"}, ["name"]),
        ({"name": "x"}, ["command"]),
        ({"name": "x", "command": 5}, ["command", "string"]),
        ({"name": "x", "command": "true", "args": "a b"}, ["args", "array"]),
        ({"name": "x", "command": "true", "args": ["a", 2]}, ["args[1]"]),
        ({"name": "x", "command": "true", "env": {"A": 1}}, ["env.A"]),
        ({"name": "x", "command": "true", "env": ["A=1"]}, ["env"]),
        ({"name": "x", "command": "true", "resources": {"cpu_limit": -1}}, ["resources.cpu_limit"]),
        ({"name": "x", "command": "true", "resources": {"memory_limit": "lots"}}, ["resources.memory_limit"]),
        ({"name": "x", "command": "true", "resources": {"memory_limt": 5}}, ["resources.memory_limt", "unknown"]),
        ({"name": "x", "command": "true", "colour": "red"}, ["colour", "unknown"]),
        ({"name": "x", "command": "true", "type": "container"}, ["type"]),
        ({"name": "x", "command": "true", "timeout": "soon"}, ["timeout"]),
        ({"name": "x", "command": "no-such-program-xyz"}, ["command", "not found"]),
        ({"name": "x", "command": "true", "working_dir": "/no/such/dir"}, ["working_dir"]),
        ({"name": "x", "command": "true", "working_dir": "a" * 300}, ["working_dir", "255"]),
        ({"name": "x", "command": "true", "resources": {"cpu_limit": 10**400}}, ["resources.cpu_limit"]),
        ({"name": "<script>", "command": "true"}, ["name"]),
        *[({"name": "x", "command": "true", "resources": {"max_pids": bad}}, ["resources.max_pids"])
          for bad in (0, -1, "16", 1.5, True, 10**7)],
        # an attacker's try: lifting the node's fork-bomb cap (tasks.max_pids, 4096) from a request
        ({"name": "x", "command": "true", "resources": {"max_pids": 4097}}, ["resources.max_pids", "tasks.max_pids"]),
        ([1, 2], ["body", "object"]),
        ({"name": "x", "command": "tr\u0000ue"}, ["command", "NUL"]),
        ({"name": "x", "command": "true", "args": ["a", "b", "c", ["d"]]}, ["args[3]", "string"]),
        ({"name": "x", "command": "true", "env": {"A=B": "1"}}, ["env.A=B", "environment variable name"]),
        ({"name": "x", "command": "true", "env": {"FOO": "a\u0000b"}}, ["env.FOO", "NUL"]),
        ({"name": "x", "command": "true", "resources": {"memory_limit": True}}, ["resources.memory_limit"]),
        ({"name": "x", "command": "true", "resources": {"memory_limit": "9" * 400}}, ["resources.memory_limit", "too large"]),
        ({"name": "x", "command": "true", "timeout": "9" * 400}, ["timeout", "too large"]),
        ({"name": "x", "command": "true", "x` - at `$.resources": 1}, ["x` - at `$.resources: unknown field"]),
    ],
)
def test_bad_task_bodies(agent: AgentProcess, body: object, needles: list[str]) -> None:
    assert_error(agent.api.post("/api/tasks", body), 400, *needles)
    assert agent.api.get("/api/tasks").body == []


def test_malformed_and_empty_bodies(agent: AgentProcess) -> None:
    assert_error(agent.api.post("/api/tasks", raw=b"{not json"), 400, "not valid JSON")
    assert_error(agent.api.post("/api/tasks", raw=b""), 400, "empty")
    assert_error(agent.api.post("/api/tasks", raw=b"\xff\xfe"), 400, "UTF-8")
    assert_error(agent.api.post("/api/tasks", raw=b"x" * (2 * 1024 * 1024)), 413)


def test_unknown_ids_routes_and_methods(agent: AgentProcess) -> None:
    assert_error(agent.api.get("/api/tasks/nope"), 404, "nope")
    assert_error(agent.api.delete("/api/tasks/nope"), 404)
    assert_error(agent.api.get("/api/tasks/nope/logs"), 404)
    assert_error(agent.api.get("/api/ml/models/nope"), 404)
    assert_error(agent.api.post("/api/ml/models/nope/predict", {"input_data": 1}), 404)
    assert_error(agent.api.get("/api/nothing-here"), 404, "no such endpoint")
    reply = agent.api.request("PUT", "/api/tasks")
    assert_error(reply, 405, "PUT")
    assert "GET" in reply.headers["Allow"]


def test_bad_query_parameters(agent: AgentProcess) -> None:
    task = agent.api.post("/api/tasks", GOOD_TASK).body
    assert_error(agent.api.get(f"/api/tasks/{task['id']}/logs?lines=abc"), 400, "lines")
    assert_error(agent.api.get(f"/api/tasks/{task['id']}/logs?lines=0"), 400, "lines")
    assert_error(agent.api.get(f"/api/tasks/{task['id']}/logs?lines=100001"), 400, "lines")
    assert_error(agent.api.get("/api/tasks?status=weird"), 400, "status")


@pytest.mark.parametrize(
    ("patch", "needles"),
    [
        ({"model_path": None}, ["model_path"]),
        ({"script_path": "examples/ml_models/missing.py"}, ["script_path", "no such file"]),
        ({"resources": {"cpu_limit": "two"}}, ["resources.cpu_limit"]),
        ({"resources": {"max_pids": 100_000}}, ["resources.max_pids", "tasks.max_pids"]),
        ({"args": [1, 2]}, ["args[0]"]),
        ({"name": ""}, ["name"]),
        ({"script_path": "0" * 5000}, ["script_path"]),
        ({"model_path": "m" * 256}, ["model_path", "255"]),
        ({"serving": {"replicas": 0}}, ["serving.replicas", "between 1 and 64"]),
        ({"serving": {"loader": "docker"}}, ["serving.loader", "auto, script, builtin"]),
        ({"env": {"": "x"}}, ["env.", "environment variable name"]),
    ],
)
def test_bad_deploy_bodies(agent: AgentProcess, patch: dict[str, object], needles: list[str]) -> None:
    from tests.test_ml_api import LINEAR_BODY

    body = {**LINEAR_BODY, **patch}
    body = {k: v for k, v in body.items() if v is not None}
    assert_error(agent.api.post("/api/ml/models", body), 400, *needles)
    assert agent.api.get("/api/ml/models").body == []
    assert agent.api.get("/api/tasks").body == []


def test_bad_predict_bodies(agent: AgentProcess) -> None:
    from tests.test_ml_api import LINEAR_BODY

    model = agent.api.post("/api/ml/models", LINEAR_BODY).body
    path = f"/api/ml/models/{model['id']}/predict"
    assert_error(agent.api.post(path, {}), 400, "input_data")
    assert_error(agent.api.post(path, {"input_data": None}), 400, "input_data")
    assert_error(agent.api.post(path, {"input_data": []}), 400, "input_data")
    assert_error(agent.api.post(path, {"input": 5.5}), 400, "input")
    assert_error(agent.api.post(path + "?wait=maybe", {"input_data": 5.5}), 400, "wait")


def test_malformed_http_is_refused_with_one_warning_line(agent: AgentProcess) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n")
        assert b" 400 Bad Request" in s.recv(100)
    assert agent.api.get("/api/health").status == 200
    from tests.support.waiting import wait_until

    wait_until(lambda: "malformed HTTP request refused" in agent.log_text(), 5, "the warning line")
    assert "Traceback" not in agent.log_text()


def test_an_answer_holding_a_lone_surrogate_is_still_valid_json_not_a_500() -> None:
    """A hostile worker's error text or a name decoded from bad bytes may hold a lone
    surrogate, which has no UTF-8 form: the answer escapes it instead of failing."""
    error = error_response(502, "worker said \ud800")
    assert error.status == 502 and error.content_type == "application/json" and error.charset == "utf-8"
    assert error.body is not None and json.loads(bytes(error.body))["error"] == "worker said \ud800"
    listed = json_response({"name": "caf\u00e9 \udcff"})
    assert listed.body is not None and json.loads(bytes(listed.body)) == {"name": "caf\u00e9 \udcff"}
    assert json_response({"name": "caf\u00e9"}).body == '{"name": "caf\u00e9"}'.encode()  # non-ASCII stays as itself
