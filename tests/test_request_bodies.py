"""Hostile request bodies against a real agent: JSON nested 100,000 deep, V2 tensor shapes
that would build millions of instances out of nothing, and bodies a cross-site page could
send (text/plain, forms) to any unsafe /api or /v2 route. Each gets a clear 4xx, the agent
keeps answering, and its memory does not grow."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cnetd.api.jsonbody import nesting_depth
from tests.support.agent import AgentProcess
from tests.support.http import Reply

PY = sys.executable
PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
HUGE_INT = b'{"name": "x", "command": "true", "timeout": ' + b"9" * 5000 + b"}"
INFER = "/v2/models/pure/infer"
CROSS_SITE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent with the standard-library model trained and served as "pure"."""
    agent = AgentProcess(tmp_path_factory.mktemp("bodies")).start()
    try:
        scripts = agent.workdir / "scripts"
        scripts.mkdir()
        shutil.copy(PURE_MODEL, scripts / "pure_model.py")
        deployed = agent.api.post("/api/ml/models", {"name": "pure", "command": PY, "script_path": "scripts/pure_model.py",
                                                     "model_path": "models/p.json"})
        assert deployed.status == 201, deployed.text
        agent.model_id = deployed.body["id"]  # type: ignore[attr-defined]
        assert agent.wait_done(deployed.body["id"])["status"] == "completed"
        serving = agent.api.post(f"/api/ml/models/{deployed.body['id']}/serve?wait=true", {"replicas": 1})
        assert serving.status == 200, serving.text
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def rss(agent: AgentProcess) -> int:
    assert agent.proc is not None
    return int(psutil.Process(agent.proc.pid).memory_info().rss)


def healthy_within(agent: AgentProcess, seconds: float) -> None:
    """The event loop is free: /api/health answers within the deadline."""
    start = time.monotonic()
    assert agent.api.get("/api/health", timeout=seconds).status == 200
    assert time.monotonic() - start < seconds


def tensor(shape: list[Any], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP64", "data": data}]}


@pytest.mark.parametrize(("text", "depth"), [
    (b"[" * 65 + b"]" * 65, 65),
    (b"[" * 100, 100),  # unclosed: the decoder would still recurse into each one
    (b"[" * 70 + b'"' + b"]" * 70, 70),  # an unterminated string hides the rest
    (b'[' * 60 + b'"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["' + b"]" * 60, 60),
    (b'[' * 60 + b'"\\\\"' + b"[" * 10 + b"]" * 70, 70),  # an escaped backslash ends the string
    (b'[' * 60 + b'"\\\\"[[[[[[[[[[' + b'"' + b"]" * 60, 70),
    (b'[' * 60 + b'"\\"[[[[[[[[[[' + b'"' + b"]" * 60, 60),  # an escaped quote does not
    (b'{"a":' * 70 + b"1" + b"}" * 70, 70),
    (b"]" * 100 + b"[" * 10, 10),
])
def test_nesting_depth_is_found_without_decoding(text: bytes, depth: int) -> None:
    found = nesting_depth(text)
    assert found == depth or (depth <= 64 and found == 0)


def test_json_nested_too_deeply_is_a_400_not_a_traceback(served: AgentProcess) -> None:
    agent = served
    for path in ("/api/tasks", "/api/ml/models", f"/api/ml/models/{agent.model_id}/predict"):  # type: ignore[attr-defined]
        for body in (DEEP_ARRAY, DEEP_OBJECT):
            reply = agent.api.post(path, raw=body)
            assert reply.status == 400, (path, reply.status, reply.text[:300])
            assert reply.body["error"].startswith("request body is nested too deeply"), reply.text
            assert reply.body["details"] == {"max_depth": 64}
    for body in (DEEP_ARRAY, DEEP_OBJECT):
        reply = agent.api.post(INFER, raw=body)
        assert reply.status == 400 and reply.body["error"].startswith("request body is nested too deeply"), reply.text
    # bodies that make a careless string-skipping scan quadratic are a quick 400 too
    for body in (b"[" * 70 + b'"' + b'\\"' * 400_000, b"[" * 70 + b'"\\' * 400_000, b"[" * 70 + b'"' * 900_000):
        reply = agent.api.post("/api/tasks", raw=body, timeout=10)
        assert reply.status == 400, reply.text[:300]
        healthy_within(agent, 2)
    # 64 levels are fine (a clear 400 about the field, not about depth)
    nested = agent.api.post("/api/tasks", raw=b'{"name": "x", "command": "true", "args": ' + b"[" * 63 + b"]" * 63 + b"}")
    assert nested.status == 400 and "nested too deeply" not in nested.body["error"], nested.text
    # an integer too long for Python to parse is a 400 too
    huge = agent.api.post("/api/tasks", raw=HUGE_INT)
    assert huge.status == 400 and huge.body["error"].startswith("request body is not valid JSON"), huge.text
    assert agent.api.get("/api/tasks?type=process").body == []
    assert "Traceback" not in agent.log_text()
    healthy_within(agent, 5)


@pytest.mark.parametrize(("shape", "data", "field"), [
    ([3_000_000, 0], [], "inputs[0].shape[1]"),
    ([10**12, 0], [], "inputs[0].shape[0]"),
    ([0, 10**12], [], "inputs[0].shape[1]"),
    ([10_000_000, 10_000_000], [1.0], "inputs[0].shape"),
    ([1] * 1000, [1.0], "inputs[0].shape"),
    ([2] * 8, [1.0], "inputs[0].shape"),
])
def test_v2_shapes_that_would_build_huge_tensors_are_refused_at_once(served: AgentProcess, shape: list[int],
                                                                    data: list[float], field: str) -> None:
    agent = served
    before = rss(agent)
    for _ in range(3):
        reply = agent.api.post(INFER, tensor(shape, data), timeout=10)
        assert reply.status == 400, reply.text[:300]
        assert reply.body["error"].startswith(field + ":"), reply.text[:300]
        healthy_within(agent, 2)
    grown = rss(agent) - before
    assert grown < 20 * 1024 * 1024, f"the agent's memory grew by {grown / 1e6:.0f} MB"
    # and a good request still works
    good = agent.api.post(INFER, tensor([2], [1.0, 2.0]))
    assert good.status == 200 and good.body["outputs"][0]["data"] == pytest.approx([5.0, 7.0]), good.text


def unsafe_routes(agent: AgentProcess) -> list[tuple[str, str]]:
    model = agent.model_id  # type: ignore[attr-defined]
    return [
        ("POST", "/api/tasks"),
        ("POST", "/api/ml/models"),
        ("POST", f"/api/ml/models/{model}/predict"),
        ("POST", f"/api/ml/models/{model}/serve"),
        ("DELETE", f"/api/ml/models/{model}/serve"),
        ("DELETE", "/api/tasks/no-such-task"),
        ("POST", INFER),
        ("POST", "/v2/models/pure/versions/" + model + "/infer"),
        ("POST", "/v2/models/not-served/infer"),
    ]


def is_415(reply: Reply, path: str) -> bool:
    return reply.status == 415 and "Content-Type must be application/json" in reply.body["error"] and (
        path.startswith("/v2/") or reply.body["status"] == 415)


def test_bodies_a_cross_site_page_could_send_are_refused_on_every_unsafe_route(served: AgentProcess) -> None:
    agent = served
    tasks_before = agent.api.get("/api/tasks").body
    for method, path in unsafe_routes(agent):
        for content_type in CROSS_SITE_TYPES:
            for body in (b'{"replicas": 1, "input_data": 1}', b""):  # an empty form POST is a simple request too
                reply = agent.api.request(method, path, raw=body, headers={"Content-Type": content_type})
                assert is_415(reply, path), (method, path, content_type, body, reply.status, reply.text)
        # a body with no Content-Type at all
        reply = agent.api.request(method, path, raw=b"{}", headers={"Content-Type": ""})
        assert reply.status == 415, (method, path, reply.text)
    assert agent.api.get("/api/tasks").body == tasks_before
    assert agent.api.get(f"/api/ml/models/{agent.model_id}").body["serving"]["state"] == "serving"  # type: ignore[attr-defined]


def test_binary_tensor_extension_is_not_there_yet(served: AgentProcess) -> None:
    reply = served.api.post(INFER, raw=b"\x00" * 16, headers={"Content-Type": "application/octet-stream",
                                                               "Inference-Header-Content-Length": "0"})
    assert reply.status == 415 and "binary tensor extension" in reply.body["error"], reply.text
    plain = served.api.post(INFER, raw=b"\x00" * 16, headers={"Content-Type": "application/octet-stream"})
    assert plain.status == 415 and "must be application/json" in plain.body["error"], plain.text


def test_json_and_bodyless_requests_still_pass(served: AgentProcess) -> None:
    agent = served
    assert agent.api.post(INFER, tensor([1], [1.0]), headers={"Content-Type": "application/json; charset=utf-8"}).status == 200
    created = agent.api.post("/api/tasks", {"name": "ok", "command": "true"})
    assert created.status == 201, created.text
    agent.wait_done(created.body["id"])
    missing = agent.api.delete("/api/tasks/no-such-task")  # no body, no Content-Type
    assert missing.status == 404, missing.text
    # an unknown route is still a 404, whatever the body
    assert agent.api.post("/api/nope", raw=b"x", headers={"Content-Type": "text/plain"}).status == 404
