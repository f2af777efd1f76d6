"""What the UI keeps while the agent runs: the renderer and the event that tells live
streams the agent is shutting down. (Usage samples for the charts come from the tasks
layer: TaskService.usage_history.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from cnetd.agent import AGENT
from cnetd.ui.render import Renderer, templates_dir


@dataclass
class UiState:
    renderer: Renderer
    closing: asyncio.Event
    _routes: set[tuple[str, str]] | None = None

    def has_route(self, app: web.Application, method: str, path: str) -> bool:
        """Whether the app serves METHOD path (a canonical path like /api/ml/models/{id}/serve)."""
        if self._routes is None:
            self._routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        return (method, path) in self._routes


UI = web.AppKey("ui", UiState)


async def ui_context(app: web.Application) -> AsyncIterator[None]:
    """Entered after the agent's context (add_ui_routes runs after it is registered)."""
    agent = app[AGENT]
    state = UiState(renderer=Renderer(templates_dir(), agent.identity.node_name), closing=asyncio.Event())
    app[UI] = state
    try:
        yield
    finally:
        state.closing.set()


async def on_shutdown(app: web.Application) -> None:
    """End the live streams first, so that shutdown does not wait for browsers to hang up."""
    state = app.get(UI)
    if state is not None:
        state.closing.set()
