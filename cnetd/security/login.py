"""The UI's sign-in page: trade a token for a session cookie."""

from __future__ import annotations

import html

from aiohttp import web

from cnetd.security.auth import SESSION_COOKIE, SESSION_SECONDS, Authenticator

AUTHENTICATOR = web.AppKey("authenticator", Authenticator)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · CNET Agent</title><link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><main class="login-box">
<h1>CNET Agent</h1>
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
{error}
<button type="submit">Sign in</button>
</form></main></body></html>"""


def safe_next(target: str | None) -> str:
    """Only a path on this agent: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def render(next_path: str, error: str = "") -> web.Response:
    message = f'<p class="field-error" role="alert">{html.escape(error)}</p>' if error else ""
    return web.Response(text=PAGE.format(next=html.escape(next_path), error=message), content_type="text/html")


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
