"""Tasks cannot use the agent's API unless given a token: attacker's tests against a real
agent running as root, with the attacker a real process running as a uid from
tasks.uid_range (setpriv), as tasks do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cnetd.config import UidRange, default_config
from cnetd.security.auth import Authenticator
from cnetd.security.callers import TaskCallerGuard, caller_guard_middleware, tasks_have_their_own_uids
from cnetd.security.hosts import interface_addresses
from cnetd.security.peer import PeerLookup, SocketOwner
from tests.support.agent import AgentProcess
from tests.support.http import Client

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="task uids exist only when the agent runs as root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed"),
    pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="/usr/bin/python3 is needed"),
]

TOKEN = "task-caller-token-0123456789"
TASK_UID = UidRange().start + 77
PROCESS = {"name": "from-a-task", "type": "process", "command": "true"}
# Tasks run under uids of their own: the agent's default when it runs as root.
AS_ROOT_WITH_TASK_UIDS = {"tasks": {"run_as": None}}

CALL_API = """
import json, sys, urllib.error, urllib.request
base, token = sys.argv[1], sys.argv[2]
out = []
for method, path, body in (("GET", "/api/tasks", None), ("POST", "/api/tasks", sys.argv[3])):
    req = urllib.request.Request(base + path, data=body and body.encode(), method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out.append([resp.status, json.loads(resp.read())])
    except urllib.error.HTTPError as err:
        out.append([err.code, json.loads(err.read())])
print(json.dumps(out))
"""


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory any user may enter (pytest's tmp dirs are 0700 root)."""
    shared = Path(tempfile.mkdtemp(prefix="cnet-callers-", dir="/var/tmp"))
    shared.chmod(0o755)
    yield shared
    shutil.rmtree(shared, ignore_errors=True)


@pytest.fixture
def make_agent(agent_factory: Callable[..., AgentProcess], shared_root: Path) -> Callable[..., AgentProcess]:
    """Agents whose work dir any user may enter, so that the tasks a token holder starts
    can run as their unprivileged user."""
    return lambda config, **kw: agent_factory(config, root=shared_root, **kw)


def as_task_uid(argv: list[str], uid: int = TASK_UID) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=60, cwd="/", stdin=subprocess.DEVNULL,
    )


def task_calls(base_url: str, token: str = "", uid: int = TASK_UID) -> list[list[Any]]:
    proc = as_task_uid(["/usr/bin/python3", "-c", CALL_API, base_url, token, json.dumps(PROCESS)], uid)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_task_uid_cannot_list_or_start_tasks(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent(AS_ROOT_WITH_TASK_UIDS).start()
    (listed, listed_body), (posted, posted_body) = task_calls(agent.url)
    assert (listed, posted) == (403, 403)
    for body in (listed_body, posted_body):
        assert body["error"].startswith("tasks may not use this agent's API without a token")
        assert f"uid {TASK_UID}" in body["error"] and "no tokens configured" in body["error"]
    if shutil.which("curl"):
        curl = as_task_uid(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{agent.url}/api/health"])
        assert curl.stdout == "403"
    root = agent.api.get("/api/tasks")
    assert root.status == 200 and root.body == [], "a task was created by a task uid"


def test_a_real_task_cannot_use_the_api(make_agent: Callable[..., AgentProcess]) -> None:
    """End to end: a task started through the API, in its own uid and namespace, calls the
    agent's API to list tasks and to start one: both refused, nothing created."""
    agent = make_agent(AS_ROOT_WITH_TASK_UIDS).start()
    probe = (
        "import json, sys, urllib.request, urllib.error\n"
        "def call(method, body=None):\n"
        "    req = urllib.request.Request(sys.argv[1] + '/api/tasks', method=method, data=body,\n"
        "                                 headers={'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req, timeout=10).status\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        return exc.code\n"
        "print(json.dumps({'list': call('GET'), 'post': call('POST', b'{\"name\": \"x\", \"command\": \"true\"}')}))\n"
    )
    task = agent.api.post("/api/tasks", {"name": "probe", "command": "python3", "args": ["-c", probe, agent.url]}).body
    done = agent.wait_done(task["id"])
    assert done["status"] == "completed", agent.api.get(f"/api/tasks/{task['id']}/logs").text
    assert done["result"] == {"list": 403, "post": 403}
    assert [t["id"] for t in agent.api.get("/api/tasks").body] == [task["id"]]


def test_with_tokens_a_task_needs_one(make_agent: Callable[..., AgentProcess]) -> None:
    agent = make_agent({**AS_ROOT_WITH_TASK_UIDS, "auth": {"tokens": [TOKEN]}}).start()
    (listed, body), (posted, _) = task_calls(agent.url)
    assert (listed, posted) == (403, 403)
    assert "give the task a token" in body["error"]
    assert Client(agent.url, TOKEN).get("/api/tasks").body == []
    (listed, _), (posted, created) = task_calls(agent.url, TOKEN)
    assert (listed, posted) == (200, 201), created
    assert Client(agent.url).get("/api/tasks").status == 401  # root without the token: as before
    assert [t["id"] for t in Client(agent.url, TOKEN).get("/api/tasks").body] == [created["id"]]


def test_a_task_uid_cannot_come_in_through_another_local_address(make_agent: Callable[..., AgentProcess]) -> None:
    """Bound to 0.0.0.0, the agent is reachable at every interface address: a connection
    from this host to a non-loopback one is still a local caller."""
    others = sorted(a for a in interface_addresses() if ":" not in a and not a.startswith("127."))
    if not others:
        pytest.skip("this host has no non-loopback IPv4 address")
    agent = make_agent({**AS_ROOT_WITH_TASK_UIDS, "agent": {"address": "0.0.0.0"}, "auth": {"tokens": [TOKEN]}}).start()
    (listed, _), (posted, _) = task_calls(f"http://{others[0]}:{agent.port}")
    assert (listed, posted) == (403, 403)
    assert Client(f"http://{others[0]}:{agent.port}", TOKEN).get("/api/tasks").body == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is needed to make a certificate")
def test_over_tls_too(make_agent: Callable[..., AgentProcess], shared_root: Path) -> None:
    from tests.test_tls import self_signed

    cert, key = self_signed(shared_root)
    cert.chmod(0o644)  # the task-uid client must read it to trust the agent
    tls = {"cert_file": str(cert), "key_file": str(key)}
    agent = make_agent({**AS_ROOT_WITH_TASK_UIDS, "agent": {"tls": tls}}, ca_file=cert).start()
    trusting = f"context=__import__('ssl').create_default_context(cafile={str(cert)!r})"
    code = CALL_API.replace("urllib.request.urlopen(req, timeout=30)", f"urllib.request.urlopen(req, timeout=30, {trusting})")
    proc = as_task_uid(["/usr/bin/python3", "-c", code, agent.url, "", json.dumps(PROCESS)])
    assert proc.returncode == 0, proc.stderr
    assert [status for status, _ in json.loads(proc.stdout)] == [403, 403]
    assert agent.api.get("/api/tasks").body == []


CLOSE_AT_ONCE = """
import socket, struct, sys
port, body = int(sys.argv[1]), sys.argv[2].encode()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"POST /api/tasks HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nContent-Type: application/json\\r\\n"
          b"Content-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
if sys.argv[3] == "reset":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # before the agent can look at who owned the socket
"""


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_task_that_sends_and_closes_at_once_is_still_refused(make_agent: Callable[..., AgentProcess], how: str) -> None:
    """A closed client socket reports uid 0 (root) and a reset one is gone: neither may pass as root."""
    agent = make_agent(AS_ROOT_WITH_TASK_UIDS).start()
    for _ in range(20):
        proc = as_task_uid(["/usr/bin/python3", "-c", CLOSE_AT_ONCE, str(agent.port), json.dumps(PROCESS), how])
        assert proc.returncode == 0, proc.stderr
    assert agent.api.get("/api/tasks").body == []
    assert "Traceback" not in agent.log_text()


# --------------------------------------------------------------------------- the guard itself


class CountingLookup(PeerLookup):
    """The real lookup, counted (to show it runs once per connection, not per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def lookup(self, client: tuple[str, int], server: tuple[str, int]) -> SocketOwner | None:
        self.calls += 1
        return super().lookup(client, server)


async def test_the_owner_is_looked_up_once_per_connection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = default_config(tmp_path)
    lookup = CountingLookup()
    guard = TaskCallerGuard(config, lookup=lookup, euid=0)
    assert guard.enabled
    app = web.Application(middlewares=[caller_guard_middleware(guard, Authenticator((), False))])

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with aiohttp.ClientSession() as session:  # one keep-alive connection
            for _ in range(5):
                async with session.get(f"http://127.0.0.1:{port}/") as resp:
                    assert resp.status == 200
        assert lookup.calls == 1
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 200
        assert lookup.calls == 2
    finally:
        await runner.cleanup()


def test_the_guard_is_off_where_tasks_share_the_agents_uid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert tasks_have_their_own_uids(default_config(tmp_path), euid=0)
    assert tasks_have_their_own_uids(default_config(tmp_path, tasks={"run_as": "nobody"}), euid=0)
    assert not tasks_have_their_own_uids(default_config(tmp_path, tasks={"run_as": "root"}), euid=0)
    assert not tasks_have_their_own_uids(default_config(tmp_path), euid=1000)
