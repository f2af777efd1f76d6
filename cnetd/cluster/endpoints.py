"""Where a served model answers: each node's ready replicas in etcd, and the choice of a node
to send a V2 request to when this node cannot answer it itself.

`<prefix>/serving/<model_name>/<node_id>` (records.ServingEndpoint) hangs on the node's
lease: it is written while the node has ready replicas of the model and vanishes with the
node. EndpointPublisher keeps this node's keys in step with its ServingManager (a look
every PUBLISH_INTERVAL, a write only when something changed, all of them again after a
re-registration); EndpointTable reads the other nodes' keys for a name (cached for
CACHE_SECONDS, the last answer kept while etcd is away) and orders them: nodes that never
failed first, taking turns (round robin), then those that failed, the longest ago first.

Records are read as hostile: one that does not decode, or whose name or node id is not the
one its key says, is skipped. The address a request is sent to is never the record's: the
caller resolves the node id through the node directory (PeerCaller).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from cnetd.background import cancel_and_wait, wait_event
from cnetd.clock import utc_now
from cnetd.cluster import records
from cnetd.cluster.etcd import EtcdClient, EtcdError, KeyValue
from cnetd.cluster.records import MODEL_NAME_PATTERN, NODE_ID_PATTERN, ServingEndpoint
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.served import Served

log = logging.getLogger(__name__)

PUBLISH_INTERVAL = 0.5
CACHE_SECONDS = 0.5
MAX_CACHED_NAMES = 4096


def parse_endpoint(kv: KeyValue, prefix: str) -> ServingEndpoint | None:
    """The endpoint at one serving/ key, or None when it cannot be trusted: a node writes its
    endpoints on its lease only (one that outlives its node is not one), and the record must
    name the model and node its key names."""
    if kv.lease == 0:
        return None
    key = kv.key.decode(errors="replace")
    name, _, node_id = key[len(records.serving_prefix(prefix)):].rpartition("/")
    try:
        endpoint = records.decode(kv.value, ServingEndpoint)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if endpoint.name != name or endpoint.node_id != node_id or not NODE_ID_PATTERN.match(node_id):
        return None
    return endpoint


class EndpointPublisher:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, url: str, lease: Callable[[], int],
                 serving: ServingManager, sha256_of: Callable[[Served], Awaitable[str]],
                 interval: float = PUBLISH_INTERVAL) -> None:
        """lease(): this node's membership lease now (0: none). sha256_of: the artifact's
        sha256 of a served model ("" when it cannot be read)."""
        self.etcd = etcd
        self.prefix = prefix
        self.node_id = node_id
        self.url = url
        self._lease = lease
        self.serving = serving
        self._sha256_of = sha256_of
        self.interval = interval
        self._published: dict[str, ServingEndpoint] = {}  # name -> as written, updated_at blank
        self._published_lease = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-serving-endpoints")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def changed(self) -> None:
        self._wake.set()

    def rejoined(self) -> None:
        """A new lease: the keys on the old one are gone, write them all again."""
        self._published_lease = 0
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval)
            self._wake.clear()
            try:
                await self.sync()
                if self._failing:
                    log.info("cluster: serving endpoints written again")
                self._failing = False
            except EtcdError as exc:
                if not self._failing:
                    log.warning("cluster: cannot write this node's serving endpoints to etcd (%s); retrying",
                                " ".join(str(exc).split()))
                self._failing = True

    def wanted(self) -> dict[str, Served]:
        """The served models this node should be listed for: per name, the one that answers
        the bare name here (the newest), when it has a ready replica."""
        out: dict[str, Served] = {}
        for served in self.serving.all_served():
            if served.ready_replicas <= 0 or not MODEL_NAME_PATTERN.match(served.name):
                continue
            if self.serving.find(served.name) is served:
                out[served.name] = served
        return out

    async def sync(self) -> None:
        lease = self._lease()
        if not lease:
            return  # not registered: nothing can hang on a lease now
        if lease != self._published_lease:
            self._published = {}
            self._published_lease = lease
        wanted = self.wanted()
        for name, served in wanted.items():
            endpoint = ServingEndpoint(
                name=name, model_id=served.id, node_id=self.node_id, sha256=await self._sha256_of(served),
                ready_replicas=served.ready_replicas, replicas=served.spec.replicas, advertise_url=self.url,
            )
            if self._published.get(name) == endpoint:
                continue
            stamped = msgspec.structs.replace(endpoint, updated_at=utc_now())
            await self.etcd.put(records.serving_key(self.prefix, name, self.node_id), records.encode(stamped), lease=lease)
            self._published[name] = endpoint
        for name in [n for n in self._published if n not in wanted]:
            await self.etcd.delete(records.serving_key(self.prefix, name, self.node_id))
            del self._published[name]

    async def withdraw(self) -> None:
        """Delete this node's keys now (a clean stop: callers go elsewhere at once)."""
        for name in list(self._published):
            await self.etcd.delete(records.serving_key(self.prefix, name, self.node_id))
            del self._published[name]


@dataclass
class _Cached:
    read_at: float
    endpoints: list[ServingEndpoint]


class EndpointTable:
    def __init__(self, etcd: EtcdClient, prefix: str, node_id: str, cache_seconds: float = CACHE_SECONDS) -> None:
        self.etcd = etcd
        self.prefix = prefix
        self.node_id = node_id
        self.cache_seconds = cache_seconds
        self._cache: dict[str, _Cached] = {}
        self._failed: dict[str, float] = {}  # node id -> when a call to it last failed (monotonic)
        self._turn = 0

    async def all(self, name: str) -> list[ServingEndpoint]:
        """Every node's endpoint of this name, this node's included. EtcdError when etcd
        does not answer and nothing is known of the name."""
        if not MODEL_NAME_PATTERN.match(name):
            return []
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached.read_at < self.cache_seconds:
            return cached.endpoints
        try:
            found = await self.etcd.range(records.serving_prefix(self.prefix, name), prefix=True)
        except EtcdError:
            if cached is None:
                raise
            return cached.endpoints  # what was last known: those nodes may well still answer
        endpoints = [e for kv in found.kvs if (e := parse_endpoint(kv, self.prefix)) is not None]
        if len(self._cache) >= MAX_CACHED_NAMES:  # names are the callers' to choose
            self._cache.clear()
        self._cache[name] = _Cached(time.monotonic(), endpoints)
        return endpoints

    async def live(self, name: str, version: str | None = None) -> list[ServingEndpoint]:
        """The other nodes with ready replicas of name (of that version, a model id), in the
        order to try them."""
        candidates = [e for e in await self.all(name)
                      if e.node_id != self.node_id and e.ready_replicas > 0 and (version is None or e.model_id == version)]
        fresh = [e for e in candidates if e.node_id not in self._failed]
        failed = sorted((e for e in candidates if e.node_id in self._failed), key=lambda e: self._failed[e.node_id])
        if fresh:
            self._turn += 1
            turn = self._turn % len(fresh)
            fresh = fresh[turn:] + fresh[:turn]
        return fresh + failed

    def failed(self, node_id: str) -> None:
        self._failed[node_id] = time.monotonic()

    def answered(self, node_id: str) -> None:
        self._failed.pop(node_id, None)
