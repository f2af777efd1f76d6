"""Real etcd members for tests: Debian's /usr/bin/etcd (etcd-server) on free loopback ports,
each with a temporary data dir; one member or a cluster, stopped, killed and restarted at will.

Every member is started with PR_SET_PDEATHSIG, so even a pytest killed with SIGKILL leaves
no etcd running; fixtures stop their members in teardown anyway. Start members from the
main thread (the death signal follows the thread that forked, not the process).

Timing: a lone member uses a 50 ms heartbeat and a 500 ms election timeout, so it elects
itself in about 0.4 s instead of 1 s (it has no peer to miss a heartbeat from). A cluster
keeps etcd's defaults (100 ms / 1 s): on two shared cores a shorter election timeout would
bring spurious elections. With the defaults etcd's minimum lease TTL is 2 s; with the lone
member's timing it is 1 s.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.waiting import wait_until

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
needs_etcd = pytest.mark.skipif(not Path(ETCD).exists(), reason="etcd is not installed (apt-get install etcd-server)")

PR_SET_PDEATHSIG = 1
LONE_TIMING = ("--heartbeat-interval", "50", "--election-timeout", "500")
START_TIMEOUT = 15.0  # generous: the machine is shared


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=cnet-test-ca")
    # The server certificate needs clientAuth too: with --client-cert-auth, etcd's gateway
    # dials its own gRPC server presenting that certificate.
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n")
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=cnet-test-{name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                    directory / "client.crt", directory / "client.key")


class EtcdMember:
    """One etcd process; its data dir survives stop/kill, so a restart rejoins the cluster."""

    def __init__(self, base: Path, name: str, client_port: int, peer_port: int,
                 extra_args: Sequence[str] = (), tls: TlsFiles | None = None) -> None:
        self.name = name
        self.base = base
        self.data_dir = base / f"{name}.data"
        self.log_path = base / f"{name}.log"
        self.client_port = client_port
        self.peer_port = peer_port
        self.extra_args = tuple(extra_args)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, initial_cluster: str) -> None:
        assert not self.running, f"{self.name} is already running"
        args = [
            ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"cnet-test-{self.base.name}", *self.extra_args,
        ]
        if self.tls is not None:
            args += ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                     "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)

    def kill(self) -> None:
        """SIGKILL: a member that dies without a word."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()

    def stop(self, grace: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        """SIGSTOP: a member that hangs with its sockets open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def request(self, path: str, body: Any = None, token: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """A raw call to this member's gateway (GET without a body); the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.client_url + path, data=data, method="GET" if data is None else "POST")
        if token:
            req.add_header("Authorization", token)
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{self.name} {path}: HTTP {err.code} {err.read()[:300]!r}") from None

    def healthy(self) -> bool:
        if not self.running:
            return False
        try:
            return self.request("/health", timeout=0.5).get("health") == "true"
        except (OSError, AssertionError, ValueError):
            return False

    def is_leader(self) -> bool:
        status = self.request("/v3/maintenance/status", {})
        return bool(status.get("leader") and status["leader"] == status["header"]["member_id"])

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    """size members that form one cluster; endpoints in member order."""

    def __init__(self, base: Path, size: int = 1, tls: TlsFiles | None = None) -> None:
        base.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2 * size)
        timing = LONE_TIMING if size == 1 else ()
        self.members = [EtcdMember(base, f"e{i}", ports[2 * i], ports[2 * i + 1], timing, tls) for i in range(size)]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def start(self) -> EtcdCluster:
        try:
            for member in self.members:
                member.start(self._initial_cluster)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, members: Sequence[EtcdMember] | None = None, timeout: float = START_TIMEOUT) -> None:
        waiting_for = list(members or self.members)
        try:
            wait_until(lambda: all(m.healthy() for m in waiting_for), timeout,
                       "etcd members " + ", ".join(m.name for m in waiting_for) + " to be healthy")
        except AssertionError as err:
            logs = "\n".join(f"--- {m.name} ({'running' if m.running else 'exited'}):\n{m.log_tail()}"
                             for m in waiting_for)
            raise AssertionError(f"{err}\n{logs}") from None

    def restart(self, *members: EtcdMember) -> None:
        """Start the given (stopped or killed) members again and wait for them."""
        for member in members:
            member.stop()
            member.start(self._initial_cluster)
        self.wait_healthy(members)

    def leader(self) -> EtcdMember:
        leader = wait_until(lambda: next((m for m in self.members if m.running and _is_leader(m)), None),
                            START_TIMEOUT, "an etcd leader")
        assert leader is not None
        return leader

    def stop(self) -> None:
        """Kill every member and reap it: teardown must never leave an etcd behind."""
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.resume()  # a paused member does not die of SIGTERM until resumed
            member.kill()

    def enable_auth(self, username: str, password: str) -> None:
        """root role, a user holding it, auth on: what `etcdctl auth enable` does."""
        member = next(m for m in self.members if m.running)
        member.request("/v3/auth/role/add", {"name": "root"})
        member.request("/v3/auth/user/add", {"name": username, "password": password})
        member.request("/v3/auth/user/grant", {"user": username, "role": "root"})
        member.request("/v3/auth/enable", {})

    def invalidate_tokens(self, username: str, password: str) -> None:
        """Turn auth off and on again: etcd forgets every token it gave out. (A restart does
        not: a token is granted through raft, so the member replays it from its log.)"""
        member = next(m for m in self.members if m.running)
        token = member.request("/v3/auth/authenticate", {"name": username, "password": password})["token"]
        member.request("/v3/auth/disable", {}, token=token)
        member.request("/v3/auth/enable", {})

    def compact(self, revision: int) -> None:
        next(m for m in self.members if m.running).request(
            "/v3/kv/compaction", {"revision": str(revision), "physical": True})

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


T = TypeVar("T")


async def eventually(condition: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05) -> T:
    """wait_until for coroutines: await condition until it returns something truthy; fail
    with `what` and the last result (or exception) at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = await condition()
            if result:
                return result
            last = result
        except Exception as err:  # a failing call is just "not yet"
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def _is_leader(member: EtcdMember) -> bool:
    try:
        return member.is_leader()
    except (OSError, AssertionError, ValueError, KeyError):
        return False


# --- fixtures: tests/conftest.py offers them to every test module ---------------------------


@pytest.fixture(scope="session")
def etcd_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One member for the whole session: tests that only read and write keys share it
    (each under its own prefix). Tests that change the member itself take etcd_one."""
    if not Path(ETCD).exists():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with EtcdCluster(tmp_path_factory.mktemp("etcd-shared")) as cluster:
        yield cluster


@pytest.fixture
def etcd_one(tmp_path: Path) -> Iterator[EtcdCluster]:
    if not Path(ETCD).exists():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with EtcdCluster(tmp_path / "etcd") as cluster:
        yield cluster


@pytest.fixture
def etcd_three(tmp_path: Path) -> Iterator[EtcdCluster]:
    if not Path(ETCD).exists():
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with EtcdCluster(tmp_path / "etcd", size=3) as cluster:
        yield cluster
