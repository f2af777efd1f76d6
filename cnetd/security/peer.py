"""Who opened a TCP connection: the uid that owns the client's end of it, when that end
lives on this host.

The agent uses this to keep tasks off its own API (cnetd/security/callers.py). Why this
mechanism and not another:

- It works with every sandbox backend (systemd scopes, cgroupfs, none), on cgroup v1 and
  v2, without BPF programs, `IPAddressDeny=` or anything set up per task: the kernel
  already records which uid created each socket.
- It costs one netlink round trip per connection (a SOCK_DIAG_BY_FAMILY request for
  exactly the connection's 4-tuple, answered with `idiag_uid`), not per request, and none
  at all for requests that carry a valid token. bench/peer_lookup.py measures it.
- It needs no cooperation from the client and cannot be spoofed from inside a task: the
  owner is the uid that created the client's socket, as the kernel recorded it.

Where it tells nothing:

- Tasks that run as the agent's own uid (`tasks.run_as: root`, or an agent that does not
  run as root) cannot be told apart from the agent's operator; the guard is off there.
- Connections from another network namespace never reach a loopback address, and their
  sockets are not visible here: they look like any remote client (tokens apply).
- A connection relayed by another local process (a proxy, `ssh -L`) belongs to that
  process's uid.
- A client end that was already closed (orphaned, TIME_WAIT) or reset has no owner any
  more: `lookup` reports it as not open, or finds nothing; callers must then refuse rather
  than trust (a task could otherwise send a request and close at once).

The netlink query is the primary path; /proc/net/tcp and /proc/net/tcp6 are read when
netlink is not available (a kernel without inet_diag, a seccomp filter on AF_NETLINK).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

# linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid:
# sport, dport (big endian), src[16], dst[16] (network order), if, cookie[2]
_REQ = struct.Struct("=BBBxI")
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
# inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB48sIIIII")
ALL_STATES = 0xFFFFFFFF

PROC_TABLES: dict[int, Path] = {socket.AF_INET: Path("/proc/net/tcp"), socket.AF_INET6: Path("/proc/net/tcp6")}
TCP_TIME_WAIT = 6

Address = tuple[str, int]


@dataclass(frozen=True)
class SocketOwner:
    """The owner of the client's end of a connection.

    open is False when the client has closed its end already (an orphaned socket or one in
    TIME_WAIT): the kernel then reports uid 0, which says nothing about who opened it."""

    uid: int
    open: bool


class LookupUnavailable(OSError):
    """Neither netlink sock_diag nor /proc/net/tcp* can be read here."""


class PeerLookup:
    """lookup() through the source that works here, chosen once by a self-test: netlink
    sock_diag when it finds a connection of our own, else /proc/net/tcp{,6}.

    (An exact sock_diag request answers ENOENT both for "no such socket" and for "no
    inet_diag in this kernel", so only a self-test can tell the two apart.)"""

    def __init__(self, method: str | None = None) -> None:
        self.method = method or self_test()

    def lookup(self, client: Address, server: Address) -> SocketOwner | None:
        """The owner of the socket at the client's end of the connection client -> server,
        as seen from this network namespace, or None when no socket on this host has that
        4-tuple (a remote client, or one that reset its connection already).

        client and server are (host, port) as the server's socket reports them (peername
        and sockname). Raises LookupUnavailable when no source works here."""
        family, src, dst = _normalise(client[0], server[0])
        if self.method == NETLINK:
            return netlink_lookup(family, src, client[1], dst, server[1])
        if self.method == PROC:
            return proc_lookup(family, src, client[1], dst, server[1])
        raise LookupUnavailable(errno.ENOSYS, "neither netlink sock_diag nor /proc/net/tcp works here")

    async def find(self, client: Address, server: Address) -> SocketOwner | None:
        """lookup() for a caller on the event loop. The netlink query stays on the loop: one
        request for one 4-tuple, which the kernel answers at once (bench/peer_lookup.py). The
        /proc/net/tcp{,6} fallback goes to a worker thread: the kernel writes a line for every
        TCP socket on the host, megabytes to generate and search on a busy one."""
        if self.method == PROC:
            return await asyncio.to_thread(self.lookup, client, server)
        return self.lookup(client, server)


NETLINK, PROC, UNAVAILABLE = "netlink", "proc", "unavailable"


def self_test() -> str:
    """Which source finds a loopback connection this process just made, owned by its euid."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=2) as client:
            accepted, _ = listener.accept()
            with accepted:
                ends = (client.getsockname(), accepted.getsockname())
                family, src, dst = _normalise(ends[0][0], ends[1][0])
                for method, find in ((NETLINK, netlink_lookup), (PROC, proc_lookup)):
                    try:
                        owner = find(family, src, ends[0][1], dst, ends[1][1])
                    except OSError:
                        continue
                    if owner == SocketOwner(uid=os.geteuid(), open=True):
                        return method
    return UNAVAILABLE


def _normalise(client_host: str, server_host: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address,
                                                            ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Both addresses in one family; IPv4-mapped IPv6 (a dual-stack listener) becomes IPv4,
    the family the client's own socket (or the kernel's established-hash lookup) uses."""
    src = ipaddress.ip_address(client_host.split("%", 1)[0])
    dst = ipaddress.ip_address(server_host.split("%", 1)[0])
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if src.version != dst.version:
        raise ValueError(f"client {client_host} and server {server_host} are not of one address family")
    return (socket.AF_INET if src.version == 4 else socket.AF_INET6), src, dst


def _padded(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    return address.packed.ljust(16, b"\0")


def diag_request(family: int, src: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                 dst: ipaddress.IPv4Address | ipaddress.IPv6Address, dport: int, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY request for exactly one TCP socket (no NLM_F_DUMP)."""
    payload = (
        _REQ.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES)
        + _SOCKID.pack(sport, dport, _padded(src), _padded(dst))
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + payload


def netlink_lookup(family: int, src: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                   dst: ipaddress.IPv4Address | ipaddress.IPv6Address, dport: int) -> SocketOwner | None:
    """One netlink round trip: the socket whose local end is src:sport and remote end is
    dst:dport. OSError when sock_diag cannot be used here."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)  # the kernel answers at once; this only bounds a broken kernel
        nl.sendto(diag_request(family, src, sport, dst, dport), (0, 0))
        reply = nl.recv(8192)
    return parse_reply(reply)


def parse_reply(reply: bytes) -> SocketOwner | None:
    if len(reply) < _NLMSGHDR.size:
        raise OSError(errno.EINVAL, "short sock_diag reply")
    length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
    body = reply[_NLMSGHDR.size:length]
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", body)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, f"sock_diag: {os.strerror(code)}")
    if kind != SOCK_DIAG_BY_FAMILY or len(body) < _MSG.size:
        raise OSError(errno.EINVAL, f"unexpected sock_diag reply (type {kind}, {len(body)} bytes)")
    _family, state, _timer, _retrans, _id, _expires, _rq, _wq, uid, inode = _MSG.unpack_from(body)
    return SocketOwner(uid=uid, open=inode != 0 and state != TCP_TIME_WAIT)


def proc_lookup(family: int, src: ipaddress.IPv4Address | ipaddress.IPv6Address, sport: int,
                dst: ipaddress.IPv4Address | ipaddress.IPv6Address, dport: int) -> SocketOwner | None:
    """The same answer from /proc/net/tcp{,6}: a line per socket, addresses in the kernel's
    own byte order. An IPv4 connection may belong to a dual-stack IPv6 client socket, so
    both tables are searched."""
    wanted = {_proc_endpoint(src, sport) + " " + _proc_endpoint(dst, dport)}
    tables = [PROC_TABLES[family]]
    if family == socket.AF_INET:
        mapped = [ipaddress.IPv6Address("::ffff:" + str(a)) for a in (src, dst)]
        wanted.add(_proc_endpoint(mapped[0], sport) + " " + _proc_endpoint(mapped[1], dport))
        tables.append(PROC_TABLES[socket.AF_INET6])
    readable = False
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LookupUnavailable(exc.errno, f"cannot read {table}: {exc.strerror}") from None
        readable = True
        for pair in wanted:  # one substring search, not a split of every line
            at = text.find(f" {pair} ")
            if at >= 0:
                fields = text[at:text.find("\n", at)].split()
                state, uid, inode = int(fields[2], 16), int(fields[6]), int(fields[8])
                return SocketOwner(uid=uid, open=inode != 0 and state != TCP_TIME_WAIT)
    if not readable:
        raise LookupUnavailable(errno.ENOENT, "neither netlink sock_diag nor /proc/net/tcp is available")
    return None


def _proc_endpoint(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """ADDR:PORT as /proc/net/tcp prints it: each 32-bit word of the address in host byte
    order, in hex; the port in hex."""
    packed = address.packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"
