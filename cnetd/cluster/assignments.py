"""The target's half of placing work: take the assignments the scheduler wrote for this node.

    watcher = AssignmentWatcher(etcd, "/cnet", node_id, registration=lambda: membership.node_revision,
                                create=create_from_assignment, on_applied=membership.rewrite_soon)
    await watcher.start()
    watcher.applied_revision    # for the node record: assignments up to here are in `free`
    await watcher.close()

It lists `<prefix>/assignments/<node_id>/` and then watches it from the list's revision + 1.
For each assignment placed against this node's current registration (its node_revision is
the create_revision of our node key now) it awaits create(assignment), then deletes the
key. An assignment placed against an earlier registration is stale (the scheduler decided
on a record this node no longer stands behind): it is deleted without being created.

create must be idempotent by task id: a crash between create and the delete brings the
same assignment again after a restart. It must not raise for work it refuses (record the
task as failed with the reason instead); raising means "not now": the assignment stays and
is tried again after `retry` seconds. When the watch breaks for good or etcd compacted the
history it needed, the watcher lists again; the keys still there are exactly the work not
yet done, so nothing is lost and nothing created twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from cnetd.background import cancel_and_wait, wait_event
from cnetd.cluster.etcd import Compare, Delete, EtcdClient, EtcdError, KeyValue, Watch, WatchBatch, WatchCompacted
from cnetd.cluster.records import Assignment, assignments_prefix, decode

log = logging.getLogger(__name__)

CLOSE_GRACE = 5.0  # seconds close() lets a create() in progress finish before cancelling it


class AssignmentWatcher:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, registration: Callable[[], int],
                 create: Callable[[Assignment], Awaitable[None]], *, retry: float = 1.0,
                 on_applied: Callable[[int], None] | None = None) -> None:
        """registration(): the create_revision of this node's key now (0 while unregistered).
        on_applied(revision): called when applied_revision rises."""
        self._etcd = etcd
        self._prefix = assignments_prefix(prefix, node_id)
        self.node_id = node_id
        self._registration = registration
        self._create = create
        self._retry = retry
        self._on_applied = on_applied
        self.applied_revision = 0  # the highest assignment mod_revision handled (created or dropped)
        self._created: set[str] = set()  # created, key not yet deleted
        self.waiting: set[str] = set()  # task ids placed on a registration we do not know yet
        self.following = False  # listed, and the watch is open: nothing placed now goes unseen
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name=f"assignments {self._prefix}")

    def poke(self) -> None:
        """List again now (e.g. the node registered anew)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop; a create() in progress gets CLOSE_GRACE seconds to finish first."""
        if self._task is None:
            return
        self._closing = True
        self.poke()
        await asyncio.wait({self._task}, timeout=CLOSE_GRACE)
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while not self._closing:
            try:
                await self._round()
                continue
            except asyncio.CancelledError:
                raise
            except WatchCompacted as err:
                log.info("assignments for %s: %s", self.node_id, err)
                continue
            except EtcdError as err:
                log.warning("assignments for %s: %s; listing again in %gs", self.node_id, err, self._retry)
            except Exception:
                log.exception("assignments for %s failed; listing again in %gs", self.node_id, self._retry)
            await self._pause(self._retry)

    async def _round(self) -> None:
        """List and handle what is there, then handle what comes, until poked."""
        self._wake.clear()
        if not self._registration():
            await self._pause(self._retry)
            return
        found = await self._etcd.range(self._prefix, prefix=True)
        waiting: set[str] = set()
        for kv in sorted(found.kvs, key=lambda kv: kv.mod_revision):
            if self._closing:
                return
            if not await self._handle(kv):
                waiting.add(self._task_id(kv))
        self.waiting = waiting
        if self._closing or self._wake.is_set():
            return
        try:
            async with self._etcd.watch(self._prefix, prefix=True, start_revision=found.revision + 1) as watch:
                self.following = True
                while not self._closing:
                    batch = await self._next_or_woken(watch)
                    if batch is None:
                        return
                    for event in batch.events:
                        if event.type == "PUT" and not self._closing and not await self._handle(event.kv):
                            self.waiting.add(self._task_id(event.kv))
        finally:
            self.following = False

    async def _next_or_woken(self, watch: Watch) -> WatchBatch | None:
        """The watch's next batch; None when poked first, or when an assignment waits for a
        registration we do not know yet and `retry` has passed. A create() in progress is
        never interrupted: only the wait for the next batch is."""
        following = asyncio.ensure_future(anext(watch))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({following, woken}, timeout=self._retry if self.waiting else None,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not following.done():
                following.cancel()
            await asyncio.gather(woken, following, return_exceptions=True)
        if following.cancelled() or not following.done():
            return None
        return following.result()  # raises what the watch raised

    def _task_id(self, kv: KeyValue) -> str:
        return kv.key[len(self._prefix):].decode("utf-8", "replace")

    async def _handle(self, kv: KeyValue) -> bool:
        """Create or drop the assignment; False when it must wait for a registration we do not know yet."""
        task_id = self._task_id(kv)
        try:
            assignment = decode(kv.value, Assignment)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("dropping assignment %r: not an assignment (%s)", kv.key, err)
            await self._drop(kv)
            return True
        registration = self._registration()
        if assignment.task_id != task_id:
            log.warning("dropping assignment %r: it names task %r", kv.key, assignment.task_id)
        elif assignment.node_revision > registration:
            return False  # placed on a registration membership has not told us of yet: list again soon
        elif assignment.node_revision < registration:
            log.info("dropping stale assignment of %s %s: placed on registration %d of %s, which is now %d",
                     assignment.kind, task_id, assignment.node_revision, self.node_id, registration)
        elif task_id not in self._created:
            await self._create(assignment)
            self._created.add(task_id)
            log.info("created %s %s from its assignment (epoch %d, by %s)", assignment.kind, task_id,
                     assignment.epoch, assignment.posted_by)
        await self._drop(kv)
        self._created.discard(task_id)
        return True

    async def _drop(self, kv: KeyValue) -> None:
        """Delete the key as handled (unless it changed meanwhile) and count it as applied."""
        await self._etcd.txn([Compare.mod_revision(kv.key, "==", kv.mod_revision)], [Delete(kv.key)])
        if kv.mod_revision > self.applied_revision:
            self.applied_revision = kv.mod_revision
            if self._on_applied is not None:
                self._on_applied(kv.mod_revision)

    async def _pause(self, seconds: float) -> None:
        await wait_event(self._wake, seconds)
        self._wake.clear()
