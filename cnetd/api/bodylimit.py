"""The size bound of inference request bodies (serving.max_request_bytes): V2 infer and
predict, also when passed through to a node, may carry tensors far larger than the 1 MiB
every other route takes (aiohttp's client_max_size, which stays the bound there).

Such a body is read here, once, before its handler runs, and kept for it (body_of):
- a declared Content-Length over the bound is a 413 before a byte of the body is read;
- otherwise (chunked) the reading stops at the first byte past the bound, a 413 too: no
  more than the bound is ever read (aiohttp's own read() would also raise its stream
  buffer to twice its client_max_size first);
- a 413 closes the connection after the answer (aiohttp reads and drops what the caller is
  still sending for a moment, so that the caller sees the answer);
- a caller that goes away mid-body leaves nothing behind: the handler never runs (so
  nothing reaches a worker), and the agent notes it at INFO, not as an error; a body that
  breaks its chunked encoding is a 400, also without running the handler.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cnetd.api.jsonbody import passed_through
from cnetd.cluster.relay import is_v2_infer
from cnetd.units import format_size

log = logging.getLogger(__name__)

SETTING = "serving.max_request_bytes"
INFERENCE_ROUTES = frozenset({"v2-infer", "v2-infer-version", "model-predict"})
PREDICT_PATH = re.compile(r"/api/ml/models/[^/?#]+/predict")
READ_CHUNK = 1 << 20
BODY = web.RequestKey("inference_body", bytes)


class BodyTooLarge(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def is_inference(request: web.Request) -> bool:
    """A V2 infer or a predict, here or passed through to a node (/api/nodes/{id}/...)."""
    tail = passed_through(request)
    if tail is not None:
        return is_v2_infer(tail) or PREDICT_PATH.fullmatch(tail) is not None
    return request.method == "POST" and request.match_info.route.name in INFERENCE_ROUTES


def _bound(limit: int) -> str:
    return f"{SETTING} ({limit} bytes, {format_size(limit)})"


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge; a ConnectionError when the caller goes away, an
    HttpProcessingError when what it sent is not a body (broken chunked encoding)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"request body is {declared} bytes, more than {_bound(limit)} allows")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is more than {_bound(limit)} allows")
        chunks.append(chunk)


async def body_of(request: web.Request) -> bytes:
    """The request's body: as read by the bound below for an inference, else aiohttp's (1 MiB)."""
    kept = request.get(BODY)
    return kept if kept is not None else await request.read()


async def read_inference_body(request: web.Request, limit: int,
                              respond: Callable[[web.Request, int, str], web.StreamResponse]) -> web.StreamResponse | None:
    """Reads an inference's body (kept for body_of) under `limit`; None when it was read,
    else the 413 or 400 that ends the request (and its connection)."""
    try:
        request[BODY] = await read_bounded(request, limit)
    except BodyTooLarge as exc:
        response = respond(request, 413, exc.message)
    except ConnectionError as exc:
        log.info("%s %s: the caller went away before its body was complete (%s); nothing was done",
                 request.method, request.path, exc)
        response = respond(request, 400, "request body cut short: the connection closed before its end")
    except HttpProcessingError as exc:
        response = respond(request, 400, f"request body is malformed: {exc.message}")
    else:
        return None
    response.force_close()  # no more of this body is read (and no one may be left to read it)
    return response
