"""cnetd.security.peer against real sockets: the owner of the client's end of a loopback
connection, through netlink sock_diag and through /proc/net/tcp, for root and for a child
process running as a task uid (setpriv)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator

import pytest

from cnetd.config import UidRange
from cnetd.security.peer import NETLINK, PROC, PeerLookup, SocketOwner, self_test

METHODS = (NETLINK, PROC)
TASK_UID = UidRange().start + 4242
SYSTEM_PYTHON = "/usr/bin/python3"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running a child as another uid needs root")
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed")


def loopback_pair(family: int = socket.AF_INET, host: str = "127.0.0.1",
                  listen_on: str | None = None) -> tuple[socket.socket, socket.socket]:
    """(client, server end) of a fresh loopback connection."""
    with socket.socket(family) as listener:
        listener.bind((listen_on or host, 0))
        listener.listen(1)
        client = socket.create_connection((host, listener.getsockname()[1]), timeout=5)
        server, _ = listener.accept()
    return client, server


def ends(server: socket.socket) -> tuple[tuple[str, int], tuple[str, int]]:
    return server.getpeername()[:2], server.getsockname()[:2]


def test_the_self_test_picks_netlink_here() -> None:
    assert self_test() == NETLINK


@pytest.mark.parametrize("method", METHODS)
def test_a_loopback_connection_of_our_own(method: str) -> None:
    client, server = loopback_pair()
    with client, server:
        assert PeerLookup(method).lookup(*ends(server)) == SocketOwner(uid=os.geteuid(), open=True)


@pytest.mark.parametrize("method", METHODS)
def test_ipv6_and_ipv4_mapped_connections(method: str) -> None:
    lookup = PeerLookup(method)
    client, server = loopback_pair(socket.AF_INET6, "::1")
    with client, server:
        assert lookup.lookup(*ends(server)) == SocketOwner(uid=os.geteuid(), open=True)
    # A dual-stack listener sees an IPv4 client as ::ffff:127.0.0.1.
    client, server = loopback_pair(socket.AF_INET6, "127.0.0.1", listen_on="::")
    with client, server:
        assert server.getpeername()[0] == "::ffff:127.0.0.1"
        assert lookup.lookup(*ends(server)) == SocketOwner(uid=os.geteuid(), open=True)


@pytest.mark.parametrize("method", METHODS)
def test_no_such_socket_is_none(method: str) -> None:
    client, server = loopback_pair()
    with client, server:
        peer, local = ends(server)
        assert PeerLookup(method).lookup(("192.0.2.7", peer[1]), local) is None  # a remote client
        assert PeerLookup(method).lookup((peer[0], 1), local) is None


@pytest.mark.parametrize("method", METHODS)
def test_a_client_that_closed_is_not_an_owner(method: str) -> None:
    """Closed (orphaned, then FIN_WAIT/TIME_WAIT) ends report uid 0: never to be read as root."""
    client, server = loopback_pair()
    with server:
        peer, local = ends(server)
        client.close()
        owner = PeerLookup(method).lookup(peer, local)
        assert owner is not None and owner.open is False


@pytest.mark.parametrize("method", METHODS)
def test_a_client_that_reset_is_gone(method: str) -> None:
    client, server = loopback_pair()
    with server:
        peer, local = ends(server)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST: the client's socket is gone at once
        assert PeerLookup(method).lookup(peer, local) is None


@pytest.fixture
def task_uid_client() -> Iterator[tuple[socket.socket, subprocess.Popen[str]]]:
    """A loopback connection opened by a child process running as TASK_UID."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        code = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])));"
                " print(s.getsockname()[1], flush=True); sys.stdin.read()")
        child = subprocess.Popen(
            ["setpriv", f"--reuid={TASK_UID}", f"--regid={TASK_UID}", "--clear-groups",
             SYSTEM_PYTHON, "-c", code, str(listener.getsockname()[1])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        )
        listener.settimeout(10)
        server, _ = listener.accept()
    try:
        assert child.stdout is not None
        assert int(child.stdout.readline()) == server.getpeername()[1]
        yield server, child
    finally:
        server.close()
        child.kill()
        child.communicate()


@needs_root
@needs_setpriv
@pytest.mark.parametrize("method", METHODS)
def test_a_connection_made_by_a_task_uid(method: str, task_uid_client: tuple[socket.socket, subprocess.Popen[str]]) -> None:
    server, _child = task_uid_client
    assert PeerLookup(method).lookup(*ends(server)) == SocketOwner(uid=TASK_UID, open=True)
