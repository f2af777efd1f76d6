"""SIGKILL the agent and start it again: every task, event and log line is still
there, none doubled, and tasks that ran on are recovered."""

from __future__ import annotations

import sqlite3
import sys

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable


def count_log_rows(agent: AgentProcess, task_id: str) -> tuple[int, int]:
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    try:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT line) FROM log_lines WHERE task_id = ?", (task_id,)
        ).fetchone()
        return total, distinct
    finally:
        conn.close()


def test_sigkill_loses_nothing_and_doubles_nothing(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory().start()
    finished = agent.api.post("/api/tasks", {"name": "done-before", "command": PY, "args": ["-c", "print('a'); print('b')"]}).body
    agent.wait_done(finished["id"])
    gate = agent.workdir / "gate"
    n = 300
    code = (
        "import os, time\n"
        f"for i in range(1, {n} + 1):\n"
        "    print(i, flush=True)\n"
        f"    if i == 100:\n"
        f"        while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "    time.sleep(0.002)"
    )
    running = agent.api.post("/api/tasks", {"name": "counter", "command": PY, "args": ["-c", code]}).body
    wait_until(lambda: len(agent.api.get(f"/api/tasks/{running['id']}/logs?lines=1000").body) >= 100, 20, "100 lines ingested")
    events_before = agent.api.get(f"/api/tasks/{finished['id']}/events").body

    agent.kill()  # SIGKILL: no shutdown code runs
    gate.touch()  # the task goes on printing while no agent is there
    agent.start()

    done = agent.wait_done(running["id"])
    assert done["status"] == "completed" and done["exit_code"] == 0, done
    lines = agent.api.get(f"/api/tasks/{running['id']}/logs?lines=10000").body
    assert lines == [str(i) for i in range(1, n + 1)]
    assert count_log_rows(agent, running["id"]) == (n, n)
    event_types = [e["type"] for e in agent.api.get(f"/api/tasks/{running['id']}/events").body]
    assert event_types == ["created", "starting", "started", "recovered", "completed"]

    assert agent.api.get(f"/api/tasks/{finished['id']}").body["status"] == "completed"
    assert agent.api.get(f"/api/tasks/{finished['id']}/logs").body == ["a", "b"]
    assert agent.api.get(f"/api/tasks/{finished['id']}/events").body == events_before


def test_exit_code_of_a_task_that_ended_while_the_agent_was_down(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory().start()
    gate = agent.workdir / "gate"
    code = f"import os, sys, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\nprint('bye')\nsys.exit(7)"
    task = agent.api.post("/api/tasks", {"name": "ender", "command": PY, "args": ["-c", code]}).body
    agent.wait_status(task["id"], {"running"})
    agent.kill()
    gate.touch()
    exit_file = agent.state_dir / "run" / f"{task['id']}.exit"
    wait_until(exit_file.exists, 10, "the shim to record the exit code")
    agent.start()
    done = agent.wait_done(task["id"])
    assert (done["status"], done["exit_code"], done["reason"]) == ("failed", 7, "exit code 7")
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["bye"]


def test_a_task_that_vanished_without_an_exit_status_is_lost(agent_factory) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import signal

    agent: AgentProcess = agent_factory().start()
    task = agent.api.post("/api/tasks", {"name": "victim", "command": PY, "args": ["-c", "import time; time.sleep(600)"]}).body
    agent.wait_status(task["id"], {"running"})
    agent.kill()
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    handle = json.loads(conn.execute("SELECT handle FROM tasks WHERE id = ?", (task["id"],)).fetchone()[0])
    conn.close()
    os.killpg(handle["pid"], signal.SIGKILL)  # the shim dies too: nothing records an exit

    def gone() -> bool:
        try:
            os.kill(handle["pid"], 0)
            return False
        except ProcessLookupError:
            return True

    wait_until(gone, 10, "the task's processes to be gone")
    agent.start()
    done = agent.wait_done(task["id"])
    assert done["status"] == "failed"
    assert done["reason"] == "lost: process vanished while the agent was down"


def test_pending_tasks_survive_a_restart_and_start(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory({"tasks": {"max_concurrent": 1}}).start()
    gate = agent.workdir / "gate"
    wait_for_gate = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)"
    blocker = agent.api.post("/api/tasks", {"name": "blocker", "command": PY, "args": ["-c", wait_for_gate]}).body
    queued = agent.api.post("/api/tasks", {"name": "queued", "command": PY, "args": ["-c", "print('ran')"]}).body
    agent.wait_status(blocker["id"], {"running"})
    assert agent.api.get(f"/api/tasks/{queued['id']}").body["status"] == "pending"
    agent.kill()
    agent.start()
    gate.touch()
    assert agent.wait_done(blocker["id"])["status"] == "completed"
    assert agent.wait_done(queued["id"])["status"] == "completed"
    assert agent.api.get(f"/api/tasks/{queued['id']}/logs").body == ["ran"]
