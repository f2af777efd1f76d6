"""This node's membership of the cluster: its record in etcd on a lease, kept alive.

    membership = Membership(etcd, node_id, prefix="/cnet", ttl=15, describe=describe_node)
    await membership.start()           # returns at once; joining happens in the background
    membership.allocation_changed()    # a task started or ended: rewrite the record (<= 1/s)
    lease = await membership.wait_for_lease()   # the scheduler campaigns on this lease
    membership.on_registered(mirror_rejoined)   # called with (lease, node_revision) on each (re)join
    membership.status                  # online | degraded, lease, node key revision, why

Registering: grant a lease of `ttl`, then create `<prefix>/nodes/<id>` on it with a
create-if-absent txn, so that every registration gives the key a new create_revision (the
scheduler fences its placements on it; a node that came back is a new incarnation). The
same txn writes `<prefix>/seen/<id>` (no lease), which keeps an offline node listed with
when it was last seen; it is written again about once a TTL while the node is up.

Staying: a keepalive every ttl/3, each call bounded by the etcd client's timeout (kept at
most ttl/3, so a failed keepalive leaves time for two more before the lease can lapse:
Patroni's loop + 2 x retry <= TTL). The record is rewritten when the node's allocation
changes (and about once a TTL in case a change went unnoticed), at most once a second, only
if it changed, and only while the key is still on this node's lease (a compare on the key's
lease).

Never giving up: a keepalive that finds the lease gone (LeaseLost: it expired or was
revoked) registers again at once. When etcd does not answer, the node is `degraded`, keeps
trying every RETRY_PAUSE, and once it has not renewed the lease for longer than its TTL it
takes the lease as lost: it registers anew (revoking the old lease first, in case etcd kept
it alive while it was away), so a node that was gone longer than its TTL always comes back
as a new incarnation. Nothing here ever ends the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec
from msgspec.structs import replace as struct_replace

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.cluster import records
from cnetd.cluster.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdRequestError,
    EtcdUnavailable,
    Lease,
    LeaseLost,
    Put,
)
from cnetd.cluster.records import NodeRecord

log = logging.getLogger(__name__)

MIN_PUBLISH_INTERVAL = 1.0  # seconds between two rewrites of the node record
RETRY_PAUSE = 0.5  # seconds between attempts while etcd does not answer
REVOKE_ON_STOP_TIMEOUT = 1.0  # a clean stop takes the node offline at once, if etcd answers soon
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
JOINING = "joining: not registered yet"

State = Literal["online", "degraded"]
Describe = Callable[[], Awaitable[NodeRecord]]


class NodeIdTaken(EtcdError):
    """Another agent (another advertise_url) holds this node id's key on a live lease."""


@dataclass(frozen=True)
class MembershipStatus:
    state: State
    lease_id: int  # 0: none held now
    node_revision: int  # the create_revision of <prefix>/nodes/<id>; 0 while not registered
    problem: str | None  # why degraded, one line
    unreachable: tuple[tuple[str, str], ...]  # (endpoint, why) of the last call no endpoint answered
    since: str  # when the state last changed
    registrations: int  # how often this agent registered (1 + re-registrations)
    registered_at: str | None  # when the current lease was taken

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "lease_id": f"{self.lease_id:x}" if self.lease_id else None,
            "node_revision": self.node_revision or None,
            "problem": self.problem,
            "unreachable": [{"endpoint": endpoint, "error": why} for endpoint, why in self.unreachable],
            "since": self.since,
            "registrations": self.registrations,
            "registered_at": self.registered_at,
        }


class Membership:
    def __init__(self, etcd: EtcdClient, node_id: str, prefix: str, ttl: int, describe: Describe) -> None:
        self.etcd = etcd
        self.node_id = node_id
        self.ttl = ttl
        self.key = records.node_key(prefix, node_id)
        self.seen_key = records.seen_key(prefix, node_id)
        self._describe = describe
        self.keepalive_interval = ttl / 3
        self._lease: Lease | None = None
        self._renewed_at = 0.0  # monotonic time the last successful grant or keepalive was sent
        self._abandoned_lease = 0  # a lease given up on: revoked before the next registration
        self._node_revision = 0
        self._published: NodeRecord | None = None  # the last record written, its times blanked
        self._published_at = 0.0
        self._seen_at = 0.0
        self._dirty = asyncio.Event()
        self._lease_changed = asyncio.Event()
        self._listeners: list[Callable[[Lease, int], None]] = []
        self._was_online = False
        self._status = MembershipStatus("degraded", 0, 0, JOINING, (), utc_now(), 0, None)
        self._task: asyncio.Task[None] | None = None

    # --- what others read ------------------------------------------------------------------

    @property
    def status(self) -> MembershipStatus:
        return self._status

    @property
    def online(self) -> bool:
        return self._status.state == "online"

    @property
    def lease_id(self) -> int:
        """The lease this node's key hangs on now; 0 while it holds none."""
        return self._lease.id if self._lease is not None else 0

    @property
    def node_revision(self) -> int:
        """The create_revision of this node's key: what placements on this node fence on;
        0 while it is not registered."""
        return self._node_revision

    async def wait_for_lease(self, other_than: int = 0) -> Lease:
        """The lease once this node is registered on one that is not `other_than` (pass the
        lease you lost to wait for the next registration)."""
        while self._lease is None or self._lease.id == other_than:
            self._lease_changed.clear()
            await self._lease_changed.wait()
        return self._lease

    def on_registered(self, listener: Callable[[Lease, int], None]) -> None:
        """Call listener(lease, node_revision) after every registration, the first and each
        one after a lost lease (e.g. to write again what hung on the old lease, or what went
        stale while this node was away). It runs on the membership's loop: keep it short."""
        self._listeners.append(listener)

    def allocation_changed(self) -> None:
        """Something that changes this node's free resources happened: rewrite its record
        (at most once a second, and only when it changed)."""
        self._dirty.set()

    # --- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-membership")

    async def stop(self) -> None:
        """Stop renewing, and revoke the lease so that the others see this node offline now
        rather than a TTL from now (its seen/ key stays: the node stays listed)."""
        await cancel_and_wait(self._task)
        self._task = None
        lease = self._lease
        self._drop_lease(abandon=False)
        if lease is None:
            return
        try:
            async with asyncio.timeout(REVOKE_ON_STOP_TIMEOUT):
                await self._write_seen()
                await self.etcd.revoke(lease.id)
        except (EtcdError, TimeoutError) as exc:
            log.info("etcd: lease %x not revoked on the way out (%s); it lapses within %ds", lease.id, exc, self.ttl)

    async def _run(self) -> None:
        while True:
            try:
                if self._lease is None:
                    await self._register()
                    continue
                await self._sleep_until_due()
                now = time.monotonic()
                if now >= self._renewed_at + self.keepalive_interval:
                    await self._keepalive()
                if now >= self._seen_at + self.ttl:
                    self._dirty.set()  # about once a TTL, whether or not told: is the record still right?
                if self._dirty.is_set() and now >= self._published_at + MIN_PUBLISH_INTERVAL:
                    await self._publish()
                if time.monotonic() >= self._seen_at + self.ttl:
                    await self._write_seen()
                self._set_online()
            except LeaseLost:
                log.warning("etcd: the lease of node %s is gone (expired or revoked); registering again", self.node_id)
                self._drop_lease(abandon=False)
            except NodeIdTaken as exc:
                self._failed(exc)
                await asyncio.sleep(self.keepalive_interval)
            except (EtcdError, OSError, ValueError, msgspec.MsgspecError) as exc:
                self._failed(exc)
                await asyncio.sleep(RETRY_PAUSE)
            except Exception as exc:  # never let the loop end: this node would drop out for good
                log.exception("cluster membership: unexpected error; retrying")
                self._failed(exc)
                await asyncio.sleep(RETRY_PAUSE)

    async def _sleep_until_due(self) -> None:
        """Until a keepalive or a seen/ write is due, or a rewrite once the record is dirty."""
        due = min(self._renewed_at + self.keepalive_interval, self._seen_at + self.ttl)
        if not self._dirty.is_set():
            await wait_event(self._dirty, max(0.0, due - time.monotonic()))
        if self._dirty.is_set():
            due = min(due, self._published_at + MIN_PUBLISH_INTERVAL)
        await asyncio.sleep(max(0.0, due - time.monotonic()))

    # --- the steps -------------------------------------------------------------------------

    async def _register(self) -> None:
        if self._abandoned_lease:
            # etcd may have kept it alive while it was away (a restarted etcd renews every
            # lease): revoke it, so that its key goes and ours is created anew.
            await self.etcd.revoke(self._abandoned_lease)
            self._abandoned_lease = 0
        record = await self._record()
        await self._clear_former_self(record)
        sent = time.monotonic()
        lease = await self.etcd.grant(self.ttl)
        try:
            revision = await self._create(lease.id, record)
        except BaseException:
            self._abandoned_lease = lease.id
            raise
        now = time.monotonic()
        self._lease, self._renewed_at, self._node_revision = lease, sent, revision
        self._published, self._published_at, self._seen_at = self._comparable(record), now, now
        self._dirty.clear()
        registrations = self._status.registrations + 1
        self._status = replace(self._status, lease_id=lease.id, node_revision=revision,
                               registrations=registrations, registered_at=utc_now())
        self._set_online()
        self._lease_changed.set()
        for listener in self._listeners:
            try:
                listener(lease, revision)
            except Exception:  # one listener's mistake must not undo the registration
                log.exception("cluster membership: a registration listener failed")
        log.info("etcd: node %s registered (lease %x, TTL %ds, node revision %d%s)", self.node_id, lease.id,
                 lease.ttl, revision, "" if registrations == 1 else f", registration {registrations}")

    async def _clear_former_self(self, record: NodeRecord) -> None:
        """A key left by this node's former incarnation (a restart within the TTL, or a
        lease etcd kept) is deleted; one another agent holds under the same id is not."""
        existing = await self.etcd.get(self.key)
        if existing is None:
            return
        try:
            holder = records.decode(existing.value, NodeRecord).advertise_url
        except msgspec.MsgspecError:
            holder = ""
        if holder and holder != record.advertise_url:
            raise NodeIdTaken(f"node id {self.node_id} is held by another agent ({holder}): give each agent its "
                              "own agent.node_id (retrying until that agent's lease lapses)")
        await self.etcd.txn([Compare.mod_revision(self.key, "==", existing.mod_revision)], [Delete(self.key)])

    async def _create(self, lease_id: int, record: NodeRecord) -> int:
        """Create the node key on the lease (and write seen/); its create_revision."""
        put_node = Put(self.key, records.encode(record), lease=lease_id)
        put_seen = Put(self.seen_key, records.encode(struct_replace(record, last_seen=record.updated_at)))
        try:
            result = await self.etcd.txn([Compare.absent(self.key)], [put_node, put_seen])
        except EtcdOutcomeUnknown:
            found = await self.etcd.get(self.key)  # read back: did it apply?
            if found is None or found.lease != lease_id:
                raise
            return found.create_revision
        if not result.succeeded:
            raise EtcdUnavailable([(self.etcd.endpoint, "the node key appeared while registering")],
                                  "etcd: registration raced another writer")
        return result.revision

    async def _keepalive(self) -> None:
        assert self._lease is not None
        sent = time.monotonic()
        await self.etcd.keepalive(self._lease.id)
        self._renewed_at = sent

    async def _publish(self) -> None:
        """Rewrite the record if it changed, only while the key is still on our lease."""
        assert self._lease is not None
        self._dirty.clear()
        record = await self._record()
        comparable = self._comparable(record)
        if comparable == self._published:
            return
        try:
            result = await self.etcd.txn([Compare.lease(self.key, "==", self._lease.id)],
                                         [Put(self.key, records.encode(record), lease=self._lease.id)])
        except BaseException:
            self._dirty.set()  # not written, or not known to be: again next time
            raise
        if not result.succeeded:
            raise LeaseLost(self._lease.id)  # the key is gone, or on another lease: not ours any more
        self._published, self._published_at = comparable, time.monotonic()
        await self._write_seen(record)

    async def _write_seen(self, record: NodeRecord | None = None) -> None:
        record = record or await self._record()
        await self.etcd.put(self.seen_key, records.encode(struct_replace(record, last_seen=utc_now())))
        self._seen_at = time.monotonic()

    async def _record(self) -> NodeRecord:
        return struct_replace(await self._describe(), node_id=self.node_id, updated_at=utc_now(), last_seen="")

    @staticmethod
    def _comparable(record: NodeRecord) -> NodeRecord:
        return struct_replace(record, updated_at="", last_seen="")

    # --- state -----------------------------------------------------------------------------

    def _drop_lease(self, abandon: bool) -> None:
        if self._lease is not None and abandon:
            self._abandoned_lease = self._lease.id
        self._lease, self._node_revision = None, 0
        self._status = replace(self._status, lease_id=0, node_revision=0)

    def _set_online(self) -> None:
        if self._status.state == "online":
            return
        if self._was_online:
            log.warning("cluster ok again: node %s is online (was degraded since %s)", self.node_id, self._status.since)
        self._was_online = True
        self._status = replace(self._status, state="online", problem=None, unreachable=(), since=utc_now())

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, EtcdRequestError) and exc.message == LEASE_NOT_FOUND:
            log.warning("etcd: the lease of node %s is gone; registering again", self.node_id)
            self._drop_lease(abandon=False)
            return
        if self._lease is not None and time.monotonic() > self._renewed_at + self._lease.ttl:
            log.warning("etcd: node %s has not renewed its lease for longer than its TTL (%ds): it will register "
                        "anew when etcd answers", self.node_id, self.ttl)
            self._drop_lease(abandon=True)
        problem = _one_line(exc)
        if self._status.state == "online":
            log.warning("cluster degraded: %s", problem)
        elif problem != self._status.problem:
            log.debug("cluster still degraded: %s", problem)
        since = utc_now() if self._status.state == "online" else self._status.since
        unreachable = exc.failures if isinstance(exc, EtcdUnavailable) else ()
        self._status = replace(self._status, state="degraded", problem=problem, unreachable=tuple(unreachable),
                               since=since)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
