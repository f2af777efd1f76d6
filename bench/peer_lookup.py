"""What finding a connection's owner (cnetd/security/peer.py) costs per connection, next to
the bare cost of the connection itself, measured in the same run.

    .venv/bin/python bench/peer_lookup.py [--connections 2000]

Rows (each the median over N fresh loopback connections, in microseconds):
  - connect + accept + close: the baseline, a plain TCP connection on 127.0.0.1;
  - the same plus a netlink sock_diag lookup of the client's end (what the agent does);
  - the same plus a /proc/net/tcp lookup (the fallback), with --extra idle connections open
    (default 200) so that the table has something to scan, as on a busy node;
  - a whole HTTP GET on a new connection to an aiohttp server in this process (another
    thread), without and with the agent's task-caller guard (which looks the owner up once
    per connection): the cost as a client of the API sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.config import default_config  # noqa: E402
from cnetd.security.auth import Authenticator  # noqa: E402
from cnetd.security.callers import TaskCallerGuard, caller_guard_middleware  # noqa: E402
from cnetd.security.peer import NETLINK, PROC, PeerLookup  # noqa: E402


def series(listener: socket.socket, n: int, after_accept: Callable[[socket.socket], object]) -> list[float]:
    address = listener.getsockname()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        client = socket.create_connection(address)
        server, _ = listener.accept()
        after_accept(server)
        server.close()
        client.close()
        out.append((time.perf_counter() - started) * 1e6)
    return out


@contextmanager
def http_server(guarded: bool) -> Iterator[int]:
    """An aiohttp server on a free loopback port, in a thread; yields the port."""
    middlewares = []
    if guarded:
        with tempfile.TemporaryDirectory() as base:
            guard = TaskCallerGuard(default_config(base), PeerLookup(NETLINK), euid=0)  # as a root agent
        middlewares.append(caller_guard_middleware(guard, Authenticator((), False)))
    app = web.Application(middlewares=middlewares)

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def http_series(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200, response.status
        out.append((time.perf_counter() - started) * 1e6)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--extra", type=int, default=200, help="idle connections held open meanwhile")
    args = parser.parse_args()

    netlink, proc = PeerLookup(NETLINK), PeerLookup(PROC)

    def with_lookup(lookup: PeerLookup) -> Callable[[socket.socket], object]:
        return lambda s: lookup.lookup(s.getpeername()[:2], s.getsockname()[:2])

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(args.extra + 16)
        idle = [socket.create_connection(listener.getsockname()) for _ in range(args.extra)]
        accepted = [listener.accept()[0] for _ in idle]
        try:
            series(listener, 200, lambda s: None)  # warm up
            rows = [
                ("connect + accept + close (baseline)", series(listener, args.connections, lambda s: None)),
                ("  + netlink sock_diag lookup", series(listener, args.connections, with_lookup(netlink))),
                ("  + /proc/net/tcp lookup (fallback)", series(listener, args.connections, with_lookup(proc))),
            ]
            with open("/proc/net/tcp") as tcp:
                table_lines = sum(1 for _ in tcp) - 1
        finally:
            for s in idle + accepted:
                s.close()
    # Both servers at once, requests alternating between them, so that load from elsewhere on
    # the machine falls on both series alike.
    http_rows: list[list[float]] = [[], []]
    with http_server(False) as plain_port, http_server(True) as guarded_port:
        for port in (plain_port, guarded_port):
            http_series(port, 100)  # warm up
        for _ in range(args.connections):
            http_rows[0] += http_series(plain_port, 1)
            http_rows[1] += http_series(guarded_port, 1)

    base = statistics.median(rows[0][1])
    print(f"{args.connections} loopback connections each, {args.extra} other connections open\n")
    print(f"{'':40} {'median µs':>10} {'p90 µs':>10} {'ratio':>7}")
    for name, values in rows:
        median = statistics.median(values)
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"{name:40} {median:10.1f} {p90:10.1f} {median / base:6.2f}x")
    http_base = statistics.median(http_rows[0])
    print()
    for name, values in (("HTTP GET, new connection (baseline)", http_rows[0]),
                         ("  + task-caller guard (one lookup)", http_rows[1])):
        median = statistics.median(values)
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"{name:40} {median:10.1f} {p90:10.1f} {median / http_base:6.2f}x")
    lookup_only = statistics.median(rows[1][1]) - base
    print(f"\nnetlink lookup alone: about {lookup_only:.1f} µs per connection")
    print(f"/proc/net/tcp had {table_lines} sockets (TIME_WAIT included) during its series: the kernel\n"
          "prints the whole table for every read, so the fallback grows with the host's connections")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
