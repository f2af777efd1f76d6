"""serving.max_request_bytes against a real agent (set to 2 MiB here, to keep the bodies
small): V2 infer and predict take bodies up to it, and no more, whether the size is declared
or not, and other routes keep their 1 MiB; a caller cut off mid-body leaves nothing behind."""

from __future__ import annotations

import http.client
import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Client
from tests.support.pure_served import pure_model_agent
from tests.support.waiting import wait_until

LIMIT = 2 * 1024 * 1024
INFER = "/v2/models/pure/infer"
TOKEN = "limits-token-0123456789abcdef"
NAMED = "serving.max_request_bytes (2097152 bytes, 2 MiB)"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    # With a token, the task-caller check passes at once (no look-up of the caller's socket,
    # which a request cut short could fail first, with a 403): a cut reaches the body's reading.
    agent = AgentProcess(tmp_path_factory.mktemp("limits"), {"serving": {"max_request_bytes": "2MiB"},
                                                             "auth": {"tokens": [TOKEN]}})
    agent.api = Client(agent.url, TOKEN)
    with pure_model_agent(agent):
        yield agent


def binary_body(total: int) -> tuple[bytes, dict[str, str], int]:
    """A binary infer of exactly `total` bytes (its JSON header padded with spaces): body,
    headers and the number of FP64 values in it."""
    count = (total - 200) // 8
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [count],
                                   "parameters": {"binary_data_size": count * 8}}]}).encode()
    head += b" " * (total - count * 8 - len(head))
    body = head + struct.pack(f"<{count}d", *([1.0] * count))
    assert len(body) == total
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}, count


def connect(agent: AgentProcess, path: str, headers: dict[str, str], token: bool = True) -> http.client.HTTPConnection:
    """A POST whose headers are sent and whose body is the caller's to send, byte by byte."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    conn.putrequest("POST", path, skip_accept_encoding=True)
    for name, value in {**({"Authorization": f"Bearer {TOKEN}"} if token else {}), **headers}.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def answer(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], Any]:
    try:
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def batches_sent(agent: AgentProcess) -> float:
    """Batches the agent has sent to the model's workers (the batch-size histogram's count)."""
    text = agent.api.get("/metrics").text
    found = re.search(r'^cnet_inference_batch_size_count\{[^}]*model="pure"[^}]*\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_body_of_exactly_the_limit_is_served_one_byte_more_is_a_413(served: AgentProcess) -> None:
    body, headers, count = binary_body(LIMIT)
    reply = served.api.post(INFER, raw=body, headers=headers, timeout=60)
    assert reply.status == 200, reply.text[:300]  # twice the 1 MiB that every other route takes
    assert len(reply.body["outputs"][0]["data"]) == count and reply.body["outputs"][0]["data"][0] == pytest.approx(5.0)
    body, headers, _ = binary_body(LIMIT + 1)
    reply = served.api.post(INFER, raw=body, headers=headers)
    assert reply.status == 413 and reply.body == {"error": f"request body is {LIMIT + 1} bytes, more than {NAMED} allows"}
    assert reply.headers["Connection"] == "close"


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(served: AgentProcess) -> None:
    """The 413 comes while the caller has sent 10 of its declared 100 MiB: nothing waited for the rest."""
    conn = connect(served, INFER, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "2",
                                   "Content-Length": str(100 * 1024 * 1024)})
    conn.send(b"{}" + b"\0" * 8)
    status, headers, body = answer(conn)
    assert status == 413 and body["error"] == f"request body is {100 * 1024 * 1024} bytes, more than {NAMED} allows"
    assert headers["Connection"] == "close"
    # predict too, in the error envelope; and passed through to a node, before any node is looked up
    predict = f"/api/ml/models/{served.model_id}/predict?wait=true"  # type: ignore[attr-defined]
    for path in (predict, f"/api/nodes/elsewhere{predict}"):
        conn = connect(served, path, {"Content-Type": "application/json", "Content-Length": str(LIMIT + 1)})
        conn.send(b'{"input_data": ')
        status, _, body = answer(conn)
        assert status == 413 and body["error"] == f"request body is {LIMIT + 1} bytes, more than {NAMED} allows", path
        assert body["status"] == 413


def test_a_chunked_body_is_cut_off_at_the_limit(served: AgentProcess) -> None:
    """No Content-Length: the reading stops at the first byte past the limit and answers 413
    while the caller has not even ended its body."""
    before = batches_sent(served)
    conn = connect(served, INFER, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "2",
                                   "Transfer-Encoding": "chunked"})
    piece = b"\0" * (64 * 1024)
    for _ in range(LIMIT // len(piece) + 1):
        conn.send(chunked(piece))
    status, headers, body = answer(conn)  # no terminating chunk was sent
    assert status == 413 and body == {"error": f"request body is more than {NAMED} allows"}
    assert headers["Connection"] == "close"
    assert batches_sent(served) == before
    # a small chunked body is read whole and served
    conn = connect(served, INFER, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    request = json.dumps({"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [2.0]}]}).encode()
    conn.send(chunked(request[:10]) + chunked(request[10:]) + b"0\r\n\r\n")
    status, _, body = answer(conn)
    assert status == 200 and body["outputs"][0]["data"] == pytest.approx([7.0]), body


def test_other_routes_keep_their_1_mib(served: AgentProcess) -> None:
    reply = served.api.post("/api/tasks", raw=b" " * (1024 * 1024 + 1))
    assert reply.status == 413 and reply.body["error"] == "request body too large: this route takes at most 1 MiB"
    form = served.api.post(f"/models/{served.model_id}/predict", raw=b"input_data=" + b"1" * (1024 * 1024),  # type: ignore[attr-defined]
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 413, form.text[:300]


def test_a_connection_cut_mid_body_leaves_nothing_half_done(served: AgentProcess) -> None:
    before = batches_sent(served)
    for headers in ({"Content-Length": str(LIMIT)}, {"Transfer-Encoding": "chunked"}):
        conn = connect(served, INFER, {"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": "100", **headers})
        part = b"\0" * (256 * 1024)
        conn.send(chunked(part) if "Transfer-Encoding" in headers else part)
        conn.close()
    wait_until(lambda: served.log_text().count("the caller went away before its body was complete") >= 2, 10,
               "the agent to note both cut requests")
    assert batches_sent(served) == before  # nothing reached a worker
    reply = served.api.post(INFER, {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1.0]}]})
    assert reply.status == 200 and reply.body["outputs"][0]["data"] == pytest.approx([5.0]), reply.text
    assert batches_sent(served) == before + 1
    log = served.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_no_body_is_read_for_a_caller_without_a_token(served: AgentProcess) -> None:
    """An attacker without a token cannot make the agent hold 2 MiB: the 401 comes while
    10 bytes of the declared body have been sent (and a body over the bound is a 401 too,
    not a 413 that would tell it the bound)."""
    for length in (LIMIT, 100 * LIMIT):
        conn = connect(served, INFER, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "2",
                                       "Content-Length": str(length)}, token=False)
        conn.send(b"{}" + b"\0" * 8)
        status, _, body = answer(conn)
        assert status == 401, (length, status, body)
