"""Every V2 datatype round-trips over HTTP through a model that echoes its input
(tests/support/echo_model.py), against a real agent: the binary tensor data extension both
ways (bytes built and read by hand, exact), the JSON form, the official HTTP client in its
default (binary) and JSON modes, and BYTES elements that are not UTF-8 coming back as sent.

The Triton client's JSON mode sends its body with no Content-Type: that is read as JSON on
the V2 infer routes, but not when a browser sends it for a page (Origin / Sec-Fetch-*
headers), since a page's fetch() of a bare byte body needs no CORS preflight."""

from __future__ import annotations

import http.client
import json
import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from tests.support.agent import AgentProcess
from tests.test_v2_binary import parse_binary_answer, post_binary

ECHO_MODEL = Path(__file__).with_name("support") / "echo_model.py"
INFER = "/v2/models/echo/infer"
FORMATS = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
           "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}
VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, False, True],
    "FP16": [-2.5, 0.0, 1.5, 65504.0], "FP32": [-2.5, 0.0, 1.5, 2.0**100], "FP64": [-2.5, 0.0, 1.5, 1.0e308],
    **{t: [int(np.iinfo(np.dtype(f"<{f}")).min), 0, 1, int(np.iinfo(np.dtype(f"<{f}")).max)]
       for t, f in FORMATS.items() if t[0] in "IU"},
}
WORDS = [b"plain", b"\xff\x00 not utf-8", "\u6a21\u578b".encode(), b""]


def echoed_datatype(datatype: str) -> str:
    """What holds the echo's answer (a script answers JSON values): BOOL stays BOOL, whole
    numbers are INT64 (UINT64 above its range), the rest FP64."""
    if datatype == "BOOL":
        return "BOOL"
    if datatype == "UINT64":
        return "UINT64"
    return "INT64" if datatype[0] in "IU" else "FP64"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path_factory.mktemp("v2types")).start()
    try:
        scripts = agent.workdir / "scripts"
        scripts.mkdir()
        shutil.copy(ECHO_MODEL, scripts / "echo_model.py")
        deployed = agent.api.post("/api/ml/models", {"name": "echo", "command": sys.executable,
                                                     "script_path": "scripts/echo_model.py", "model_path": "models/e.txt"})
        assert deployed.status == 201, deployed.text
        assert agent.wait_done(deployed.body["id"])["status"] == "completed"
        serving = agent.api.post(f"/api/ml/models/{deployed.body['id']}/serve?wait=true", {"replicas": 1})
        assert serving.status == 200, serving.text
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def read_bytes_elements(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


def binary_input(datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}],
            "parameters": {"binary_data_output": True}}


@pytest.mark.parametrize("datatype", sorted(FORMATS))
def test_every_datatype_round_trips_as_binary_both_ways(served: AgentProcess, datatype: str) -> None:
    values = VALUES[datatype]
    raw = struct.pack(f"<4{FORMATS[datatype]}", *values)
    header, (data,) = parse_binary_answer(post_binary(served, binary_input(datatype, [2, 2], len(raw)), raw, INFER))
    (output,) = header["outputs"]
    answered = echoed_datatype(datatype)
    assert output["datatype"] == answered and output["shape"] == [2, 2], output
    fmt = FORMATS[{"INT64": "INT64", "UINT64": "UINT64", "FP64": "FP64", "BOOL": "BOOL"}[answered]]
    assert list(struct.unpack(f"<4{fmt}", data)) == values  # exact: extremes of every integer type too


@pytest.mark.parametrize("datatype", sorted(FORMATS))
def test_every_datatype_round_trips_as_json(served: AgentProcess, datatype: str) -> None:
    values = VALUES[datatype]
    reply = served.api.post(INFER, {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 2], "data": values}]})
    assert reply.status == 200, reply.text
    (output,) = reply.body["outputs"]
    assert output["datatype"] == echoed_datatype(datatype) and output["shape"] == [2, 2]
    assert output["data"] == values


def test_bytes_elements_round_trip_exactly_even_when_not_utf8(served: AgentProcess) -> None:
    raw = bytes_elements(WORDS)
    header, (data,) = parse_binary_answer(post_binary(served, binary_input("BYTES", [4], len(raw)), raw, INFER))
    assert header["outputs"][0]["datatype"] == "BYTES" and header["outputs"][0]["shape"] == [4]
    assert read_bytes_elements(data) == WORDS
    as_json = served.api.post(INFER, {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["a", "\u00e9"]}]})
    assert as_json.status == 200 and as_json.body["outputs"][0] == {
        "name": "predictions", "datatype": "BYTES", "shape": [2], "data": ["a", "\u00e9"]}, as_json.text


@pytest.mark.parametrize(("tensor", "problem"), [
    ({"datatype": "BOOL", "shape": [2], "data": [True, 1]}, "inputs[0].data[1]: not true or false: 1 (datatype BOOL)"),
    ({"datatype": "BYTES", "shape": [2], "data": ["a", 5]}, "inputs[0].data[1]: not a string: 5 (datatype BYTES)"),
    ({"datatype": "INT8", "shape": [1], "data": [True]}, "inputs[0].data[0]: not a number: true"),
])
def test_json_values_must_match_their_datatype(served: AgentProcess, tensor: dict[str, Any], problem: str) -> None:
    reply = served.api.post(INFER, {"inputs": [{"name": "x", **tensor}]})
    assert reply.status == 400 and reply.body["error"].startswith(problem), reply.text


def test_the_official_client_in_binary_and_json_modes(served: AgentProcess) -> None:
    client = triton.InferenceServerClient(url=served.api.base_url.removeprefix("http://"))
    try:
        for binary in (True, False):
            words = np.array([[b"a", b"\xff\x00"], ["\u00e9".encode(), b""]], dtype=np.object_)
            flags = np.array([True, False, True], dtype=np.bool_)
            halves = np.array([[0.5, -1.0]], dtype=np.float16)
            for array, datatype in ((words, "BYTES"), (flags, "BOOL"), (halves, "FP16")):
                if not binary and datatype == "BYTES" and any(b"\xff" in w for w in array.reshape(-1)):
                    array = np.array([[b"a", b"b"], ["\u00e9".encode(), b""]], dtype=np.object_)  # JSON carries text only
                tensor = triton.InferInput("x", list(array.shape), datatype)
                tensor.set_data_from_numpy(array, binary_data=binary)
                answer = client.infer("echo", [tensor], outputs=[triton.InferRequestedOutput("predictions", binary_data=binary)])
                got = answer.as_numpy("predictions")
                assert got.shape == array.shape, (binary, datatype)
                if datatype == "FP16":
                    assert got.tolist() == array.astype(np.float64).tolist()
                elif datatype == "BYTES" and not binary:
                    assert [w.decode() if isinstance(w, bytes) else w for w in got.reshape(-1)] == \
                        [w.decode() for w in array.reshape(-1)]
                else:
                    assert got.tolist() == array.tolist(), (binary, datatype)
    finally:
        client.close()


def post_without_content_type(agent: AgentProcess, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """A POST whose request has no Content-Type at all (urllib would add a form type)."""
    host, port = agent.api.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", INFER)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


JSON_BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [2.5]}]}).encode()


def test_no_content_type_is_json_for_programs(served: AgentProcess) -> None:
    status, body = post_without_content_type(served, JSON_BODY, {})
    assert status == 200 and body["outputs"][0]["data"] == [2.5], body


@pytest.mark.parametrize("browser", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Mode": "no-cors"}])
def test_no_content_type_from_a_browser_page_is_refused(served: AgentProcess, browser: dict[str, str]) -> None:
    """A page on another site can fetch() a bare byte body at a loopback agent without a CORS
    preflight; the agent must not run that inference."""
    status, body = post_without_content_type(served, JSON_BODY, browser)
    assert status == 415 and body["error"] == "Content-Type must be application/json, got none", body


def test_no_content_type_on_other_routes_is_still_refused(served: AgentProcess) -> None:
    host, port = served.api.base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        body = json.dumps({"name": "x", "command": "true"}).encode()
        connection.request("POST", "/api/tasks", body=body, headers={"Content-Length": str(len(body))})
        response = connection.getresponse()
        assert response.status == 415, response.read()
    finally:
        connection.close()
