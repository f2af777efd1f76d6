"""Agents as one cluster through a real etcd, each a real agent process on loopback with a
lease TTL of 3 s: they list each other with labels and free resources, see a killed one
offline within the TTL (and still listed, with when it was last seen) and back when it
returns, keep their membership when an etcd member dies, keep running their tasks while
etcd is gone altogether (health says degraded and names the endpoints) and join again by
themselves when it is back; an agent whose lease is revoked behind its back registers
again. Calls pass through from one agent to another with the cluster token, which a wrong
one never replaces; a bad cluster config stops the agent with one line; and a single node
never touches etcd."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from cnetd.cluster.etcd import EtcdClient, EtcdOptions
from tests.support.agent import AgentProcess
from tests.support.cluster import (
    CLUSTER_TOKEN,
    TTL,
    api_token,
    cluster_agent,
    membership,
    new_prefix,
    nodes_of,
    start_all,
    two_agents,
    wait_status,
)
from tests.support.etcd import EtcdCluster
from tests.support.http import Client
from tests.support.waiting import wait_until

PY = sys.executable
SLACK = 5.0  # on top of the TTL: etcd checks for expired leases every 0.5 s, the directory caches 1 s
SLEEPER = ["-c", "import time; time.sleep(120)"]


def run_task(agent: AgentProcess, body: dict[str, Any], path: str = "/api/tasks") -> dict[str, Any]:
    reply = agent.api.post(path, {"name": "t", "command": PY, **body})
    assert reply.status == 201, reply.text
    return dict(reply.body)


def status_of(agent: AgentProcess, task_id: str, via: str = "") -> str:
    return str(agent.api.get(f"{via}/api/tasks/{task_id}").body["status"])


def test_three_agents_follow_each_other_through_deaths_returns_and_etcd_outages(
    etcd_three: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, b, c = (cluster_agent(agent_factory, etcd_three.endpoints, name, labels={"gpu": kind})
               for name, kind in (("a", "none"), ("b", "a100"), ("c", "none")))
    start_all(a, b, c)

    # --- every agent lists every node online, with labels and free resources
    for viewer in (a, b, c):
        for name in "abc":
            wait_status(viewer, name, "online")
    listed = nodes_of(a)["b"]
    assert listed["labels"] == {"region": "r1", "datacenter": "dc1", "gpu": "a100"}
    assert listed["name"] == "b node" and listed["advertise_url"] == b.url and listed["sandbox"] == "none"
    assert listed["capacity"]["cpu"] >= 1 and listed["capacity"]["memory"] > 0 and listed["capacity"]["disk"] > 0
    assert listed["free"] == listed["capacity"] and listed["last_seen"]
    one = a.api.get("/api/nodes/b").body
    assert {**one, "last_seen": None} == {**listed, "last_seen": None}

    # --- a task with limits on b shows in b's free resources everywhere, within about a second
    sleeper = run_task(b, {"args": SLEEPER, "resources": {"cpu_limit": 0.5, "memory_limit": "64MiB"}})
    capacity = listed["capacity"]
    free = wait_until(lambda: (f := nodes_of(a)["b"]["free"])["cpu"] == capacity["cpu"] - 0.5 and f, 10,
                      "b's free resources to drop at a")
    assert free["memory"] == capacity["memory"] - 64 * 2**20

    # --- calls pass through with the cluster token: b does not accept a's API token
    assert Client(b.url, api_token("a")).get("/api/tasks").status == 401
    through = a.api.get(f"/api/nodes/b/api/tasks/{sleeper['id']}")
    assert through.status == 200 and through.body["status"] == "running" and through.headers["X-CNET-Node"] == "b"
    delegated = a.api.post("/api/tasks", {"node_id": "c", "name": "hello", "command": PY,
                                          "args": ["-c", "print('from c')"]})
    assert delegated.status == 201 and delegated.body["node_id"] == "c", delegated.text
    wait_until(lambda: status_of(a, delegated.body["id"], "/api/nodes/c") == "completed", 30, "the task on c")
    assert a.api.get(f"/api/nodes/c/api/tasks/{delegated.body['id']}/logs").body == ["from c"]
    request = urllib.request.Request(f"{a.url}/api/nodes/c/api/tasks/{delegated.body['id']}/logs?follow=1",
                                     headers={"Authorization": f"Bearer {api_token('a')}"})
    with urllib.request.urlopen(request, timeout=30) as stream:  # SSE passes through, and ends with the task
        assert stream.headers["Content-Type"].startswith("text/event-stream") and "from c" in stream.read().decode()

    # --- SIGKILL c: offline on the others within the TTL, still listed with when it was last seen
    c_before = membership(c)
    c.kill()
    killed = time.monotonic()
    for viewer in (a, b):
        gone = wait_status(viewer, "c", "offline", timeout=TTL + SLACK)
    assert time.monotonic() - killed <= TTL + SLACK
    assert gone["last_seen"] and gone["labels"]["gpu"] == "none"
    offline = a.api.get("/api/nodes/c/api/tasks")
    assert offline.status == 503 and "node c is offline (last seen" in offline.body["error"], offline.text
    # --- and back: online again, as a new incarnation (a new lease, a new node key)
    c.start()
    wait_status(a, "c", "online")
    c_after = membership(c)
    assert c_after["lease_id"] != c_before["lease_id"] and c_after["node_revision"] > c_before["node_revision"]

    # --- one etcd member dies (the leader, the hardest one): membership goes on
    etcd_three.leader().kill()
    time.sleep(TTL + 1)  # longer than a lease lives unrenewed
    for viewer in (a, b, c):
        assert all(node["status"] == "online" for node in nodes_of(viewer).values()), nodes_of(viewer)
    assert all(agent.api.get("/api/health").body["cluster"] == "ok" for agent in (a, b, c))

    # --- all of etcd gone: tasks keep running, health says degraded and names the endpoints
    leases = {agent: membership(agent)["lease_id"] for agent in (a, b)}
    for member in etcd_three.members:
        member.kill()
    health = wait_until(lambda: (h := b.api.get("/api/health").body)["cluster"] == "degraded" and h, 10,
                        "b to say the cluster is degraded")
    assert {u["endpoint"] for u in health["cluster_detail"]["unreachable"]} <= set(etcd_three.endpoints)
    assert health["cluster_detail"]["unreachable"] and "etcd unavailable" in health["cluster_detail"]["problem"]
    assert "cluster_detail" not in Client(b.url).get("/api/health").body  # not for a caller without a token
    local = run_task(a, {"args": ["-c", "print('still here')"]})  # work goes on where it is posted
    wait_until(lambda: status_of(a, local["id"]) == "completed", 30, "a local task while etcd is away")
    listing = wait_until(lambda: (r := a.api.get("/api/nodes")).status == 503 and r, 5,
                         "a to stop listing from its cache (1 s)")
    assert "the cluster view is unavailable: etcd unavailable" in listing.body["error"]
    time.sleep(TTL)  # longer than the TTL: they will come back under new leases
    assert status_of(b, sleeper["id"]) == "running"

    # --- etcd back: they join again by themselves, under new leases, with their records
    etcd_three.restart(*etcd_three.members)
    for viewer in (a, b):
        wait_until(lambda v=viewer: v.api.get("/api/health").body["cluster"] == "ok", 20, "the cluster to be ok again")
        for name in "abc":
            wait_status(viewer, name, "online", timeout=20)
    for agent in (a, b):
        assert membership(agent)["lease_id"] not in (None, leases[agent])
    assert nodes_of(a)["b"]["free"]["cpu"] == capacity["cpu"] - 0.5  # its record came back whole
    assert status_of(b, sleeper["id"]) == "running"
    assert "Traceback" not in a.log_text() + b.log_text() + c.log_text()


def test_a_lease_revoked_behind_an_agents_back_is_registered_again(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = cluster_agent(agent_factory, etcd_shared.endpoints, "solo", prefix=new_prefix()).start()
    wait_status(agent, "solo", "online")
    before = membership(agent)

    async def revoke() -> bool:
        async with EtcdClient(EtcdOptions(etcd_shared.endpoints)) as etcd:
            return await etcd.revoke(int(before["lease_id"], 16))

    assert asyncio.run(revoke())
    after = wait_until(lambda: (m := membership(agent))["lease_id"] not in (None, before["lease_id"]) and m, TTL + SLACK,
                       "the agent to register again")
    assert after["node_revision"] > before["node_revision"] and after["registrations"] == 2
    wait_status(agent, "solo", "online")
    assert "registering again" in agent.log_text()


def test_the_cluster_token_is_required_and_checked(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = new_prefix()
    a = cluster_agent(agent_factory, etcd_shared.endpoints, "a", prefix=prefix)
    stranger = cluster_agent(agent_factory, etcd_shared.endpoints, "x", prefix=prefix,
                             token="some-other-cluster-token-0123")
    start_all(a, stranger)
    wait_status(a, "x", "online")
    member = "/api/cluster/member"
    plain = Client(a.url)
    right = plain.get(member, headers={"X-CNET-Cluster-Token": CLUSTER_TOKEN})
    assert right.status == 200 and right.body["node_id"] == "a" and right.body["state"] == "online"
    missing = a.api.get(member)  # a valid API token is not the cluster token
    assert missing.status == 401 and "cluster-only endpoint: send the cluster's token" in missing.body["error"]
    wrong = a.api.get("/api/tasks", headers={"X-CNET-Cluster-Token": "some-other-cluster-token-0123"})
    assert wrong.status == 401 and wrong.body["error"].startswith("wrong cluster token in X-CNET-Cluster-Token")
    assert "wrong X-CNET-Cluster-Token" in a.log_text() and "some-other-cluster" not in a.log_text()
    # The stranger shares etcd but not the token: what it passes on to a is refused, and says so.
    refused = stranger.api.get("/api/nodes/a/api/tasks")
    assert refused.status == 401 and "wrong cluster token" in refused.body["error"], refused.text
    # Nor does a caller's own header get through a pass-through: the relaying agent sends its own.
    relayed = stranger.api.get("/api/nodes/a/api/tasks", headers={"X-CNET-Cluster-Token": CLUSTER_TOKEN})
    assert relayed.status == 401  # refused by the stranger itself (not its token)
    assert a.api.get("/api/nodes/x/api/tasks").status == 401  # and the other way round


@pytest.mark.parametrize("cluster, message", [
    ({"lease_ttl": "1s"}, "cluster.lease_ttl: must be at least 2s (etcd raises a shorter lease to 2s), got '1s'"),
    ({"etcd": {"endpoints": []}}, "cluster.etcd.endpoints: must name at least one etcd member (http(s)://host:port), got none"),
    ({"prefix": "cnet"}, "cluster.prefix: must be an etcd key prefix starting with '/', like /cnet, got 'cnet'"),
    ({"token_file": "missing.token"}, "cluster.token_file: cannot read {dir}/missing.token: No such file or directory"),
])
def test_a_bad_cluster_config_stops_the_agent_with_one_line(
    cluster: dict[str, Any], message: str, agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = cluster_agent(agent_factory, ["http://127.0.0.1:9"], "bad", extra={"cluster": cluster})
    result = subprocess.run([*agent.command, "-config", str(agent.config_path)], cwd=agent.workdir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"cnet-agent: {agent.config_path}: {message.format(dir=agent.workdir)}\n"


def test_a_single_node_has_no_cluster_and_never_touches_etcd(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"agent": {"node_id": "alone", "labels": {"gpu": "none"}},
                           "discovery": {"enabled": True, "servers": ["http://127.0.0.1:9"]}}).start()
    health = agent.api.get("/api/health").body
    assert "cluster" not in health and "cluster_detail" not in health
    assert agent.api.get("/api/node").body["cluster"] is None
    [me] = agent.api.get("/api/nodes").body
    assert me["node_id"] == "alone" and me["status"] == "online" and me["labels"]["gpu"] == "none"
    assert agent.api.get("/api/nodes/alone").body["node_id"] == "alone"
    assert agent.api.get("/api/nodes/other").status == 404
    through = agent.api.get("/api/nodes/other/api/tasks")
    assert through.status == 404 and "not part of a cluster" in through.body["error"]
    assert agent.api.get("/api/cluster/member").status == 404
    elsewhere = agent.api.post("/api/tasks", {"node_id": "other", "name": "x", "command": PY, "args": ["-c", "pass"]})
    assert elsewhere.status == 400 and elsewhere.body["details"]["field"] == "node_id", elsewhere.text
    assert agent.api.post("/api/tasks", {"node_id": "alone", "name": "x", "command": PY, "args": ["-c", "pass"]}).status == 201
    token = agent.api.get("/api/tasks", headers={"X-CNET-Cluster-Token": CLUSTER_TOKEN})
    assert token.status == 401 and "not part of a cluster" in token.body["error"]
    assert "discovery.enabled, discovery.servers: replaced by cluster.etcd, ignored" in agent.log_text()
    assert "etcd" not in agent.log_text().replace("replaced by cluster.etcd", "")


def test_pass_through_keeps_the_path_as_sent(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, _b = two_agents(agent_factory, etcd_shared.endpoints)
    # An escaped "?" stays part of the id: b is asked for that task, not for a query.
    odd = a.api.get("/api/nodes/b/api/tasks/x%3Fstatus%3Drunning")
    assert odd.status == 404 and odd.body["error"] == "task x?status=running not found", odd.text
    listed = a.api.get("/api/nodes/b/api/tasks?status=running&limit=5")
    assert listed.status == 200 and listed.body == []
    assert a.api.get("/api/nodes/nowhere/api/tasks").status == 404
    not_api = a.api.get("/api/nodes/b/metrics")
    assert not_api.status == 404 and "only /api/... and /v2/..." in not_api.body["error"]
    unknown = a.api.post("/api/tasks", {"node_id": "nowhere", "name": "x", "command": PY})
    assert unknown.status == 400 and unknown.body["details"]["field"] == "node_id", unknown.text
    assert "not a node of the cluster" in unknown.body["error"]
    assert a.api.post("/api/tasks", {"node_id": 7, "name": "x", "command": PY}).body["details"]["field"] == "node_id"
    child_error = a.api.post("/api/tasks", {"node_id": "b", "name": "x"})
    assert child_error.status == 400 and child_error.body["details"]["field"] == "command"  # b's own check
