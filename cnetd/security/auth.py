"""API tokens and UI sessions.

With tokens configured, every /api/* and /v2/* request except /api/health needs
`Authorization: Bearer <token>`; the UI signs in once and then holds an HttpOnly,
SameSite=Strict session cookie. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from cnetd.api.errors import error_response
from cnetd.security.cluster_token import is_peer

PUBLIC_PATHS = frozenset({"/api/health", "/login", "/logout"})
PUBLIC_PREFIXES = ("/static/",)
API_PREFIXES = ("/api/", "/v2/")
SESSION_COOKIE = "cnet_session"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(address: str) -> bool:
    if address in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class BindRefused(RuntimeError):
    pass


def check_bind_policy(address: str, tokens: tuple[str, ...]) -> None:
    if not tokens and not is_loopback(address):
        raise BindRefused(
            f"refusing to listen on {address} without an API token: anyone who reaches this port "
            "could start processes. Set auth.tokens (or auth.token_file, or CNET_AUTH_TOKEN) "
            "to a secret of 16+ characters, or bind 127.0.0.1."
        )


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    def __init__(self, tokens: tuple[str, ...], metrics_public: bool) -> None:
        self._tokens = [t.encode() for t in tokens]
        self.metrics_public = metrics_public
        self._sessions: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def token_ok(self, presented: str) -> bool:
        given = presented.encode()
        ok = False
        for token in self._tokens:  # no early exit: the time taken says nothing
            ok |= hmac.compare_digest(given, token)
        return ok

    def bearer_ok(self, request: web.Request) -> bool:
        presented = bearer_token(request)
        return presented is not None and self.token_ok(presented)

    def new_session(self) -> str:
        now = time.time()
        self._sessions = {s: exp for s, exp in self._sessions.items() if exp > now}
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now + SESSION_SECONDS
        return session

    def end_session(self, session: str | None) -> None:
        if session:
            self._sessions.pop(session, None)

    def session_ok(self, request: web.Request) -> bool:
        session = request.cookies.get(SESSION_COOKIE)
        expiry = self._sessions.get(session or "")
        return expiry is not None and expiry > time.time()


def same_origin(request: web.Request) -> bool:
    """A cookie-authenticated change must come from our own pages (CSRF)."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin:
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    return urlsplit(origin).netloc == request.host


def auth_refusal(auth: Authenticator, request: web.Request) -> web.Response | None:
    """None when the request may go on (public path, peer, token or session), else the
    401/403; a page without a session is redirected to the login (HTTPSeeOther)."""
    path = request.path
    if not auth.enabled or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    if is_peer(request):  # another agent of the cluster, with the cluster token: its caller was checked there
        return None
    if path == "/metrics" and auth.metrics_public:
        return None
    if auth.bearer_ok(request):
        return None
    if auth.session_ok(request):
        if request.method not in SAFE_METHODS and not same_origin(request):
            return error_response(403, "cross-site request refused (Origin does not match this agent)")
        return None
    if path.startswith(API_PREFIXES) or path in ("/v2", "/metrics"):
        response = error_response(401, "authentication required: send Authorization: Bearer <token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="cnet-agent"'
        return response
    raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
