"""/static/<name>: the vendored htmx, its SSE extension, app.css and app.js.

Only files that are in templates/static/ are served (no paths). Pages link them as
/static/<name>?v=<content hash>, so they can be cached for a year; without the
matching hash they are cached briefly."""

from __future__ import annotations

from aiohttp import web

from cnetd.ui.common import ui_of
from cnetd.ui.render import static_url

LONG = "public, max-age=31536000, immutable"
SHORT = "public, max-age=300"
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    directory = ui_of(request).renderer.directory / "static"
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in TYPES:
        raise web.HTTPNotFound()
    path = directory / name
    if not path.is_file():
        raise web.HTTPNotFound()
    fresh = request.query.get("v") and static_url(directory.parent, name).endswith("v=" + request.query["v"])
    return web.FileResponse(path, headers={
        "Cache-Control": LONG if fresh else SHORT,
        "Content-Type": TYPES[suffix],
        "X-Content-Type-Options": "nosniff",
    })
