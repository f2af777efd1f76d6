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
from cnetd.cluster.describe import NodeDescriber
from cnetd.cluster.directory import NodeDirectory
from cnetd.cluster.etcd import EtcdClient, EtcdOptions
from cnetd.cluster.membership import Membership
from cnetd.cluster.mirror import StatusMirror
from cnetd.cluster.peers import PeerCaller
from cnetd.cluster.view import ClusterView
from cnetd.config import ClusterSection, Config
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
    def __init__(self, config: Config, cluster: ClusterSection, describe: NodeDescriber, tasks: TaskService) -> None:
        self.settings = cluster
        self.identity = describe.identity
        self.url = describe.url
        self.describe = describe
        self._tasks = tasks
        self.etcd = EtcdClient(etcd_options(cluster))
        self.token = ClusterToken(cluster.token)
        self.directory = NodeDirectory(self.etcd, cluster.prefix)
        self.membership = Membership(self.etcd, self.identity.node_id, cluster.prefix, cluster.lease_ttl, describe)
        self.peers = PeerCaller(self.identity.node_id, self.directory, self.token, config.ml.timeout)
        self.view = ClusterView(self.etcd, cluster.prefix, self.directory)
        self.mirror = StatusMirror(self.etcd, cluster.prefix, self.identity.node_id, tasks)
        self.membership.on_registered(lambda _lease, _revision: self.mirror.rejoined())
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Returns at once: joining happens in the background, and an etcd that does not
        answer never holds up (or stops) the agent."""
        await self.peers.start()
        await self.membership.start()
        await self.mirror.start()
        self._watcher = asyncio.create_task(self._watch_allocation(), name="cluster-allocation")
        log.info("cluster: joining through etcd %s under %s as %s (%s), lease TTL %ds",
                 ", ".join(self.settings.etcd.endpoints), self.settings.prefix, self.identity.node_id, self.url,
                 self.settings.lease_ttl)
        if is_loopback(yarl.URL(self.url).host or ""):
            log.warning("cluster: this node's address %s is a loopback address: agents on other hosts cannot "
                        "reach it (set agent.advertise_url)", self.url)

    async def stop(self) -> None:
        await cancel_and_wait(self._watcher)
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
