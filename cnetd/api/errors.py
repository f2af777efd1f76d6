"""The error envelope: {"error", "status", "timestamp", "details"} for every failure."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from cnetd.api.bodylimit import body_of
from cnetd.api.jsonbody import decode_json
from cnetd.api.serialize import json_bytes
from cnetd.clock import utc_now
from cnetd.errors import DomainError
from cnetd.units import format_size

log = logging.getLogger(__name__)


def error_response(status: int, message: str, details: dict[str, Any] | None = None) -> web.Response:
    body = {"error": message, "status": status, "timestamp": utc_now(), "details": details or {}}
    return web.Response(body=json_bytes(body), status=status, content_type="application/json", charset="utf-8")


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"no such endpoint: {request.method} {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"request body too large: this route takes at most {format_size(request.client_max_size)}"
    return exc.reason


ANSWERED = (DomainError, web.HTTPException, sqlite3.OperationalError)  # what answer_error may answer


def answer_error(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The envelope for what a handler raised (one of ANSWERED); what is not an error to
    answer here (a redirect, an HTML page's 404, another database error) is raised again."""
    if isinstance(exc, DomainError):
        response = error_response(exc.status, exc.message, exc.details)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or not _wants_json(request):
            raise exc
        response = error_response(exc.status, _http_message(exc, request))
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    if isinstance(exc, sqlite3.OperationalError) and ("full" in str(exc) or "disk I/O" in str(exc)):
        log.error("storage write failed: %s", exc)
        return error_response(503, f"storage unavailable: {exc}; reads still work")
    raise exc


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ANSWERED as exc:
        return answer_error(request, exc)


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/api/", "/v2/")) or "text/html" not in request.headers.get("Accept", "")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a 4xx saying what is wrong with it. That it is JSON at
    all (Content-Type) was checked before the handler ran (jsonbody.media_problem, in api/gate.py)."""
    return decode_json(await body_of(request))


def error_for(request: web.Request, status: int, message: str) -> web.Response:
    """An error in the shape of the route's protocol: V2's {"error"}, else the envelope."""
    if request.path.startswith("/v2/"):
        return web.json_response({"error": message}, status=status)
    return error_response(status, message)
