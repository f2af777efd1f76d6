"""A watch on a key or a prefix over the gateway's streamed /v3/watch, resumed when it breaks.

The gateway answers a watch with a chunked stream of newline-separated JSON objects, each
wrapped in "result" ({"error": ...} when the stream itself fails). The first has
"created": true; events follow in revision order (a DELETE says "type": "DELETE", a PUT
says nothing, PUT being 0). When the stream breaks (a member died, lost its leader, or the
connection dropped) the watch opens again on the next endpoint from the revision after the
last event it delivered, so the caller sees every event once and in order. A start
revision etcd has compacted away cannot be resumed: iteration raises WatchCompacted, and
the caller lists again and watches from the list's revision + 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from types import TracebackType

import aiohttp

from cnetd.cluster.etcd_errors import EtcdUnavailable, WatchCompacted
from cnetd.cluster.etcd_transport import (
    TOKEN_PROBLEMS,
    EndpointFailed,
    EtcdTransport,
    Json,
    request_error,
)
from cnetd.cluster.etcd_wire import WatchBatch, WatchEvent, encode, number, revision_of

log = logging.getLogger(__name__)

WATCH_PATH = "/v3/watch"
# gRPC metadata through the gateway: a member that loses its raft leader cancels this watch
# ("etcdserver: no leader") instead of keeping it open and silent while the cluster moves on.
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
MAX_MESSAGE = 64 * 1024 * 1024  # one watch answer; etcd's own limit on a request is 1.5 MiB
GRPC_CODES = {"InvalidArgument": 3, "NotFound": 5, "PermissionDenied": 7, "FailedPrecondition": 9,
              "Unavailable": 14, "Unauthenticated": 16}
UNAVAILABLE = GRPC_CODES["Unavailable"]
CANCEL_REASON = re.compile(r"rpc error: code = (\w+) desc = (.*)", re.DOTALL)


class StreamBroken(Exception):
    """The stream ended or failed where another endpoint may serve it: open it again."""


class TokenStale(StreamBroken):
    """etcd refused the watch's auth token: log in again, then open it again."""


class MessageReader:
    """Splits a chunked body into newline-separated JSON objects, whatever the chunking."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._buffer = bytearray()

    async def next(self) -> Json:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    message = None
                if not isinstance(message, dict):
                    raise StreamBroken(f"not a JSON object: {line[:80]!r}")
                return message
            try:
                chunk = await self._content.readany()
            except aiohttp.ClientError as err:
                raise StreamBroken(f"{type(err).__name__}: {err}") from None
            if not chunk:
                if self._buffer.strip():
                    raise StreamBroken(f"the stream ended inside a message: {bytes(self._buffer[:80])!r}")
                raise StreamBroken("the stream ended")
            if len(self._buffer) + len(chunk) > MAX_MESSAGE:
                raise StreamBroken(f"a message over {MAX_MESSAGE} bytes")
            self._buffer += chunk


def check_message(endpoint: str, message: Json) -> Json:
    """The "result" of a message that reports no failure; otherwise raise: StreamBroken
    (TokenStale) where opening the watch again can help, WatchCompacted, or etcd's refusal."""
    error = message.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise StreamBroken(str(error))
        code = error.get("grpc_code")
        text = str(error.get("message") or error)
        http_status = number(error.get("http_code"))
        if text in TOKEN_PROBLEMS:
            raise TokenStale(text)
        if code == UNAVAILABLE or http_status >= 500:
            raise StreamBroken(text)
        raise request_error(endpoint, http_status, code if isinstance(code, int) else None, text)
    result: Json = message.get("result") or {}
    if not result.get("canceled"):
        return result
    compacted = number(result.get("compact_revision"))
    if compacted:
        raise WatchCompacted(compacted)
    reason = str(result.get("cancel_reason") or "watch canceled")
    parsed = CANCEL_REASON.match(reason)
    code_name, text = parsed.groups() if parsed else ("", reason)
    if text in TOKEN_PROBLEMS:
        raise TokenStale(text)
    if code_name in ("Unavailable", "") or "no leader" in text:
        raise StreamBroken(text)
    raise request_error(endpoint, 400, GRPC_CODES.get(code_name), text)


class Watch:
    """Use as `async with client.watch(...) as watch: async for batch in watch: ...`.

    Once entered, the watch exists in etcd: a write made after that is seen. With no
    start revision it starts after the store's revision at that moment."""

    def __init__(self, transport: EtcdTransport, key: bytes, range_end: bytes | None,
                 start_revision: int = 0, prev_kv: bool = False, progress_notify: bool = False) -> None:
        self._transport = transport
        self._key = key
        self._range_end = range_end
        self.next_revision = start_revision  # where an opened (or resumed) stream starts; 0: now
        self._prev_kv = prev_kv
        self._progress_notify = progress_notify
        self._response: aiohttp.ClientResponse | None = None
        self._reader: MessageReader | None = None
        self._index = 0  # of the endpoint the stream is open on
        self._closed = False
        self._opened_at = 0.0
        self._breaks: list[tuple[str, str]] = []  # of streams that broke soon after they opened

    async def __aenter__(self) -> Watch:
        await self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        self._drop_stream()

    @property
    def endpoint(self) -> str:
        return self._transport.options.endpoints[self._index]

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        while not self._closed:
            if self._reader is None:
                await self._open()
            assert self._reader is not None
            try:
                batch = self._batch(check_message(self.endpoint, await self._reader.next()))
            except StreamBroken as broken:
                self._broken(str(broken))
                continue
            except BaseException:
                await self.close()
                raise
            if batch is not None:
                return batch
        raise StopAsyncIteration

    def _batch(self, result: Json) -> WatchBatch | None:
        """What to deliver of a result: None for the created notice, or a progress
        notification nobody asked for."""
        if result.get("created"):
            return None
        events = tuple(WatchEvent.from_json(event) for event in result.get("events") or ())
        if events:
            # Not the header's revision: a watch catching up on history gets its events in
            # batches that all carry the store's current revision.
            self.next_revision = max(event.kv.mod_revision for event in events) + 1
        else:
            # etcd sends progress only to a watch that has caught up with the store.
            self.next_revision = max(self.next_revision, revision_of(result) + 1)
            if not self._progress_notify:
                return None
        return WatchBatch(revision=revision_of(result), events=events)

    def _create_request(self) -> Json:
        request: Json = {"key": encode(self._key)}
        if self._range_end is not None:
            request["range_end"] = encode(self._range_end)
        if self.next_revision:
            request["start_revision"] = str(self.next_revision)
        if self._prev_kv:
            request["prev_kv"] = True
        if self._progress_notify:
            request["progress_notify"] = True
        return {"create_request": request}

    async def _open(self) -> None:
        """Open the stream on the first endpoint that creates the watch, within one call's time."""
        failures = list(self._breaks)
        if len(self._breaks) > len(self._transport.options.endpoints):
            self._closed = True
            raise EtcdUnavailable(failures, "etcd watch: every endpoint dropped it as soon as it opened")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._transport.options.timeout
        for index, endpoint in self._transport.rotation():
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append((endpoint, "not tried: the call's time was spent"))
                continue
            try:
                await self._open_on(index, endpoint, min(remaining, self._transport.options.attempt_timeout()))
                return
            except (EndpointFailed, StreamBroken) as failed:
                self._drop_stream()
                failures.append((endpoint, str(failed)))
                self._transport.mark_failed(index)
            except BaseException:
                await self.close()
                raise
        self._closed = True
        raise EtcdUnavailable(failures, "etcd watch unavailable")

    async def _open_on(self, index: int, endpoint: str, timeout: float) -> None:
        auth = self._transport.auth
        for attempt in (1, 2):  # the second after logging in again, if the token was stale
            if auth is not None:
                await auth.ensure(self._transport.login(endpoint, timeout))
            token = auth.token if auth is not None else None
            self._response = await self._transport.open_stream(
                endpoint, WATCH_PATH, self._create_request(), timeout, extra_headers=REQUIRE_LEADER)
            self._reader, self._index = MessageReader(self._response.content), index
            try:
                first = await asyncio.wait_for(self._reader.next(), timeout)
            except TimeoutError:
                raise EndpointFailed(f"no watch created within {timeout:.2g}s", maybe_applied=False) from None
            try:
                result = check_message(endpoint, first)
            except TokenStale:
                self._drop_stream()
                if auth is None or attempt == 2:
                    raise
                await auth.renew(token, self._transport.login(endpoint, timeout))
                continue
            if not self.next_revision:
                self.next_revision = revision_of(result) + 1
            self._opened_at = asyncio.get_running_loop().time()
            return

    def _broken(self, why: str) -> None:
        log.info("etcd watch on %s broke (%s); resuming from revision %d", self.endpoint, why, self.next_revision)
        if asyncio.get_running_loop().time() - self._opened_at > self._transport.options.timeout:
            self._breaks.clear()  # it had worked for a while: a new break, not a flapping one
        self._breaks.append((self.endpoint, why))
        self._drop_stream()
        self._transport.mark_failed(self._index)

    def _drop_stream(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response, self._reader = None, None
