"""Composition root: create_app(config) wires the parts; the CLI and tests both call it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.errors import error_middleware
from cnetd.api.routes import add_api_routes
from cnetd.clock import utc_now
from cnetd.config import Config
from cnetd.logs.ingester import LogIngester
from cnetd.metrics.resources import ResourceSampler
from cnetd.ml.service import ModelService
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.supervisor.launcher import Launcher
from cnetd.supervisor.select import choose_sandbox
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


async def persistent_node_id(db: Database, configured: str) -> str:
    """The configured node_id, else one generated once and kept in the store."""
    if configured:
        return configured
    stored = await db.read(lambda c: q.get_meta(c, "node_id"))
    if stored:
        return stored
    generated = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    await db.write(lambda c: q.set_meta(c, "node_id", generated))
    return generated


def create_app(config: Config, base_dir: Path | None = None) -> web.Application:
    """base_dir is what relative working_dirs are relative to (default: the cwd)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app.cleanup_ctx.append(lambda a: _agent_context(a, config, base_dir or Path.cwd()))
    add_api_routes(app)
    return app


async def _agent_context(app: web.Application, config: Config, base_dir: Path) -> AsyncIterator[None]:
    state_dir = config.agent.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(state_dir / "cnet.db")
    await db.open()
    try:
        node_id = await persistent_node_id(db, config.agent.node_id)
        sandbox, reason = choose_sandbox(config.tasks.sandbox)
        log.info("sandbox: %s", reason)
        launcher = Launcher(sandbox, state_dir, base_dir, os.environ)
        ingester = LogIngester(db)
        tasks = TaskService(db, launcher, ingester, config, node_id)
        ingester._on_lines = tasks.on_log_lines
        resources = ResourceSampler(config.resources, state_dir)
        agent = Agent(
            config=config, base_dir=base_dir, node_id=node_id, db=db, launcher=launcher,
            ingester=ingester, tasks=tasks, models=ModelService(tasks, config), resources=resources,
            sandbox_reason=reason, started_at=utc_now(),
        )
        app[AGENT] = agent
        await ingester.start()
        await tasks.recover()
        await tasks.start_background()
        await resources.start()
        try:
            yield
        finally:
            await resources.stop()
            await tasks.shutdown()
            await ingester.stop()
    finally:
        await db.close()
