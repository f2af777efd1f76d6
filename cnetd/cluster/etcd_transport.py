"""How a request reaches etcd: endpoints in rotation, a deadline per call, TLS, the auth token.

A call tries the endpoint that answered last; when it cannot connect, times out or answers
5xx, the next endpoint becomes current and the call goes on there, within one deadline for
the whole call. Each endpoint gets a share of it (timeout / endpoints, at least
min_attempt_timeout), so a hung member costs a slice of the call, not all of it. A call that
has gone round every endpoint raises EtcdUnavailable naming each one and why it failed.

A request that may have reached etcd before its answer was lost is retried elsewhere only
when doing it twice is harmless (every call but a txn); a txn raises EtcdOutcomeUnknown.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from cnetd.cluster.etcd_errors import (
    EtcdAuthError,
    EtcdOutcomeUnknown,
    EtcdRequestError,
    EtcdUnavailable,
)

Json = dict[str, Any]

AUTHENTICATE_PATH = "/v3/auth/authenticate"

# gRPC codes etcd puts in its answers (google.golang.org/grpc/codes).
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7

# etcd's messages (api/v3rpc/rpctypes) that mean "the token is missing or stale: log in again".
TOKEN_PROBLEMS = (
    "etcdserver: invalid auth token",
    "etcdserver: user name is empty",  # the request carried no token, and auth is on
    "etcdserver: revision of auth store is old",
)
AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd. timeout bounds a whole call, every endpoint tried included: keep
    it well under a lease's TTL, so that a keepalive that fails leaves time for another."""

    endpoints: tuple[str, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # trust these CAs for https endpoints (default: the system's)
    cert_file: str | None = None  # client certificate, for etcd's --client-cert-auth
    key_file: str | None = None
    timeout: float = 2.0
    min_attempt_timeout: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str) or not self.endpoints:
            raise ValueError("etcd endpoints: expected a list of http(s)://host:port URLs")
        object.__setattr__(self, "endpoints", tuple(_endpoint(e) for e in self.endpoints))
        if (self.username is None) != (self.password is None):
            raise ValueError("etcd auth: give both username and password, or neither")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("etcd TLS: give both cert_file and key_file, or neither")
        if not self.timeout > 0 or not self.min_attempt_timeout > 0:
            raise ValueError("etcd timeout: expected a positive number of seconds")

    def attempt_timeout(self) -> float:
        return min(self.timeout, max(self.timeout / len(self.endpoints), self.min_attempt_timeout))


def _endpoint(text: str) -> str:
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/") \
            or url.query_string or url.fragment or url.user:
        raise ValueError(f"etcd endpoint {text!r}: expected http(s)://host:port")
    return str(url.origin())


def ssl_context(options: EtcdOptions) -> ssl.SSLContext | None:
    """The context for https endpoints, or None to use aiohttp's default (system CAs)."""
    if options.ca_file is None and options.cert_file is None:
        return None
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.cert_file is not None:
        context.load_cert_chain(options.cert_file, options.key_file)
    return context


class EndpointFailed(Exception):
    """One endpoint gave no usable answer; maybe_applied: the request may have reached it."""

    def __init__(self, why: str, maybe_applied: bool) -> None:
        super().__init__(why)
        self.why = why
        self.maybe_applied = maybe_applied


def request_error(endpoint: str, http_status: int, code: int | None, message: str) -> EtcdRequestError:
    """etcd's refusal as an exception; an auth problem as EtcdAuthError."""
    auth = code in (UNAUTHENTICATED, PERMISSION_DENIED) or message in TOKEN_PROBLEMS \
        or message.startswith("etcdserver: authentication failed")
    return (EtcdAuthError if auth else EtcdRequestError)(endpoint, http_status, code, message)


def read_answer(endpoint: str, status: int, raw: bytes) -> Json:
    """The JSON of an answer; raise for an error answer (EndpointFailed for 5xx and for what
    is not etcd's JSON at all, so that the call moves on to another endpoint)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        snippet = raw[:80].decode("utf-8", "replace").strip()
        raise EndpointFailed(f"HTTP {status}, not an etcd v3 JSON gateway answer: {snippet!r}",
                             maybe_applied=status >= 500)
    if status < 400:
        return data
    code = data.get("code")
    message = str(data.get("message") or data.get("error") or raw[:200].decode("utf-8", "replace"))
    if status >= 500:
        raise EndpointFailed(f"HTTP {status}: {message}", maybe_applied=True)
    raise request_error(endpoint, status, code if isinstance(code, int) else None, message)


class EtcdAuth:
    """Username and password, traded for a token once and again whenever etcd refuses it.

    etcd's simple tokens live in the members' memory: they go stale when a member
    restarts and after --auth-token-ttl of disuse, hence "again"."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self.token: str | None = None  # "" once etcd said auth is not enabled
        self._lock = asyncio.Lock()

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.token} if self.token else {}

    async def ensure(self, post: Callable[[Json], Awaitable[Json]]) -> None:
        if self.token is None:
            await self.renew(None, post)

    async def renew(self, stale: str | None, post: Callable[[Json], Awaitable[Json]]) -> None:
        """Log in, unless another call already replaced the stale token meanwhile."""
        async with self._lock:
            if self.token != stale:
                return
            try:
                answer = await post({"name": self.username, "password": self._password})
            except EtcdRequestError as err:
                if err.message == AUTH_NOT_ENABLED:
                    self.token = ""
                    return
                raise EtcdAuthError(err.endpoint, err.http_status, err.code,
                                    f"{err.message} (as user {self.username!r})") from None
            self.token = str(answer.get("token") or "")


class EtcdTransport:
    """POSTs JSON to etcd's gateway through one aiohttp session, endpoint by endpoint."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        # HTTP requests sent, by gateway path (each try on each endpoint counts; a watch
        # counts once per stream opened): what this client costs etcd, for benchmarks.
        self.requests: Counter[str] = Counter()
        self.auth = EtcdAuth(options.username, options.password) \
            if options.username is not None and options.password is not None else None

    @property
    def endpoint(self) -> str:
        """The endpoint the next call tries first."""
        return self.options.endpoints[self._current]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No connection limit: each watch holds a connection for as long as it runs.
            connector = aiohttp.TCPConnector(limit=0, ssl=ssl_context(self.options) or True)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def rotation(self) -> Iterator[tuple[int, str]]:
        """Every endpoint once, the current one first."""
        endpoints, first = self.options.endpoints, self._current
        for step in range(len(endpoints)):
            index = (first + step) % len(endpoints)
            yield index, endpoints[index]

    def mark_failed(self, index: int) -> None:
        # Only the first of several calls failing on the same endpoint moves on, so that
        # concurrent failures do not skip over a healthy endpoint.
        if self._current == index:
            self._current = (index + 1) % len(self.options.endpoints)

    async def call(self, path: str, body: Json, *, idempotent: bool = True) -> Json:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout
        failures: list[tuple[str, str]] = []
        for index, endpoint in self.rotation():
            remaining = deadline - loop.time()
            if remaining <= 0:
                failures.append((endpoint, "not tried: the call's time was spent"))
                continue
            try:
                return await self._authorized(endpoint, path, body, min(remaining, self.options.attempt_timeout()))
            except EndpointFailed as failed:
                failures.append((endpoint, failed.why))
                self.mark_failed(index)
                if failed.maybe_applied and not idempotent:
                    raise EtcdOutcomeUnknown(failures) from None
        raise EtcdUnavailable(failures)

    async def _authorized(self, endpoint: str, path: str, body: Json, timeout: float) -> Json:
        if self.auth is None:
            return await self.post(endpoint, path, body, timeout)
        try:
            async with asyncio.timeout(timeout):  # logging in (again) included
                login = self.login(endpoint, timeout)
                await self.auth.ensure(login)
                token = self.auth.token
                try:
                    return await self.post(endpoint, path, body, timeout)
                except EtcdRequestError as err:
                    if err.message not in TOKEN_PROBLEMS:
                        raise
                await self.auth.renew(token, login)
                return await self.post(endpoint, path, body, timeout)
        except TimeoutError:
            raise EndpointFailed(f"no answer within {timeout:.2g}s", maybe_applied=True) from None

    def login(self, endpoint: str, timeout: float) -> Callable[[Json], Awaitable[Json]]:
        async def post(credentials: Json) -> Json:
            return await self.post(endpoint, AUTHENTICATE_PATH, credentials, timeout, with_token=False)
        return post

    def headers(self, with_token: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if with_token and self.auth is not None:
            headers.update(self.auth.headers())
        return headers

    async def post(self, endpoint: str, path: str, body: Json, timeout: float, with_token: bool = True) -> Json:
        """One request to one endpoint; raises EndpointFailed or EtcdRequestError."""
        self.requests[path] += 1
        try:
            async with self.session().post(
                endpoint + path, data=json.dumps(body), headers=self.headers(with_token),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _failure(err, timeout) from None
        return read_answer(endpoint, status, raw)

    async def open_stream(self, endpoint: str, path: str, body: Json, connect_timeout: float,
                          extra_headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """A streamed answer (a watch), open once its headers came; the caller closes it."""
        self.requests[path] += 1
        try:
            response = await self.session().post(
                endpoint + path, data=json.dumps(body), headers={**self.headers(), **(extra_headers or {})},
                timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=None),
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _failure(err, connect_timeout) from None
        if response.status != 200:
            try:
                raw = await asyncio.wait_for(response.read(), connect_timeout)
            except (aiohttp.ClientError, TimeoutError) as err:
                raise _failure(err, connect_timeout) from None
            finally:
                response.release()
            read_answer(endpoint, response.status, raw)
            raise EndpointFailed(f"HTTP {response.status}", maybe_applied=False)
        return response


def _failure(err: aiohttp.ClientError | TimeoutError, timeout: float) -> EndpointFailed:
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return EndpointFailed(f"TLS: {err.certificate_error}", maybe_applied=False)
    if isinstance(err, aiohttp.ClientConnectorSSLError):
        return EndpointFailed(f"TLS: {err.os_error}", maybe_applied=False)
    if isinstance(err, aiohttp.ClientConnectorError):
        reason = os.strerror(err.os_error.errno) if err.os_error.errno else str(err.os_error or err)
        return EndpointFailed(f"cannot connect: {reason}", maybe_applied=False)
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return EndpointFailed(f"cannot connect: timed out after {timeout:.2g}s", maybe_applied=False)
    if isinstance(err, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return EndpointFailed(f"no answer within {timeout:.2g}s", maybe_applied=True)
    if isinstance(err, aiohttp.ClientOSError) and isinstance(err.__cause__, ssl.SSLError):
        # The server refused the handshake (no or a wrong client certificate): nothing was sent.
        return EndpointFailed(f"TLS: {err.__cause__}", maybe_applied=False)
    if isinstance(err, aiohttp.ServerDisconnectedError):
        # Also what a kept-alive connection to a member that has since died gives.
        return EndpointFailed("the connection closed before an answer", maybe_applied=True)
    return EndpointFailed(f"{type(err).__name__}: {err}", maybe_applied=True)
