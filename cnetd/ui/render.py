"""The Jinja2 environment (autoescape on) and the helpers views render through.

Templates live in the top-level `templates/` directory; `templates_dir()` finds it in
a checkout, an installed tree and a PyInstaller bundle alike.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from cnetd import __version__
from cnetd.security.redact import redact_env
from cnetd.ui import fmt

TEMPLATES_ENV = "CNET_TEMPLATES_DIR"


def templates_dir() -> Path:
    """The first existing candidate: $CNET_TEMPLATES_DIR, the PyInstaller bundle,
    beside the package (checkout / editable install), <prefix>/share/cnetd/templates."""
    candidates: list[Path] = []
    if os.environ.get(TEMPLATES_ENV):
        candidates.append(Path(os.environ[TEMPLATES_ENV]))
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "templates")
    package = Path(__file__).resolve().parent.parent
    candidates += [package.parent / "templates", package / "templates", Path(sys.prefix) / "share" / "cnetd" / "templates"]
    for candidate in candidates:
        if (candidate / "base.html").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"the web UI templates were not found (tried {tried}); set {TEMPLATES_ENV}")


@lru_cache(maxsize=4)
def environment(directory: Path) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(directory)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(fmt.FILTERS)
    env.filters["redacted_env"] = redact_env  # a task's env is only ever shown through this
    env.globals["version"] = __version__
    return env


@lru_cache(maxsize=64)
def _file_digest(path: Path, mtime_ns: int) -> str:
    return hashlib.blake2s(path.read_bytes(), digest_size=5).hexdigest()


def static_url(directory: Path, name: str) -> str:
    """/static/<name>?v=<content hash>: lets the file be cached for a year."""
    path = directory / "static" / name
    try:
        digest = _file_digest(path, path.stat().st_mtime_ns)
    except OSError:
        digest = "missing"
    return f"/static/{name}?v={digest}"


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


class Renderer:
    """Renders templates with the globals every page needs (url, static, nav)."""

    def __init__(self, directory: Path, node_name: str) -> None:
        self.directory = directory
        self.env = environment(directory)
        self.node_name = node_name

    def string(self, request: web.Request, template: str, context: Mapping[str, Any]) -> str:
        router = request.app.router

        def url(name: str, query: Mapping[str, Any] | None = None, **parts: str) -> str:
            built = router[name].url_for(**parts)
            if query:
                built = built.with_query({k: v for k, v in query.items() if v not in (None, "")})
            return str(built)

        ctx = {
            "request": request,
            "url": url,
            "static": lambda name: static_url(self.directory, name),
            "node_name": self.node_name,
            "htmx": is_htmx(request),
            "nav": "",
            **context,
        }
        return self.env.get_template(template).render(ctx)

    def markup(self, request: web.Request, template: str, context: Mapping[str, Any]) -> Markup:
        return Markup(self.string(request, template, context))

    def response(
        self, request: web.Request, template: str, context: Mapping[str, Any], status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = self.string(request, template, context)
        response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-store"
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response


def digest(html: str) -> str:
    return hashlib.blake2s(html.encode(), digest_size=6).hexdigest()


def polled(
    request: web.Request, inner: str, url: str, element_id: str, every: str | None = "2s", classes: str = ""
) -> tuple[Markup, bool]:
    """Wrap `inner` in an element that polls `url` (every `every`; never when None)
    and replaces itself with the answer.

    The URL carries a digest of the content, so an unchanged fragment answers
    204 (no swap: focus and text selection stay put). Returns (markup, unchanged)."""
    h = digest(inner)
    unchanged = is_htmx(request) and request.query.get("h") == h
    if every is None:
        wrapper = Markup('<div id="{id}" class="{cls}">').format(id=element_id, cls=classes)
    else:
        sep = "&" if "?" in url else "?"
        wrapper = Markup(
            '<div id="{id}" class="{cls}" hx-get="{url}{sep}h={h}" hx-trigger="every {every}" hx-swap="outerHTML">'
        ).format(id=element_id, cls=classes, url=url, sep=sep, h=h, every=every)
    return wrapper + Markup(inner) + Markup("</div>"), unchanged


def no_change() -> web.Response:
    return web.Response(status=204, headers={"Cache-Control": "no-store"})


def fragment_response(html: str, unchanged: bool = False) -> web.Response:
    if unchanged:
        return no_change()
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})
