"""cluster.Federation: this node's place in the tree. As a parent it keeps the registry of
its children and calls them (delegation, pass-through); as a child it runs the uplink."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import yarl

from cnetd.cluster import relay
from cnetd.cluster.registry import NodeRegistry
from cnetd.cluster.report import NODE_ID_PATTERN
from cnetd.cluster.uplink import Uplink, describe
from cnetd.config import Config
from cnetd.errors import DomainError, Invalid, Unavailable
from cnetd.store.db import Database

# Delegated calls may wait for a prediction (?wait=true), so they get the time a
# prediction task may take, plus a margin.
CALL_MARGIN_SECONDS = 30.0
HOP_HEADER = "X-CNET-Forwarded-By"
HOPS_HEADER = "X-CNET-Forwarded-By-Hops"
MAX_HOPS = 8


def advertised_url(config: Config) -> str:
    if config.agent.advertise_url:
        return config.agent.advertise_url
    host = config.agent.address
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.agent.tls.enabled else "http"
    return f"{scheme}://{host}:{config.agent.port}"


class Federation:
    def __init__(self, config: Config, db: Database, node_id: str,
                 own_report: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.config = config
        self.node_id = node_id
        self.url = advertised_url(config)
        self.registry = NodeRegistry(db, node_id)
        self._own_report = own_report
        self._session: aiohttp.ClientSession | None = None
        self.uplink: Uplink | None = None
        self.relay_limits = relay.Limits(seconds=config.ml.timeout + CALL_MARGIN_SECONDS)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Federation.start() was not called"
        return self._session

    async def start(self) -> None:
        # No cookie jar, no environment proxies: calls go straight to the nodes named.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        # Every node accepts children; enabled with no servers (the original's "discovery
        # server") is a root that reports to no one.
        if self.config.discovery.enabled and self.config.discovery.servers:
            self.uplink = Uplink(self.config.discovery, self.config.agent.heartbeat, self.session, self.report)
            self.uplink.start()

    async def stop(self) -> None:
        if self.uplink is not None:
            await self.uplink.stop()
        if self._session is not None:
            await self._session.close()

    async def report(self) -> dict[str, Any]:
        """This node's heartbeat body."""
        body = await self._own_report()
        body.update(node_id=self.node_id, url=self.url, interval=self.config.agent.heartbeat,
                    children=len(await self.registry.list()))
        return body

    def parent_json(self) -> dict[str, Any] | None:
        return None if self.uplink is None else self.uplink.to_json()

    # ---- calling children -------------------------------------------------------------

    def target_of(self, body: Any) -> str | None:
        """The child a create request names in "node_id" (removed from body), or None for
        this node."""
        if not isinstance(body, dict) or "node_id" not in body:
            return None
        node_id = body.pop("node_id")
        if node_id is None or node_id == self.node_id:
            return None
        if not isinstance(node_id, str) or not NODE_ID_PATTERN.match(node_id):
            raise Invalid("node_id", "must be a node id (GET /api/nodes lists them)")
        return node_id

    async def call(
        self, node_id: str, method: str, path_qs: str, body: bytes | None, headers: Mapping[str, str],
        field: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to a child; the caller reads (and releases) the response."""
        row, token = await self.registry.reachable(node_id, field)
        hops_text = headers.get(HOPS_HEADER, "0")
        hops = int(hops_text) if hops_text.isdigit() else 0
        if hops >= MAX_HOPS:
            raise DomainError(f"request passed through {hops} nodes already; is there a loop in the cluster?")
        out = {HOP_HEADER: self.node_id, HOPS_HEADER: str(hops + 1), **relay.REQUEST_HEADERS}
        for name in ("Content-Type", "Accept", "Last-Event-ID"):
            if name in headers:
                out[name] = headers[name]
        if token:
            out["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(total=None, connect=self.config.discovery.timeout,
                                        sock_read=self.config.ml.timeout + CALL_MARGIN_SECONDS)
        try:
            return await self.session.request(method, yarl.URL(row.url + path_qs, encoded=True), data=body,
                                              headers=out, timeout=timeout, allow_redirects=False,
                                              auto_decompress=False)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise Unavailable(f"node {node_id} ({row.url}) did not answer: {describe(exc)}",
                              {"node_id": node_id}) from None
