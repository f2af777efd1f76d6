"""Process tasks through the real agent over real HTTP: lifecycle, logs, stop,
timeout, the max_concurrent queue."""

from __future__ import annotations

import sys

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable


def py_task(name: str, code: str, **extra: object) -> dict[str, object]:
    return {"name": name, "type": "process", "command": PY, "args": ["-c", code], **extra}


def test_empty_lists_are_arrays_not_null(agent: AgentProcess) -> None:
    assert agent.api.get("/api/tasks").body == []
    assert agent.api.get("/api/ml/models").body == []


def test_task_runs_to_completion_with_logs_events_and_result(agent: AgentProcess) -> None:
    code = "import json\nfor i in range(1, 6): print('line', i)\nprint(json.dumps({'status': 'success', 'answer': 42}))"
    reply = agent.api.post("/api/tasks", py_task("hello", code, env={"GREETING": "hi"}))
    assert reply.status == 201, reply.text
    created = reply.body
    assert created["status"] == "pending" and created["type"] == "process" and created["env"] == {"GREETING": "hi"}
    done = agent.wait_done(created["id"])
    assert done["status"] == "completed" and done["exit_code"] == 0 and done["reason"] is None
    assert done["result"] == {"status": "success", "answer": 42}
    assert done["started_at"] and done["stopped_at"]
    logs = agent.api.get(f"/api/tasks/{created['id']}/logs?lines=3").body
    assert logs == ["line 4", "line 5", '{"status": "success", "answer": 42}']
    assert len(agent.api.get(f"/api/tasks/{created['id']}/logs").body) == 6
    events = [e["type"] for e in agent.api.get(f"/api/tasks/{created['id']}/events").body]
    assert events == ["created", "starting", "started", "completed"]


def test_a_task_whose_result_holds_a_lone_surrogate_escape_still_completes(agent: AgentProcess) -> None:
    """An attacker's task prints JSON with "\\ud800" as its last object: its exit is recorded
    (it was an internal error that failed the task), the result keeps U+FFFD in its place."""
    code = r"""print('{"answer": "x\\ud800", "n": 1}')"""
    task = agent.api.post("/api/tasks", py_task("lone-result", code)).body
    done = agent.wait_done(task["id"])
    assert (done["status"], done["exit_code"], done["reason"]) == ("completed", 0, None), done
    assert done["result"] == {"answer": "x\ufffd", "n": 1}
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ['{"answer": "x\\ud800", "n": 1}']


def test_failed_task_says_why(agent: AgentProcess) -> None:
    task = agent.api.post("/api/tasks", py_task("boom", "import sys; sys.exit(3)")).body
    done = agent.wait_done(task["id"])
    assert (done["status"], done["exit_code"], done["reason"]) == ("failed", 3, "exit code 3")


def test_stop_gives_stopped_and_ends_the_process_group(agent: AgentProcess) -> None:
    code = (
        "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('ready', flush=True)\ntime.sleep(600)"
    )
    task = agent.api.post("/api/tasks", py_task("sleeper", code)).body
    agent.wait_status(task["id"], {"running"})
    wait_until(lambda: agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["ready"], 10, "the task to print ready")
    reply = agent.api.delete(f"/api/tasks/{task['id']}")
    assert reply.status == 200, reply.text
    assert reply.body["status"] == "stopped"
    final = agent.api.get(f"/api/tasks/{task['id']}").body
    assert final["status"] == "stopped" and final["reason"] is None
    events = [e["type"] for e in agent.api.get(f"/api/tasks/{task['id']}/events").body]
    assert events[-2:] == ["stop_requested", "stopped"]
    again = agent.api.delete(f"/api/tasks/{task['id']}")
    assert again.status == 409 and "already ended" in again.body["error"]


def test_timeout_fails_the_task_with_that_reason(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory({"tasks": {"timeout": "1s", "stop_grace": "1s"}}).start()
    task = agent.api.post("/api/tasks", py_task("slow", "import time; time.sleep(60)")).body
    done = agent.wait_done(task["id"], timeout=20)
    assert done["status"] == "failed"
    assert done["reason"] == "timed out after 1s"


def test_max_concurrent_queues_tasks_as_pending(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory({"tasks": {"max_concurrent": 2}}).start()
    gate = agent.workdir / "gate"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    ids = [agent.api.post("/api/tasks", py_task(f"q{i}", code)).body["id"] for i in range(4)]

    def statuses() -> list[str]:
        return [agent.api.get(f"/api/tasks/{i}").body["status"] for i in ids]

    wait_until(lambda: statuses() == ["running", "running", "pending", "pending"], 15, "two running, two queued")
    gate.touch()
    for task_id in ids:
        assert agent.wait_done(task_id)["status"] == "completed"
    events = agent.api.get(f"/api/tasks/{ids[3]}/events").body
    assert [e["type"] for e in events] == ["created", "starting", "started", "completed"]


def test_log_follow_streams_lines_as_server_sent_events(agent: AgentProcess) -> None:
    code = "import time\nfor i in range(1, 4):\n    print('tick', i, flush=True)\n    time.sleep(0.2)"
    task = agent.api.post("/api/tasks", py_task("ticker", code)).body
    reply = agent.api.get(f"/api/tasks/{task['id']}/logs?follow=1", timeout=30)
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    data = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert data == ['"tick 1"', '"tick 2"', '"tick 3"', '"completed"']


def test_progress_lines_update_the_task(agent: AgentProcess) -> None:
    code = (
        "import json, time, os\n"
        "print(json.dumps({'progress': 0.5}), flush=True)\n"
        f"while not os.path.exists({str(agent.workdir / 'go')!r}): time.sleep(0.02)\n"
        "print(json.dumps({'progress': 1.0, 'status': 'success'}))"
    )
    task = agent.api.post("/api/tasks", py_task("progress", code)).body
    wait_until(lambda: agent.api.get(f"/api/tasks/{task['id']}").body["progress"] == 0.5, 10, "progress 0.5")
    (agent.workdir / "go").touch()
    assert agent.wait_done(task["id"])["progress"] == 1.0


def test_venv_python_comes_first_on_the_task_path(agent: AgentProcess) -> None:
    which = {"name": "which", "command": "python3", "args": ["-c", "import sys; print(sys.prefix)"]}
    task = agent.api.post("/api/tasks", which).body
    agent.wait_done(task["id"])
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == [sys.prefix]


def test_usage_answers_from_the_first_request(agent: AgentProcess) -> None:
    usage = agent.api.get("/api/resources/usage").body
    assert 0 <= usage["cpu"]["percent"] <= 100 and usage["memory"]["total"] > 0
    resources = agent.api.get("/api/resources").body
    assert resources["cpu"]["cores"] >= 1
    node = agent.api.get("/api/node").body
    assert node["node_id"] and node["sandbox"]["backend"] == "none"
    health = agent.api.get("/api/health").body
    assert health["status"] == "ok" and health["sandbox"]["limits_enforced"]["memory_limit"] is False

