"""V2 gRPC calls this node cannot answer itself, in a cluster: sent on to a node with ready
replicas of the model, as the HTTP routes do (cnetd/api/v2_cluster.py), so a gRPC client of
any agent is answered while some replica of the model is alive anywhere.

Agents talk to each other over HTTP (with the cluster token), so the gRPC call goes on as
the HTTP V2 call it is: ModelInfer as a binary tensor data request asking for binary
outputs, ModelReady and ModelMetadata as their GET routes. The node's answer is hostile: it
is read up to the relay's byte bound, only as JSON or binary tensor data, and every size in
it is checked against the bytes there before a message is built from it.

Nodes are tried in the EndpointTable's order; one that cannot be reached, or answers 404,
409, 502 or 503 while another is left, is marked failed and the next is tried.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from cnetd.cluster.etcd import EtcdError
from cnetd.errors import BadGateway, DomainError, Unavailable
from cnetd.grpcapi import grpc_predict_v2_pb2 as pb
from cnetd.grpcapi.tensors import request_body
from cnetd.ml.serving.binary import HEADER as BINARY_HEADER
from cnetd.ml.serving.binary import OCTET_STREAM, binary_size

if TYPE_CHECKING:
    from cnetd.agent import Agent
    from cnetd.cluster.runtime import ClusterNode

TRY_NEXT = frozenset({404, 409, 502, 503})


@dataclass(frozen=True)
class NodeAnswer:
    node_id: str
    status: int
    media: str
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length of a binary answer


def model_path(name: str, version: str | None, tail: str = "") -> str:
    """The HTTP V2 path of a model (quoted: a name with a "/" is refused by the relay's rules)."""
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return path + tail


def _cluster(agent: Agent) -> ClusterNode | None:
    cluster = agent.cluster
    return cluster if cluster is not None and cluster.failover is not None else None


async def _read(answer: aiohttp.ClientResponse, node_id: str, limit: int) -> NodeAnswer:
    media = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if media not in ("application/json", OCTET_STREAM):
        raise BadGateway(f"node {node_id} answered with {media or 'no Content-Type'}, not V2", {"node_id": node_id})
    if answer.content_length is not None and answer.content_length > limit:
        raise BadGateway(f"node {node_id} answered with {answer.content_length} bytes, more than {limit}",
                         {"node_id": node_id})
    body = await answer.content.read(limit + 1)
    if len(body) > limit:
        raise BadGateway(f"node {node_id} sent more than {limit} bytes", {"node_id": node_id})
    header_length = None
    if media == OCTET_STREAM:
        value = answer.headers.get(BINARY_HEADER, "")
        if not (value.isascii() and value.isdigit() and len(value) <= 12 and 0 < int(value) <= len(body)):
            raise BadGateway(f"node {node_id} answered binary data with {BINARY_HEADER} {value[:30]!r}",
                             {"node_id": node_id})
        header_length = int(value)
    return NodeAnswer(node_id, answer.status, media, body, header_length)


async def call_elsewhere(agent: Agent, name: str, version: str | None, method: str, path: str,
                         body: bytes | None = None, headers: Mapping[str, str] | None = None) -> NodeAnswer | None:
    """The answer of a node with a ready replica of the model, None when no other node has
    one (or this is not a cluster). Unavailable when every such node failed."""
    cluster = _cluster(agent)
    if cluster is None:
        return None
    assert cluster.failover is not None
    table = cluster.failover.endpoints
    try:
        endpoints = [e for e in await table.live(name, version) if e.node_id != cluster.identity.node_id]
    except EtcdError:
        return None
    if not endpoints:
        return None
    limit = cluster.peers.relay_limits.for_call(True).max_bytes
    tried: list[str] = []
    for i, endpoint in enumerate(endpoints):
        last = i == len(endpoints) - 1
        try:
            answer = await cluster.peers.call(endpoint.node_id, method, path, body, dict(headers or {}))
            async with answer:
                read = await asyncio.wait_for(_read(answer, endpoint.node_id, limit), cluster.peers.answer_seconds)
        except (DomainError, aiohttp.ClientError, TimeoutError) as exc:
            table.failed(endpoint.node_id)
            tried.append(f"{endpoint.node_id}: {exc.message if isinstance(exc, DomainError) else type(exc).__name__}")
            continue
        if read.status in TRY_NEXT and not last:
            table.failed(endpoint.node_id)
            tried.append(f"{endpoint.node_id}: answered {read.status}")
            continue
        if read.status < 500:
            table.answered(endpoint.node_id)
        return read
    raise Unavailable(f"unavailable: no node holding model {name} answered ({'; '.join(tried)})")


def _error_of(answer: NodeAnswer) -> DomainError:
    """A node's V2 error answer ({"error": ...}) as the DomainError the service maps to a code."""
    message = f"node {answer.node_id} answered {answer.status}"
    if answer.media == "application/json":
        try:
            value = json.loads(answer.body)
        except ValueError:
            value = None
        if isinstance(value, Mapping) and isinstance(value.get("error"), str):
            message = value["error"][:2000]
    error = DomainError(message, {"node_id": answer.node_id})
    error.status = answer.status if 400 <= answer.status < 600 else 502
    return error


def _json_of(answer: NodeAnswer) -> dict[str, Any]:
    try:
        value = json.loads(answer.body if answer.header_length is None else answer.body[:answer.header_length])
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadGateway(f"node {answer.node_id} answered with a body that is not a V2 object", {"node_id": answer.node_id})
    return value


def infer_response(answer: NodeAnswer) -> pb.ModelInferResponse:
    """A node's binary V2 answer as a ModelInferResponse with raw_output_contents, every
    output's size checked against the bytes there."""
    if answer.status != 200:
        raise _error_of(answer)
    header = _json_of(answer)
    if answer.header_length is None:
        raise BadGateway(f"node {answer.node_id} answered JSON where binary outputs were asked for",
                         {"node_id": answer.node_id})
    tail = memoryview(answer.body)[answer.header_length:]
    try:
        message = pb.ModelInferResponse(model_name=str(header["model_name"]), model_version=str(header["model_version"]),
                                        id=str(header.get("id", "")))
        offset = 0
        for i, output in enumerate(header["outputs"]):
            size = binary_size(output, f"outputs[{i}]")
            if size is None or size > len(tail) - offset:
                raise ValueError(f"outputs[{i}] has no binary_data_size within the answer's bytes")
            message.outputs.add(name=str(output["name"]), datatype=str(output["datatype"]),
                                shape=[int(d) for d in output["shape"]])
            message.raw_output_contents.append(bytes(tail[offset:offset + size]))
            offset += size
        if offset != len(tail):
            raise ValueError(f"{len(tail) - offset} bytes belong to no output")
    except (KeyError, TypeError, ValueError, DomainError) as exc:
        raise BadGateway(f"node {answer.node_id} answered a V2 infer that does not add up: {exc}",
                         {"node_id": answer.node_id}) from None
    return message


async def infer_elsewhere(agent: Agent, request: pb.ModelInferRequest,
                          version: str | None) -> pb.ModelInferResponse | None:
    """Another node's answer to this ModelInfer, or None when no other node has a ready
    replica. The request is checked here first (raw sizes against shapes), as it would be
    if this node answered."""
    if _cluster(agent) is None:
        return None
    header, raw = request_body(request)
    header = {**header, "parameters": {"binary_data_output": True}}
    head = json.dumps(header).encode()
    answer = await call_elsewhere(agent, request.model_name, version, "POST", model_path(request.model_name, version, "/infer"),
                                  head + bytes(raw or b""), {"Content-Type": OCTET_STREAM, BINARY_HEADER: str(len(head))})
    return None if answer is None else infer_response(answer)


async def json_elsewhere(agent: Agent, name: str, version: str | None, tail: str) -> dict[str, Any] | None:
    """Another node's JSON answer to GET {model path}{tail} (ready, metadata), None when no
    other node has a ready replica; its error as a DomainError."""
    answer = await call_elsewhere(agent, name, version, "GET", model_path(name, version, tail),
                                  headers={"Accept": "application/json"})
    if answer is None:
        return None
    if answer.status != 200:
        raise _error_of(answer)
    return _json_of(answer)
