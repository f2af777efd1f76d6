"""The V2 binary tensor data extension against a real agent serving the standard-library
model (y = 2x + 3): requests built by hand with struct (exact bytes), binary answers parsed by
hand, every numeric datatype through the served path, and hostile sizes as 400s naming the
input with the agent still answering."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Reply
from tests.support.pure_served import pure_model_agent

INFER = "/v2/models/pure/infer"
SIZE = "inputs[0].parameters.binary_data_size"
FORMATS = {"INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H", "UINT32": "I",
           "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    with pure_model_agent(AgentProcess(tmp_path_factory.mktemp("v2binary"))) as agent:
        yield agent


def binary_request(header: dict[str, Any], tensors: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + tensors, {"Content-Type": "application/octet-stream",
                            "Inference-Header-Content-Length": str(len(head) if length is None else length)}


def post_binary(agent: AgentProcess, header: dict[str, Any], tensors: bytes, path: str = INFER,
                length: int | None = None) -> Reply:
    raw, headers = binary_request(header, tensors, length)
    return agent.api.post(path, raw=raw, headers=headers)


def one_input(datatype: str, shape: list[int], size: int, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}], **extra}


def parse_binary_answer(reply: Reply) -> tuple[dict[str, Any], list[bytes]]:
    """The answer's JSON header and each binary output's bytes, read by hand."""
    assert reply.status == 200, reply.text[:300]
    assert reply.headers["Content-Type"] == "application/octet-stream"
    length = int(reply.headers["Inference-Header-Content-Length"])
    header = json.loads(reply.raw[:length])
    offset, parts = length, []
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        parts.append(reply.raw[offset:offset + size])
        offset += size
    assert offset == len(reply.raw)
    return header, parts


@pytest.mark.parametrize("datatype", sorted(FORMATS))
def test_every_numeric_datatype_is_served_from_binary_bytes(served: AgentProcess, datatype: str) -> None:
    values = [1, 2, 5, 7]
    reply = post_binary(served, one_input(datatype, [4], 4 * struct.calcsize(FORMATS[datatype])),
                        struct.pack(f"<4{FORMATS[datatype]}", *values))
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.body["outputs"][0]["data"] == pytest.approx([2 * v + 3 for v in values])


def test_a_binary_answer_when_an_output_asks_and_json_otherwise(served: AgentProcess) -> None:
    tensors = struct.pack("<3d", 0.5, 1.0, -2.0)
    asked = one_input("FP64", [3, 1], 24, id="r1", outputs=[{"name": "predictions", "parameters": {"binary_data": True}}])
    header, parts = parse_binary_answer(post_binary(served, asked, tensors))
    assert header["id"] == "r1" and header["model_name"] == "pure"
    (output,) = header["outputs"]
    assert output["name"] == "predictions" and output["datatype"] == "FP64" and output["shape"] == [3]
    assert "data" not in output and output["parameters"] == {"binary_data_size": 24}
    assert struct.unpack("<3d", parts[0]) == pytest.approx((4.0, 5.0, -1.0))
    # the request-level switch, from a JSON request too
    everything = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}],
                  "parameters": {"binary_data_output": True}}
    header, parts = parse_binary_answer(served.api.post(INFER, everything))
    assert struct.unpack("<d", parts[0]) == pytest.approx((5.0,))
    # asked for nothing binary: JSON exactly as for a JSON request, on the versioned route too
    model = served.model_id  # type: ignore[attr-defined]
    plain = post_binary(served, one_input("FP64", [3, 1], 24), tensors, path=f"/v2/models/pure/versions/{model}/infer")
    assert plain.status == 200 and plain.headers["Content-Type"].startswith("application/json"), plain.text
    assert plain.body["outputs"][0]["data"] == pytest.approx([4.0, 5.0, -1.0])
    off = post_binary(served, one_input("FP64", [1], 8, parameters={"binary_data_output": False}), struct.pack("<d", 1.0))
    assert off.status == 200 and off.body["outputs"][0]["data"] == pytest.approx([5.0]), off.text


@pytest.mark.parametrize(("header", "tensors", "length", "problem"), [
    (one_input("FP64", [3], 16), struct.pack("<2d", 1, 2), None, SIZE + ": is 16 bytes but shape [3]"),
    (one_input("FP64", [2], 24), struct.pack("<2d", 1, 2), None, SIZE + ": is 24 bytes but only 16"),
    (one_input("FP64", [2], 16), struct.pack("<3d", 1, 2, 3), None, "body: 8 bytes after the header"),
    (one_input("FP64", [2], 16), struct.pack("<2d", 1, 2), 10_000, "Inference-Header-Content-Length: says 10000"),
    (one_input("FP64", [2], 16), struct.pack("<2d", 1, 2), 5, "request body is not valid JSON"),
    (one_input("FP64", [2], -16), struct.pack("<2d", 1, 2), None, SIZE + ": must be a whole"),
    (one_input("FP64", [2], 2**64), struct.pack("<2d", 1, 2), None, SIZE + ": is 18446744073709551616"),
    (one_input("FP64", [10_000_000, 8], 16), struct.pack("<2d", 1, 2), None, "inputs[0].shape: [10000000, 8] holds"),
    (one_input("FP64", [2], 16), struct.pack("<2d", 1, float("nan")), None, "inputs[0].data[1]: not a finite number"),
    (one_input("BF16", [2], 4), b"\x00" * 4, None, "inputs[0].datatype: BF16 is not supported as binary data"),
    (one_input("BOOL", [2], 2), b"\x00\x02", None, "inputs[0].data: BOOL bytes must each be 0 or 1"),
    (one_input("FP64", [2], 16, outputs=[{"name": "predictions", "parameters": {"binary_data": "yes"}}]),
     struct.pack("<2d", 1, 2), None, "outputs[0].parameters.binary_data: must be true or false"),
])
def test_hostile_sizes_are_400s_naming_what_is_wrong(served: AgentProcess, header: dict[str, Any], tensors: bytes,
                                                     length: int | None, problem: str) -> None:
    reply = post_binary(served, header, tensors, length=length)
    assert reply.status == 400 and reply.body["error"].startswith(problem), reply.text[:300]
    assert served.api.get("/api/health", timeout=5).status == 200


def test_header_length_that_is_not_a_number_and_json_mode_binary_sizes(served: AgentProcess) -> None:
    raw, headers = binary_request(one_input("FP64", [1], 8), struct.pack("<d", 1.0))
    for bad in ("-3", "0x10", "", "1 2"):
        reply = served.api.post(INFER, raw=raw, headers={**headers, "Inference-Header-Content-Length": bad})
        assert reply.status == 400 and reply.body["error"].startswith("Inference-Header-Content-Length:"), (bad, reply.text)
    as_json = served.api.post(INFER, one_input("FP64", [1], 8))
    assert as_json.status == 400 and "needs Content-Type application/octet-stream" in as_json.body["error"], as_json.text


def test_the_server_says_it_has_the_extension(served: AgentProcess) -> None:
    assert "binary_tensor_data" in served.api.get("/v2").body["extensions"]


def test_a_binary_body_over_the_apis_1_mib_is_served(served: AgentProcess) -> None:
    """Inference bodies are bounded by serving.max_request_bytes (64 MiB unless set; its
    edges in tests/test_request_limits.py), not by the 1 MiB of the other routes."""
    count = (1024 * 1024) // 8 + 1
    reply = post_binary(served, one_input("FP64", [count], count * 8), struct.pack(f"<{count}d", *range(count)))
    assert reply.status == 200, reply.text[:300]
    assert reply.body["outputs"][0]["data"][-1] == pytest.approx(2 * (count - 1) + 3)


def test_the_official_client_in_its_default_binary_mode(served: AgentProcess) -> None:
    np = pytest.importorskip("numpy")
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
    url = served.api.base_url.removeprefix("http://")
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_model_ready("pure")
        x = np.array([[0.5], [1.0], [-2.0]], dtype=np.float64)
        tensor = httpclient.InferInput("x", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x)  # binary_data=True by default
        answer = client.infer("pure", [tensor], outputs=[httpclient.InferRequestedOutput("predictions")])
        assert answer.get_output("predictions")["parameters"]["binary_data_size"] == 24  # it came back binary
        assert answer.as_numpy("predictions").tolist() == pytest.approx([4.0, 5.0, -1.0])
        json_out = client.infer("pure", [tensor], outputs=[httpclient.InferRequestedOutput("predictions", binary_data=False)])
        assert json_out.get_output("predictions")["data"] == pytest.approx([4.0, 5.0, -1.0])
    finally:
        client.close()
