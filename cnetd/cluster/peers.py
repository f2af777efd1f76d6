"""Calls from this agent to another agent of its cluster (the pass-through
/api/nodes/{id}/..., and creates sent on to the node a body names).

The node's address comes from etcd (NodeDirectory.resolve: its advertise_url), never from
the caller. The call carries the cluster token (X-CNET-Cluster-Token), which the other
agent checks instead of an API token, and the hop headers that stop a loop; of the
caller's headers only Content-Type (or its absence), Accept, Last-Event-ID and V2's
Inference-Header-Content-Length go on (never its Authorization or cookies); the body goes
on byte for byte. The answer comes back under the relay's rules (cluster.relay).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import yarl

from cnetd.cluster import relay
from cnetd.cluster.directory import NodeDirectory
from cnetd.errors import BadGateway, DomainError, Invalid, NotFound, TimedOut, Unavailable
from cnetd.ml.serving.binary import HEADER as BINARY_HEADER
from cnetd.security.cluster_token import ClusterToken

# Calls may wait for a prediction (?wait=true), so they get the time a prediction task may
# take, plus a margin.
CALL_MARGIN_SECONDS = 30.0
CONNECT_SECONDS = 5.0
HOP_HEADER = "X-CNET-Forwarded-By"
HOPS_HEADER = "X-CNET-Forwarded-By-Hops"
MAX_HOPS = 8
PASSED_HEADERS = ("Content-Type", "Accept", "Last-Event-ID", BINARY_HEADER)
MAX_JSON_ANSWER = 4 * 1024 * 1024  # a task, its events or its log tail, read whole


def describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class PeerCaller:
    def __init__(self, node_id: str, directory: NodeDirectory, token: ClusterToken, answer_seconds: float,
                 inference_bytes: int = relay.MAX_ANSWER_BYTES) -> None:
        self.node_id = node_id
        self.directory = directory
        self.token = token
        self.answer_seconds = answer_seconds + CALL_MARGIN_SECONDS
        self.relay_limits = relay.Limits(seconds=self.answer_seconds, inference_bytes=inference_bytes)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "PeerCaller.start() was not called"
        return self._session

    async def start(self) -> None:
        # No cookie jar, no environment proxies: calls go straight to the node named.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self, node_id: str, method: str, path_qs: str, body: bytes | None, headers: Mapping[str, str],
        field: str | None = None,
    ) -> aiohttp.ClientResponse:
        """Send one request to node_id; the caller reads (and releases) the answer. field:
        the request field that named the node (a 400 naming it when there is no such node)."""
        try:
            url = await self.directory.resolve(node_id)
        except NotFound as exc:
            if field is None:
                raise
            raise Invalid(field, f"{node_id} is not a node of the cluster (GET /api/nodes lists them)") from exc
        hops_text = headers.get(HOPS_HEADER, "0")
        hops = int(hops_text) if hops_text.isdigit() else 0
        if hops >= MAX_HOPS:
            raise DomainError(f"request passed through {hops} nodes already; is there a loop in the cluster?")
        out: dict[str, Any] = {HOP_HEADER: self.node_id, HOPS_HEADER: str(hops + 1), **relay.REQUEST_HEADERS,
                               **self.token.headers()}
        for name in PASSED_HEADERS:
            if name in headers:
                out[name] = headers[name]
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_SECONDS, sock_read=self.answer_seconds)
        try:
            # skip_auto_headers: no Content-Type of aiohttp's making for a body sent without one
            # (the Triton client's binary requests), so the node sees the request as sent here.
            return await self.session.request(method, yarl.URL(url + path_qs, encoded=True), data=body,
                                              headers=out, timeout=timeout, allow_redirects=False,
                                              auto_decompress=False, skip_auto_headers=("Content-Type",))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            self.directory.forget(node_id)  # read its address afresh next time
            raise Unavailable(f"node {node_id} ({url}) did not answer: {describe(exc)}", {"node_id": node_id}) from None

    async def json_call(self, node_id: str, method: str, path_qs: str, body: object = None, seconds: float = 10.0,
                        max_bytes: int = MAX_JSON_ANSWER) -> tuple[int, object]:
        """One call whose answer is JSON, read whole: (status, decoded body). For the UI,
        which shows what another node has. path_qs must be a plain path (relay's rules):
        ids in it are the caller's to quote. Unavailable when the node does not answer,
        TimedOut after `seconds`, BadGateway when the answer is not JSON or too big."""
        relay.checked_path(path_qs.split("?", 1)[0])
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {})}
        try:
            async with asyncio.timeout(seconds):
                answer = await self.call(node_id, method, path_qs, data, headers)
                async with answer:
                    if answer.content_length is not None and answer.content_length > max_bytes:
                        raise BadGateway(f"node {node_id} answered with {answer.content_length} bytes, "
                                         f"more than the {max_bytes} read", {"node_id": node_id})
                    raw = await answer.content.read(max_bytes + 1)
                    status = answer.status
                    media = answer.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        except TimeoutError:
            raise TimedOut(f"node {node_id} did not answer within {seconds:g}s", {"node_id": node_id}) from None
        except aiohttp.ClientError as exc:
            self.directory.forget(node_id)
            raise Unavailable(f"node {node_id} broke off its answer: {describe(exc)}", {"node_id": node_id}) from None
        if len(raw) > max_bytes:
            raise BadGateway(f"node {node_id} sent more than the {max_bytes} bytes read", {"node_id": node_id})
        if media != "application/json":
            raise BadGateway(f"node {node_id} answered {status} with {media or 'no Content-Type'}, not JSON",
                             {"node_id": node_id})
        try:
            return status, json.loads(raw)
        except ValueError:
            raise BadGateway(f"node {node_id} answered {status} with a body that is not JSON", {"node_id": node_id}) from None
