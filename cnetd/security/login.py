"""The UI's sign-in page: trade a token for a session cookie."""

from __future__ import annotations

import html
import unicodedata
from urllib.parse import unquote, urlsplit

from aiohttp import web

from cnetd.security.auth import SESSION_COOKIE, SESSION_SECONDS, Authenticator

AUTHENTICATOR = web.AppKey("authenticator", Authenticator)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · CNET Agent</title><link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><main class="login-box">
<h1>CNET Agent</h1>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus{invalid}>
{error}
<button type="submit">Sign in</button>
</form></main></body></html>"""
INVALID = ' aria-invalid="true" aria-describedby="token-error"'  # the field names its error


def _plain_local_path(target: str) -> bool:
    """A path on this agent and nothing else: no scheme, no host, exactly one leading
    "/", and no character a browser drops or bends (controls, whitespace, backslash)."""
    if any(c.isspace() or c == "\\" or unicodedata.category(c)[0] == "C" for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: `target` when it is a plain path on this agent, else
    "/". Never an open redirect: nothing is stripped or repaired, anything doubtful is
    refused, and so is a target whose percent-decoded forms (once or twice encoded) would
    not pass either, for whatever decodes it on the way."""
    if not target:
        return "/"
    seen = target
    for _ in range(3):
        if not _plain_local_path(seen):
            return "/"
        decoded = unquote(seen)
        if decoded == seen:
            return target
        seen = decoded
    return "/"  # still encoded after three rounds: not a plain path


def render(next_path: str, error: str = "") -> web.Response:
    message = f'<p class="field-error" id="token-error" role="alert">{html.escape(error)}</p>' if error else ""
    page = PAGE.format(next=html.escape(next_path), error=message, invalid=INVALID if error else "")
    return web.Response(text=page, content_type="text/html")


async def login_page(request: web.Request) -> web.Response:
    return render(safe_next(request.query.get("next")))


async def login_submit(request: web.Request) -> web.Response:
    auth = request.app[AUTHENTICATOR]
    form = await request.post()
    next_path = safe_next(str(form.get("next", "/")))
    token = str(form.get("token", ""))
    if not auth.enabled:
        raise web.HTTPSeeOther(next_path)
    if not auth.token_ok(token):
        response = render(next_path, "That token is not valid.")
        response.set_status(401)
        return response
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(
        SESSION_COOKIE, auth.new_session(), max_age=SESSION_SECONDS, httponly=True, samesite="Strict", path="/",
        secure=request.secure,
    )
    raise response


async def logout(request: web.Request) -> web.Response:
    request.app[AUTHENTICATOR].end_session(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def add_login_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_submit, name="login-submit")
    app.router.add_post("/logout", logout, name="logout")
