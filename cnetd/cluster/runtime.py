"""ClusterNode: the cluster half of one agent, built when the config has a cluster section
and alive between start() and stop() (one cleanup_ctx in app.py).

It owns the etcd client and, on it, this node's Membership (its record on a lease), the
NodeDirectory (every node, for listings and for resolving node ids to URLs) and the
PeerCaller (calls to other agents, with the cluster token), and the StatusMirror (this
node's task summaries, for the cluster-wide view). It tells the membership when
this node's allocation changes (a task was created, started or ended: the task bus), and
describes this node for its record: capacity from the resource sampler, free = capacity
less the limits of the tasks that have not ended (cluster.describe).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import yarl

from cnetd.background import cancel_and_wait
from cnetd.cluster.assignments import AssignmentWatcher
from cnetd.cluster.describe import NodeDescriber
from cnetd.cluster.directory import NodeDirectory, NodeEntry
from cnetd.cluster.election import Election, Leader
from cnetd.cluster.etcd import EtcdClient, EtcdOptions, Lease
from cnetd.cluster.failover import ModelFailover
from cnetd.cluster.membership import Membership
from cnetd.cluster.mirror import StatusMirror
from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.placing import Placing
from cnetd.cluster.scheduler import Scheduler
from cnetd.cluster.view import ClusterView
from cnetd.config import ClusterSection, Config
from cnetd.ml.service import ModelService
from cnetd.security.auth import is_loopback
from cnetd.security.cluster_token import ClusterToken
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

MAX_CALL_SECONDS = 2.0  # one etcd call, every endpoint tried included


def etcd_options(cluster: ClusterSection) -> EtcdOptions:
    """Per-call time bounded by a third of the TTL: a keepalive that fails leaves time for
    two more before the lease can lapse."""
    etcd = cluster.etcd
    return EtcdOptions(
        endpoints=etcd.endpoints, username=etcd.username, password=etcd.password,
        ca_file=None if etcd.ca_file is None else str(etcd.ca_file),
        cert_file=None if etcd.cert_file is None else str(etcd.cert_file),
        key_file=None if etcd.key_file is None else str(etcd.key_file),
        timeout=min(MAX_CALL_SECONDS, cluster.lease_ttl / 3),
    )


class ClusterNode:
    def __init__(self, config: Config, cluster: ClusterSection, describe: NodeDescriber, tasks: TaskService,
                 models: ModelService) -> None:
        self.settings = cluster
        self.identity = describe.identity
        self.url = describe.url
        self.describe = describe
        self._tasks = tasks
        self.etcd = EtcdClient(etcd_options(cluster))
        self.token = ClusterToken(cluster.token)
        self.directory = NodeDirectory(self.etcd, cluster.prefix)
        self.membership = Membership(self.etcd, self.identity.node_id, cluster.prefix, cluster.lease_ttl, describe)
        self.peers = PeerCaller(self.identity.node_id, self.directory, self.token, config.ml.timeout,
                                config.serving.max_request_bytes)  # a V2 infer's answer may be as large as its request
        self.view = ClusterView(self.etcd, cluster.prefix, self.directory)
        serving = models.serving
        self.mirror = StatusMirror(self.etcd, cluster.prefix, self.identity.node_id, tasks,
                                   serving_state=lambda task_id: "serving" if serving.served(task_id) else None)
        serving.on_change(lambda model_id, _replicas: self.mirror.changed(model_id))
        self.election = Election(self.etcd, cluster.prefix, self.identity.node_id, self.url,
                                 lease=lambda: self.membership.lease_id, on_change=self._leadership_changed)
        self.scheduler = Scheduler(self.etcd, cluster.prefix, self.identity.node_id, self.election, cluster.scheduler)
        self.placing = Placing(self.etcd, cluster.prefix, self.identity.node_id, self.election, self.scheduler,
                               self.peers, tasks, models, config.ml.resource_limits)
        self.assignments = AssignmentWatcher(
            self.etcd, cluster.prefix, self.identity.node_id, registration=lambda: self.membership.node_revision,
            create=self.placing.create_assigned, on_applied=lambda _revision: self.membership.allocation_changed())
        describe.applied_revision = lambda: self.assignments.applied_revision
        self.membership.on_registered(self._registered)
        self._leadership_flip = asyncio.Event()  # the election changed its mind
        self._watcher: asyncio.Task[None] | None = None
        self._scheduling: asyncio.Task[None] | None = None
        self.failover: ModelFailover | None = None  # set by the composition root (it needs the ML parts)

    def _registered(self, _lease: Lease, _revision: int) -> None:
        """A (re)join: campaign on the new lease, take the assignments of the new registration,
        write the cluster view of this node again."""
        self.election.poke()
        self.assignments.poke()
        self.mirror.rejoined()

    def _leadership_changed(self, _leader: Leader | None, _is_leader: bool) -> None:
        self._leadership_flip.set()

    async def _schedule_while_leading(self) -> None:
        """Only the scheduler follows every node's record (a watch on nodes/): the cost of
        that watch is paid once in the cluster, not once per agent."""
        running = False
        try:
            while True:
                await self._leadership_flip.wait()
                self._leadership_flip.clear()
                if self.election.is_leader and not running:
                    await self.scheduler.start()
                    running = True
                    log.info("cluster: this agent is the scheduler (epoch %d)", self.election.epoch)
                elif not self.election.is_leader and running:
                    await self.scheduler.close()
                    running = False
                    log.info("cluster: this agent is no longer the scheduler")
        finally:
            if running:
                await self.scheduler.close()

    async def start(self) -> None:
        """Returns at once: joining happens in the background, and an etcd that does not
        answer never holds up (or stops) the agent."""
        await self.peers.start()
        await self.membership.start()
        await self.mirror.start()
        await self.assignments.start()
        await self.election.start()
        self._scheduling = asyncio.create_task(self._schedule_while_leading(), name="cluster-scheduling")
        if self.failover is not None:
            await self.failover.start()
        self._watcher = asyncio.create_task(self._watch_allocation(), name="cluster-allocation")
        log.info("cluster: joining through etcd %s under %s as %s (%s), lease TTL %ds",
                 ", ".join(self.settings.etcd.endpoints), self.settings.prefix, self.identity.node_id, self.url,
                 self.settings.lease_ttl)
        if is_loopback(yarl.URL(self.url).host or ""):
            log.warning("cluster: this node's address %s is a loopback address: agents on other hosts cannot "
                        "reach it (set agent.advertise_url)", self.url)

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
        await self.election.close()  # a successor takes over at once, not after our lease's TTL
        await cancel_and_wait(self._scheduling)
        await self.assignments.close()
        if self.failover is not None:
            await self.failover.stop()
        await self.mirror.stop()
        await self.membership.stop()
        await self.peers.stop()
        await self.etcd.close()

    async def _watch_allocation(self) -> None:
        """Every task created, started or ended changes what this node has free."""
        while True:
            changes = self._tasks.bus.subscribe()
            try:
                while (change := await changes.get()) is not None:
                    if change.kind == "status":
                        self.membership.allocation_changed()
            finally:
                self._tasks.bus.unsubscribe(changes)
            self.membership.allocation_changed()  # dropped as a slow reader: changes were missed

    def forget(self, task_ids: list[str]) -> None:
        """Retention deleted these tasks here: their summaries go from the cluster view too."""
        self.mirror.forget(task_ids)

    # --- what the API and the UI show ------------------------------------------------------

    @property
    def health(self) -> str:
        return "ok" if self.membership.online else "degraded"

    def node_json(self, entry: NodeEntry) -> dict[str, Any]:
        """A node as the API (and the UI) shows it, with whether it is the elected scheduler."""
        leader = self.election.leader
        return {**entry.to_json(), "scheduler": leader is not None and entry.node_id == leader.node_id}

    async def nodes_json(self) -> list[dict[str, Any]]:
        """Every node of the cluster, online first, as GET /api/nodes lists them (and the UI
        shows them); raises ClusterUnavailable when etcd does not answer."""
        return [self.node_json(entry) for entry in await self.directory.list()]

    def status_json(self) -> dict[str, Any]:
        """This node's membership, as /api/node shows it."""
        return {
            "health": self.health,
            **self.membership.status.to_json(),
            "endpoints": list(self.settings.etcd.endpoints),
            "prefix": self.settings.prefix,
            "lease_ttl": self.settings.lease_ttl,
            "scheduler_strategy": self.settings.scheduler,
            "advertise_url": self.url,
        }
