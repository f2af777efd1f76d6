"""The rules for relaying a call to another node and its answer back, for whatever proxies
to a node (today the pass-through /api/nodes/{id}/... and delegated creates).

The other node's answer is served on this agent's origin, so it is treated as hostile:
- the path is checked before it leaves: no dot segments, no encoded separators or dots
  (%2e %2f %5c, any case, also once or twice more encoded), no backslash, no empty segment;
- only JSON, server-sent events and plain text come back (never HTML, which would run on
  this origin), always with nosniff and a sandboxing CSP; a V2 infer call also takes back
  application/octet-stream (the binary tensor data extension), and then only with a plain
  Inference-Header-Content-Length within the answer's length, which goes back with it;
- the answer is streamed, never held whole: over MAX_ANSWER_BYTES (a V2 infer's: over
  serving.max_request_bytes, when that is larger) it is a 502 when its declared length
  says so, and the connection is cut when it says otherwise;
- an ordinary answer must be complete within its deadline (event streams, which are meant
  to last, only within their idle timeout);
- bodies are never decompressed: the node is asked for identity, and an encoded answer is
  a 502 (no decompression bomb can be opened here).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from cnetd.errors import BadGateway, DomainError, TimedOut
from cnetd.ml.serving.binary import HEADER as BINARY_HEADER
from cnetd.ml.serving.binary import OCTET_STREAM

log = logging.getLogger(__name__)

PASSED_TYPES = frozenset({"application/json", "text/event-stream", "text/plain"})
STREAM_TYPE = "text/event-stream"
MAX_ANSWER_BYTES = 16 * 1024 * 1024
ENCODED_SEPARATORS = ("%2e", "%2f", "%5c")
DECODE_ROUNDS = 3
COPIED_HEADERS = ("Cache-Control", "Allow", "WWW-Authenticate", "Retry-After")
ANSWER_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'; frame-ancestors 'none'",
}
REQUEST_HEADERS = {"Accept-Encoding": "identity"}
# The V2 infer routes (what cnetd/api/routes.py names v2-infer and v2-infer-version), as raw paths.
V2_INFER_PATH = re.compile(r"/v2/models/[^/?#]+(?:/versions/[^/?#]+)?/infer")
MAX_BINARY_HEADER_DIGITS = 12


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_ANSWER_BYTES
    seconds: float = 60.0  # an ordinary answer, start to end
    # a V2 infer's answer (its tensors may be as large as the request's): at least max_bytes
    inference_bytes: int = MAX_ANSWER_BYTES

    def for_call(self, binary: bool) -> Limits:
        """The limits of one call: a V2 infer's answer gets the larger byte bound."""
        return replace(self, max_bytes=max(self.max_bytes, self.inference_bytes)) if binary else self


def checked_path(raw: str) -> str:
    """`raw` (a path as sent, still percent-encoded, with its leading "/") when it is a plain
    path; a 400 naming the problem otherwise. Nothing is repaired: a doubtful path is refused."""
    seen = raw
    for _ in range(DECODE_ROUNDS):
        problem = _path_problem(seen)
        if problem is not None:
            raise DomainError(f"path refused for passing on: {problem}", {"path": raw})
        decoded = unquote(seen)
        if decoded == seen:
            return raw
        seen = decoded
    raise DomainError(f"path refused for passing on: still percent-encoded after {DECODE_ROUNDS} rounds of decoding",
                      {"path": raw})


def _path_problem(path: str) -> str | None:
    lowered = path.lower()
    for encoded in ENCODED_SEPARATORS:
        if encoded in lowered:
            return f"encoded {unquote(encoded)!r} ({encoded})"
    if "\\" in path:
        return "backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "control character"
    segments = path.lstrip("/").split("/")
    if any(s in (".", "..") for s in segments):
        return "dot segment"
    if "" in segments[:-1]:
        return "empty segment"
    return None


def is_v2_infer(path: str) -> bool:
    """Whether `path` (raw, without its query) is a V2 infer route, whose answers may be binary."""
    return V2_INFER_PATH.fullmatch(path) is not None


def _media_type(answer: aiohttp.ClientResponse) -> str:
    return answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _refusal(answer: aiohttp.ClientResponse, node_id: str, limits: Limits, binary: bool) -> str | None:
    """Why this answer may not be passed on, decided from its headers alone."""
    encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"node {node_id} answered with a {encoding}-encoded body, which is not passed through"
    media = _media_type(answer)
    empty = answer.content_length == 0 or answer.status in (204, 304)
    passed_types = PASSED_TYPES | {OCTET_STREAM} if binary else PASSED_TYPES
    if media not in passed_types and not (empty and not media):
        passed = ", ".join(sorted(passed_types))
        return f"node {node_id} answered with {media or 'no Content-Type'}; only {passed} are passed through"
    if answer.content_length is not None and answer.content_length > limits.max_bytes:
        return f"node {node_id} answered with {answer.content_length} bytes, more than the {limits.max_bytes} passed through"
    if media == OCTET_STREAM:
        return _binary_header_problem(answer, node_id)
    return None


def _binary_header_problem(answer: aiohttp.ClientResponse, node_id: str) -> str | None:
    """A binary V2 answer must say where its JSON header ends, as a plain number inside it."""
    value = answer.headers.get(BINARY_HEADER)
    if value is None:
        return f"node {node_id} answered application/octet-stream without {BINARY_HEADER}"
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_BINARY_HEADER_DIGITS):
        return f"node {node_id} answered with {BINARY_HEADER} {value[:30]!r}, not a number of bytes"
    if answer.content_length is not None and int(value) > answer.content_length:
        return f"node {node_id} answered with {BINARY_HEADER} {value}, past the end of its {answer.content_length} bytes"
    return None


async def relay(request: web.Request, answer: aiohttp.ClientResponse, node_id: str,
                limits: Limits = Limits(), started: float | None = None, binary: bool = False) -> web.StreamResponse:
    """Stream `answer` back to `request`'s caller under the rules above. The caller owns
    (and releases) `answer`. A refusal before anything was sent is a 502 (504 for time);
    after that, the caller's connection is cut. binary: the call was a V2 infer, whose
    answer may be binary tensor data."""
    limits = limits.for_call(binary)
    refusal = _refusal(answer, node_id, limits, binary)
    if refusal is not None:
        answer.close()  # cut the node's connection: its body is not read
        raise BadGateway(refusal, {"node_id": node_id})
    streaming = _media_type(answer) == STREAM_TYPE
    deadline = None if streaming else (started if started is not None else time.monotonic()) + limits.seconds
    response = _response_for(answer, node_id)
    if streaming:
        await response.prepare(request)  # an event stream's headers go at once
    sent = 0
    chunks = answer.content.iter_any().__aiter__()
    try:
        while True:
            try:
                chunk = await _next_chunk(chunks, deadline)
            except StopAsyncIteration:
                break
            sent += len(chunk)
            if sent > limits.max_bytes:
                raise BadGateway(f"node {node_id} sent more than the {limits.max_bytes} bytes passed through",
                                 {"node_id": node_id})
            if not response.prepared:
                await response.prepare(request)
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        failure: DomainError = (
            TimedOut(f"node {node_id} did not complete its answer in time", {"node_id": node_id})
            if isinstance(exc, asyncio.TimeoutError)
            else BadGateway(f"node {node_id} broke off its answer: {exc}", {"node_id": node_id})
        )
        return _give_up(request, response, answer, node_id, failure)
    except DomainError as exc:
        return _give_up(request, response, answer, node_id, exc)
    if not response.prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


def _response_for(answer: aiohttp.ClientResponse, node_id: str) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status)
    for name in ("Content-Type", *COPIED_HEADERS):
        if name in answer.headers:
            response.headers[name] = answer.headers[name]
    if _media_type(answer) == OCTET_STREAM:  # checked by _refusal: only for a V2 infer, a plain number
        response.headers[BINARY_HEADER] = answer.headers[BINARY_HEADER]
    response.headers.update(ANSWER_HEADERS)
    response.headers["X-CNET-Node"] = node_id
    if answer.content_length is not None:
        response.content_length = answer.content_length
    return response


def _give_up(request: web.Request, response: web.StreamResponse, answer: aiohttp.ClientResponse, node_id: str,
             failure: DomainError) -> web.StreamResponse:
    """Nothing sent yet: the failure is the answer (502/504). Part sent: cut the caller's
    connection, so that an incomplete answer cannot pass for a complete one."""
    answer.close()
    if not response.prepared:
        raise failure
    log.warning("pass-through from node %s cut short: %s", node_id, failure.message)
    if request.transport is not None:
        request.transport.abort()
    return response


async def _next_chunk(chunks: AsyncIterator[bytes], deadline: float | None) -> bytes:
    if deadline is None:
        return await chunks.__anext__()
    left = max(deadline - time.monotonic(), 0.0)
    return await asyncio.wait_for(chunks.__anext__(), left)
