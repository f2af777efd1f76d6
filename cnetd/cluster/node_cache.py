"""The online nodes as etcd has them: `<prefix>/nodes/` listed once, then kept by a watch.

    cache = NodeCache(etcd, "/cnet")
    await cache.start()
    cache.ready, cache.nodes        # {node_id: NodeEntry(record, create_revision, mod_revision)}
    await cache.read()              # a fresh list straight from etcd (the cache is not touched)

A node key lives on its node's lease, so present means online; its create_revision tells
one registration of a node from the next. When the watch breaks for good (etcd away, or
compacted history), the cache is not ready until it has listed again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from cnetd.background import cancel_and_wait, wait_event
from cnetd.cluster.etcd import EtcdClient, EtcdError, KeyValue, WatchCompacted, prefix_range_end
from cnetd.cluster.records import NodeRecord, decode, nodes_prefix

log = logging.getLogger(__name__)

PAGE = 1000  # keys per range request when listing


@dataclass(frozen=True)
class NodeEntry:
    record: NodeRecord
    create_revision: int  # this registration of the node (a new lease gives a new one)
    mod_revision: int


class NodeCache:
    def __init__(self, etcd: EtcdClient, prefix: str, *, retry: float = 1.0) -> None:
        self._etcd = etcd
        self._prefix = nodes_prefix(prefix)
        self._retry = retry
        self._nodes: dict[str, NodeEntry] = {}
        self._ready = False
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """The cache has listed the nodes and its watch is following them."""
        return self._ready

    @property
    def nodes(self) -> Mapping[str, NodeEntry]:
        return self._nodes

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"node cache {self._prefix}")

    async def wait_ready(self, timeout: float) -> bool:
        await wait_event(self._synced, timeout)
        return self._ready

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self._ready = False

    async def read(self) -> dict[str, NodeEntry]:
        """Every node key now, straight from etcd (raises EtcdUnavailable when it is away)."""
        nodes, _ = await self._list()
        return nodes

    async def _list(self) -> tuple[dict[str, NodeEntry], int]:
        """The nodes at one revision, listed a page at a time; and that revision."""
        nodes: dict[str, NodeEntry] = {}
        start, end = self._prefix.encode(), prefix_range_end(self._prefix)
        revision = 0
        while True:
            page = await self._etcd.range(start, range_end=end, limit=PAGE, revision=revision)
            revision = revision or page.revision
            for kv in page.kvs:
                self._apply(nodes, kv)
            if not page.more or not page.kvs:
                return nodes, revision
            start = page.kvs[-1].key + b"\x00"

    def _apply(self, nodes: dict[str, NodeEntry], kv: KeyValue) -> None:
        node_id = kv.key[len(self._prefix):].decode("utf-8", "replace")
        try:
            record = decode(kv.value, NodeRecord)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("ignoring node key %r: not a node record (%s)", kv.key, err)
            nodes.pop(node_id, None)
            return
        if record.node_id != node_id:
            log.warning("ignoring node key %r: it holds the record of %r", kv.key, record.node_id)
            nodes.pop(node_id, None)
            return
        nodes[node_id] = NodeEntry(record, kv.create_revision, kv.mod_revision)

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except WatchCompacted:
                self._ready = False
                continue
            except EtcdError as err:
                log.warning("node list: %s; listing again in %gs", err, self._retry)
            except Exception:
                log.exception("node list failed; listing again in %gs", self._retry)
            self._ready = False
            await asyncio.sleep(self._retry)

    async def _follow(self) -> None:
        nodes, revision = await self._list()
        self._nodes = nodes
        async with self._etcd.watch(self._prefix, prefix=True, start_revision=revision + 1) as watch:
            self._ready = True
            self._synced.set()
            async for batch in watch:
                for event in batch.events:
                    if event.type == "DELETE":
                        self._nodes.pop(event.kv.key[len(self._prefix):].decode("utf-8", "replace"), None)
                    else:
                        self._apply(self._nodes, event.kv)
