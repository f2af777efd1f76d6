"""Task usage comes from one sampler in the tasks layer: a task is sampled as soon as it
runs and once more after it exits (before its sandbox is released), so even a
sub-second task ends with its peak memory; the UI's usage chart reads the same samples."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnetd.clock import parse_time
from cnetd.supervisor.cgroupfs import CpuMeter
from cnetd.tasks.usage import FRESH_AGE, IDLE_INTERVAL, SAMPLE_INTERVAL
from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable
ALLOC_50MB = "x = bytearray(50 * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('allocated')"
_numbers = itertools.count(1)


def start_agent(agent_factory: Callable[..., AgentProcess], sandbox: str, group: str | None = None) -> AgentProcess:
    n = next(_numbers)
    tasks: dict[str, Any] = {"sandbox": sandbox, "stop_grace": "2s"}
    if group is not None:
        tasks["cgroup_group"] = f"{group}-usage{n}"
    # The node's resources interval is long on purpose: task usage must not wait for it.
    config = {"tasks": tasks, "resources": {"interval": "60s"}}
    return agent_factory(config, name=f"{sandbox}{n}").start()


@pytest.fixture(params=["none", "cgroup"])
def any_agent(request: pytest.FixtureRequest, agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    if request.param == "cgroup":
        return start_agent(agent_factory, "cgroup", request.getfixturevalue("cgroup_group"))
    return start_agent(agent_factory, "none")


def submit(agent: AgentProcess, name: str, code: str, **extra: Any) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {"name": name, "command": PY, "args": ["-c", code], **extra})
    assert reply.status == 201, reply.text
    return reply.body


def stored_handle(agent: AgentProcess, task_id: str) -> dict[str, Any]:
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    try:
        (handle,) = conn.execute("SELECT handle FROM tasks WHERE id = ?", (task_id,)).fetchone()
    finally:
        conn.close()
    return dict(json.loads(handle))


def reports_peak(cgroup_dirs: dict[str, str]) -> bool:
    """Whether this machine's cgroups keep a peak (v1 max_usage_in_bytes, v2 memory.peak
    from Linux 5.19), read next to the task's (released) group."""
    if "memory" in cgroup_dirs:
        return (Path(cgroup_dirs["memory"]).parent / "memory.max_usage_in_bytes").exists()
    if "unified" in cgroup_dirs:
        return (Path(cgroup_dirs["unified"]).parent / "memory.peak").exists()
    return False


def test_a_sub_second_task_ends_with_its_peak_memory(
    agent_factory: Callable[..., AgentProcess], cgroup_group: str
) -> None:
    agent = start_agent(agent_factory, "cgroup", cgroup_group)
    started = time.monotonic()
    task = submit(agent, "short-alloc", ALLOC_50MB)
    done = agent.wait_done(task["id"], timeout=60)
    assert done["status"] == "completed", done
    if not reports_peak(stored_handle(agent, task["id"])["cgroup"] or {}):
        pytest.skip("this machine's memory cgroup keeps no peak (cgroup v2 before Linux 5.19)")
    usage = done["usage"]
    assert usage is not None, f"no usage for a task that ran {time.monotonic() - started:.2f}s"
    assert usage["memory_peak_bytes"] >= 40_000_000, usage
    # stored with the task, not only held in memory
    assert agent.api.get(f"/api/tasks/{task['id']}").body["usage"] == usage


def test_a_running_task_has_usage_at_once_whatever_the_resources_interval(any_agent: AgentProcess) -> None:
    gate = any_agent.workdir / "gate"
    task = submit(any_agent, "idler", f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)")
    any_agent.wait_status(task["id"], {"running"}, timeout=30)

    def sampled() -> dict[str, Any] | None:
        usage: dict[str, Any] | None = any_agent.api.get(f"/api/tasks/{task['id']}").body["usage"]
        return usage if usage and usage["memory_bytes"] else None

    usage = wait_until(sampled, 3, "a usage sample within 3s of running (resources.interval is 60s)")
    assert usage["memory_peak_bytes"] >= usage["memory_bytes"] > 0
    assert usage["pids"] >= 1 and usage["sampled_at"]
    gate.touch()
    done = any_agent.wait_done(task["id"], timeout=30)
    assert done["status"] == "completed" and done["usage"]["memory_peak_bytes"] > 0


def chart_samples(agent: AgentProcess, task_id: str) -> int:
    """How many memory samples the task page's usage chart (its polled fragment) draws."""
    reply = agent.api.get(f"/tasks/{task_id}/usage")
    assert reply.status == 200, reply.text
    found = re.search(r'aria-label="Memory usage: (\d+) samples', reply.text)
    return int(found.group(1)) if found else 0


def test_the_usage_chart_grows_while_the_task_runs_and_stays_after(any_agent: AgentProcess) -> None:
    gate = any_agent.workdir / "gate"
    task = submit(any_agent, "idler", f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)")
    first = wait_until(lambda: chart_samples(any_agent, task["id"]), 10, "the chart's first sample")
    more = wait_until(lambda: (n := chart_samples(any_agent, task["id"])) > first and n, 10, "the chart to grow")
    assert "<polyline" in any_agent.api.get(f"/tasks/{task['id']}/usage").text  # two samples draw a line
    gate.touch()
    any_agent.wait_done(task["id"], timeout=30)
    # a finished task keeps its chart
    assert chart_samples(any_agent, task["id"]) >= more


def usage_age(task: dict[str, Any]) -> float | None:
    """Seconds since the task's usage was sampled, as the API serves it."""
    sampled = (task.get("usage") or {}).get("sampled_at")
    return None if sampled is None else time.time() - parse_time(sampled).timestamp()


SLACK = 1.5  # a round's own time and the request's, on a busy two-core machine


def test_usage_stays_as_fresh_as_promised_and_idle_tasks_cost_less(any_agent: AgentProcess) -> None:
    """Busy tasks: a sample every SAMPLE_INTERVAL; idle ones: every IDLE_INTERVAL (and not
    every second); the task asked for by id: read afresh when older than FRESH_AGE, then
    sampled every SAMPLE_INTERVAL while someone looks."""
    gate = any_agent.workdir / "gate"
    wait = f"import os, time\nwhile not os.path.exists({str(gate)!r}):\n"
    idle = submit(any_agent, "idle", wait + "    time.sleep(0.5)")
    busy = submit(any_agent, "busy", wait + "    end = time.monotonic() + 0.02\n"
                                            "    while time.monotonic() < end: pass\n    time.sleep(0.08)")

    def listed() -> dict[str, dict[str, Any]]:  # a list is no look at any one task
        return {t["id"]: t for t in any_agent.api.get("/api/tasks?status=running").body}

    wait_until(lambda: len(running := listed()) == 2 and all(usage_age(t) is not None for t in running.values()),
               30, "both running, with a first sample")
    ages: dict[str, list[float]] = {idle["id"]: [], busy["id"]: []}
    end = time.monotonic() + 3 * IDLE_INTERVAL
    while time.monotonic() < end:
        for task_id, task in listed().items():
            ages[task_id].append(usage_age(task) or 0.0)
        time.sleep(0.2)  # the pace of a UI poll, not synchronisation
    assert max(ages[busy["id"]]) <= SAMPLE_INTERVAL + SLACK, ages[busy["id"]]
    assert max(ages[idle["id"]]) <= IDLE_INTERVAL + SLACK, ages[idle["id"]]
    assert max(ages[idle["id"]]) > SAMPLE_INTERVAL + SLACK, "an idle task is still sampled every second"

    # Asked for by id, the idle task's usage is read at once, then kept fresh while looked at.
    asked = any_agent.api.get(f"/api/tasks/{idle['id']}").body
    assert usage_age(asked) <= FRESH_AGE + SLACK, asked["usage"]
    end = time.monotonic() + 2 * IDLE_INTERVAL
    while time.monotonic() < end:
        assert usage_age(listed()[idle["id"]]) <= SAMPLE_INTERVAL + SLACK
        time.sleep(0.2)
    gate.touch()
    for task in (idle, busy):
        assert any_agent.wait_done(task["id"], timeout=30)["status"] == "completed"


def test_a_cpu_sample_right_after_another_keeps_the_figure_of_a_whole_window() -> None:
    """A read on demand can land just after a sampling round: it must not report a CPU
    figure measured over a few milliseconds (0 % or wild), nor spoil the next window."""
    now = [100.0]
    meter = CpuMeter(clock=lambda: now[0])
    assert meter.percent("t", 0) is None  # no window yet
    now[0] += 1.0
    assert meter.percent("t", 500_000) == 50.0  # half a second of CPU in a second
    now[0] += 0.01
    assert meter.percent("t", 500_100) == 50.0  # too soon: the last figure, not 1 %
    now[0] += 0.99
    assert meter.percent("t", 1_500_000) == 100.0  # measured from the last real baseline
