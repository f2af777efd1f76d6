"""Served models' desired state in etcd: `<prefix>/served/<model_name>` (records.ServedModel),
one record per name, never on a lease, so it outlives every node that serves the model.

    desired = DesiredServing(etcd, "/cnet")
    found = await desired.get("iris")                     # Versioned(record, mod_revision) | None
    await desired.update("iris", lambda old: new_record)  # compare-and-swap, retried on a race
    cache = ServedCache(desired, on_change)               # every record, listed then watched

Everything read back is treated as hostile: a value that does not decode into a
ServedModel (msgspec checks names, ids, sha256, counts), or whose name is not the one its
key says, is skipped with a warning, never acted upon. Writes compare the key's
mod_revision with the one read, so two nodes deciding at once cannot lose either's change:
the second finds the key moved, reads it again and decides again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from cnetd.background import cancel_and_wait
from cnetd.cluster import records
from cnetd.cluster.etcd import Compare, EtcdClient, EtcdError, KeyValue, Put, WatchCompacted
from cnetd.cluster.records import MODEL_NAME_PATTERN, ServedModel

log = logging.getLogger(__name__)

UPDATE_ATTEMPTS = 8


class ServedRaced(Exception):
    """The record kept changing under an update (UPDATE_ATTEMPTS times in a row)."""


@dataclass(frozen=True)
class Versioned:
    record: ServedModel
    mod_revision: int


MAX_WARNED = 1024


def parse(kv: KeyValue, prefix: str) -> Versioned | str:
    """The record of one served/ key, or why it is not one we can trust."""
    name = kv.key.decode(errors="replace")[len(records.served_prefix(prefix)):]
    try:
        record = records.decode(kv.value, ServedModel)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return str(exc)
    if record.name != name or not MODEL_NAME_PATTERN.match(name):
        return f"it names model {record.name[:130]!r}"
    return Versioned(record, kv.mod_revision)


class DesiredServing:
    def __init__(self, etcd: EtcdClient, prefix: str) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self._warned: set[tuple[bytes, int]] = set()  # (key, mod_revision) of bad records warned about

    def parse(self, kv: KeyValue) -> Versioned | None:
        """parse(), warning once per version of a bad record rather than at every read."""
        found = parse(kv, self.prefix)
        if isinstance(found, Versioned):
            return found
        if (kv.key, kv.mod_revision) not in self._warned:
            if len(self._warned) >= MAX_WARNED:
                self._warned.clear()
            self._warned.add((kv.key, kv.mod_revision))
            log.warning("cluster: ignoring the served-model record at %s: %s", kv.key.decode(errors="replace")[:200], found)
        return None

    async def get(self, name: str) -> Versioned | None:
        if not MODEL_NAME_PATTERN.match(name):
            return None
        kv = await self.etcd.get(records.served_key(self.prefix, name))
        return self.parse(kv) if kv is not None else None

    async def list(self) -> list[Versioned]:
        found = await self.etcd.range(records.served_prefix(self.prefix), prefix=True)
        return [v for kv in found.kvs if (v := self.parse(kv)) is not None]

    async def put_if(self, record: ServedModel, mod_revision: int) -> bool:
        """Write record only if its key's mod_revision is still mod_revision (0: absent)."""
        key = records.served_key(self.prefix, record.name)
        compare = Compare.absent(key) if mod_revision == 0 else Compare.mod_revision(key, "==", mod_revision)
        result = await self.etcd.txn([compare], [Put(key, records.encode(record))])
        return result.succeeded

    async def update(self, name: str, change: Callable[[ServedModel | None], ServedModel | None]) -> ServedModel | None:
        """Read the record, let change() decide the new one (None: leave it as it is), and
        write it if nobody wrote in between; read and decide again when someone did. An
        undecodable record counts as absent (it is replaced). Returns what is stored now."""
        for _ in range(UPDATE_ATTEMPTS):
            kv = await self.etcd.get(records.served_key(self.prefix, name))
            current = self.parse(kv) if kv is not None else None
            new = change(current.record if current is not None else None)
            if new is None:
                return current.record if current is not None else None
            if current is not None and new == current.record:
                return new
            if await self.put_if(new, kv.mod_revision if kv is not None else 0):
                return new
        raise ServedRaced(f"the served-model record of {name} kept changing; not updated")


class ServedCache:
    """Every served/ record, followed: listed, then watched from the list's revision + 1 (and
    listed again after a compaction or a broken watch), so that a node learns of a change at
    once and reads etcd only when something changed. on_change() is called on every change."""

    def __init__(self, desired: DesiredServing, on_change: Callable[[], None], retry: float = 1.0) -> None:
        self.desired = desired
        self.retry = retry
        self.records: dict[str, Versioned] = {}
        self.following = False  # listed, and the watch is open: `records` is what etcd holds
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-served-records")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except WatchCompacted as exc:
                log.info("cluster: served-model records: %s; listing again", exc)
                continue
            except EtcdError as exc:
                if not self._failing:
                    log.warning("cluster: cannot follow the served-model records (%s); trying again every %gs",
                                " ".join(str(exc).split()), self.retry)
                self._failing = True
            finally:
                self.following = False
            await asyncio.sleep(self.retry)

    async def _follow(self) -> None:
        prefix = records.served_prefix(self.desired.prefix)
        found = await self.desired.etcd.range(prefix, prefix=True)
        self.records = {v.record.name: v for kv in found.kvs if (v := self.desired.parse(kv)) is not None}
        self._on_change()
        async with self.desired.etcd.watch(prefix, prefix=True, start_revision=found.revision + 1) as watch:
            self.following = True
            if self._failing:
                log.info("cluster: following the served-model records again")
            self._failing = False
            async for batch in watch:
                for event in batch.events:
                    name = event.kv.key.decode(errors="replace")[len(prefix):]
                    if event.type == "DELETE":
                        self.records.pop(name, None)
                    elif (found_record := self.desired.parse(event.kv)) is not None:
                        self.records[name] = found_record
                    else:
                        self.records.pop(name, None)
                if batch.events:
                    self._on_change()
