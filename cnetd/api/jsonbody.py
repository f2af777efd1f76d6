"""Request bodies as JSON: the one rule for which requests must be JSON (a middleware for
every unsafe /api and /v2 request) and the one decoder that turns bytes into a value or a
400 saying what is wrong, nesting depth included.

Why JSON only: a page on another site can send a text/plain or form POST to a loopback
agent without a CORS preflight, but not an application/json one.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cnetd.bodies.jsonvalue import lone_surrogate
from cnetd.cluster.relay import is_v2_infer
from cnetd.errors import DomainError, Invalid

MAX_JSON_DEPTH = 64
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_PREFIXES = ("/api/", "/v2/")
# The V2 binary tensor extension: application/octet-stream (or no Content-Type) plus this
# header, on the infer routes alone, also when passed through to a node (a cross-site page
# cannot send a custom header without a CORS preflight, which the agent does not answer).
BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_ROUTES = frozenset({"v2-infer", "v2-infer-version"})
PASS_THROUGH_ROUTE = "node-through-post"

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
# A lone surrogate comes only from an escape (its UTF-8 bytes are refused as not UTF-8). A
# valid pair matches too (json.loads joins it into one character): a match only means "look".
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/") and content_type.endswith("+json"))


def media_problem(request: web.Request) -> str | None:
    """Why this request may not reach a JSON route, or None. A request with no body and no
    Content-Type (DELETE, a bare POST) is fine; anything else must say it is JSON."""
    if request.method not in UNSAFE_METHODS or not request.path.startswith(JSON_PREFIXES):
        return None
    if request.match_info.http_exception is not None:
        return None  # no such route (404) or method (405): that answer comes first
    declared = request.headers.get("Content-Type")
    if not request.body_exists and declared is None:
        return None
    content_type = request.content_type if declared is not None else ""
    if is_json_type(content_type):
        return None
    if content_type in ("application/octet-stream", "") and BINARY_HEADER in request.headers:
        # No Content-Type at all is what the official Triton client sends with the header.
        if takes_binary(request):
            return None
        return f"Content-Type must be application/json, got {content_type} (binary tensor data is for V2 infer only)"
    if declared is None and takes_binary(request) and not from_a_browser_page(request):
        return None  # the Triton client's JSON mode sends none: the body is read as JSON
    return f"Content-Type must be application/json, got {content_type or 'none'}"


def from_a_browser_page(request: web.Request) -> bool:
    """Whether a browser sent this on behalf of a page (fetch() of a bare byte body needs no
    Content-Type and no CORS preflight, so "none" is only taken as JSON from programs: a
    browser always names the page's Origin on a POST, and modern ones Sec-Fetch-Site)."""
    return "Origin" in request.headers or "Sec-Fetch-Site" in request.headers or "Sec-Fetch-Mode" in request.headers


def passed_through(request: web.Request) -> str | None:
    """For a POST to /api/nodes/{id}/{tail}: "/{tail}" as sent (raw, no query); else None."""
    if request.method != "POST" or request.match_info.route.name != PASS_THROUGH_ROUTE:
        return None
    return "/" + request.rel_url.raw_path.split("/", 4)[4]


def takes_binary(request: web.Request) -> bool:
    """A V2 infer, here or passed through to a node (/api/nodes/{id}/v2/models/.../infer)."""
    tail = passed_through(request)
    if tail is not None:
        return is_v2_infer(tail)
    return request.method == "POST" and request.match_info.route.name in BINARY_ROUTES


def nesting_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in JSON text (well-formed or not: an unclosed "["
    counts, as the decoder would recurse into it), found without parsing and in C: escapes
    out, strings out (every other piece between quotes, an unterminated one included),
    then only the brackets, whose running sum is the depth."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot be too deep: not worth the scan
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    brackets = outside_strings.translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)


def decode_json(raw: bytes) -> Any:
    """The body's JSON value, or a DomainError (400) naming what is wrong with it: a string
    that is not text (a lone surrogate) too, by its field."""
    if not raw.strip():
        raise DomainError("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DomainError("request body is not UTF-8 text") from None
    depth = nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise DomainError(f"request body is nested too deeply: {depth} levels of arrays/objects, at most {MAX_JSON_DEPTH}",
                          {"max_depth": MAX_JSON_DEPTH})
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DomainError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DomainError(f"request body is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):
        bad = lone_surrogate(value)
        if bad is not None:
            raise Invalid(*bad)
    return value
