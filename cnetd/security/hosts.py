"""The Host check: a request must name this agent in its Host header (421 otherwise).

A page on another site can make a browser send requests to 127.0.0.1:8080 by pointing its
own name at 127.0.0.1 once the page has loaded (DNS rebinding). The browser then treats
the agent as that site's origin: Origin checks and CORS do not stop it, but the Host
header still carries the attacker's name, so refusing names that are not ours does.

Ours: localhost, every loopback address, the bind address when it is a specific one, the
host name (and its FQDN when the resolver answers quickly), agent.node_name, the host of
agent.advertise_url, every local interface address when bound to 0.0.0.0 or ::, and
agent.allowed_hosts. The port is ignored; names compare without case and without a
trailing dot; IPv6 literals come in brackets. A request without a Host header (HTTP/1.0
tools) is let through: a browser always sends one, and rebinding needs a browser.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable

import psutil
from aiohttp import web

from cnetd.api.errors import error_response
from cnetd.config import Config

log = logging.getLogger(__name__)

CONFIG_KEY = "agent.allowed_hosts"
WILDCARDS = ("0.0.0.0", "::", "")
REFRESH_EVERY = 1.0  # seconds: interface addresses are re-read on a miss at most this often

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_of(header: str) -> str | None:
    """The host part of a Host header, normalised (lower case, no trailing dot, IPv6
    without brackets or zone), or None when it is not a host[:port] at all."""
    text = header.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1:]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        address = _ip(host)
        return None if address is None else str(address)
    if text.count(":") == 1:
        text, port = text.split(":")
        if not port.isdigit():
            return None
    elif ":" in text:  # a bare IPv6 literal: not what RFC 9110 allows, but unambiguous
        address = _ip(text)
        return None if address is None else str(address)
    host = text.rstrip(".").lower()
    return host or None


def _ip(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalise_name(name: str) -> str:
    """A configured name or address in the form host_of() gives."""
    text = name.strip()
    address = _ip(text.strip("[]"))
    return str(address) if address is not None else text.rstrip(".").lower()


def interface_addresses() -> set[str]:
    """Every address of every local interface (psutil.net_if_addrs)."""
    found = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = _ip(entry.address)
                if address is not None:
                    found.add(str(address))
    return found


class AllowedHosts:
    def __init__(self, config: Config, interfaces: Callable[[], set[str]] = interface_addresses) -> None:
        agent = config.agent
        self.wildcard = agent.address.strip() in WILDCARDS
        self._interfaces = interfaces
        names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), agent.node_name, *agent.allowed_hosts]
        if not self.wildcard:
            names.append(agent.address)
        if agent.advertise_url:
            names.append(urllib.parse.urlsplit(agent.advertise_url).hostname or "")
        self.names: set[str] = set()
        self.add(names)
        self._addresses: set[str] = interfaces() if self.wildcard else set()
        self._read_at = time.monotonic()

    def add(self, names: Iterable[str]) -> None:
        self.names = self.names | {normalise_name(n) for n in names if n and n.strip()}  # one rebinding: thread-safe

    def allows(self, host: str) -> bool:
        if host in self.names or host in self._addresses:
            return True
        address = _ip(host)
        if address is None:
            return False
        if address.is_loopback:
            return True
        if self.wildcard and time.monotonic() - self._read_at >= REFRESH_EVERY:  # an address added since
            self._addresses, self._read_at = self._interfaces(), time.monotonic()
            return host in self._addresses
        return False

    def learn_fqdn(self) -> None:
        """Add the host's FQDN once the resolver gives it. socket.getfqdn may wait on DNS for
        many seconds, so it runs in a daemon thread: start-up does not wait for it and exit
        is not held up by it; until it answers, the FQDN is simply not accepted yet."""
        def resolve() -> None:
            try:
                self.add([socket.getfqdn()])
            except OSError as exc:
                log.debug("host check: no FQDN for this host: %s", exc)

        threading.Thread(target=resolve, name="host-check-fqdn", daemon=True).start()


def misdirected(shown: str) -> web.Response:
    return error_response(
        421,
        f"Host '{shown}' is not a name of this agent, so the request is refused (a page on another site "
        f"reaching the agent through DNS rebinding looks like this). If you reach the agent by that name, "
        f"add it to {CONFIG_KEY}.",
        {"host": shown, "config_key": CONFIG_KEY},
    )


def host_refusal(hosts: AllowedHosts, request: web.Request) -> web.Response | None:
    """The 421 for a Host header that does not name this agent, or None."""
    header = request.headers.get("Host")
    if header is not None:
        host = host_of(header)
        if host is None or not hosts.allows(host):
            return misdirected(header.strip()[:255])
    return None
