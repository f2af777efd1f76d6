"""Parent/child clusters, with real agents on loopback: children report with heartbeats,
the parent lists them, delegates tasks and models to them, passes calls through, notices
when one goes away and when it is back, and refuses what is wrong with a clear 4xx."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Client
from tests.support.waiting import wait_until

TOKEN = "cluster-token-0123456789abcdef"
PY = sys.executable
PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"


@pytest.fixture
def cluster(agent_factory: Callable[..., AgentProcess]) -> Callable[..., AgentProcess]:
    """make("parent") or make("child-a", parent=p): agents that share one token."""

    def make(node_id: str, parent: AgentProcess | None = None, token: str = TOKEN) -> AgentProcess:
        config: dict[str, Any] = {
            "agent": {"node_id": node_id, "node_name": f"{node_id} node", "heartbeat": "1s"},
            "auth": {"tokens": [TOKEN]},
        }
        if parent is not None:
            config["discovery"] = {"enabled": True, "servers": [parent.url], "token": token, "timeout": "2s",
                                   "retry": 0}
        agent = agent_factory(config, name=node_id)
        agent.api = Client(agent.url, TOKEN)
        return agent.start()

    return make


def nodes_of(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    reply = agent.api.get("/api/nodes")
    assert reply.status == 200, reply.text
    return {node["node_id"]: node for node in reply.body}


def wait_status(parent: AgentProcess, node_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    return wait_until(lambda: (nodes_of(parent).get(node_id) or {}).get("status") == status and nodes_of(parent)[node_id],
                      timeout, f"{node_id} to be {status} at the parent")


def test_children_report_and_the_parent_lists_them(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    a, b = cluster("child-a", parent), cluster("child-b", parent)
    wait_status(parent, "child-a", "online")
    child_b = wait_status(parent, "child-b", "online")
    listed = nodes_of(parent)
    assert list(listed) == ["parent", "child-a", "child-b"]
    assert listed["parent"]["role"] == "self" and listed["parent"]["parent"] is None
    assert child_b["role"] == "child" and child_b["url"] == b.url and child_b["node_name"] == "child-b node"
    assert child_b["resources"]["cpu_cores"] >= 1 and child_b["resources"]["memory_total"] > 0
    assert child_b["heartbeat_interval"] == 1.0 and child_b["sandbox"] == "none"
    assert parent.api.get("/api/nodes/child-b").body["node_id"] == "child-b"

    up = a.api.get("/api/node").body["parent"]
    assert up["state"] == "connected" and up["node_id"] == "parent" and up["url"] == parent.url
    assert nodes_of(a)["child-a"]["parent"]["state"] == "connected"

    page = parent.api.get("/nodes", headers={"Accept": "text/html"})
    assert page.status == 200 and "child-a node" in page.text and "child-b node" in page.text


def test_the_parent_delegates_tasks_and_models_and_passes_calls_through(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    a, b = cluster("child-a", parent), cluster("child-b", parent)
    wait_status(parent, "child-a", "online")
    wait_status(parent, "child-b", "online")

    created = parent.api.post("/api/tasks", {"node_id": "child-a", "name": "hello", "command": PY,
                                             "args": ["-c", "print('你好 from a'); print('{\"ok\": 1}')"]})
    assert created.status == 201, created.text
    task = created.body
    assert task["node_id"] == "child-a" and created.headers["X-CNET-Node"] == "child-a"
    assert [t["id"] for t in a.api.get("/api/tasks").body] == [task["id"]]
    assert parent.api.get("/api/tasks").body == []  # it runs on the child, not here

    through = f"/api/nodes/child-a/api/tasks/{task['id']}"
    done = wait_until(lambda: (r := parent.api.get(through).body)["status"] == "completed" and r, 30, "the task to end")
    assert done["result"] == {"ok": 1}
    assert parent.api.get(through + "/logs").body == ["你好 from a", '{"ok": 1}']
    request = urllib.request.Request(parent.url + through + "/logs?follow=1",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as stream:  # SSE passed through; ends with the task
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert "你好 from a" in stream.read().decode()

    scripts = b.workdir / "scripts"
    scripts.mkdir()
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    deployed = parent.api.post("/api/ml/models", {"node_id": "child-b", "name": "pure", "command": PY,
                                                  "script_path": "scripts/pure_model.py", "model_path": "models/p.json"})
    assert deployed.status == 201, deployed.text
    model_path = f"/api/nodes/child-b/api/ml/models/{deployed.body['id']}"
    wait_until(lambda: parent.api.get(model_path).body["status"] == "completed", 30, "training on child-b")
    predicted = parent.api.post(model_path + "/predict?wait=true", {"input_data": 5.5})
    assert predicted.status == 200, predicted.text
    assert predicted.body["prediction"] == pytest.approx(14.0)
    # The child's own answers pass through unchanged, errors included.
    missing = parent.api.get("/api/nodes/child-b/api/tasks/no-such-task")
    assert missing.status == 404 and missing.body["error"] == "task no-such-task not found"


def test_wrong_requests_are_clear_4xx(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    cluster("child-a", parent)
    wait_status(parent, "child-a", "online")
    body = {"name": "x", "command": PY, "args": ["-c", "pass"]}

    unknown = parent.api.post("/api/tasks", {**body, "node_id": "nowhere"})
    assert unknown.status == 400 and unknown.body["details"]["field"] == "node_id", unknown.text
    assert "neither this node nor one of its children" in unknown.body["error"]
    assert parent.api.post("/api/tasks", {**body, "node_id": 7}).body["details"]["field"] == "node_id"
    assert parent.api.post("/api/tasks", {**body, "node_id": "parent"}).status == 201  # itself: runs here
    child_error = parent.api.post("/api/tasks", {"node_id": "child-a", "name": "x"})
    assert child_error.status == 400 and child_error.body["details"]["field"] == "command"  # the child's own check

    beat = {"node_id": "child-z", "url": "http://127.0.0.1:9", "interval": 5}
    assert parent.api.post("/api/cluster/heartbeat", {**beat, "url": "ftp://x"}).body["details"]["field"] == "url"
    assert parent.api.post("/api/cluster/heartbeat", {**beat, "interval": 0}).body["details"]["field"] == "interval"
    assert parent.api.post("/api/cluster/heartbeat", {**beat, "extra": 1}).body["details"]["field"] == "extra"
    assert parent.api.post("/api/cluster/heartbeat", {**beat, "node_id": "parent"}).status == 409
    assert Client(parent.url).post("/api/cluster/heartbeat", beat).status == 401
    assert "child-z" not in nodes_of(parent)

    assert parent.api.get("/api/nodes/nowhere/api/tasks").status == 404
    not_api = parent.api.get("/api/nodes/child-a/metrics")
    assert not_api.status == 404 and "only /api/... and /v2/..." in not_api.body["error"]


def test_a_child_that_goes_away_is_offline_then_back_and_can_be_forgotten(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    a, b = cluster("child-a", parent), cluster("child-b", parent)
    wait_status(parent, "child-a", "online")
    wait_status(parent, "child-b", "online")
    assert parent.api.delete("/api/nodes/child-a").status == 409  # online: it would come straight back

    a.stop()
    wait_status(parent, "child-a", "offline")
    refused = parent.api.post("/api/tasks", {"node_id": "child-a", "name": "x", "command": PY, "args": ["-c", "pass"]})
    assert refused.status == 503 and "child-a is offline" in refused.body["error"]
    assert parent.api.get("/api/nodes/child-a/api/tasks").status == 503

    a.start()
    wait_status(parent, "child-a", "online")
    assert parent.api.get("/api/nodes/child-a/api/tasks").status == 200

    b.stop()
    wait_status(parent, "child-b", "offline")
    assert parent.api.delete("/api/nodes/child-b").status == 200
    assert "child-b" not in nodes_of(parent)

    # A restarted parent still knows its children (from the store) and talks to them again
    # as soon as each has reported once more (their tokens are kept in memory only).
    parent.stop()
    parent.start()
    assert "child-a" in nodes_of(parent)
    wait_until(lambda: parent.api.get("/api/nodes/child-a/api/tasks").status == 200, 20, "child-a to report again")


def test_a_child_with_a_wrong_token_is_refused_and_says_so(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    stranger = cluster("child-x", parent, token="wrong-token-0123456789abcdef")

    def refused() -> dict[str, Any] | None:
        up = stranger.api.get("/api/node").body["parent"]
        return up if up["state"] == "refused" else None

    up = wait_until(refused, 20, "the parent to refuse child-x")
    assert "401" in up["last_error"] and parent.url in up["last_error"]
    assert "child-x" not in nodes_of(parent)
    assert "parent refused" in stranger.log_text() and "wrong-token" not in stranger.log_text()


def test_pass_through_keeps_the_path_as_sent(cluster: Callable[..., AgentProcess]) -> None:
    parent = cluster("parent")
    cluster("child-a", parent)
    wait_status(parent, "child-a", "online")
    # An escaped "?" stays part of the id: the child is asked for that task, not for a query.
    odd = parent.api.get("/api/nodes/child-a/api/tasks/x%3Fstatus%3Drunning")
    assert odd.status == 404 and odd.body["error"] == "task x?status=running not found", odd.text
    listed = parent.api.get("/api/nodes/child-a/api/tasks?status=running&limit=5")
    assert listed.status == 200 and listed.body == []
