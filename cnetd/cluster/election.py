"""Scheduler election: at most one agent at a time places work.

Each agent campaigns with a create-if-absent txn on `<prefix>/scheduler`, putting its
SchedulerRecord on its membership lease. The one whose txn succeeds is the scheduler; its
epoch is the key's create_revision, which every placement it writes is fenced on (see
scheduler.py). The others learn the leader from the failed txn's read and watch the key;
when it is deleted (the leader stepped down, or its lease expired with it) they campaign
again at once.

    election = Election(etcd, "/cnet", node_id, advertise_url, lambda: membership.lease_id)
    await election.start()
    election.is_leader, election.epoch, election.leader   # Leader(node_id, advertise_url, epoch, since) | None
    election.poke()                                         # a new lease: campaign again now
    await election.close()                                  # steps down: the key is deleted if ours

The lease belongs to membership: when it is lost, membership registers with a new one and
pokes the election, which campaigns again with whatever `lease()` returns then. The
election never revokes the lease; stepping down deletes only the key, and only while it
still holds our epoch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.cluster.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRequestError,
    Get,
    KeyValue,
    Put,
    RangeResult,
    Watch,
    WatchCompacted,
)
from cnetd.cluster.records import SchedulerRecord, decode, encode, scheduler_key

log = logging.getLogger(__name__)

LEASE_NOT_FOUND = "etcdserver: requested lease not found"


@dataclass(frozen=True)
class Leader:
    """The scheduler as last seen: where to send a placement request."""

    node_id: str
    advertise_url: str
    epoch: int  # the scheduler key's create_revision
    since: str

    @classmethod
    def of(cls, kv: KeyValue) -> Leader:
        record = decode(kv.value, SchedulerRecord)
        return cls(record.node_id, record.advertise_url, kv.create_revision, record.since)


class Election:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, advertise_url: str,
                 lease: Callable[[], int], *, retry: float = 1.0,
                 on_change: Callable[[Leader | None, bool], None] | None = None) -> None:
        """lease(): the membership lease id now (0 while there is none). retry: seconds
        between attempts while etcd is unreachable or no lease is held. on_change(leader,
        is_leader): called whenever either changes."""
        self._etcd = etcd
        self._key = scheduler_key(prefix)
        self.node_id = node_id
        self.advertise_url = advertise_url
        self._lease = lease
        self._retry = retry
        self._on_change = on_change
        self._leader: Leader | None = None
        self._is_leader = False
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    @property
    def epoch(self) -> int:
        """Our epoch while we are the scheduler, else 0."""
        return self._leader.epoch if self._is_leader and self._leader is not None else 0

    @property
    def leader(self) -> Leader | None:
        """The scheduler as last seen (this agent included); None while none is known."""
        return self._leader

    def poke(self) -> None:
        """Look again now (e.g. membership has a new lease) instead of at the next retry."""
        self._wake.set()

    def deposed(self, epoch: int) -> None:
        """A fenced write found the key no longer at `epoch`: stop believing we lead, look again."""
        if self._is_leader and self.epoch == epoch:
            log.warning("scheduler epoch %d was fenced off: another agent holds %s", epoch, self._key)
            self._set(self._leader, False)
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name=f"election {self._key}")

    async def close(self, resign: bool = True) -> None:
        """Stop campaigning; with resign, delete the key while it still holds our epoch, so
        that another agent takes over at once instead of after our lease's TTL."""
        if self._task is not None:
            self._closing = True  # the loop also ends by itself once woken
            self._wake.set()
            await cancel_and_wait(self._task)
            self._task = None
        epoch = self.epoch
        self._set(self._leader, False)
        if resign and epoch:
            try:
                stepped = await self._etcd.txn([Compare.create_revision(self._key, "==", epoch)], [Delete(self._key)])
            except EtcdError as err:
                log.warning("could not step down as scheduler (epoch %d): %s", epoch, err)
                return
            if stepped.succeeded:
                log.info("stepped down as scheduler (epoch %d)", epoch)
                self._set(None, False)

    # --- the campaign ------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._campaign()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                continue  # read the key again, at once
            except EtcdError as err:
                log.warning("scheduler election: %s; trying again in %gs", err, self._retry)
                await self._pause()
            except Exception:
                log.exception("scheduler election failed; trying again in %gs", self._retry)
                await self._pause()

    async def _campaign(self) -> None:
        """One round: take the key or learn who holds it, then wait until that changes."""
        self._wake.clear()
        lease = self._lease()
        if not lease:
            self._set(self._leader, False)
            await self._pause()
            return
        record = SchedulerRecord(node_id=self.node_id, advertise_url=self.advertise_url, since=utc_now())
        try:
            answer = await self._etcd.txn([Compare.absent(self._key)], [Put(self._key, encode(record), lease=lease)],
                                          [Get(self._key)])
        except EtcdOutcomeUnknown:
            found = await self._etcd.range(self._key)  # did it land? the lease tells
            holder, revision = (found.kvs[0] if found.kvs else None), found.revision
        except EtcdRequestError as err:
            if err.message != LEASE_NOT_FOUND:
                raise
            log.info("scheduler election: lease %x is gone; waiting for a new one", lease)
            self._set(self._leader, False)
            await self._pause()
            return
        else:
            revision = answer.revision
            if answer.succeeded:
                holder = KeyValue(self._key.encode(), encode(record), revision, revision, 1, lease)
            else:
                read = answer.responses[0]
                assert isinstance(read, RangeResult)
                holder = read.kvs[0] if read.kvs else None
        if holder is None:
            return  # deleted between our txn and its read: campaign again
        leader = Leader.of(holder)
        # Ours when it sits on our lease: just won, or won before an answer got lost.
        self._set(leader, holder.lease == lease and leader.node_id == self.node_id)
        async with self._etcd.watch(self._key, start_revision=revision + 1) as watch:
            await self._until_changed(watch, leader.epoch)

    async def _until_changed(self, watch: Watch, epoch: int) -> None:
        """Return when the key is deleted or re-created, or when poked."""
        woken = asyncio.ensure_future(self._wake.wait())
        gone = asyncio.ensure_future(self._until_gone(watch, epoch))
        try:
            await asyncio.wait({woken, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (woken, gone):
                waiter.cancel()
            await asyncio.gather(woken, gone, return_exceptions=True)
        if gone.done() and not gone.cancelled():
            error = gone.exception()
            if error is not None:
                raise error

    async def _until_gone(self, watch: Watch, epoch: int) -> None:
        async for batch in watch:
            for event in batch.events:
                if event.type == "DELETE" or event.kv.create_revision != epoch:
                    if self._is_leader:
                        log.warning("lost the scheduler key (epoch %d)", epoch)
                    self._set(None, False)
                    return
                self._set(Leader.of(event.kv), self._is_leader)  # the leader rewrote its record

    async def _pause(self) -> None:
        await wait_event(self._wake, self._retry)
        self._wake.clear()

    def _set(self, leader: Leader | None, is_leader: bool) -> None:
        if leader == self._leader and is_leader == self._is_leader:
            return
        if is_leader and not self._is_leader and leader is not None:
            log.info("this agent is now the scheduler (epoch %d)", leader.epoch)
        self._leader, self._is_leader = leader, is_leader
        if self._on_change is not None:
            try:
                self._on_change(leader, is_leader)
            except Exception:
                log.exception("scheduler election: on_change failed")
