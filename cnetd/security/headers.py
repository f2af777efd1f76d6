"""Security headers on every response the app prepares (pages, fragments, streams, static
files, JSON, errors and redirects alike), set in one place.

Pages get a Content-Security-Policy that allows only this agent's own files: no inline
script or style, no eval (htmx runs with allowEval and allowScriptTags off, see
templates/base.html), no framing, no <base>, forms only to this agent. Everything else gets
a policy that allows nothing, so a JSON or text answer opened as a page runs nothing. A
response that already has a policy keeps it (the pass-through sets `sandbox`).
"""

from __future__ import annotations

from aiohttp import web

PAGE_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'report-sample'",  # report-sample: a violation report quotes what was blocked
    "style-src 'self' 'report-sample'",
    "img-src 'self'",
    "connect-src 'self'",  # htmx requests and the SSE EventSource
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def is_html(response: web.StreamResponse) -> bool:
    return response.content_type == "text/html"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in ALWAYS.items():
        response.headers.setdefault(name, value)
    if is_html(response):
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
    else:
        response.headers.setdefault("Content-Security-Policy", NOTHING_POLICY)


def add_header_policy(app: web.Application) -> None:
    app.on_response_prepare.append(add_security_headers)
