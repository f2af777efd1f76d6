"""Pass-through to another node treated as hostile: what it answers is served on this
agent's origin, so only JSON, SSE and plain text come back (with nosniff and a sandbox
CSP), never HTML; a 50 MB answer is refused or cut, never held in memory; a gzip bomb is
never opened; a path that could be read as another one (dot segments, encoded separators)
never leaves this agent; and the caller's own credentials never go on to the node.

The hostile node is a stand-in: a small aiohttp server on loopback whose record is written
into a real etcd where a real agent of the cluster finds it, as it finds any node, and that
then answers what a compromised or buggy node could (a real agent cannot be made to send
HTML or a bomb). The dot-segment cases also run between two real agents.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import struct
from collections.abc import Callable, Iterator

import psutil
import pytest
from aiohttp import web

from cnetd.cluster import relay
from cnetd.cluster.records import node_key
from tests.support.agent import AgentProcess, free_port
from tests.support.cluster import CLUSTER_TOKEN, cluster_agent, new_prefix, put_key, running_member, start_all, wait_status
from tests.support.etcd import EtcdCluster
from tests.support.stand_in import StandIn

BIG = 50 * 1024 * 1024
CHUNK = 1024 * 1024
# 1 GiB of zeros as 100 gzip members of 10 MiB each: about 1 MB on the wire.
BOMB_MEMBER = gzip.compress(b"\0" * (10 * 1024 * 1024), compresslevel=9)
BOMB = BOMB_MEMBER * 100
BINARY_HEAD = b'{"outputs":[{"name":"y","datatype":"UINT8","shape":[3],"parameters":{"binary_data_size":3}}]}'
BINARY_TENSOR = b"\x01\x02\x03"


async def hostile_answer(request: web.Request, _body: bytes) -> web.StreamResponse:
    """What the stand-in node answers, like a hostile child would, by the path's last part."""
    name = request.path.rsplit("/", 1)[-1]
    if name == "json":
        return web.json_response({"ok": True})
    if name == "text":
        return web.Response(text="plain words")
    if name == "page":
        return web.Response(text="<script>alert(document.cookie)</script>", content_type="text/html")
    if name == "svg":
        return web.Response(text="<svg onload=alert(1)></svg>", content_type="image/svg+xml")
    if name == "big":
        return web.Response(body=b"[" + b"0," * ((BIG - 2) // 2) + b"0]", content_type="application/json")
    if name == "big-chunked":
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(BIG // CHUNK):
            await response.write(b" " * CHUNK)
        await response.write_eof()
        return response
    if name == "bomb":
        return web.Response(body=BOMB, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    if name == "events":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"event: log\ndata: line {i}\n\n".encode())
        await response.write_eof()
        return response
    if name == "slow":
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for _ in range(100):
            await response.write(b" ")
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response
    if name in ("infer", "blob"):  # a V2 binary answer, honest or not (?header=), or of ?size= bytes
        header = request.query.get("header", str(len(BINARY_HEAD)))
        headers = {"Content-Type": "application/octet-stream"}
        if header != "none":
            headers["Inference-Header-Content-Length"] = header
        tensor = b"\x01" * int(request.query["size"]) if "size" in request.query else BINARY_TENSOR
        return web.Response(body=BINARY_HEAD + tensor, headers=headers)
    return web.json_response({"error": "no such thing"}, status=404)


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    child = StandIn(hostile_answer).start()
    yield child
    child.stop()


@pytest.fixture
def etcd(etcd_shared: EtcdCluster) -> EtcdCluster:
    return etcd_shared


@pytest.fixture
def agent(etcd: EtcdCluster, agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    """A real agent of a cluster of its own (a prefix of its own in the shared etcd)."""
    return cluster_agent(agent_factory, etcd.endpoints, "parent", prefix=new_prefix("pass-through")).start()


def register(agent: AgentProcess, child: StandIn, etcd: EtcdCluster, node_id: str = "hostile") -> None:
    """The stand-in's node record, where the agent's cluster keeps its nodes (no lease: it
    stays online for as long as the test needs)."""
    record = {"node_id": node_id, "name": "stand-in", "advertise_url": child.url}
    put_key(running_member(etcd), node_key(agent.config["cluster"]["prefix"], node_id), record)
    wait_status(agent, node_id, "online")


def raw_get(agent: AgentProcess, path: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes, str | None]:
    """GET with the path exactly as given (http.client neither normalises nor re-encodes it).
    Returns status, headers, as much of the body as came, and why the body stopped short."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {agent.api.token}"} if agent.api.token else {})
        response = conn.getresponse()
        body, problem = b"", None
        try:
            while chunk := response.read(CHUNK):
                body += chunk
        except (http.client.IncompleteRead, ConnectionError) as exc:
            problem = type(exc).__name__
        return response.status, dict(response.getheaders()), body, problem
    finally:
        conn.close()


def raw_post(agent: AgentProcess, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST with exactly these headers (and the agent's token): http.client adds no Content-Type."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {agent.api.token}", **headers})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def rss(agent: AgentProcess) -> int:
    assert agent.proc is not None
    return int(psutil.Process(agent.proc.pid).memory_info().rss)


def test_only_json_events_and_text_come_back_sandboxed(agent: AgentProcess, stand_in: StandIn,
                                                      etcd: EtcdCluster) -> None:
    register(agent, stand_in, etcd)
    for name, media in (("json", "application/json"), ("text", "text/plain"), ("events", "text/event-stream")):
        status, headers, body, problem = raw_get(agent, f"/api/nodes/hostile/api/{name}")
        assert status == 200 and problem is None and headers["Content-Type"].startswith(media), (name, headers)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in headers["Content-Security-Policy"].split("; ")
        assert headers["X-CNET-Node"] == "hostile"
    assert raw_get(agent, "/api/nodes/hostile/api/events")[2].count(b"event: log") == 3
    # What reached the node: the cluster token and the hop, never the caller's credentials.
    sent = stand_in.seen[0].headers
    assert "Authorization" not in sent and "Cookie" not in sent, sent
    assert sent["X-CNET-Cluster-Token"] == CLUSTER_TOKEN and sent["X-CNET-Forwarded-By"] == "parent"
    for name, media in (("page", "text/html"), ("svg", "image/svg+xml")):
        status, headers, body, _ = raw_get(agent, f"/api/nodes/hostile/api/{name}")
        assert status == 502 and headers["Content-Type"].startswith("application/json"), (name, status, headers)
        error = json.loads(body)["error"]
        assert media in error and "only application/json, text/event-stream, text/plain are passed through" in error
        assert b"alert" not in body


def test_a_50_mb_answer_is_refused_or_cut_never_held(agent: AgentProcess, stand_in: StandIn,
                                                    etcd: EtcdCluster) -> None:
    register(agent, stand_in, etcd)
    raw_get(agent, "/api/nodes/hostile/api/json")  # warm up the client session before measuring
    before = rss(agent)
    # declared too big: a 502 before its body is read
    status, _headers, body, _ = raw_get(agent, "/api/nodes/hostile/api/big")
    assert status == 502, (status, body[:300])
    assert f"more than the {relay.MAX_ANSWER_BYTES} passed through" in json.loads(body)["error"]
    # not declared: streamed until the cap, then the connection is cut (never a complete answer)
    status, _headers, body, problem = raw_get(agent, "/api/nodes/hostile/api/big-chunked")
    assert status == 200 and problem is not None, (status, len(body), problem)
    assert relay.MAX_ANSWER_BYTES - CHUNK <= len(body) <= relay.MAX_ANSWER_BYTES
    grown = rss(agent) - before
    assert grown < 30 * 1024 * 1024, f"the parent's memory grew by {grown / 1e6:.0f} MB"
    assert "cut short" in agent.log_text() and "Traceback" not in agent.log_text()
    assert raw_get(agent, "/api/health")[0] == 200


def test_a_gzip_bomb_is_never_opened(agent: AgentProcess, stand_in: StandIn, etcd: EtcdCluster) -> None:
    register(agent, stand_in, etcd)
    before = rss(agent)
    status, _headers, body, _ = raw_get(agent, "/api/nodes/hostile/api/bomb")
    assert status == 502 and "gzip-encoded body" in json.loads(body)["error"], (status, body[:300])
    assert rss(agent) - before < 30 * 1024 * 1024
    asked = [seen.headers for seen in stand_in.seen if seen.raw_path.endswith("/bomb")]
    assert asked and all(h.get("Accept-Encoding") == "identity" for h in asked), asked


@pytest.mark.parametrize("tail", [
    "api/tasks/../../../etc/passwd",
    "api/../v2/health/live",
    "api/./tasks",
    "api/%2e%2e/%2e%2e/x",
    "api/%2E%2E/x",
    "api/tasks/.%2e/x",
    "api/tasks%2f..%2fx",
    "api/tasks%2F..%2Fx",
    "api/tasks/%252e%252e/x",
    "api/tasks/%25252e%25252e/x",
    "api/tasks/%2525252e/x",
    "api/tasks%5c..%5cx",
    "api/tasks\\..\\x",
    "api//tasks",
])
def test_dot_segments_and_encoded_separators_never_leave_the_parent(tail: str, agent: AgentProcess,
                                                                     stand_in: StandIn, etcd: EtcdCluster) -> None:
    register(agent, stand_in, etcd)
    status, _, body, _ = raw_get(agent, f"/api/nodes/hostile/{tail}")
    assert status == 400 and json.loads(body)["error"].startswith("path refused for passing on"), (tail, status, body[:300])
    assert stand_in.seen == [], stand_in.seen  # nothing reached the child


def test_dot_segments_between_real_agents(etcd: EtcdCluster, agent_factory: Callable[..., AgentProcess]) -> None:
    prefix = new_prefix("pass-through")
    parent, child = (cluster_agent(agent_factory, etcd.endpoints, name, prefix=prefix) for name in ("parent", "child-a"))
    start_all(parent, child)
    wait_status(parent, "child-a", "online")
    for tail in ("api/tasks/%2e%2e/%2e%2e/api/nodes", "api/%2E%2E/api/tasks", "api/tasks/%252e%252e/x",
                 "api/tasks%2f..%2fnodes", "api/ml/models/..%5c..%5cx"):
        reply = parent.api.get(f"/api/nodes/child-a/{tail}")
        assert reply.status == 400 and reply.body["error"].startswith("path refused for passing on"), (tail, reply.text)
    # plain paths, and an escaped "?" inside an id, still pass
    listed = parent.api.get("/api/nodes/child-a/api/tasks?limit=5")
    assert listed.status == 200 and listed.body == [] and listed.headers["X-Content-Type-Options"] == "nosniff"
    odd = parent.api.get("/api/nodes/child-a/api/tasks/x%3Fstatus%3Drunning")
    assert odd.status == 404 and odd.body["error"] == "task x?status=running not found", odd.text


def relay_app(child: StandIn, limits: relay.Limits) -> web.Application:
    """The relay alone, in front of the stand-in, with small limits."""
    import aiohttp

    async def forward(request: web.Request) -> web.StreamResponse:
        url = child.url + relay.checked_path("/" + request.match_info["tail"])
        async with aiohttp.ClientSession() as session, \
                session.get(url, headers=relay.REQUEST_HEADERS, auto_decompress=False) as answer:
            return await relay.relay(request, answer, "stand-in", limits)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    return app


async def test_an_answer_must_complete_in_time(stand_in: StandIn) -> None:
    """The total-time cap, with a 1 s limit against a child that trickles for 10 s."""
    import aiohttp

    from cnetd.api.errors import error_middleware

    app = relay_app(stand_in, relay.Limits(max_bytes=relay.MAX_ANSWER_BYTES, seconds=1.0))
    app.middlewares.append(error_middleware)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                async with session.get(f"http://127.0.0.1:{port}/api/slow") as reply:
                    await reply.read()
                    outcome = f"status {reply.status}"
            except aiohttp.ClientPayloadError:
                outcome = "cut"
            assert loop.time() - start < 5, "the relay waited past its deadline"
            assert outcome == "cut", outcome  # its first byte was sent at once: cut, not completed
    finally:
        await runner.cleanup()


def test_a_binary_infer_passes_through_byte_for_byte(agent: AgentProcess, stand_in: StandIn, etcd: EtcdCluster) -> None:
    """The body, its Content-Type or the lack of one, and Inference-Header-Content-Length reach
    the node as sent; its binary answer comes back with its header, sandboxed like any other."""
    register(agent, stand_in, etcd)
    body = b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]}' \
           + struct.pack("<I", 2) + b"\x00\xff"
    length = str(len(body) - 6)
    for sent_type in (None, "application/octet-stream"):
        headers = {"Inference-Header-Content-Length": length, **({"Content-Type": sent_type} if sent_type else {})}
        status, answer, raw = raw_post(agent, "/api/nodes/hostile/v2/models/m/infer", body, headers)
        assert status == 200 and raw == BINARY_HEAD + BINARY_TENSOR, (status, raw[:300])
        assert answer["Content-Type"] == "application/octet-stream", answer
        assert answer["Inference-Header-Content-Length"] == str(len(BINARY_HEAD))
        assert answer["X-Content-Type-Options"] == "nosniff" and "sandbox" in answer["Content-Security-Policy"]
        seen = stand_in.seen[-1]
        assert seen.raw_path == "/v2/models/m/infer" and seen.body == body
        assert seen.headers["Inference-Header-Content-Length"] == length
        assert seen.headers.get("Content-Type") == sent_type, seen.headers


def test_a_binary_answer_may_be_as_large_as_an_inference_request(agent: AgentProcess, stand_in: StandIn,
                                                                   etcd: EtcdCluster) -> None:
    """A V2 infer's answer passes up to serving.max_request_bytes (64 MiB here), beyond the
    16 MiB of every other answer, and is cut past it."""
    register(agent, stand_in, etcd)
    headers = {"Inference-Header-Content-Length": "2", "Content-Type": "application/octet-stream"}
    size = relay.MAX_ANSWER_BYTES + CHUNK
    status, _, raw = raw_post(agent, f"/api/nodes/hostile/v2/models/m/infer?size={size}", b"{}", headers)
    assert status == 200 and len(raw) == len(BINARY_HEAD) + size, (status, len(raw))
    status, _, raw = raw_post(agent, f"/api/nodes/hostile/v2/models/m/infer?size={64 * CHUNK}", b"{}", headers)
    assert status == 502 and "passed through" in json.loads(raw)["error"], (status, raw[:300])


@pytest.mark.parametrize(("path", "problem"), [
    ("/api/nodes/hostile/api/blob", "answered with application/octet-stream; only application/json"),
    ("/api/nodes/hostile/v2/models/m/infer?header=none", "without Inference-Header-Content-Length"),
    ("/api/nodes/hostile/v2/models/m/infer?header=12abc", "'12abc', not a number of bytes"),
    ("/api/nodes/hostile/v2/models/m/infer?header=-1", "'-1', not a number of bytes"),
    ("/api/nodes/hostile/v2/models/m/infer?header=100000", "100000, past the end of its"),
])
def test_a_binary_answer_only_for_an_infer_and_only_with_a_true_header(path: str, problem: str, agent: AgentProcess,
                                                                       stand_in: StandIn, etcd: EtcdCluster) -> None:
    """A hostile node's octet-stream: refused (502) off the infer routes, and on them without a
    plain Inference-Header-Content-Length inside its body; none of its bytes come back."""
    register(agent, stand_in, etcd)
    headers = {"Inference-Header-Content-Length": "2", "Content-Type": "application/octet-stream"}
    status, answer, raw = raw_post(agent, path, b"{}", headers) if "/v2/" in path else raw_get(agent, path)[:3]
    assert status == 502 and answer["Content-Type"].startswith("application/json"), (status, raw[:300])
    assert problem in json.loads(raw)["error"] and BINARY_TENSOR not in raw
    assert "Inference-Header-Content-Length" not in answer


def test_a_binary_body_is_refused_off_the_infer_routes_before_it_leaves(agent: AgentProcess, stand_in: StandIn,
                                                                       etcd: EtcdCluster) -> None:
    register(agent, stand_in, etcd)
    headers = {"Inference-Header-Content-Length": "2", "Content-Type": "application/octet-stream"}
    for path in ("/api/nodes/hostile/api/tasks", "/api/nodes/hostile/v2/models/m/ready",
                 "/api/nodes/hostile/v2/models/m/infer/x", "/api/nodes/hostile/v2/models/m/versions/1/2/infer"):
        status, _, raw = raw_post(agent, path, b"{}\x00\x01", headers)
        assert status == 415 and b"binary tensor data is for V2 infer only" in raw, (path, status, raw[:300])
    assert stand_in.seen == []
