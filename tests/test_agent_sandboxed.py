"""The whole agent under real sandboxes: a systemd booted in namespaces (scopes) and
cgroupfs directly. Limits are enforced, outcomes say why, stops leave no process, and
a SIGKILLed agent recovers running tasks with every log line exactly once."""

from __future__ import annotations

import itertools
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable
ALLOC_300MB = "x = bytearray(300 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')"
_numbers = itertools.count(1)
MAX_PIDS = 48  # tasks.max_pids of these agents: room for every test's processes, and a small cap


@pytest.fixture(params=["cgroup", pytest.param("systemd", marks=pytest.mark.systemd)])
def sandboxed(request: pytest.FixtureRequest, agent_factory: Callable[..., AgentProcess], cgroup_group: str) -> AgentProcess:
    """An agent whose tasks run in the given backend; systemd ones run inside the harness."""
    n = next(_numbers)
    tasks: dict[str, Any] = {"sandbox": request.param, "stop_grace": "2s", "max_pids": MAX_PIDS}
    config = {"tasks": tasks, "resources": {"interval": "1s"}}
    if request.param == "cgroup":
        tasks["cgroup_group"] = f"{cgroup_group}-agent{n}"
        return agent_factory(config, name=f"cg{n}").start()
    ns = request.getfixturevalue("systemd_ns")
    tasks["slice"] = f"cnet-t{n}.slice"
    workdir = Path(request.getfixturevalue("tmp_path")) / f"sd{n}"
    workdir.mkdir()
    return agent_factory(config, name=f"sd{n}", prefix=ns.prefix(cwd=workdir), inner_pid=ns.inner_pid).start()


def submit(agent: AgentProcess, name: str, code: str, **extra: Any) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {"name": name, "command": PY, "args": ["-c", code], **extra})
    assert reply.status == 201, reply.text
    return reply.body


def test_health_reports_the_backend_and_enforced_limits(sandboxed: AgentProcess) -> None:
    sandbox = sandboxed.api.get("/api/health").body["sandbox"]
    assert sandbox["backend"] == sandboxed.config["tasks"]["sandbox"]
    assert sandbox["limits_enforced"] == {"cpu_limit": True, "memory_limit": True, "disk_limit": True, "max_pids": True,
                                          "gpu_limit": True, "gpu_memory": True}


def test_memory_limit_ends_in_an_oom_failure_with_that_reason(sandboxed: AgentProcess) -> None:
    task = submit(sandboxed, "hog", ALLOC_300MB, resources={"memory_limit": 100_000_000})
    done = sandboxed.wait_done(task["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["reason"] == "out of memory (limit 100 MB)"
    assert "survived" not in sandboxed.api.get(f"/api/tasks/{task['id']}/logs").body
    if sandboxed.config["tasks"]["sandbox"] == "systemd":
        assert done["unit"] == f"cnet-{task['id']}.scope"


def test_cpu_limit_and_usage_are_reported(sandboxed: AgentProcess) -> None:
    gate = sandboxed.workdir / "stop-burning"
    code = f"import os\nwhile not os.path.exists({str(gate)!r}): pass"
    task = submit(sandboxed, "burner", code, resources={"cpu_limit": 0.5})

    def sampled() -> dict[str, Any] | None:
        usage = sandboxed.api.get(f"/api/tasks/{task['id']}").body["usage"]
        return usage if usage and usage["cpu_percent"] is not None and usage["memory_bytes"] else None

    usage = wait_until(sampled, 30, "a usage sample with CPU and memory")
    assert usage["memory_peak_bytes"] >= usage["memory_bytes"] > 0
    stats = sandboxed.api.get(f"/api/tasks/{task['id']}/stats").body
    assert stats["usage"]["memory_bytes"] > 0
    # The quota caps the burner at half a core (it would take a whole one otherwise).
    assert usage["cpu_percent"] <= 65, usage
    gate.touch()
    done = sandboxed.wait_done(task["id"])
    assert done["status"] == "completed" and done["usage"]["memory_peak_bytes"] > 0


def test_stop_ends_the_whole_tree(sandboxed: AgentProcess) -> None:
    marker = f"cnet-tree-{os.getpid()}-{next(_numbers)}"
    code = (
        "import subprocess, sys, time\n"
        f"M = {marker!r}\n"
        "sleeper = [sys.executable, '-c', 'import time; time.sleep(600)', M]\n"
        "child = 'import subprocess, sys, time; subprocess.Popen(' + repr(sleeper) + '); time.sleep(600)'\n"
        "subprocess.Popen([sys.executable, '-c', child, M])  # a child with a grandchild\n"
        "subprocess.Popen(['setsid'] + sleeper)  # one that leaves the session\n"
        "print('forked', flush=True)\n"
        "time.sleep(600)"
    )
    task = submit(sandboxed, "tree", code)
    wait_until(lambda: len(processes_with(marker)) >= 3, 20, "the tree of 3 marked processes")
    reply = sandboxed.api.delete(f"/api/tasks/{task['id']}")
    assert reply.status == 200 and reply.body["status"] == "stopped"
    wait_until(lambda: not processes_with(marker), 10, "every process of the tree to be gone")


def test_disk_limit_fails_the_task_with_that_reason(sandboxed: AgentProcess) -> None:
    code = (  # a process task writes to its TMPDIR: the code it runs is read-only to it
        "import os, time\n"
        "with open(os.path.join(os.environ['TMPDIR'], 'big.bin'), 'wb') as f:\n"
        "    for _ in range(40):\n"
        "        f.write(b'x' * 1_000_000); f.flush(); time.sleep(0.05)\n"
        "time.sleep(600)"
    )
    task = submit(sandboxed, "writer", code, resources={"disk_limit": 5_000_000})
    done = sandboxed.wait_done(task["id"], timeout=60)
    assert done["status"] == "failed"
    assert done["reason"].startswith("disk limit exceeded (wrote ") and "limit" in done["reason"]


def test_sigkilled_agent_recovers_a_running_task_with_its_log_whole(sandboxed: AgentProcess) -> None:
    n = 200
    gate = sandboxed.workdir / "gate"
    code = (
        "import os, time\n"
        f"for i in range(1, {n} + 1):\n"
        "    print(i, flush=True)\n"
        "    if i == 50:\n"
        f"        while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        "    time.sleep(0.005)"
    )
    task = submit(sandboxed, "counter", code)
    wait_until(lambda: len(sandboxed.api.get(f"/api/tasks/{task['id']}/logs?lines=1000").body) >= 50, 30, "50 lines")
    sandboxed.kill()
    gate.touch()
    sandboxed.start()
    done = sandboxed.wait_done(task["id"], timeout=60)
    assert (done["status"], done["exit_code"]) == ("completed", 0), done
    assert sandboxed.api.get(f"/api/tasks/{task['id']}/logs?lines=10000").body == [str(i) for i in range(1, n + 1)]
    events = [e["type"] for e in sandboxed.api.get(f"/api/tasks/{task['id']}/events").body]
    assert events == ["created", "starting", "started", "recovered", "completed"]


def fork_loop(marker: str, attempts: int = 200) -> str:
    """A fork loop with an end (harmless even where no limit held), marked in every process's
    argv; it prints how many forks worked and failed, then sleeps with its children."""
    return (
        "import errno, os, time\n"
        f"M = {marker!r}\n"
        "made = failed = 0\n"
        f"for _ in range({attempts}):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        assert exc.errno == errno.EAGAIN, exc\n"
        "        failed += 1\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(600)\n"
        "        os._exit(0)\n"
        "    made += 1\n"
        "print(f'made {made} failed {failed}', flush=True)\n"
        "time.sleep(600)"
    )


def forks_reported(agent: AgentProcess, task_id: str) -> tuple[int, int] | None:
    for line in agent.api.get(f"/api/tasks/{task_id}/logs?lines=100").body:
        if line.startswith("made "):
            _, made, _, failed = line.split()
            return int(made), int(failed)
    return None


def test_a_fork_loop_stops_at_its_pids_limit_while_neighbours_and_the_api_keep_working(sandboxed: AgentProcess) -> None:
    marker = f"cnet-forks-{os.getpid()}-{next(_numbers)}"
    asked = submit(sandboxed, "bomb-asked", fork_loop(marker + "-a"), resources={"max_pids": 16})
    default = submit(sandboxed, "bomb-default", fork_loop(marker + "-d"))
    for task, cap in ((asked, 16), (default, MAX_PIDS)):
        made, failed = wait_until(lambda t=task: forks_reported(sandboxed, t["id"]), 60, f"{task['name']} to report")
        # the shim and the loop count too; every fork past the cap failed with EAGAIN
        assert 1 <= made <= cap - 2 and made + failed == 200, (task["name"], made, failed)
    body = sandboxed.api.get(f"/api/tasks/{asked['id']}").body
    assert body["resources"]["max_pids"] == 16 and body["limits_enforced"]["max_pids"] is True

    # While both sit at their limits, the agent answers and a neighbour runs to its end.
    for _ in range(20):
        t0 = time.monotonic()
        assert sandboxed.api.get("/api/health", timeout=5).status == 200
        assert time.monotonic() - t0 < 2
    neighbour = submit(sandboxed, "neighbour", "import subprocess; subprocess.run(['true'], check=True); print('ran')")
    done = sandboxed.wait_done(neighbour["id"], timeout=30)
    assert done["status"] == "completed", done

    # A capped task stops cleanly: stopped, and none of its processes left.
    for task in (asked, default):
        reply = sandboxed.api.delete(f"/api/tasks/{task['id']}")
        assert reply.status == 200 and reply.body["status"] == "stopped", reply.text
    wait_until(lambda: not processes_with(marker), 15, "every forked process to be gone")


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_task_whose_saved_handle_cannot_be_read_is_failed_and_killed_while_others_are_reattached(
        sandboxed: AgentProcess) -> None:
    """Recover or destroy: the agent is SIGKILLed, one running task's handle row is damaged
    while it is down; the agent starts all the same, fails that task as lost and kills its
    processes (a child included), and reattaches the other."""
    marker = f"cnet-handle-{os.getpid()}-{next(_numbers)}"
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]])\n"
            "print('up', flush=True)\n"
            "time.sleep(600)")
    tasks = {}
    for name in ("damaged", "intact"):
        reply = sandboxed.api.post("/api/tasks", {"name": name, "command": PY, "args": ["-c", code, f"{marker}-{name}"]})
        assert reply.status == 201, reply.text
        tasks[name] = reply.body["id"]
    for name in tasks:
        wait_until(lambda n=name: len(processes_with(f"{marker}-{n}")) >= 2, 30, f"{name}'s two processes")

    sandboxed.kill()
    conn = sqlite3.connect(sandboxed.state_dir / "cnet.db")
    with conn:  # torn, as a damaged disk leaves it
        conn.execute("UPDATE tasks SET handle = substr(handle, 1, 20) WHERE id = ?", (tasks["damaged"],))
    conn.close()
    sandboxed.start()

    damaged = sandboxed.api.get(f"/api/tasks/{tasks['damaged']}").body
    assert (damaged["status"], damaged["reason"]) == ("failed", "lost: unreadable handle")
    wait_until(lambda: not processes_with(f"{marker}-damaged"), 15, "the damaged task's processes to be killed")
    assert "its saved handle cannot be read" in sandboxed.log_text()

    intact = sandboxed.api.get(f"/api/tasks/{tasks['intact']}").body
    assert intact["status"] == "running" and len(processes_with(f"{marker}-intact")) >= 2
    events = [e["type"] for e in sandboxed.api.get(f"/api/tasks/{tasks['intact']}/events").body]
    assert events[-1] == "recovered"
    reply = sandboxed.api.delete(f"/api/tasks/{tasks['intact']}")  # still ours: it stops
    assert reply.status == 200 and reply.body["status"] == "stopped", reply.text
    wait_until(lambda: not processes_with(marker), 15, "every process to be gone")


def test_a_task_in_its_own_python_environment(sandboxed: AgentProcess) -> None:
    """The environment's build (a task of kind env) and the task that runs in it, both in
    the backend's sandbox: the task imports the version its environment pinned."""
    code = "import json, six; print(json.dumps({'six': six.__version__}))"
    task = sandboxed.api.post("/api/tasks", {"name": "in-env", "command": "python3", "args": ["-c", code],
                                             "environment": {"requirements": ["six==1.15.0"], "inherit": False}})
    assert task.status == 201 and task.body["status"] == "preparing", task.text
    done = sandboxed.wait_done(task.body["id"], timeout=300)
    assert done["status"] == "completed" and done["result"] == {"six": "1.15.0"}, done
    build = sandboxed.api.get("/api/tasks?kind=env").body[0]
    assert build["status"] == "completed" and build["sandbox"] == sandboxed.config["tasks"]["sandbox"], build
