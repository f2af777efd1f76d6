"""A node as membership will keep it in etcd, without an agent: a lease with keepalives and
the node's record on it. Tests of the scheduler and the election use it as the stand-in for
the membership module (built separately); it writes the same keys, through the same client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from cnetd.background import cancel_and_wait
from cnetd.cluster.etcd import EtcdClient, EtcdError, LeaseLost
from cnetd.cluster.records import NodeRecord, Resources, encode, node_key

log = logging.getLogger(__name__)

GB = 10**9


class SimNode:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, *, ttl: int = 2, cpu: float = 4,
                 memory: int = 8 * GB, disk: int = 100 * GB, gpus: int = 0, labels: dict[str, str] | None = None,
                 free: Resources | None = None, with_record: bool = True) -> None:
        """with_record=False: a lease only (an agent that campaigns but is not a node to place on)."""
        self.etcd = etcd
        self.prefix = prefix
        self.node_id = node_id
        self.ttl = ttl
        capacity = Resources(cpu=cpu, memory=memory, disk=disk, gpus=gpus)
        self.record = NodeRecord(node_id=node_id, name=node_id, advertise_url=f"http://{node_id}.test:8080",
                                 labels=labels or {}, capacity=capacity, free=free or capacity)
        self.lease_id = 0
        self.registration = 0  # create_revision of our node key
        self.with_record = with_record
        self._keepalive: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return node_key(self.prefix, self.node_id)

    async def register(self) -> SimNode:
        """A new lease and the node key on it (a new registration)."""
        lease = await self.etcd.grant(self.ttl)
        self.lease_id = lease.id
        if self.with_record:
            await self.etcd.put(self.key, encode(self.record), lease=lease.id)
            found = await self.etcd.get(self.key)
            assert found is not None
            self.registration = found.create_revision
        if self._keepalive is None:
            self._keepalive = asyncio.create_task(self._keep())
        return self

    async def publish(self, free: Resources | None = None, applied_revision: int | None = None) -> None:
        """Rewrite the record on the same lease (same registration)."""
        changes: dict[str, object] = {}
        if free is not None:
            changes["free"] = free
        if applied_revision is not None:
            changes["applied_revision"] = applied_revision
        self.record = msgspec.structs.replace(self.record, **changes)
        await self.etcd.put(self.key, encode(self.record), lease=self.lease_id)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 4)
            try:
                await self.etcd.keepalive(self.lease_id)
            except LeaseLost:
                pass  # the test revoked it on purpose; it registers again when it wants
            except EtcdError as err:
                log.info("sim node %s keepalive: %s", self.node_id, err)

    async def stop_keepalive(self) -> None:
        await cancel_and_wait(self._keepalive)
        self._keepalive = None

    async def revoke(self) -> None:
        await self.etcd.revoke(self.lease_id)

    async def close(self) -> None:
        await self.stop_keepalive()
        with contextlib.suppress(EtcdError):
            await self.etcd.revoke(self.lease_id)
