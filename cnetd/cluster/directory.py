"""Every node of the cluster as etcd knows it, read through a short-lived cache.

A node is `online` while `<prefix>/nodes/<id>` exists (it hangs on the node's lease), and
`offline` when only `<prefix>/seen/<id>` is left, with the time it was last seen.

    directory = NodeDirectory(etcd, "/cnet")
    await directory.list()                  # every node, online first: [NodeEntry]
    await directory.get("b")                # one node, or None
    await directory.resolve("b")            # its advertise_url, or a 404/503 that says why

Reads are cached for `cache_seconds` (one etcd round trip serves every caller within it;
callers that arrive while one is in flight share it), one entry per node for `get` and
`resolve` and one for the whole list: a pass-through costs an etcd read at most once a
second per node, however many calls pass. When etcd does not answer, `resolve` keeps using
what it last knew (a node that was online is still called: it may well be up), while
`list` and `get` raise ClusterUnavailable naming the endpoints, since they would show a
picture of the cluster that may be wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec

from cnetd.cluster import records
from cnetd.cluster.etcd import EtcdClient, EtcdError, EtcdUnavailable, KeyValue
from cnetd.cluster.records import NodeRecord
from cnetd.errors import NotFound, Unavailable

CACHE_SECONDS = 1.0
Status = Literal["online", "offline"]
T = TypeVar("T")


class ClusterUnavailable(Unavailable):
    """etcd did not answer: what the cluster looks like cannot be said now (503)."""

    def __init__(self, error: EtcdError) -> None:
        failures = error.failures if isinstance(error, EtcdUnavailable) else ()
        endpoints = [endpoint for endpoint, _ in failures]
        super().__init__(f"the cluster view is unavailable: {' '.join(str(error).split())}",
                         {"unreachable": endpoints} if endpoints else {})


@dataclass(frozen=True)
class NodeEntry:
    record: NodeRecord
    status: Status
    last_seen: str  # when its seen/ key was last written (for an online node, at most a TTL ago)
    revision: int  # the create_revision of its nodes/ key (online only; 0 when offline)

    @property
    def node_id(self) -> str:
        return self.record.node_id

    def to_json(self) -> dict[str, Any]:
        """As GET /api/nodes shows it."""
        r = self.record
        return {
            "node_id": r.node_id,
            "name": r.name,
            "status": self.status,
            "labels": dict(r.labels),
            "capacity": msgspec.to_builtins(r.capacity),
            "free": msgspec.to_builtins(r.free),
            "sandbox": r.sandbox,
            "version": r.version,
            "started_at": r.started_at or None,
            "updated_at": r.updated_at or None,
            "last_seen": self.last_seen or None,
            "advertise_url": r.advertise_url,
        }


def _decode(kv: KeyValue, node_id: str) -> NodeRecord | None:
    try:
        record = records.decode(kv.value, NodeRecord)
    except msgspec.MsgspecError:
        return None  # a key someone else wrote badly: not a node we can show
    return msgspec.structs.replace(record, node_id=node_id)  # the key says whose it is


def _entry(node_id: str, online: KeyValue | None, seen: KeyValue | None) -> NodeEntry | None:
    seen_record = _decode(seen, node_id) if seen is not None else None
    last_seen = seen_record.last_seen if seen_record is not None else ""
    if online is not None:
        record = _decode(online, node_id)
        if record is not None:
            return NodeEntry(record, "online", max(last_seen, record.updated_at), online.create_revision)
    if seen_record is not None:
        return NodeEntry(seen_record, "offline", last_seen, 0)
    return None


class _Cached(Generic[T]):
    """One value, read at most once per `seconds`; concurrent readers share one read."""

    def __init__(self, read: Callable[[], Awaitable[T]], seconds: float) -> None:
        self._read = read
        self._seconds = seconds
        self._value: tuple[float, T] | None = None
        self._lock = asyncio.Lock()

    @property
    def known(self) -> bool:
        return self._value is not None

    @property
    def last(self) -> T:
        assert self._value is not None
        return self._value[1]

    def _fresh(self) -> bool:
        return self._value is not None and time.monotonic() - self._value[0] < self._seconds

    async def get(self) -> T:
        if self._fresh():
            return self.last
        async with self._lock:
            if self._fresh():  # another reader refreshed it meanwhile
                return self.last
            started = time.monotonic()
            value = await self._read()
            self._value = (started, value)
            return value

    def clear(self) -> None:
        self._value = None


class NodeDirectory:
    def __init__(self, etcd: EtcdClient, prefix: str, cache_seconds: float = CACHE_SECONDS) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self._all: _Cached[dict[str, NodeEntry]] = _Cached(self._read_all, cache_seconds)
        self._one: dict[str, _Cached[NodeEntry | None]] = {}

    async def list(self) -> list[NodeEntry]:
        """Every node etcd knows, online ones first, each group by node id."""
        try:
            nodes = await self._all.get()
        except EtcdError as exc:
            raise ClusterUnavailable(exc) from None
        return sorted(nodes.values(), key=lambda e: (e.status != "online", e.node_id))

    async def get(self, node_id: str) -> NodeEntry | None:
        try:
            return await self._cached_one(node_id).get()
        except EtcdError as exc:
            raise ClusterUnavailable(exc) from None

    async def resolve(self, node_id: str) -> str:
        """Where to call node_id: its advertise_url. NotFound when the cluster has no such
        node, Unavailable when it is offline; what was last known while etcd is away."""
        cached = self._cached_one(node_id)
        try:
            entry = await cached.get()
        except EtcdError as exc:
            if not cached.known:
                raise ClusterUnavailable(exc) from None
            entry = cached.last
        if entry is None:
            raise NotFound(f"node {node_id} is not in the cluster (GET /api/nodes lists its nodes)",
                           {"node_id": node_id})
        if entry.status != "online":
            raise Unavailable(f"node {node_id} is offline (last seen {entry.last_seen or 'never'})",
                              {"node_id": node_id, "last_seen": entry.last_seen or None})
        return entry.record.advertise_url

    def forget(self, node_id: str) -> None:
        """A call to node_id failed: read it afresh next time rather than from the cache."""
        cached = self._one.get(node_id)
        if cached is not None:
            cached.clear()

    def _cached_one(self, node_id: str) -> _Cached[NodeEntry | None]:
        cached = self._one.get(node_id)
        if cached is None:
            if len(self._one) > 4096:  # ids are the callers' to choose: bound what they can make us keep
                self._one.clear()
            cached = self._one[node_id] = _Cached(lambda: self._read_one(node_id), self.cache_seconds)
        return cached

    async def _read_one(self, node_id: str) -> NodeEntry | None:
        online = await self.etcd.get(records.node_key(self.prefix, node_id))
        seen = await self.etcd.get(records.seen_key(self.prefix, node_id))
        return _entry(node_id, online, seen)

    async def _read_all(self) -> dict[str, NodeEntry]:
        online = await self.etcd.range(records.nodes_prefix(self.prefix), prefix=True)
        # The same revision for both, so that a node that went offline between the two
        # reads is not missed by both.
        seen = await self.etcd.range(records.seen_prefix(self.prefix), prefix=True, revision=online.revision)
        by_id_online = {kv.key.decode(errors="replace").rpartition("/")[2]: kv for kv in online.kvs}
        by_id_seen = {kv.key.decode(errors="replace").rpartition("/")[2]: kv for kv in seen.kvs}
        nodes = {}
        for node_id in by_id_online.keys() | by_id_seen.keys():
            entry = _entry(node_id, by_id_online.get(node_id), by_id_seen.get(node_id))
            if entry is not None:
                nodes[node_id] = entry
        return nodes
