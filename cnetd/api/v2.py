"""The Open Inference Protocol (KServe V2) over HTTP/JSON, for served models by name.

A model's name is its deploy name (or its id); its versions are numbered 1, 2, 3 ... (a
deploy id is taken as a version too). The bare name is answered by the name's default
version, or by its canary for the canary's sticky share of requests (X-Request-Key, else the
request's id); every answer's model_version names the version that answered. Errors are {"error": "..."}:
404 unknown model or version, 409 a known model that is not being served (serve it first),
503 served but no worker ready in time, 400 a bad tensor (or the worker's own message when
it rejects the input), 429 a full queue, 504 a worker that did not answer in time.

Infer also takes the binary tensor data extension (cnetd/ml/serving/binary.py): an
application/octet-stream body with Inference-Header-Content-Length, and answers binary
when an output asks for binary_data (or the request for binary_data_output).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.bodylimit import body_of
from cnetd.api.jsonbody import BINARY_HEADER, decode_json
from cnetd.api.v2_cluster import answer_elsewhere, held_nowhere
from cnetd.errors import DomainError, NotFound
from cnetd.ml.serving import v2calls
from cnetd.ml.serving.binary import OCTET_STREAM, binary_body, encode_tensor, header_length
from cnetd.ml.serving.protocol import json_data, parse_infer_request
from cnetd.store.models import ModelRecord

RETRY_AFTER = {429: "1", 503: "1"}
REQUEST_KEY = "X-Request-Key"  # the sticky key of a canary split (else the request's id)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def v2_error(status: int, message: str, retry_after: int | None = None) -> web.Response:
    response = _json({"error": message}, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    elif status in RETRY_AFTER:
        response.headers["Retry-After"] = RETRY_AFTER[status]
    return response


async def _known(agent: Agent, name: str, version: str | None) -> ModelRecord | web.Response:
    """The model a name (and version) addresses, or the 404 saying what is unknown."""
    try:
        return await v2calls.known(agent, name, version)
    except NotFound as exc:
        return v2_error(404, exc.message)


def _not_served(record: ModelRecord) -> web.Response:
    error = v2calls.not_served(record)
    return v2_error(error.status, error.message)


def _address(request: web.Request) -> tuple[str, str | None]:
    return request.match_info["name"], request.match_info.get("version")


async def server_live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    why = v2calls.not_ready_reason(request.app[AGENT])
    if why is not None:
        return _json({"ready": False, "error": why}, 503)
    return _json({"ready": True})


async def server_metadata(request: web.Request) -> web.Response:
    return _json(v2calls.server_metadata())


async def model_metadata(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    name, version = _address(request)
    known = await _known(agent, name, version)
    if isinstance(known, web.Response):
        return await answer_elsewhere(request, name, version) or await held_nowhere(request, name, version) or known
    return _json(await v2calls.model_metadata(agent, known))


async def model_ready(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    name, version = _address(request)
    served = agent.versions.resolve(name, version, None)
    if served is not None and served.ready_replicas > 0:
        return _json({"name": served.name, "ready": True})
    elsewhere = await answer_elsewhere(request, name, version)
    if elsewhere is not None:
        return elsewhere
    if served is None and (gone := await held_nowhere(request, name, version)) is not None:
        return gone
    try:
        readiness = await v2calls.model_readiness(agent, name, version)
    except NotFound as exc:
        return v2_error(404, exc.message)
    if readiness.ready:
        return _json({"name": readiness.name, "ready": True})
    return _json({"name": readiness.name, "ready": False, "error": readiness.why}, 503)


async def infer(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    name, version = _address(request)
    key = request.headers.get(REQUEST_KEY)
    served = agent.versions.resolve(name, version, key)
    if served is None or served.ready_replicas == 0:
        # Not here, or no worker ready here: in a cluster, a node with a ready replica answers.
        elsewhere = await answer_elsewhere(request, name, version)
        if elsewhere is not None:
            return elsewhere
    if served is None:
        gone = await held_nowhere(request, name, version)
        if gone is not None:
            return gone
        known = await _known(agent, name, version)
        return known if isinstance(known, web.Response) else _not_served(known)
    try:
        raw = await body_of(request)  # read under serving.max_request_bytes (api/bodylimit.py)
        binary: memoryview | None = None
        if BINARY_HEADER in request.headers and request.content_type == OCTET_STREAM:  # (also when none is sent)
            length = header_length(request.headers[BINARY_HEADER], len(raw))
            body, binary = decode_json(raw[:length]), memoryview(raw)[length:]
        else:
            body = decode_json(raw)
        parsed = parse_infer_request(body, binary)
        if version is None and key is None and parsed.id is not None:  # the V2 request id is the sticky key
            served = agent.versions.resolve(name, None, str(parsed.id)) or served
        reply = await v2calls.infer(agent, served, parsed)
    except DomainError as exc:
        return v2_error(exc.status, exc.message, exc.retry_after)
    (output,) = reply["outputs"]
    if not parsed.binary_output:
        output["data"] = json_data(output["data"])
        return _json(reply)
    data = encode_tensor(output.pop("data"), output["datatype"])
    output["parameters"] = {"binary_data_size": len(data)}
    payload, head = binary_body(reply, [data])
    response = web.Response(body=payload, content_type=OCTET_STREAM)
    response.headers[BINARY_HEADER] = str(head)
    return response
