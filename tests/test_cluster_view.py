"""The whole cluster from any agent: each agent mirrors its tasks into a real etcd, so
GET /api/tasks?node=all on one lists every node's, a call about a task by id reaches the
node that has it, and a task on a node that died shows as lost. Real agent processes on
loopback, lease TTL 3 s."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, two_agents, wait_status
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until

PY = sys.executable
SLEEPER = ["-c", "print('hello from b', flush=True); import time; time.sleep(120)"]


def listed(agent: AgentProcess, query: str = "node=all") -> dict[str, dict[str, Any]]:
    reply = agent.api.get(f"/api/tasks?{query}")
    assert reply.status == 200, reply.text
    return {row["id"]: row for row in reply.body}


def test_any_agent_lists_every_nodes_tasks_and_reaches_the_one_that_has_a_task(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, b = two_agents(agent_factory, etcd_shared.endpoints)
    on_a = a.api.post("/api/tasks", {"name": "on-a", "command": PY, "args": ["-c", "pass"]}).body
    on_b = b.api.post("/api/tasks", {"name": "on-b", "command": PY, "args": SLEEPER}).body

    def both_listed() -> dict[str, dict[str, Any]] | None:
        rows = listed(a)
        return rows if on_b["id"] in rows and on_a["id"] in rows and rows[on_b["id"]]["status"] == "running" else None

    rows = wait_until(both_listed, 15, "a to list b's running task and its own")
    assert rows is not None
    assert rows[on_b["id"]]["node_id"] == "b" and rows[on_a["id"]]["node_id"] == "a"
    assert rows[on_b["id"]]["node_status"] == "online" and "lost" not in rows[on_b["id"]]
    assert set(listed(a, "node=b")) == {on_b["id"]}
    assert set(listed(a, "")) == {on_a["id"]}  # without node=: this node's own store, as before

    # By id, through a, for a task only b has: b answers.
    got = a.api.get(f"/api/tasks/{on_b['id']}")
    assert got.status == 200 and got.body["node_id"] == "b" and got.body["name"] == "on-b", got.text
    logs = wait_until(lambda: (r := a.api.get(f"/api/tasks/{on_b['id']}/logs?lines=5")).status == 200
                      and "hello from b" in r.text and r, 15, "b's log lines through a")
    assert logs
    stopped = a.api.delete(f"/api/tasks/{on_b['id']}")
    assert stopped.status == 200 and stopped.body["status"] == "stopped", stopped.text
    assert b.api.get(f"/api/tasks/{on_b['id']}").body["status"] == "stopped"
    assert a.api.get("/api/tasks/no-such-task").status == 404  # nobody has it: a plain 404

    bad = a.api.get("/api/tasks?node=../x")
    assert bad.status == 400 and bad.body["details"]["field"] == "node", bad.text
    assert a.api.get("/api/tasks?node=nowhere").status == 200  # a node with nothing mirrored


def test_a_task_on_a_node_that_died_is_shown_lost_on_the_others(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, b = two_agents(agent_factory, etcd_shared.endpoints)
    task = b.api.post("/api/tasks", {"name": "doomed", "command": PY, "args": SLEEPER}).body
    wait_until(lambda: listed(a).get(task["id"], {}).get("status") == "running", 15, "a to see b's task running")

    b.kill()
    wait_status(a, "b", "offline", timeout=TTL + 10)
    row = wait_until(lambda: listed(a).get(task["id"], {}).get("lost") and listed(a)[task["id"]], 10,
                     "b's task shown lost")
    assert row["node_status"] == "offline"
    assert row["reason"].startswith("lost: node b offline since "), row
