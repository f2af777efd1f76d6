"""Failover of served models: what one agent of a cluster does so that no single node's
death loses a served model or stops its serving.

Built by the composition root when the config has a cluster section, held by ClusterNode
(`cluster.failover`) and started and stopped with it.

    failover.artifacts   # ArtifactFiles: this node's model files, for GET /api/cluster/artifacts/{id}
    failover.puller      # ArtifactPuller: fetch a model file from a node that has it
    failover.desired     # DesiredServing: <prefix>/served/<name>, each served model's desired state
    failover.endpoints   # EndpointTable: which other nodes have ready replicas of a name (V2 forwarding)

This node publishes, for each model it serves, the model's desired state when serving starts
or changes by a user's call or once training completes (publish_desired), and its ready
replicas as endpoints on its lease (EndpointPublisher).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.cluster.artifacts import Artifact, ArtifactFiles, ArtifactPuller
from cnetd.cluster.endpoints import EndpointPublisher, EndpointTable
from cnetd.cluster.etcd import EtcdError
from cnetd.cluster.records import MODEL_NAME_PATTERN, ModelSource, ServedModel
from cnetd.cluster.served import DesiredServing, ServedRaced
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.served import Served
from cnetd.security.modeldirs import ModelDirError

if TYPE_CHECKING:
    from cnetd.cluster.runtime import ClusterNode

log = logging.getLogger(__name__)

RETRY_PAUSE = 1.0  # after a publication etcd did not take


def source_of(model: Model) -> ModelSource:
    """What another node needs to serve this model as its origin deployed it."""
    task, r = model.task, model.task.resources
    return ModelSource(
        model_type=model.record.model_type[:64], model_path=model.record.model_path, script_path=model.record.script_path,
        command=task.command, env=dict(task.env), working_dir=task.working_dir,
        cpu_limit=r.cpu_limit, memory_limit=r.memory_limit, disk_limit=r.disk_limit, gpu_limit=r.gpu_limit,
    )


def settings_of(served: Served) -> dict[str, object]:
    return {k: v for k, v in served.spec.to_json().items() if k != "replicas"}


def newer(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Of two versions of a name, (created_at, model_id), whether a is the newer."""
    return a > b


class ModelFailover:
    def __init__(self, cluster: ClusterNode, catalog: ModelCatalog, serving: ServingManager,
                 model_roots: Sequence[Path]) -> None:
        self.cluster = cluster
        self.node_id = cluster.identity.node_id
        self.catalog = catalog
        self.serving = serving
        self.model_roots = list(model_roots)
        prefix = cluster.settings.prefix
        self.artifacts = ArtifactFiles(self.model_roots)
        self.puller = ArtifactPuller(cluster.peers)
        self.desired = DesiredServing(cluster.etcd, prefix)
        self.endpoints = EndpointTable(cluster.etcd, prefix, self.node_id)
        self.publisher = EndpointPublisher(cluster.etcd, prefix, self.node_id, cluster.url,
                                           lambda: cluster.membership.lease_id, serving, self._sha256_of)
        self._pending: dict[str, int | None] = {}  # model id -> replicas asked for (None: not said)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        serving.on_change(self._serving_changed)
        cluster.membership.on_registered(lambda _lease, _revision: self._rejoined())

    async def start(self) -> None:
        await self.publisher.start()
        self._task = asyncio.create_task(self._run(), name="cluster-failover")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.publisher.stop()

    # --- what this node tells the cluster ----------------------------------------------------

    def _serving_changed(self, model_id: str, replicas: int | None) -> None:
        previous = self._pending.get(model_id)
        self._pending[model_id] = replicas if replicas is not None else previous
        self._wake.set()
        self.publisher.changed()

    def _rejoined(self) -> None:
        self.publisher.rejoined()
        self._wake.set()

    async def _sha256_of(self, served: Served) -> str:
        try:
            return (await self.artifacts.digest(self.catalog.model_file(served.model))).sha256
        except (OSError, ModelDirError):
            return ""

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, None if not self._pending else RETRY_PAUSE)
            self._wake.clear()
            for model_id, replicas in list(self._pending.items()):
                try:
                    await self.publish_desired(model_id, replicas)
                except (EtcdError, ServedRaced) as exc:
                    log.warning("cluster: the desired serving of model %s is not published yet (%s); retrying",
                                model_id, " ".join(str(exc).split()))
                    continue
                if self._pending.get(model_id) == replicas:
                    del self._pending[model_id]

    async def publish_desired(self, model_id: str, replicas: int | None = None) -> ServedModel | None:
        """Write this model's desired serving to etcd after serving of it started, changed or
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
            artifact = await self.artifacts.digest(self.catalog.model_file(model))
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
        same = old is not None and old.model_id == model.record.id and old.sha256 == artifact.sha256
        live = same and old is not None and old.state == "serving"
        total = replicas if replicas is not None else (old.replicas if live and old is not None else served.spec.replicas)
        placements = dict(old.placements) if live and old is not None else {}
        placements.setdefault(self.node_id, served.spec.replicas)
        holders = list(old.holders) if same and old is not None else []
        if self.node_id not in holders:
            holders.append(self.node_id)
        return ServedModel(
            name=model.record.name, model_id=model.record.id, sha256=artifact.sha256, size=artifact.size,
            state="serving", replicas=max(1, min(64, total)), settings=settings_of(served), placements=placements,
            holders=holders, origin=old.origin if same and old is not None else self.node_id, source=source_of(model),
            created_at=model.record.created_at, updated_at=now, updated_by=self.node_id,
        )


def _replace(record: ServedModel, **changes: object) -> ServedModel:
    return msgspec.structs.replace(record, **changes)
