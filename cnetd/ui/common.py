"""Helpers every view uses: the renderer, redirects that work with and without htmx,
the same-origin guard for form posts, the not-found page, paging."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps

from aiohttp import web
from yarl import URL

from cnetd.agent import AGENT, Agent
from cnetd.errors import NotFound
from cnetd.tasks.model import Status
from cnetd.ui.render import Renderer, is_htmx
from cnetd.ui.state import UI, UiState

PER_PAGE = 50
STATUSES = tuple(str(s) for s in Status)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def agent_of(request: web.Request) -> Agent:
    return request.app[AGENT]


def ui_of(request: web.Request) -> UiState:
    return request.app[UI]


def renderer(request: web.Request) -> Renderer:
    return request.app[UI].renderer


def redirect(request: web.Request, location: str) -> web.Response:
    """After a successful form post: htmx follows HX-Redirect, a plain form a 303."""
    if is_htmx(request):
        return web.Response(status=200, headers={"HX-Redirect": location, "Cache-Control": "no-store"})
    raise web.HTTPSeeOther(location)


def check_same_origin(request: web.Request) -> None:
    """Form posts start processes: refuse ones another site's page makes the browser send."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise web.HTTPForbidden(text="cross-site form posts are refused")
    origin = request.headers.get("Origin")
    if origin and origin != "null" and URL(origin).authority != request.host:
        raise web.HTTPForbidden(text=f"form posts from {origin} are refused")


def page(handler: Handler) -> Handler:
    """Render a 'not found' page (status 404) for an unknown task or model id."""

    @wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except NotFound as exc:
            return renderer(request).response(request, "not_found.html", {"message": exc.message}, status=404)

    return wrapped


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int = PER_PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def paging(request: web.Request) -> Paging:
    """?page=N (from 1); anything else is the first page."""
    raw = request.query.get("page", "1")
    number = int(raw) if raw.isdigit() else 1
    return Paging(max(1, min(number, 1_000_000)))


def choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str:
    """A filter value from the query string; anything unknown means 'all'."""
    value = request.query.get(name, "")
    return value if value in choices else ""

