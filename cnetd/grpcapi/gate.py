"""Who may call the gRPC service: the HTTP API's rules (cnetd/security/auth.py, callers.py).

With auth.tokens set, every call needs `authorization: Bearer <token>` metadata
(UNAUTHENTICATED otherwise). When tasks run under uids of their own, a call without a valid
token from a task's uid (or from a local client whose owner cannot be told) is refused with
PERMISSION_DENIED, as HTTP answers 403. The bind rule (no non-loopback address without a
token) holds because gRPC listens on agent.address, which create_app checks."""

from __future__ import annotations

import ipaddress
from typing import Any

import grpc
from grpc import aio

from cnetd.security.auth import Authenticator
from cnetd.security.callers import Caller, TaskCallerGuard

Context = aio.ServicerContext[Any, Any]


def bearer(metadata: Any) -> str | None:
    """The token of the `authorization: Bearer <token>` metadata entry, if there is one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def peer_address(peer: str) -> tuple[str, int] | None:
    """("127.0.0.1", 51234) from gRPC's "ipv4:127.0.0.1:51234" (or "ipv6:[::1]:51234")."""
    kind, _, rest = peer.partition(":")
    host, _, port = rest.rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class Gate:
    def __init__(self, auth: Authenticator, guard: TaskCallerGuard, address: str, port: int) -> None:
        self.auth = auth
        self.guard = guard
        self.address = address
        self.port = port

    async def check(self, context: Context) -> None:
        """Returns when the caller may call; else aborts the call with its status."""
        token = bearer(context.invocation_metadata())
        token_ok = token is not None and self.auth.token_ok(token)
        if self.auth.enabled and not token_ok:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "authentication required: send authorization: Bearer <token> metadata")
        if self.guard.enabled and not token_ok:
            caller = await self._caller(context.peer())
            if caller.refused_without_token:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, self.guard.refusal(caller))

    async def _caller(self, peer: str) -> Caller:
        client = peer_address(peer)
        if client is None:
            return Caller(unknown=f"the connection has no TCP addresses ({peer[:60]})")
        return await self.guard.identify(client, (self._local_host(client[0]), self.port))

    def _local_host(self, client_host: str) -> str:
        """The address the client reached: agent.address when it is one address; a name
        (localhost) is its loopback address in the client's family."""
        try:
            return str(ipaddress.ip_address(self.address))
        except ValueError:
            return "::1" if ":" in client_host else "127.0.0.1"
