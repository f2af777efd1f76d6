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
from cnetd.api.errors import error_for
from cnetd.api.gate import gate_middleware
from cnetd.api.routes import add_api_routes
from cnetd.bundle import stable_copy
from cnetd.clock import utc_now
from cnetd.cluster.describe import NodeDescriber
from cnetd.cluster.failover import ModelFailover
from cnetd.cluster.runtime import ClusterNode
from cnetd.config import Config
from cnetd.gpus.monitor import GpuMonitor
from cnetd.logs.ingester import LogIngester
from cnetd.logs.reader import LogReader
from cnetd.metrics.resources import ResourceSampler
from cnetd.ml.catalog import ModelCatalog
from cnetd.ml.copies import ModelCopies
from cnetd.ml.envs.service import Environments
from cnetd.ml.monitor.service import Monitor
from cnetd.ml.monitor.versions import from_numbers, roles_from
from cnetd.ml.service import ModelService
from cnetd.ml.serving.manager import WORKER_RELATIVE, ServingManager
from cnetd.ml.versions.artifacts import ArtifactStore
from cnetd.ml.versions.book import VersionBook
from cnetd.ml.versions.recorder import VersionRecorder
from cnetd.ml.versions.service import VersionService
from cnetd.node import NodeIdentity
from cnetd.security.auth import Authenticator, check_bind_policy
from cnetd.security.callers import TaskCallerGuard
from cnetd.security.cluster_token import ClusterToken
from cnetd.security.confine import Confinement
from cnetd.security.headers import add_header_policy
from cnetd.security.hosts import AllowedHosts
from cnetd.security.identity import Identities
from cnetd.security.isolation import Isolation
from cnetd.security.login import AUTHENTICATOR, add_login_routes
from cnetd.security.modeldirs import prepare_roots
from cnetd.store import tasks as q
from cnetd.store.db import Database
from cnetd.supervisor.launcher import Launcher, default_task_path
from cnetd.supervisor.select import choose_sandbox
from cnetd.tasks.retention import Retention
from cnetd.tasks.service import TaskService
from cnetd.ui.routes import add_ui_routes

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # every route's but inference's (cnetd/api/bodylimit.py)
STORE = web.AppKey("store", Database)
RETENTION = web.AppKey("retention", Retention)
INGESTER = web.AppKey("ingester", LogIngester)


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


def cluster_secret_files(config: Config) -> list[Path | None]:
    """The cluster's secrets on disk, hidden from tasks like the config and the API tokens."""
    if config.cluster is None:
        return []
    etcd = config.cluster.etcd
    return [config.cluster.token_file, etcd.password_file, etcd.key_file]


def log_task_user(launcher: Launcher) -> None:
    identities, isolation = launcher.identities, launcher.isolation
    if identities.mode == "agent":
        who = "root (tasks.run_as: root): no boundary between tasks and the agent" if os.geteuid() == 0 \
            else f"the agent's own user (uid {os.geteuid()}): no boundary between tasks and the agent"
        log.warning("tasks run as %s", who)
        return
    if identities.mode == "dynamic":
        r = identities.uid_range
        log.info("each model and process task runs under a uid of its own from %d-%d", r.start, r.end)
    else:
        assert identities.static_user is not None
        log.info("every task runs as %s (uid %d): tasks can reach each other", identities.static_user.name,
                 identities.static_user.uid)
    if isolation.namespaces:
        log.info("tasks run in private mount namespaces: read-only system, their model directory and TMPDIR writable")


def create_app(config: Config, base_dir: Path | None = None) -> web.Application:
    """base_dir is what relative working_dirs are relative to (default: the cwd)."""
    check_bind_policy(config.agent.address, config.auth.tokens)
    authenticator = Authenticator(config.auth.tokens, config.auth.metrics_public)
    hosts = AllowedHosts(config)
    # One middleware for every route (cnetd/api/gate.py), its checks in this order: errors
    # around all; Host first (a rebound name gets nothing, not even a 401); the task-caller
    # guard; the cluster token (another agent shows it instead of the API token); the API
    # token; JSON-only bodies; V2 infer and predict bodies read under
    # serving.max_request_bytes (others: MAX_BODY_BYTES) once the caller is known, before
    # the owner relay, which sends them on.
    gate = gate_middleware(
        hosts, TaskCallerGuard(config), authenticator,
        None if config.cluster is None else ClusterToken(config.cluster.token),
        config.serving.max_request_bytes, error_for,
    )
    app = web.Application(middlewares=[gate], client_max_size=MAX_BODY_BYTES)
    hosts.learn_fqdn()
    app[AUTHENTICATOR] = authenticator
    add_header_policy(app)
    base = base_dir or Path.cwd()
    # One context per resource, entered in this order and left in reverse. When one fails to
    # start, aiohttp leaves the ones already entered, so a start that fails part-way leaves
    # nothing running; the scheduler comes last, so no task is launched before all is up.
    app.cleanup_ctx.extend([
        lambda a: _store(a, config),
        lambda a: _parts(a, config, base),
        _log_ingester,
        _gpu_monitor,
        _task_supervision,
        _environments,
        _retention,
        _serving,
        _monitor,
        _resource_sampler,
        _cluster,
        _scheduler,
        _grpc,
    ])
    add_api_routes(app)
    add_login_routes(app)
    add_ui_routes(app)
    return app


async def _grpc(app: web.Application) -> AsyncIterator[None]:
    """The V2 gRPC service, when serving.grpc_port is set (imported only then: cnetd/grpcapi)."""
    agent = app[AGENT]
    port = agent.config.serving.grpc_port
    if port is None:
        yield
        return
    from cnetd.grpcapi import server

    grpc_server = await server.start(agent, port)
    try:
        yield
    finally:
        await server.stop(grpc_server)


async def _store(app: web.Application, config: Config) -> AsyncIterator[None]:
    state_dir = config.agent.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(state_dir / "cnet.db")
    try:
        await db.open()
        app[STORE] = db
        yield
    finally:
        await db.close()


async def _parts(app: web.Application, config: Config, base_dir: Path) -> AsyncIterator[None]:
    """Builds every part and wires them together; nothing starts here."""
    state_dir, db = config.agent.state_dir, app[STORE]
    node_id = await persistent_node_id(db, config.agent.node_id)
    sandbox, reason = choose_sandbox(config.tasks.sandbox, config.tasks.cgroup_group, config.tasks.slice)
    identities = Identities.from_config(config)
    allowed_roots = [Path(os.path.realpath(p)) for p in (config.ml.allowed_roots or (base_dir,))]
    for root in allowed_roots:
        if root.is_relative_to(os.path.realpath(state_dir)):
            log.warning("ml.allowed_roots: %s is in the agent's state dir, which tasks never see: "
                        "set ml.allowed_roots to where model scripts live", root)
    model_roots = prepare_roots(config.ml.model_roots or (*(r / "models" for r in allowed_roots), config.ml.model_path))
    isolation = Isolation(
        state_dir=state_dir, allowed_roots=allowed_roots, model_roots=model_roots,
        secret_files=[p for p in (config.source, config.auth.token_file, *cluster_secret_files(config)) if p is not None],
    )
    launcher = Launcher(sandbox, state_dir, base_dir, os.environ, config.tasks, identities, isolation,
                        gpus=GpuMonitor(config.gpus))
    probe_user = identities.user(config.tasks.uid_range.start) if identities.mode == "dynamic" else identities.static_user
    if probe_user is not None:
        isolation.probe(probe_user)
    else:
        isolation.namespaces, isolation.problem = False, "tasks run as the agent's own user"
    log_task_user(launcher)
    ingester = LogIngester(db, limits=config.logs)
    confinement = Confinement(allowed_roots, config.tasks.allowed_commands, model_roots, default_task_path(),
                              state_dir=state_dir)
    tasks = TaskService(db, launcher, ingester, config, node_id, confinement)
    environments = Environments(tasks, launcher, confinement, config, dict(os.environ))
    ingester.on_lines = tasks.on_log_lines
    resources = ResourceSampler(config.resources, state_dir)
    catalog = ModelCatalog(db, tasks, launcher)
    worker_script = stable_copy(WORKER_RELATIVE, state_dir, always=identities.drops_privileges)
    serving = ServingManager(db, tasks, catalog, launcher, worker_script, memory_budget=config.serving.memory_budget,
                             busy_poll_us=config.serving.busy_poll_us)
    models = ModelService(tasks, catalog, serving, launcher, confinement, config)
    book = VersionBook()
    models.versions_book = book
    artifact_store = ArtifactStore(state_dir)
    recorder = VersionRecorder(tasks, catalog, launcher, confinement, artifact_store, book)
    versions = VersionService(tasks, catalog, serving, recorder, book, config.serving.rollback_window,
                              config.serving.version_copies, config.serving.keep_versions)
    serving.artifact_for = versions.file_for
    models.predict_served = versions.predict
    serving.default_for = versions.default_id
    if config.serving.version_copies:
        launcher.version_copy_of = book.artifact_of  # its workers and prediction tasks read it
        catalog.copy_of = book.artifact_of  # what a version is, for other nodes of a cluster too
    identity = NodeIdentity.of(config, node_id)
    started_at = utc_now()
    describe = NodeDescriber(config, identity, db, resources, sandbox.name, started_at, gpus=launcher.gpus)
    serving.admission.node_free = describe.room  # serving replicas are admitted against the node's free room
    cluster = None if config.cluster is None else ClusterNode(config, config.cluster, describe, tasks, models)
    if cluster is not None:
        copies = ModelCopies(tasks, catalog, launcher, confinement, config)
        cluster.failover = ModelFailover(cluster, catalog, serving, copies, model_roots)
        # versions' copies are sent to other nodes too (read through real directories only)
        cluster.failover.artifacts.roots.append(Path(os.path.realpath(artifact_store.root)))
        election = cluster.election
        cluster.failover.places = lambda: election.is_leader  # the scheduler places served replicas too

    app[INGESTER] = ingester
    def forget(task_ids: list[str]) -> None:
        tasks.forget(task_ids)
        if cluster is not None:
            cluster.forget(task_ids)

    app[RETENTION] = Retention(db, config.tasks.retention, launcher, forget=forget)
    app[AGENT] = Agent(
        config=config, base_dir=base_dir, identity=identity, launcher=launcher,
        logs=LogReader(db, ingester), tasks=tasks, models=models, resources=resources, serving=serving,
        versions=versions, environments=environments,
        cluster=cluster, describe=describe, sandbox_reason=reason, started_at=started_at,
        # versions labelled by their version numbers (cnetd.ml.versions)
        monitor=Monitor(db, serving, config.serving.rollup_interval, config.serving.rollup_retention,
                        resolver=from_numbers(versions.version_of), roles=roles_from(versions.pointers)),
    )
    yield


# Each part below is started inside its try, so a start that fails half-way is undone too.


async def _log_ingester(app: web.Application) -> AsyncIterator[None]:
    ingester = app[INGESTER]
    try:
        await ingester.start()
        yield
    finally:
        await ingester.stop()  # every line written so far is ingested


async def _gpu_monitor(app: web.Application) -> AsyncIterator[None]:
    gpus = app[AGENT].launcher.gpus
    try:
        await gpus.start()  # before recovery and the scheduler: tasks' GPUs are known from the start
        yield
    finally:
        await gpus.stop()


async def _task_supervision(app: web.Application) -> AsyncIterator[None]:
    tasks = app[AGENT].tasks
    try:
        await tasks.recover()  # reattach to what runs, settle what ended while the agent was down
        yield
    finally:
        await tasks.shutdown()  # tasks keep running unless tasks.stop_on_exit


async def _environments(app: web.Application) -> AsyncIterator[None]:
    async with app[AGENT].environments.running():  # after recovery: builds that outlived the agent are followed
        yield


async def _retention(app: web.Application) -> AsyncIterator[None]:
    retention = app[RETENTION]
    try:
        await retention.start()  # after recovery: the tasks it settled are ended or running
        yield
    finally:
        await retention.stop()


async def _serving(app: web.Application) -> AsyncIterator[None]:
    serving, versions = app[AGENT].serving, app[AGENT].versions
    try:
        await versions.load()  # before serving: which copy each version is served from
        await serving.start()  # after recovery: reattaches to workers that outlived the agent
        await versions.start()  # default, previous and canary pointers; training that ended meanwhile
        yield
    finally:
        await versions.stop()
        await serving.stop()  # lets go of the workers; they keep running


async def _monitor(app: web.Application) -> AsyncIterator[None]:
    monitor = app[AGENT].monitor
    assert monitor is not None
    try:
        await monitor.start()  # after serving: the served models' metrics are there
        yield
    finally:
        await monitor.stop()


async def _resource_sampler(app: web.Application) -> AsyncIterator[None]:
    resources = app[AGENT].resources
    try:
        await resources.start()
        yield
    finally:
        await resources.stop()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    """With a cluster section: the etcd client, this node's membership, the node directory
    and calls to other agents. Without one: nothing, and nothing about etcd is touched."""
    cluster = app[AGENT].cluster
    if cluster is None:
        yield
        return
    try:
        await cluster.start()  # returns at once: an etcd that does not answer never holds up the agent
        yield
    finally:
        await cluster.stop()


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    tasks = app[AGENT].tasks
    try:
        await tasks.start_background()  # pending tasks start from here on
        yield
    finally:
        await tasks.stop_background()
