"""Failover of served models: what one agent of a cluster does so that no single node's
death loses a served model or stops its serving.

Built by the composition root when the config has a cluster section, held by ClusterNode
(`cluster.failover`) and started and stopped with it.

    failover.artifacts   # ArtifactFiles: this node's model files, for GET /api/cluster/artifacts/{id}
    failover.puller      # ArtifactPuller: fetch a model file from a node that has it
    failover.desired     # DesiredServing: <prefix>/served/<name>, each served model's desired state
    failover.endpoints   # EndpointTable: which other nodes have ready replicas of a name (V2 forwarding)
    failover.placer      # ReplicaPlacer: decides where replicas go (plan_replicas) and writes it
    failover.places      # a callable saying whether this node places replicas now (the scheduler's
                         # election); None: the lowest online node id does

What each node does, about once a second and at once after a change (the records are
followed by a watch, ServedCache: an idle node sends etcd nothing for this):
1. publishes the desired state of each model it serves when serving started, changed or
   stopped by a user's call or once training completed (publish_desired), or when a model it
   trained and serves has no record yet or its file changed;
2. keeps its ready replicas listed as endpoints on its lease (EndpointPublisher);
3. if it is the node that places, notes since when each node is offline (a node offline for
   longer than the grace, 2 x the lease TTL, is lost) and,
4. as the node that places (the elected scheduler: the composition root sets `places`
   to its election; without it, the lowest online node id), lets ReplicaPlacer re-decide
   every served model's placements;
5. makes its own serving match the placements that name it: a model placed here that it does
   not have is pulled from a node that has it (sha256 checked) and kept as a copy
   (ml.copies), then served with this node's share of the replicas; a model no longer placed
   here, or stopped, is no longer served here. A node that cannot hold a model (its script is
   missing here, its directory cannot be made) says so in the record (`refused`), and the
   placer goes elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.cluster.artifacts import Artifact, ArtifactFiles, ArtifactPuller, ArtifactRefused, CannotWrite
from cnetd.cluster.directory import ClusterUnavailable
from cnetd.cluster.endpoints import EndpointPublisher, EndpointTable
from cnetd.cluster.etcd import EtcdError
from cnetd.cluster.records import MODEL_NAME_PATTERN, ModelSource, ServedModel
from cnetd.cluster.replicas import NodeState, acting_node, plan_replicas
from cnetd.cluster.served import DesiredServing, ServedCache, ServedRaced, Versioned
from cnetd.errors import DomainError
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.copies import ModelCopies, NotHere, is_copy
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.served import Served
from cnetd.ml.serving.spec import ServingSpec
from cnetd.security.modeldirs import ModelDirError, ModelFileWriter

if TYPE_CHECKING:
    from cnetd.cluster.runtime import ClusterNode

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between two looks at the cluster when nothing wakes the loop earlier
PULL_RETRY_START = 2.0  # after a failed pull, doubling ...
PULL_RETRY_MAX = 30.0  # ... up to this
REFUSAL_MAX = 300  # characters of a refusal kept in the record


def source_of(model: Model) -> ModelSource:
    """What another node needs to serve this model as its origin deployed it."""
    task, r = model.task, model.task.resources
    return ModelSource(
        model_type=model.record.model_type[:64], model_path=model.record.model_path, script_path=model.record.script_path,
        command=task.command, env=dict(task.env), working_dir=task.working_dir,
        cpu_limit=r.cpu_limit, memory_limit=r.memory_limit, disk_limit=r.disk_limit, gpu_limit=r.gpu_limit,
        gpu_memory=r.gpu_memory,
    )


def settings_of(spec: ServingSpec) -> dict[str, object]:
    # The count is the placement's (a node's share): the autoscaler's range stays with the origin.
    return {k: v for k, v in spec.to_json().items() if k not in ("replicas", "min_replicas", "max_replicas")}


def newer(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Of two versions of a name, (created_at, model_id), whether a is the newer."""
    return a > b


def _replace(record: ServedModel, **changes: object) -> ServedModel:
    return msgspec.structs.replace(record, **changes)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class ReplicaPlacer:
    """Decides again where every served model's replicas go and writes what changed, each
    record with a compare on the revision it was decided from. The scheduler calls place_all
    while it leads; until then the lowest online node does."""

    def __init__(self, desired: DesiredServing, node_id: str) -> None:
        self.desired = desired
        self.node_id = node_id

    async def place_all(self, nodes: Sequence[NodeState], lost: set[str],
                        served: Sequence[Versioned] | None = None) -> list[ServedModel]:
        """Decide every record again (those given, as followed; else as listed now) and write
        what changed. The records written (an empty list: nothing needed a change)."""
        written = []
        for current in served if served is not None else await self.desired.list():
            new = plan_replicas(current.record, nodes, lost)
            if new is None:
                continue
            new = _replace(new, updated_at=utc_now(), updated_by=self.node_id)
            if await self.desired.put_if(new, current.mod_revision):
                log.info("cluster: replicas of model %s (%s) placed: %s (was %s)", new.name, new.model_id,
                         _placements(new), _placements(current.record))
                written.append(new)
        return written


def _placements(record: ServedModel) -> str:
    return ", ".join(f"{node} x{count}" for node, count in record.placements.items()) or "nowhere"


class ModelFailover:
    def __init__(self, cluster: ClusterNode, catalog: ModelCatalog, serving: ServingManager, copies: ModelCopies,
                 model_roots: Sequence[Path], grace: float | None = None) -> None:
        self.cluster = cluster
        self.node_id = cluster.identity.node_id
        self.catalog = catalog
        self.serving = serving
        self.copies = copies
        self.model_roots = list(model_roots)
        self._wake = asyncio.Event()
        self.grace = 2.0 * cluster.settings.lease_ttl if grace is None else grace
        prefix = cluster.settings.prefix
        self.artifacts = ArtifactFiles(self.model_roots)
        self.puller = ArtifactPuller(cluster.peers)
        self.desired = DesiredServing(cluster.etcd, prefix)
        self.served = ServedCache(self.desired, on_change=self._wake_up)
        self.endpoints = EndpointTable(cluster.etcd, prefix, self.node_id)
        self.placer = ReplicaPlacer(self.desired, self.node_id)
        self.places: Callable[[], bool] | None = None  # set by the scheduler: True while it leads
        self.publisher = EndpointPublisher(cluster.etcd, prefix, self.node_id, cluster.url,
                                           lambda: cluster.membership.lease_id, serving, self._sha256_of)
        self._pending: dict[str, int | None] = {}  # model id -> replicas asked for (None: not said)
        self._offline_since: dict[str, float] = {}  # node id -> when this node first saw it offline
        self._pulls: dict[str, asyncio.Task[None]] = {}  # model id -> its copy being pulled
        self._pull_retry: dict[str, tuple[float, float]] = {}  # model id -> (not before, next pause)
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._warned: set[tuple[str, str]] = set()
        serving.on_change(self._serving_changed)
        cluster.membership.on_registered(lambda _lease, _revision: self._rejoined())

    async def start(self) -> None:
        await self.publisher.start()
        await self.served.start()
        self._task = asyncio.create_task(self._run(), name="cluster-failover")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, *self._pulls.values())
        await self.served.stop()
        await self.publisher.stop()

    def _wake_up(self) -> None:
        self._wake.set()

    # --- the loop --------------------------------------------------------------------------

    def _serving_changed(self, model_id: str, replicas: int | None) -> None:
        previous = self._pending.get(model_id)
        self._pending[model_id] = replicas if replicas is not None else previous
        self._wake.set()
        self.publisher.changed()

    def _rejoined(self) -> None:
        self.publisher.rejoined()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, TICK)
            self._wake.clear()
            try:
                await self._publish_pending()
                await self.tick()
                if self._failing:
                    log.info("cluster: failover of served models is on again")
                self._failing = False
            except (EtcdError, ClusterUnavailable, ServedRaced) as exc:
                if not self._failing:
                    log.warning("cluster: failover of served models waits for etcd: %s", _one_line(exc))
                self._failing = True

    async def _publish_pending(self) -> None:
        for model_id, replicas in list(self._pending.items()):
            await self.publish_desired(model_id, replicas)
            if self._pending.get(model_id) == replicas:
                del self._pending[model_id]

    async def tick(self) -> None:
        """One look: steps 3 to 5 of the module's list (and 1 for models whose record is
        missing or stale). Only the node that places reads the node directory; the others
        read nothing from etcd here (the records are followed by a watch)."""
        if not self.served.following:
            return  # what etcd holds is not known now: change nothing
        followed = list(self.served.records.values())
        records = [v.record for v in followed]
        await self._publish_unpublished(records)
        if self.places is not None and not self.places():
            self._offline_since.clear()  # a placer that takes over starts its own clock
        else:
            nodes = [NodeState(e.node_id, e.status == "online", e.record.free, e.record.capacity)
                     for e in await self.cluster.directory.list()]
            lost = self.observe(nodes)
            if self.places is not None or acting_node(nodes) == self.node_id:
                written = {r.name: r for r in await self.placer.place_all(nodes, lost, followed)}
                records = [written.get(r.name, r) for r in records]
        for record in records:
            try:
                await self.reconcile(record)
            except DomainError as exc:
                problem = (record.model_id, exc.message)
                if problem not in self._warned:  # once, not every second
                    self._warned.add(problem)
                    log.warning("cluster: serving of model %s here cannot follow its desired state: %s",
                                record.name, exc.message)

    def observe(self, nodes: Sequence[NodeState]) -> set[str]:
        """The nodes lost: offline for longer than the grace, by this node's clock."""
        now = time.monotonic()
        known = {n.node_id for n in nodes}
        for node in nodes:
            if node.online:
                self._offline_since.pop(node.node_id, None)
            else:
                self._offline_since.setdefault(node.node_id, now)
        for node_id in [n for n in self._offline_since if n not in known]:
            del self._offline_since[node_id]
        return {n for n, since in self._offline_since.items() if now - since >= self.grace}

    # --- 1. what this node tells the cluster -----------------------------------------------

    async def _sha256_of(self, served: Served) -> str:
        try:
            return (await self.artifacts.digest(self.catalog.artifact_file(served.model))).sha256
        except (OSError, ModelDirError):
            return ""

    async def _publish_unpublished(self, records: Sequence[ServedModel]) -> None:
        """Models trained here and served here whose record is missing, names an older
        version, or another file than this node's (it was trained again): published again."""
        by_name = {r.name: r for r in records}
        for served in self.serving.all_served():
            if is_copy(served.model) or served.id in self._pending or self.serving.find(served.name) is not served:
                continue
            record = by_name.get(served.name)
            mine = (served.model.record.created_at, served.id)
            if record is None or (record.model_id != served.id and newer(mine, (record.created_at, record.model_id))):
                self._serving_changed(served.id, None)
            elif record.model_id == served.id and record.state == "serving":
                sha = await self._sha256_of(served)
                if sha and sha != record.sha256:
                    log.info("cluster: the file of model %s changed here: publishing it for the other nodes", served.name)
                    self._serving_changed(served.id, None)

    async def publish_desired(self, model_id: str, replicas: int | None = None) -> ServedModel | None:
        """Write this model's desired state to etcd after serving of it started, changed or
        stopped here by a user's call (or once training completed): the cluster then keeps
        it served, or stops it everywhere. replicas: the total a caller asked for."""
        model = await self.catalog.find(model_id)
        if model is None or not MODEL_NAME_PATTERN.match(model.record.name):
            return None
        name, served = model.record.name, self.serving.served(model_id)
        now = utc_now()
        if served is None:
            def stopped(old: ServedModel | None) -> ServedModel | None:
                if old is None or old.model_id != model_id or old.state == "stopped":
                    return None
                return _replace(old, state="stopped", updated_at=now, updated_by=self.node_id)

            return await self.desired.update(name, stopped)
        try:
            artifact = await self.artifacts.digest(self.catalog.artifact_file(model))
        except (OSError, ModelDirError) as exc:
            log.warning("cluster: model %s (%s) is served here but its file cannot be read for other nodes: %s",
                        name, model_id, exc)
            return None
        return await self.desired.update(name, lambda old: self._served_record(old, model, served, artifact,
                                                                              replicas, now))

    def _served_record(self, old: ServedModel | None, model: Model, served: Served, artifact: Artifact,
                       replicas: int | None, now: str) -> ServedModel | None:
        version = (model.record.created_at, model.record.id)
        if old is not None and old.model_id != model.record.id and old.state == "serving" \
                and newer((old.created_at, old.model_id), version):
            return None  # a newer version of this name is served: that one is kept served
        same_model = old is not None and old.model_id == model.record.id
        same_file = same_model and old is not None and old.sha256 == artifact.sha256
        live = same_model and old is not None and old.state == "serving"
        total = replicas if replicas is not None else (old.replicas if live and old is not None else served.spec.replicas)
        placements = dict(old.placements) if live and old is not None else {}
        placements.setdefault(self.node_id, served.spec.replicas)
        if is_copy(model) and not same_model:
            return None  # a copy is published only as a change to its model's record
        holders = list(old.holders) if same_file and old is not None else []
        if self.node_id not in holders:
            holders.insert(0, self.node_id)
        origin = old.origin if same_model and old is not None else self.node_id
        return ServedModel(
            name=model.record.name, model_id=model.record.id, sha256=artifact.sha256, size=artifact.size,
            state="serving", replicas=max(1, min(64, total)), settings=settings_of(served.spec),
            placements=placements, holders=holders, refused=dict(old.refused) if same_file and old is not None else {},
            origin=origin, source=old.source if is_copy(model) and old is not None else source_of(model),
            created_at=model.record.created_at, updated_at=now, updated_by=self.node_id,
        )

    # --- 5. this node's serving, as the placements say ---------------------------------------

    async def reconcile(self, record: ServedModel) -> None:
        model_id = record.model_id
        if model_id in self._pending:
            return  # this node's own change goes to etcd first
        share = record.placements.get(self.node_id, 0) if record.state == "serving" else 0
        served = self.serving.served(model_id)
        if share <= 0 or self.node_id in record.refused:
            if served is not None:
                why = (f"serving was stopped on node {record.updated_by}" if record.state == "stopped"
                       else f"the cluster serves it on {_placements(record)}")
                log.info("cluster: no longer serving model %s here: %s", record.name, why)
                await self.serving.unserve(model_id, notify=False, reason=why)
            return
        local = await self.catalog.find(model_id)
        if local is None or (is_copy(local) and not await self._holds(local, record)):
            self._pull(record)  # a copy of another version serves on until the new file is in place
            if local is None:
                return
        await self._serve_share(model_id, record, share, served)

    async def _holds(self, model: Model, record: ServedModel) -> bool:
        try:
            return (await self.artifacts.digest(self.catalog.artifact_file(model))).sha256 == record.sha256
        except (OSError, ModelDirError):
            return False

    async def _serve_share(self, model_id: str, record: ServedModel, share: int, served: Served | None) -> None:
        if served is not None and served.spec.replicas == share and settings_of(served.spec) == record.settings:
            return
        log.info("cluster: serving model %s here with %d replica(s) (%s)", record.name, share, _placements(record))
        await self.serving.serve(model_id, {**record.settings, "replicas": share}, notify=False)

    def _pull(self, record: ServedModel) -> None:
        """Start fetching the model's file, unless a fetch runs or failed a moment ago."""
        running = self._pulls.get(record.model_id)
        if running is not None and not running.done():
            return
        not_before, _ = self._pull_retry.get(record.model_id, (0.0, PULL_RETRY_START))
        if time.monotonic() < not_before:
            return
        self._pulls[record.model_id] = asyncio.create_task(self._fetch(record), name=f"cluster-pull-{record.model_id}")

    async def _fetch(self, record: ServedModel) -> None:
        try:
            online = {e.node_id for e in await self.cluster.directory.list() if e.status == "online"}
            sources = [h for h in record.holders if h != self.node_id and h in online]
            await self._fetch_once(record, sources)
        except (EtcdError, ClusterUnavailable, ServedRaced) as exc:
            self._retry_later(record, f"etcd: {_one_line(exc)}")
        except Exception:
            log.exception("cluster: copying model %s failed", record.name)
            self._retry_later(record, "an unexpected error (logged)")

    async def _fetch_once(self, record: ServedModel, sources: list[str]) -> None:
        try:
            plan = await self.copies.plan(record)
        except NotHere as exc:
            await self._refuse(record, str(exc))
            return
        if not sources:
            self._retry_later(record, "no online node holds its file")
            return
        problems = []
        for source in sources:
            writer = ModelFileWriter(plan.file.parent, plan.file.name, self.model_roots, plan.uid, plan.gid, record.size)
            try:
                await self.puller.pull(source, record.model_id, Artifact(record.sha256, record.size), writer)
            except CannotWrite as exc:
                await self._refuse(record, str(exc))
                return
            except ArtifactRefused as exc:
                problems.append(f"from {source}: {exc}")
                continue
            await self.copies.keep(record, plan, source)
            log.info("cluster: model %s (%s) copied from node %s (%d bytes, sha256 %s)", record.name, record.model_id,
                     source, record.size, record.sha256)
            self._pull_retry.pop(record.model_id, None)
            await self.desired.update(record.name, lambda old: self._with_holder(old, record))
            self._wake.set()
            return
        self._retry_later(record, "; ".join(problems))

    def _retry_later(self, record: ServedModel, why: str) -> None:
        _, pause = self._pull_retry.get(record.model_id, (0.0, PULL_RETRY_START))
        self._pull_retry[record.model_id] = (time.monotonic() + pause, min(pause * 2, PULL_RETRY_MAX))
        log.warning("cluster: cannot copy model %s (%s) here yet: %s; trying again in %.0fs", record.name,
                    record.model_id, why, pause)

    def _with_holder(self, old: ServedModel | None, record: ServedModel) -> ServedModel | None:
        if old is None or old.model_id != record.model_id or old.sha256 != record.sha256 or self.node_id in old.holders:
            return None
        return _replace(old, holders=[*old.holders, self.node_id], updated_at=utc_now(), updated_by=self.node_id)

    async def _refuse(self, record: ServedModel, why: str) -> None:
        log.warning("cluster: this node cannot hold model %s (%s): %s", record.name, record.model_id, why)

        def refused(old: ServedModel | None) -> ServedModel | None:
            if old is None or old.model_id != record.model_id or self.node_id in old.refused:
                return None
            return _replace(old, refused={**old.refused, self.node_id: why[:REFUSAL_MAX]}, updated_at=utc_now(),
                            updated_by=self.node_id)

        await self.desired.update(record.name, refused)
        self._wake.set()
