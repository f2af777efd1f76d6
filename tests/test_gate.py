"""The gate (cnetd/api/gate.py), the one middleware every route passes: a V2 infer, the route
it was made fast for, still gets every check, against a real agent with a token and a small
serving.max_request_bytes: no token or a wrong one is a 401, a body over the bound a 413
(declared or chunked), a foreign Host a 421, a text/plain body a 415; and every answer,
refusals included, carries the security headers. Plus the memo of callers by connection,
which must also hold uvloop's TLS transports (they take no weak reference)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from aiohttp import web

from tests.support.agent import AgentProcess
from tests.support.http import Client, Reply
from tests.support.pure_served import pure_model_agent

TOKEN = "gate-token-0123456789abcdef"
LIMIT = 64 * 1024
INFER = "/v2/models/pure/infer"
BODY = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [2.0]}]}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path_factory.mktemp("gate"), {"serving": {"max_request_bytes": LIMIT},
                                                           "auth": {"tokens": [TOKEN]}})
    agent.api = Client(agent.url, TOKEN)
    with pure_model_agent(agent):
        yield agent


def secured(reply: Reply) -> None:
    headers = {k.lower(): v for k, v in reply.headers.items()}
    assert headers.get("x-content-type-options") == "nosniff", reply.headers
    assert headers.get("referrer-policy") == "same-origin", reply.headers
    assert "default-src 'none'" in headers.get("content-security-policy", ""), reply.headers


def big_body(size: int) -> bytes:
    """A JSON infer body of `size` bytes (padded with spaces), valid apart from its size."""
    raw = json.dumps(BODY).encode()
    return raw + b" " * (size - len(raw))


def test_infer_through_the_gate_answers_with_the_security_headers(agent: AgentProcess) -> None:
    reply = agent.api.post(INFER, BODY)
    assert reply.status == 200, reply.text
    assert reply.body["outputs"][0]["data"] == [pytest.approx(7.0)]
    secured(reply)


@pytest.mark.parametrize("token", [None, "not-the-token-0123456789"])
def test_infer_needs_the_token(agent: AgentProcess, token: str | None) -> None:
    reply = Client(agent.url, token).post(INFER, BODY)
    assert reply.status == 401, reply.text
    assert reply.headers.get("WWW-Authenticate") == 'Bearer realm="cnet-agent"'
    assert "authentication required" in reply.body["error"]
    secured(reply)


def test_infer_over_the_bound_is_a_413_declared(agent: AgentProcess) -> None:
    reply = agent.api.post(INFER, raw=big_body(LIMIT + 1))
    assert reply.status == 413, reply.text
    assert "serving.max_request_bytes" in reply.body["error"]  # V2's {"error"}, naming the setting
    secured(reply)
    assert agent.api.post(INFER, raw=big_body(LIMIT)).status == 200  # the bound itself is taken


def test_infer_over_the_bound_is_a_413_chunked(agent: AgentProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        body = big_body(LIMIT * 4)
        chunks = (body[i:i + 16384] for i in range(0, len(body), 16384))
        conn.request("POST", INFER, body=chunks, encode_chunked=True,
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        payload = response.read()
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the agent closed the connection before answering the 413")
    finally:
        conn.close()
    assert response.status == 413, payload
    assert "serving.max_request_bytes" in json.loads(payload)["error"]
    assert response.getheader("X-Content-Type-Options") == "nosniff"


def test_infer_with_a_foreign_host_is_a_421(agent: AgentProcess) -> None:
    reply = agent.api.post(INFER, BODY, headers={"Host": "attacker.example:80"})
    assert reply.status == 421, reply.text
    secured(reply)


def test_infer_with_a_text_body_is_a_415(agent: AgentProcess) -> None:
    reply = agent.api.post(INFER, raw=json.dumps(BODY).encode(), headers={"Content-Type": "text/plain"})
    assert reply.status == 415, reply.text
    assert reply.body["error"].startswith("Content-Type must be application/json")
    secured(reply)


def test_one_middleware_in_front_of_every_route(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cnetd.app import create_app
    from cnetd.config.loading import load_config

    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"agent: {{state_dir: {tmp_path / 'state'}}}\n")
    app = create_app(load_config(config_file, {}), tmp_path)
    (gate,) = app.middlewares
    assert gate.__name__ == "gate"
    assert isinstance(app, web.Application)


class _SlotTransport:
    """Like uvloop's TLS transport: no weak reference can be made to it."""

    __slots__ = ("closing",)

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_callers_are_remembered_for_transports_without_weak_references() -> None:
    from cnetd.security.callers import ANYONE, Caller, ConnectionMemo

    memo = ConnectionMemo()
    first, second = _SlotTransport(), _SlotTransport()
    task = Caller(task_uid=12345)
    memo.remember(first, task)  # type: ignore[arg-type]
    assert memo.get(first) is task  # type: ignore[arg-type]
    assert memo.get(second) is None  # type: ignore[arg-type]
    first.closing = True
    memo.remember(second, ANYONE)  # type: ignore[arg-type]
    assert len(memo) == 1  # the closed connection was let go
    assert memo.get(second) is ANYONE  # type: ignore[arg-type]


def test_the_event_loop_is_the_configured_one() -> None:
    import asyncio

    from cnetd.loop import loop_factory

    assert loop_factory("asyncio") == (None, "asyncio")
    factory, name = loop_factory("auto")
    pytest.importorskip("uvloop")  # pinned in constraints.txt: installed with the agent
    assert factory is not None and name.startswith("uvloop")
    loop = factory()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop) and type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
