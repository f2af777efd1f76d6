"""Composition root: create_app(config) wires the parts; the CLI and tests both call it."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from cnetd.agent import AGENT, Agent
from cnetd.api.errors import error_middleware
from cnetd.api.routes import add_api_routes
from cnetd.bundle import stable_copy
from cnetd.clock import utc_now
from cnetd.cluster.federation import Federation
from cnetd.cluster.report import describe_node
from cnetd.config import Config
from cnetd.logs.ingester import LogIngester
from cnetd.metrics.resources import ResourceSampler
from cnetd.ml.service import ModelService
from cnetd.ml.serving.manager import WORKER_RELATIVE, ServingManager
from cnetd.security.auth import Authenticator, auth_middleware, check_bind_policy
from cnetd.security.confine import Confinement
from cnetd.security.login import AUTHENTICATOR, add_login_routes
from cnetd.security.privilege import task_user_for
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.supervisor.launcher import Launcher
from cnetd.supervisor.select import choose_sandbox
from cnetd.tasks.retention import Retention
from cnetd.tasks.service import TaskService
from cnetd.ui.routes import add_ui_routes


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


def log_task_user(launcher: Launcher) -> None:
    user = launcher.user
    if user is None:
        who = "root" if os.geteuid() == 0 else f"the agent's user (uid {os.geteuid()})"
        log.info("tasks run as %s%s", who, " (tasks.run_as: root)" if os.geteuid() == 0 else "")
        return
    log.info("tasks run as %s (uid %d, gid %d), home %s", user.name, user.uid, user.gid, launcher.home)
    if launcher.state_problem is not None:
        log.warning("%s: serving workers cannot start (they need %s)", launcher.state_problem, launcher.run_dir)


def create_app(config: Config, base_dir: Path | None = None) -> web.Application:
    """base_dir is what relative working_dirs are relative to (default: the cwd)."""
    check_bind_policy(config.agent.address, config.auth.tokens)
    authenticator = Authenticator(config.auth.tokens, config.auth.metrics_public)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(authenticator)], client_max_size=MAX_BODY_BYTES
    )
    app[AUTHENTICATOR] = authenticator
    app.cleanup_ctx.append(lambda a: _agent_context(a, config, base_dir or Path.cwd()))
    add_api_routes(app)
    add_login_routes(app)
    add_ui_routes(app)
    return app


async def _agent_context(app: web.Application, config: Config, base_dir: Path) -> AsyncIterator[None]:
    state_dir = config.agent.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(state_dir / "cnet.db")
    await db.open()
    try:
        node_id = await persistent_node_id(db, config.agent.node_id)
        sandbox, reason = choose_sandbox(config.tasks.sandbox, config.tasks.cgroup_group, config.tasks.slice)
        task_user = task_user_for(config)
        launcher = Launcher(sandbox, state_dir, base_dir, os.environ, config.tasks, task_user)
        log_task_user(launcher)
        ingester = LogIngester(db, limits=config.logs)
        roots = config.ml.allowed_roots or (base_dir, state_dir)
        confinement = Confinement(roots, config.tasks.allowed_commands)
        tasks = TaskService(db, launcher, ingester, config, node_id, confinement)
        ingester.on_lines = tasks.on_log_lines
        retention = Retention(db, config.tasks.retention, launcher, forget=tasks.forget)
        resources = ResourceSampler(config.resources, state_dir)
        models = ModelService(tasks, config)
        worker_script = stable_copy(WORKER_RELATIVE, state_dir, always=task_user is not None)
        serving = ServingManager(tasks, models, launcher.run_dir, worker_script)

        async def own_report() -> dict[str, Any]:
            return describe_node(config, sandbox.name, await tasks.counts(), resources.usage(), resources.totals())

        federation = Federation(config, db, node_id, own_report)
        agent = Agent(
            config=config, base_dir=base_dir, node_id=node_id, db=db, launcher=launcher,
            ingester=ingester, tasks=tasks, models=models, resources=resources, serving=serving,
            federation=federation, sandbox_reason=reason, started_at=utc_now(),
        )
        app[AGENT] = agent
        await ingester.start()
        await tasks.recover()
        await tasks.start_background()
        await retention.start()  # after recovery: the tasks it settled are ended or running
        await serving.start()  # after recovery: reattaches to workers that outlived the agent
        await resources.start()
        await federation.start()
        try:
            yield
        finally:
            await federation.stop()
            await resources.stop()
            await serving.stop()  # lets go of the workers; they keep running
            await retention.stop()
            await tasks.shutdown()
            await ingester.stop()
    finally:
        await db.close()
