"""Tasks cannot use the agent's API unless they were given a token.

When the agent runs as root, tasks run under uids of their own (task_uid_predicate). On a
connection's first request without a valid bearer token, the uid that owns the client's
socket is looked up (security.peer: one netlink sock_diag round trip) and kept for the
connection's life. A task uid, or a client on this host whose owner can no longer be told
(its socket was closed or reset before the check), gets 403 unless it sends a valid bearer
token. Every connection is looked up, not only loopback ones: a task may connect to any of
the host's addresses (or, on a host with local routes, to addresses no interface lists),
and a socket that is not on this host is simply not found; such remote clients are left to
the token check and the bind policy, as before. Why this mechanism, and where it does not
apply: security/peer.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cnetd.api.errors import error_response
from cnetd.config import Config, ConfigError
from cnetd.security.auth import Authenticator
from cnetd.security.hosts import interface_addresses
from cnetd.security.identity import Identities
from cnetd.security.peer import UNAVAILABLE, PeerLookup
from cnetd.security.privilege import task_uid_predicate

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REFRESH_EVERY = 1.0  # seconds between re-reads of the interface addresses on a miss


def tasks_have_their_own_uids(config: Config, euid: int | None = None) -> bool:
    """Whether any task uid differs from the agent's own (only then can the two be told apart)."""
    try:
        return Identities.from_config(config, euid).drops_privileges
    except ConfigError:
        return False


class ConnectionMemo:
    """What was learnt about each open connection, forgotten with it. Keyed weakly by the
    transport; uvloop's TLS transport takes no weak reference, so such a transport is held
    by its id beside the object itself (the id cannot be reused while it is held) and let go
    once it is closing, at the next connection remembered."""

    def __init__(self) -> None:
        self._weak: weakref.WeakKeyDictionary[object, Caller] = weakref.WeakKeyDictionary()
        self._held: dict[int, tuple[asyncio.BaseTransport, Caller]] = {}

    def get(self, transport: asyncio.BaseTransport) -> Caller | None:
        try:
            return self._weak.get(transport)
        except TypeError:
            held = self._held.get(id(transport))
            return held[1] if held is not None and held[0] is transport else None

    def remember(self, transport: asyncio.BaseTransport, caller: Caller) -> None:
        try:
            self._weak[transport] = caller
        except TypeError:
            self._held = {key: held for key, held in self._held.items() if not held[0].is_closing()}
            self._held[id(transport)] = (transport, caller)

    def __len__(self) -> int:
        return len(self._weak) + len(self._held)


@dataclass(frozen=True)
class Caller:
    """Who is at the other end of one connection, as far as the guard cares."""

    task_uid: int | None = None  # the owner's uid when it is a task uid
    unknown: str | None = None  # why the owner of a local client cannot be told

    @property
    def refused_without_token(self) -> bool:
        return self.task_uid is not None or self.unknown is not None


ANYONE = Caller()


class TaskCallerGuard:
    def __init__(self, config: Config, lookup: PeerLookup | None = None, euid: int | None = None) -> None:
        self.enabled = tasks_have_their_own_uids(config, euid)
        self.tokens_configured = bool(config.auth.tokens)
        self._is_task_uid = self._task_uids(config, euid)
        self._lookup = lookup if lookup is not None or not self.enabled else PeerLookup()
        self._callers = ConnectionMemo()
        self._addresses: set[str] = set()
        self._read_at = float("-inf")
        if self.enabled and self._lookup is not None and self._lookup.method == UNAVAILABLE:
            log.error("cannot tell which user opens a local connection (no netlink sock_diag, no /proc/net/tcp): "
                      "every local request without a token is refused")

    @staticmethod
    def _task_uids(config: Config, euid: int | None) -> Callable[[int], bool]:
        return task_uid_predicate(config, euid)

    async def caller(self, request: web.Request) -> Caller:
        """The connection's caller, looked up on its first request and kept."""
        transport = request.transport
        if transport is None:
            return Caller(unknown="the connection is already closed")
        known = self._callers.get(transport)
        if known is None:
            known = await self._identify(transport.get_extra_info("peername"), transport.get_extra_info("sockname"))
            self._callers.remember(transport, known)
        return known

    async def identify(self, peer: tuple[str, int], local: tuple[str, int]) -> Caller:
        """The caller at the client end of the connection peer -> local (for the gRPC
        service, whose connections are not aiohttp transports)."""
        return await self._identify(peer, local)

    async def _identify(self, peer: tuple[str, int] | None, local: tuple[str, int] | None) -> Caller:
        if not peer or not local or not isinstance(peer, tuple):
            return Caller(unknown="the connection has no TCP addresses")
        assert self._lookup is not None
        try:
            owner = await self._lookup.find(peer[:2], local[:2])
        except (OSError, ValueError) as exc:
            log.warning("cannot look up the owner of the connection from %s: %s", peer[0], exc)
            return Caller(unknown=f"its owner could not be looked up ({exc})") if self._is_local(peer[0], local[0]) else ANYONE
        if owner is None:
            if self._is_local(peer[0], local[0]):
                return Caller(unknown="its client socket was gone before its owner could be checked")
            return ANYONE
        if not owner.open:
            return Caller(unknown="its client socket was closed before its owner could be checked")
        return Caller(task_uid=owner.uid) if self._is_task_uid(owner.uid) else ANYONE

    def _is_local(self, peer_host: str, local_host: str) -> bool:
        """Whether a client at peer_host runs on this host (so its socket should have been found)."""
        address = ipaddress.ip_address(peer_host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        text = str(address)
        if address.is_loopback or text == local_host or text in self._addresses:
            return True
        if time.monotonic() - self._read_at >= REFRESH_EVERY:
            self._addresses, self._read_at = interface_addresses(), time.monotonic()
        return text in self._addresses

    def refusal(self, caller: Caller) -> str:
        if caller.task_uid is not None:
            why = f"this connection comes from uid {caller.task_uid}, which runs this agent's tasks"
        else:
            why = f"cannot tell which local user opened this connection: {caller.unknown}"
        if self.tokens_configured:
            how = "give the task a token from auth.tokens and send it as Authorization: Bearer <token>"
        else:
            how = "this agent has no tokens configured (auth.tokens), so a task can never use its API"
        return f"tasks may not use this agent's API without a token ({why}); {how}"


async def caller_refusal(guard: TaskCallerGuard, auth: Authenticator, request: web.Request) -> web.Response | None:
    """The 403 for a task's connection without a valid token, or None (call it only when
    guard.enabled)."""
    if auth.bearer_ok(request):
        return None
    caller = await guard.caller(request)
    if caller.refused_without_token:
        return error_response(403, guard.refusal(caller), {"reason": "task_without_token"})
    return None


def caller_guard_middleware(guard: TaskCallerGuard,
                            auth: Authenticator) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if guard.enabled:
            refused = await caller_refusal(guard, auth, request)
            if refused is not None:
                return refused
        return await handler(request)

    return middleware
