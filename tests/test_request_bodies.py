"""Hostile request bodies against a real agent: JSON nested 100,000 deep, V2 tensor shapes
that would build millions of instances out of nothing, and bodies a cross-site page could
send (text/plain, forms) to any unsafe /api or /v2 route, strings that are not text (JSON's
"\\ud800": a lone surrogate). Each gets a clear 4xx, the agent keeps answering, and its memory
does not grow."""

from __future__ import annotations

import html
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from cnetd.api.jsonbody import nesting_depth
from tests.support.agent import AgentProcess
from tests.support.http import Reply
from tests.support.pure_served import pure_model_agent

PY = sys.executable
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
HUGE_INT = b'{"name": "x", "command": "true", "timeout": ' + b"9" * 5000 + b"}"
INFER = "/v2/models/pure/infer"
CROSS_SITE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent with the standard-library model trained and served as "pure"."""
    with pure_model_agent(AgentProcess(tmp_path_factory.mktemp("bodies"))) as agent:
        yield agent


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


def test_binary_tensor_bodies_pass_only_on_the_infer_routes(served: AgentProcess) -> None:
    binary = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "2"}
    reply = served.api.post(INFER, raw=b"{}", headers=binary)
    assert reply.status == 400 and reply.body["error"].startswith("inputs:"), reply.text  # past the 415: parsed
    for method, path in unsafe_routes(served):
        if not path.endswith("/infer"):
            refused = served.api.request(method, path, raw=b"{}", headers=binary)
            assert refused.status == 415 and "binary tensor data is for V2 infer only" in refused.body["error"], refused.text
            bare = served.api.request(method, path, raw=b"{}", headers={**binary, "Content-Type": ""})
            assert bare.status == 415, (path, bare.text)
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


LONE = "\ud800"  # json.dumps writes it as the escape \\ud800, which json.loads turns back into it
DEPLOY = {"name": "lone", "command": PY, "script_path": "scripts/pure_model.py", "model_path": "models/lone.json"}
NOT_TEXT = "is not valid text: it holds a lone surrogate (\\ud800)"
KEY_NOT_TEXT = "has a key that is not valid text: it holds a lone surrogate (\\ud800)"


@pytest.mark.parametrize(("path", "body", "field", "problem"), [
    ("/api/tasks", {"name": "lone", "command": "true", "args": ["ok", "a" + LONE]}, "args[1]", NOT_TEXT),
    ("/api/tasks", {"name": "lone", "command": "true", "env": {"A": LONE + "b"}}, "env.A", NOT_TEXT),
    ("/api/tasks", {"name": "lone", "command": "true", "env": {"K" + LONE: "v"}}, "env", KEY_NOT_TEXT),
    ("/api/tasks", {"name": "lone", "command": LONE}, "command", NOT_TEXT),
    ("/api/tasks", {"name": "lone", "command": "true", "working_dir": LONE}, "working_dir", NOT_TEXT),
    ("/api/ml/models", {**DEPLOY, "args": ["scripts/pure_model.py", "train", LONE]}, "args[2]", NOT_TEXT),
    ("/api/ml/models", {**DEPLOY, "env": {"PYTHONPATH": LONE}}, "env.PYTHONPATH", NOT_TEXT),
    ("/api/ml/models", {**DEPLOY, "env": {LONE: "v"}}, "env", KEY_NOT_TEXT),
    ("/api/ml/models", {**DEPLOY, "model_type": LONE}, "model_type", NOT_TEXT),
    ("/api/ml/models", {**DEPLOY, "model_path": "models/" + LONE}, "model_path", NOT_TEXT),
    ("predict", {"input_data": [1.0, LONE]}, "input_data[1]", NOT_TEXT),
])
def test_strings_that_are_not_text_are_a_400_naming_the_field(
    served: AgentProcess, path: str, body: dict[str, Any], field: str, problem: str
) -> None:
    """An attacker's body: JSON's \\ud800 escape decodes to a lone surrogate, a string with no
    UTF-8 form, which would fail the store, the log, the answer or the process it is passed to
    (a 500, or a 201 and then a failed task). It is refused with the field named, and nothing
    is created."""
    agent = served
    if path == "predict":
        path = f"/api/ml/models/{agent.model_id}/predict"  # type: ignore[attr-defined]
    tasks_before = agent.api.get("/api/tasks").body
    reply = agent.api.post(path, body)
    assert b"\\ud800" in json.dumps(body).encode()  # what went over the wire
    assert reply.status == 400, (reply.status, reply.text[:300])
    assert reply.body["error"] == f"{field}: {problem}", reply.text
    assert reply.body["details"] == {"field": field}
    assert agent.api.get("/api/tasks").body == tasks_before
    assert "Traceback" not in agent.log_text()
    healthy_within(agent, 5)


def test_a_valid_surrogate_pair_is_text(served: AgentProcess) -> None:
    created = served.api.post("/api/tasks", {"name": "pair", "command": "true", "args": ["\U0001F600"],
                                             "env": {"SMILE": "\U0001F600"}})
    assert b"\\ud83d\\ude00" in json.dumps({"a": "\U0001F600"}).encode()  # sent as a pair of escapes
    assert created.status == 201, created.text
    assert created.body["args"] == ["\U0001F600"] and created.body["env"]["SMILE"] == "\U0001F600"
    served.wait_done(created.body["id"])


def test_the_ui_predict_form_names_a_json_input_that_is_not_text(served: AgentProcess) -> None:
    """The model page's predict form takes JSON too: the same escape typed there is refused
    the same way, on the form, and nothing runs."""
    agent = served
    tasks_before = agent.api.get("/api/tasks").body
    form = urllib.parse.urlencode({"input_data": '[1.0, "\\ud800"]'}).encode()
    reply = agent.api.post(f"/models/{agent.model_id}/predict", raw=form,  # type: ignore[attr-defined]
                           headers={"Content-Type": "application/x-www-form-urlencoded", "HX-Request": "true"})
    assert reply.status == 200, reply.text[:300]
    assert "is not valid text: it holds a lone surrogate (\\ud800)" in html.unescape(reply.text), reply.text
    assert agent.api.get("/api/tasks").body == tasks_before
