"""The scheduler's half of placing work: decide a node, then write the assignment, fenced.

    scheduler = Scheduler(etcd, "/cnet", node_id, election, "spread")
    await scheduler.start()                     # follows <prefix>/nodes/
    placed = await scheduler.place(task_id, "task", body, demand, placement, posted_by)
    placed.node_id, placed.advertise_url, placed.existing

Deciding: the online nodes' records (node_cache), each one's `free` less the demands of
this scheduler's own placements that the node has not yet taken into its record (those
newer than its applied_revision, or still in flight), then placement.choose().

Writing: one txn puts `<prefix>/assignments/<node>/<task_id>` (the Assignment) and
`<prefix>/placed/<task_id>` (a PlacedTask naming the node) if and only if
  - the scheduler key's create_revision is our epoch: a deposed scheduler writes nothing;
  - the node key's create_revision is the registration we decided on: a node that came
    back under a new lease gets no placement made against its old record;
  - neither key exists yet: each task id is placed once, cluster-wide and across
    schedulers; a retry of the same id answers with the placement that was made.
The node deletes the assignment key once it has created the task (assignments.py). The
placed key hangs on a lease of this scheduler's that is never renewed, so it lapses by
itself after between retry_window/2 and retry_window seconds: a retry of a task id within
retry_window/2 always finds its placement, and the keys do not pile up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from cnetd.clock import utc_now
from cnetd.cluster.election import Leader
from cnetd.cluster.etcd import (
    Compare,
    EtcdClient,
    EtcdOutcomeUnknown,
    EtcdRequestError,
    EtcdUnavailable,
    Get,
    KeyValue,
    Put,
    RangeResult,
    prefix_range_end,
)
from cnetd.cluster.node_cache import NodeCache, NodeEntry
from cnetd.cluster.placement import NoFit, Placement, Strategy, choose
from cnetd.cluster.records import (
    Assignment,
    NodeRecord,
    PlacedTask,
    Resources,
    assignment_key,
    check_key_part,
    decode,
    encode,
    node_key,
    placed_key,
    scheduler_key,
)

log = logging.getLogger(__name__)

__all__ = ["Contended", "EtcdUnavailable", "Leadership", "NoFit", "NodeSource", "NotLeader", "Placed", "Scheduler"]

Kind = Literal["task", "model"]
# etcd refuses a request over 1.5 MiB (--max-request-bytes); the txn carries the assignment
# plus a small placed record, so refuse a bigger body here, with a clear message, before deciding.
MAX_ASSIGNMENT_BYTES = 1_400_000
RETRY_WINDOW = 600  # seconds a placed key lives at most (at least half of it)
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
ATTEMPTS = 3  # decisions per place() when the fence finds the node re-registered, or an answer was lost


class Leadership(Protocol):
    """What the scheduler needs of the election (election.Election is one)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    @property
    def leader(self) -> Leader | None: ...

    def deposed(self, epoch: int) -> None: ...


class NodeSource(Protocol):
    """Where the scheduler reads the online nodes (node_cache.NodeCache is one)."""

    @property
    def ready(self) -> bool: ...

    @property
    def nodes(self) -> Mapping[str, NodeEntry]: ...

    async def read(self) -> Mapping[str, NodeEntry]: ...


class NotLeader(Exception):
    """This agent is not the scheduler; leader: the one to send the request to, when known."""

    def __init__(self, leader: Leader | None) -> None:
        self.leader = leader
        where = f"{leader.node_id} at {leader.advertise_url}" if leader else "none is elected yet"
        super().__init__(f"this agent is not the scheduler ({where})")


class Contended(Exception):
    """The chosen nodes kept re-registering while placing: nothing was written; try again."""


@dataclass(frozen=True)
class Placed:
    task_id: str
    node_id: str
    advertise_url: str  # of the node, "" when it is no longer online
    revision: int  # the placement's revision (the assignment's mod_revision)
    existing: bool  # this task id had been placed before (a retry): nothing was written now


@dataclass
class Pending:
    """One of our placements the node's record does not show yet."""

    demand: Resources
    node_revision: int
    revision: int = 0  # the assignment's mod_revision; 0 while its txn is in flight


@dataclass
class Book:
    """Our placements per node, until each node's applied_revision covers them."""

    by_node: dict[str, dict[str, Pending]] = field(default_factory=dict)

    def reserve(self, node_id: str, task_id: str, pending: Pending) -> None:
        self.by_node.setdefault(node_id, {})[task_id] = pending

    def release(self, node_id: str, task_id: str) -> None:
        on_node = self.by_node.get(node_id)
        if on_node is not None:
            on_node.pop(task_id, None)
            if not on_node:
                del self.by_node[node_id]

    def view(self, entry: NodeEntry) -> NodeRecord:
        """The node's record with our outstanding placements taken off its free resources."""
        node_id = entry.record.node_id
        on_node = self.by_node.get(node_id)
        if not on_node:
            return entry.record
        applied = entry.record.applied_revision
        for task_id, pending in list(on_node.items()):
            settled = pending.revision and pending.revision <= applied
            if settled or pending.node_revision != entry.create_revision:
                del on_node[task_id]  # in the record now, or placed on a registration that is gone
        if not on_node:
            del self.by_node[node_id]
            return entry.record
        free = entry.record.free
        for pending in on_node.values():
            free = free.minus(pending.demand)
        return msgspec.structs.replace(entry.record, free=free)

    def forget_missing(self, online: Mapping[str, NodeEntry]) -> None:
        for node_id in [n for n in self.by_node if n not in online]:
            del self.by_node[node_id]


class Scheduler:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, leadership: Leadership,
                 strategy: Strategy = "spread", *, nodes: NodeSource | None = None,
                 retry_window: int = RETRY_WINDOW) -> None:
        """nodes: where to read the online nodes (default: a NodeCache of its own, started
        by start() and closed by close()). retry_window: see the module's docstring."""
        self._etcd = etcd
        self._prefix = prefix
        self.node_id = node_id
        self._leadership = leadership
        self.strategy: Strategy = strategy
        self._own_cache: NodeCache | None = None
        if nodes is None:
            nodes = self._own_cache = NodeCache(etcd, prefix)
        self.nodes: NodeSource = nodes
        self._book = Book()
        self._booked_epoch = 0
        self._retry_window = retry_window
        self._placed_lease = 0  # the lease placed keys go on now
        self._placed_lease_until = 0.0  # loop time after which a new one is taken
        self._lease_lock = asyncio.Lock()

    async def start(self) -> None:
        if self._own_cache is not None:
            await self._own_cache.start()

    async def close(self) -> None:
        if self._own_cache is not None:
            await self._own_cache.close()

    async def place(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources,
                    placement: Placement, posted_by: str) -> Placed:
        """Place one piece of work; raises NotLeader, NoFit, Contended or EtcdUnavailable
        (ValueError for a bad task id, kind, demand, or a body too big for etcd). Calls for the same task id, at
        once or later, at this scheduler or another, all answer with the one placement."""
        check_key_part("task_id", task_id)
        if kind not in ("task", "model"):
            raise ValueError(f"kind: expected 'task' or 'model', got {kind!r}")
        if min(demand.cpu, demand.memory, demand.disk, demand.gpus, demand.gpu_memory) < 0:
            raise ValueError(f"demand: expected amounts >= 0, got {demand}")
        if not self._leadership.is_leader:
            raise NotLeader(self._leadership.leader)
        body = {name: value for name, value in body.items() if name != "placement"}
        size = len(encode(Assignment(task_id=task_id, kind=kind, body=body, demand=demand, epoch=0, node_revision=0,
                                     posted_by=posted_by, placed_at=utc_now())))
        if size > MAX_ASSIGNMENT_BYTES:
            raise ValueError(f"body: {size} bytes as an assignment, over the {MAX_ASSIGNMENT_BYTES} etcd can carry")
        return await self._place(task_id, kind, body, demand, placement, posted_by)

    async def _place(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources,
                     placement: Placement, posted_by: str) -> Placed:
        epoch = self._leadership.epoch
        if not epoch:
            raise NotLeader(self._leadership.leader)
        await self._book_epoch(epoch)
        fresh = False  # read the nodes straight from etcd, not the cache
        for _ in range(ATTEMPTS):
            online = await self.nodes.read() if fresh or not self.nodes.ready else self.nodes.nodes
            self._book.forget_missing(online)
            chosen = choose([self._book.view(entry) for entry in online.values()], demand, placement, self.strategy)
            entry = online[chosen.node_id]
            pending = Pending(demand, entry.create_revision)
            self._book.reserve(chosen.node_id, task_id, pending)
            try:
                placed = await self._write(task_id, kind, body, demand, epoch, entry, posted_by)
            except BaseException:
                self._book.release(chosen.node_id, task_id)
                raise
            if placed is None:  # the node re-registered since we read it: decide again, from etcd
                self._book.release(chosen.node_id, task_id)
                fresh = True
                continue
            if placed.existing:
                self._book.release(chosen.node_id, task_id)
            else:
                pending.revision = placed.revision
            return placed
        raise Contended(f"task {task_id}: the chosen nodes re-registered while it was being placed "
                        f"({ATTEMPTS} tries); nothing was written, try again")

    async def _write(self, task_id: str, kind: Kind, body: dict[str, Any], demand: Resources, epoch: int,
                     entry: NodeEntry, posted_by: str) -> Placed | None:
        """The fenced txn; the placement, or None when the node's registration changed."""
        node = entry.record
        now = utc_now()
        assignment = Assignment(task_id=task_id, kind=kind, body=body, demand=demand, epoch=epoch,
                                node_revision=entry.create_revision, posted_by=posted_by, placed_at=now)
        record = PlacedTask(task_id=task_id, node_id=node.node_id, epoch=epoch, node_revision=entry.create_revision,
                            placed_at=now)
        sched, target = scheduler_key(self._prefix), node_key(self._prefix, node.node_id)
        assign, placed = assignment_key(self._prefix, node.node_id, task_id), placed_key(self._prefix, task_id)
        compares = [
            Compare.create_revision(sched, "==", epoch),
            Compare.create_revision(target, "==", entry.create_revision),
            Compare.absent(assign),
            Compare.absent(placed),
        ]
        reads = [Get(sched), Get(target), Get(placed)]
        maybe_landed = False  # an earlier try's answer was lost: the placement found may be ours
        for attempt in range(ATTEMPTS):
            lease = await self._placed_lease_id()
            writes = [Put(assign, encode(assignment)), Put(placed, encode(record), lease=lease)]
            try:
                answer = await self._etcd.txn(compares, writes, reads)
            except EtcdOutcomeUnknown as err:
                maybe_landed = True
                # Sending it again is safe: if the first landed, the compares now fail on the
                # placed key, and the read tells whether the placement found is ours.
                log.warning("placing task %s: %s; asking again", task_id, err)
                if attempt == ATTEMPTS - 1:
                    raise
                continue
            except EtcdRequestError as err:
                if err.message != LEASE_NOT_FOUND or attempt == ATTEMPTS - 1:
                    raise
                self._placed_lease_until = 0.0  # lapsed (etcd away for long): take a new one
                continue
            if answer.succeeded:
                log.info("placed %s %s on %s (epoch %d, revision %d)", kind, task_id, node.node_id, epoch,
                         answer.revision)
                return Placed(task_id, node.node_id, node.advertise_url, answer.revision, existing=False)
            return self._refused(task_id, epoch, entry, record if maybe_landed else None, answer.responses)
        raise AssertionError("unreachable")

    async def _placed_lease_id(self) -> int:
        """A lease granted for retry_window and never renewed, replaced when half of it is gone."""
        async with self._lease_lock:
            now = asyncio.get_running_loop().time()
            if now >= self._placed_lease_until:
                self._placed_lease = (await self._etcd.grant(self._retry_window)).id
                self._placed_lease_until = now + self._retry_window / 2
            return self._placed_lease

    def _refused(self, task_id: str, epoch: int, entry: NodeEntry, ours: PlacedTask | None,
                 reads: tuple[object, ...]) -> Placed | None:
        """Why the txn's compares failed, and what place() answers for it."""
        sched_kv, node_kv, placed_kv = (_first(r) for r in reads)
        if placed_kv is not None:
            return self._existing(task_id, placed_kv, ours)
        if sched_kv is None or sched_kv.create_revision != epoch:
            self._leadership.deposed(epoch)
            raise NotLeader(Leader.of(sched_kv) if sched_kv is not None else None)
        if node_kv is None or node_kv.create_revision != entry.create_revision:
            log.info("node %s re-registered (revision %d -> %s) while placing %s; deciding again",
                     entry.record.node_id, entry.create_revision, node_kv.create_revision if node_kv else "gone",
                     task_id)
            return None
        # The assignment key is there but the placed key is not: placed longer ago than the
        # retry window, and the node has not yet taken it.
        return Placed(task_id, entry.record.node_id, entry.record.advertise_url, 0, existing=True)

    def _existing(self, task_id: str, placed_kv: KeyValue, ours: PlacedTask | None) -> Placed:
        """The placement a placed key records: an earlier call's, or ours when a try whose
        answer was lost (ours: what it wrote) landed after all."""
        record = decode(placed_kv.value, PlacedTask)
        node = self.nodes.nodes.get(record.node_id)
        url = node.record.advertise_url if node is not None else ""
        return Placed(task_id, record.node_id, url, placed_kv.mod_revision, existing=record != ours)

    async def _book_epoch(self, epoch: int) -> None:
        """At the start of an epoch, take over the placements the nodes have not yet
        consumed (the previous scheduler's too), so they are not admitted twice."""
        if self._booked_epoch == epoch:
            return
        book = Book()
        prefix = f"{self._prefix}/assignments/"
        found = await self._etcd.range(prefix, range_end=prefix_range_end(prefix))
        for kv in found.kvs:
            try:
                assignment = decode(kv.value, Assignment)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            node_id = kv.key[len(prefix):].decode("utf-8", "replace").split("/", 1)[0]
            book.reserve(node_id, assignment.task_id,
                         Pending(assignment.demand, assignment.node_revision, kv.mod_revision))
        if self._booked_epoch != epoch:
            self._book, self._booked_epoch = book, epoch


def _first(read: object) -> KeyValue | None:
    assert isinstance(read, RangeResult)
    return read.kvs[0] if read.kvs else None
