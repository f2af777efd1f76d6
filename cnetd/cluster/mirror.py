"""This node's tasks, summarised in etcd for the cluster-wide view.

Each task is one key, ``<prefix>/tasks/<node_id>/<task_id>`` (a TaskSummary), written when
the task changes. Changes are coalesced: whatever changed during one flush interval is
written in one txn per batch, so a task printing progress lines costs at most one write
per interval. The node's own SQLite stays the truth: after every (re)join the whole set
is written again and keys of tasks this node no longer has are deleted, so a view that
went stale while etcd was away (or while the node was down) is reconciled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.cluster.etcd import Delete, EtcdClient, EtcdError, Put
from cnetd.cluster.etcd_wire import Op
from cnetd.cluster.records import TaskSummary, encode, node_tasks_prefix, task_key
from cnetd.tasks.bus import TaskBus, TaskChange
from cnetd.tasks.model import Task

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between coalesced writes
OPS_PER_TXN = 100  # etcd refuses a txn of more than --max-txn-ops (128 by default)
IDS_PER_READ = 500  # task ids in one SQL IN (...)
RETRY_PAUSES = (0.5, 1.0, 2.0, 5.0)  # after a failed write, before the next try


class TaskSource(Protocol):
    bus: TaskBus

    async def list(self, **filters: Any) -> list[Task]: ...


def summary_of(task: Task, node_id: str, serving: str | None = None) -> TaskSummary:
    return TaskSummary(
        id=task.id, name=task.name, type=task.type, kind=task.kind, status=str(task.status), node_id=node_id,
        created_at=task.created_at, started_at=task.started_at, stopped_at=task.stopped_at,
        exit_code=task.exit_code, reason=task.reason, progress=task.progress, model_id=task.model_id,
        serving=serving, updated_at=utc_now(),
    )


def batches(ops: Sequence[Op], size: int = OPS_PER_TXN) -> Iterable[Sequence[Op]]:
    for start in range(0, len(ops), size):
        yield ops[start : start + size]


class StatusMirror:
    def __init__(
        self, etcd: EtcdClient, prefix: str, node_id: str, tasks: TaskSource,
        serving_state: Callable[[str], str | None] = lambda _task_id: None,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._etcd = etcd
        self._prefix = prefix
        self._node_id = node_id
        self._tasks = tasks
        self._serving_state = serving_state
        self._flush_interval = flush_interval
        self._changed: set[str] = set()
        self._forgotten: set[str] = set()
        self._reconcile = True  # the first flush writes everything
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self.writes = 0  # txns sent, for tests and the bench

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="cluster-mirror-listen")
        self._runner = asyncio.create_task(self._run(), name="cluster-mirror")
        self._wake.set()  # the first flush writes everything

    async def stop(self) -> None:
        for task in (self._listener, self._runner):
            if task is not None:
                await cancel_and_wait(task)

    def rejoined(self) -> None:
        """The node (re)registered: write the whole set again, drop what is no longer here."""
        self._reconcile = True
        self._wake.set()

    def forget(self, task_ids: Iterable[str]) -> None:
        """These tasks were deleted here (retention): delete their keys."""
        self._forgotten.update(task_ids)
        self._wake.set()

    def changed(self, task_id: str) -> None:
        """Something the summary shows changed outside the task bus (e.g. serving state)."""
        self._changed.add(task_id)
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            queue = self._tasks.bus.subscribe()
            try:
                while (change := await queue.get()) is not None:
                    self._note(change)
            finally:
                self._tasks.bus.unsubscribe(queue)
            # Dropped as a slow subscriber: changes were lost, so write everything again.
            self.rejoined()

    def _note(self, change: TaskChange) -> None:
        self._changed.add(change.task_id)
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                failures = 0
            except EtcdError as err:
                pause = RETRY_PAUSES[min(failures, len(RETRY_PAUSES) - 1)]
                failures += 1
                if failures == 1:
                    log.warning("cluster view: cannot write task summaries to etcd (%s); retrying", err)
                self._wake.set()
                await asyncio.sleep(pause)
                continue
            await asyncio.sleep(self._flush_interval)  # coalesce what changes meanwhile

    async def flush(self) -> None:
        """Write what changed since the last flush (everything, after a rejoin). What could
        not be written stays pending, so a failure loses nothing."""
        if self._reconcile:
            self._reconcile = False
            self._changed.clear()
            try:
                await self._write_all()
            except BaseException:
                self._reconcile = True
                raise
            return
        changed, self._changed = self._changed, set()
        forgotten, self._forgotten = self._forgotten, set()
        try:
            await self._write_changes(changed - forgotten, forgotten)
        except BaseException:
            self._changed |= changed
            self._forgotten |= forgotten
            raise

    async def _write_changes(self, changed: set[str], forgotten: set[str]) -> None:
        ops: list[Op] = [Delete(task_key(self._prefix, self._node_id, task_id)) for task_id in sorted(forgotten)]
        if changed:
            wanted = sorted(changed)
            by_id: dict[str, Task] = {}
            for start in range(0, len(wanted), IDS_PER_READ):
                by_id.update((t.id, t) for t in await self._tasks.list(ids=wanted[start : start + IDS_PER_READ]))
            for task_id in sorted(changed):
                task = by_id.get(task_id)
                if task is None:
                    ops.append(Delete(task_key(self._prefix, self._node_id, task_id)))
                else:
                    ops.append(self._put(task))
        await self._send(ops)

    async def _write_all(self) -> None:
        local = await self._tasks.list()
        here = {t.id for t in local}
        listed = await self._etcd.range(node_tasks_prefix(self._prefix, self._node_id), prefix=True, keys_only=True)
        stale = [kv.key for kv in listed.kvs if kv.key.decode().rpartition("/")[2] not in here]
        self._forgotten.clear()
        await self._send([*(Delete(key) for key in stale), *(self._put(t) for t in local)])

    def _put(self, task: Task) -> Put:
        summary = summary_of(task, self._node_id, self._serving_state(task.id))
        return Put(task_key(self._prefix, self._node_id, task.id), encode(summary))

    async def _send(self, ops: Sequence[Op]) -> None:
        for batch in batches(ops):
            await self._etcd.txn([], batch)
            self.writes += 1
