"""Agents that form a cluster through a real etcd (tests.support.etcd), for tests: each one
a real agent process on loopback (tests.support.agent) with a cluster section, its own API
token and the shared cluster token in a 0600 file."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any

from tests.support.agent import AgentProcess, deep_merge
from tests.support.etcd import EtcdCluster, EtcdMember
from tests.support.http import Client
from tests.support.waiting import wait_until

CLUSTER_TOKEN = "cluster-token-0123456789abcdef"
TTL = 3
_prefixes = itertools.count()


def new_prefix(name: str = "cnet-test") -> str:
    """A prefix of its own for each test that shares an etcd with others."""
    return f"/{name}-{next(_prefixes)}"


def api_token(node_id: str) -> str:
    """Each agent its own API token: a call one agent passes on to another is accepted
    there for the cluster token it carries, never for the caller's token."""
    return f"api-token-of-{node_id}-0123456789"


def cluster_agent(make: Callable[..., AgentProcess], endpoints: Sequence[str], node_id: str, prefix: str = "/cnet",
                  token: str = CLUSTER_TOKEN, labels: dict[str, str] | None = None,
                  extra: dict[str, Any] | None = None) -> AgentProcess:
    """An unstarted agent of the cluster at `endpoints` (make: the agent_factory fixture)."""
    config = deep_merge({
        "agent": {"node_id": node_id, "node_name": f"{node_id} node", "region": "r1", "labels": labels or {}},
        "auth": {"tokens": [api_token(node_id)]},
        "cluster": {"etcd": {"endpoints": list(endpoints)}, "lease_ttl": f"{TTL}s", "prefix": prefix,
                    "token_file": "cluster.token"},
    }, extra or {})
    agent = make(config, name=node_id)
    token_file = agent.workdir / "cluster.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    agent.api = Client(agent.url, api_token(node_id))
    return agent


def start_all(*agents: AgentProcess) -> None:
    """Start them together (each takes a second or two to come up)."""
    for agent in agents:
        agent.start(ready=False)
    for agent in agents:
        agent.wait_ready()


def two_agents(make: Callable[..., AgentProcess], endpoints: Sequence[str]) -> tuple[AgentProcess, AgentProcess]:
    """Agents "a" and "b" of a cluster of their own (a new prefix), started, each seeing the other online."""
    prefix = new_prefix()
    a, b = (cluster_agent(make, endpoints, name, prefix=prefix) for name in "ab")
    start_all(a, b)
    wait_status(a, "b", "online")
    return a, b


def nodes_of(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    reply = agent.api.get("/api/nodes")
    assert reply.status == 200, reply.text
    return {node["node_id"]: node for node in reply.body}


def wait_status(agent: AgentProcess, node_id: str, status: str, timeout: float = TTL + 10) -> dict[str, Any]:
    """node_id as `agent` lists it, once it has that status."""
    def listed() -> dict[str, Any] | None:
        node = nodes_of(agent).get(node_id)
        return node if node is not None and node["status"] == status else None

    found = wait_until(listed, timeout, f"{node_id} to be {status} at {agent.workdir.name}")
    assert found is not None
    return found


def membership(agent: AgentProcess) -> dict[str, Any]:
    """The agent's own view of its membership (GET /api/node's cluster)."""
    reply = agent.api.get("/api/node")
    assert reply.status == 200, reply.text
    return dict(reply.body["cluster"])


def put_key(member: EtcdMember, key: str, value: dict[str, Any]) -> None:
    """A raw write through one member's gateway, as a stand-in for a node would make it."""
    member.request("/v3/kv/put", {"key": base64.b64encode(key.encode()).decode(),
                                  "value": base64.b64encode(json.dumps(value).encode()).decode()})


def running_member(etcd: EtcdCluster) -> EtcdMember:
    return next(m for m in etcd.members if m.running)
