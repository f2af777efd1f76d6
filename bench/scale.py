"""Cost as work grows: API latency and the agent's own CPU with N long-running tasks.

    .venv/bin/python bench/scale.py [--counts 300,1000,3000] [--requests 300] [--window 20]

Needs root (the cgroup backend). One real agent (`tasks.sandbox: cgroup`, `run_as: root`, a
cgroup group of the bench's own, `tasks.max_concurrent` above the largest N, no task timeout)
is measured first idle, then with 300, 1,000 and 3,000 tasks running (`sleep`, each with a
cpu, memory and disk limit, in one small working dir, as the tasks of one model would be):

  - latency: --requests times each of `GET /api/tasks?limit=50` and `GET /api/tasks/{id}`
    (a random running task), one after another on one keep-alive connection;
  - agent CPU: utime+stime of the agent process (all its threads) over --window seconds
    with no requests, from /proc/<pid>/stat, as a percentage of one core;
  - usage age: how old each listed task's `usage.sampled_at` was when it was served.

The idle row has the same 50 tasks to list (finished ones), so every row serialises the
same amount. Ratios are against the idle row. A count that cannot be reached within
--start-timeout is reported with what was reached. Every task, process and cgroup the bench
made is removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.clock import parse_time  # noqa: E402
from cnetd.supervisor import cgroup, cgroupfs  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402

LISTED = 50  # tasks per list request, and finished tasks made for the idle row
RESOURCES = {"cpu_limit": 0.1, "memory_limit": "64MB"}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Row:
    label: str
    running: int
    list_ms: list[float]
    get_ms: list[float]
    cpu_percent: float
    usage_age_s: list[float]
    start_seconds: float | None = None

    @property
    def all_ms(self) -> list[float]:
        return self.list_ms + self.get_ms


class Api:
    """GETs on one keep-alive connection, timed as the client sees them."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[float, Any]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        data = resp.read()
        elapsed = (time.perf_counter() - t0) * 1e3
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {data[:200]!r}")
        return elapsed, json.loads(data)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_cpu_percent(pid: int, window: float) -> float:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # the measuring window, not synchronisation
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def measure(agent: AgentProcess, label: str, running_ids: list[str], requests: int, window: float,
            start_seconds: float | None) -> Row:
    assert agent.proc is not None
    cpu = agent_cpu_percent(agent.proc.pid, window)
    api = Api(agent.port)
    list_ms: list[float] = []
    get_ms: list[float] = []
    ages: list[float] = []
    pick = running_ids or [t["id"] for t in agent.api.get(f"/api/tasks?limit={LISTED}").body]
    for _ in range(requests):
        elapsed, body = api.get(f"/api/tasks?limit={LISTED}")
        list_ms.append(elapsed)
        now = time.time()
        for task in body:
            usage = task.get("usage") or {}
            if task["status"] == "running" and usage.get("sampled_at"):
                ages.append(now - parse_time(usage["sampled_at"]).timestamp())
        elapsed, _ = api.get(f"/api/tasks/{random.choice(pick)}")
        get_ms.append(elapsed)
    api.conn.close()
    return Row(label, len(running_ids), list_ms, get_ms, cpu, ages, start_seconds)


def running_count(agent: AgentProcess) -> int:
    """Running tasks per /api/health; an agent too busy to answer gets a few tries."""
    for attempt in range(5):
        try:
            return int(agent.api.get("/api/health", timeout=60).body["tasks"].get("running", 0))
        except OSError as exc:
            print(f"GET /api/health failed ({exc}); retrying", file=sys.stderr, flush=True)
            time.sleep(2 ** attempt)
    raise RuntimeError("the agent stopped answering /api/health")


def submit(agent: AgentProcess, name: str, command: str, args: list[str], resources: dict[str, Any],
           working_dir: str) -> str:
    reply = agent.api.post("/api/tasks", {
        "name": name, "command": command, "args": args, "resources": resources, "working_dir": working_dir,
    })
    if reply.status != 201:
        raise RuntimeError(f"POST /api/tasks: {reply.status} {reply.text}")
    return str(reply.body["id"])


def grow_to(agent: AgentProcess, ids: list[str], target: int, resources: dict[str, Any], deadline: float) -> None:
    """Submit sleeping tasks until `target` run (or the deadline passes)."""
    while len(ids) < target and time.monotonic() < deadline:
        ids.append(submit(agent, f"sleeper-{len(ids)}", "sleep", ["1000000"], resources, "work"))
    while time.monotonic() < deadline:
        if running_count(agent) >= len(ids):
            return
        time.sleep(1)


def clean_up(agent: AgentProcess, group: str) -> None:
    """Kill the agent (its tasks outlive it), then end every task process and remove every
    cgroup of the group."""
    if agent.proc is not None:
        agent.kill(signal.SIGKILL)
    agent.kill_task_processes()
    layout, _ = cgroup.probe(group)
    if layout is None:
        return
    primary = layout.bases.get("memory") or layout.bases["unified"]
    tasks = [layout.task_dirs(e.name) for e in (os.scandir(primary) if primary.is_dir() else [])
             if e.is_dir(follow_symlinks=False)]
    for dirs in tasks:
        cgroupfs.kill_cgroup(dirs)
    deadline = time.monotonic() + 60
    while any(cgroupfs.exists(d) and not cgroupfs.is_empty(d) for d in tasks) and time.monotonic() < deadline:
        time.sleep(0.2)  # SIGKILLed processes take a moment to leave their cgroups
    left = cgroupfs.remove_dirs(list(layout.bases.values()))
    if left:
        print(f"cgroups left behind: {left}", file=sys.stderr)


def print_table(rows: list[Row], requests: int, window: float) -> dict[str, Any]:
    idle = rows[0]
    base_p50, base_p99 = percentile(idle.all_ms, 0.5), percentile(idle.all_ms, 0.99)
    base_cpu = idle.cpu_percent if idle.cpu_percent >= 0.5 else None  # below that, clock ticks are noise
    print(f"\n{requests} x GET /api/tasks?limit={LISTED} and {requests} x GET /api/tasks/{{id}} per row; "
          f"agent CPU over {window:.0f} s; load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    head = (f"{'running':>8} {'start s':>8} {'list p50':>9} {'list p99':>9} {'get p50':>8} {'get p99':>8} "
            f"{'all p50':>8} {'all p99':>8} {'p50/idle':>9} {'p99/idle':>9} {'CPU %':>6} {'CPU/idle':>9} "
            f"{'age p50 s':>9} {'age max s':>9}")
    print(head)
    summary: dict[str, Any] = {}
    for row in rows:
        p50, p99 = percentile(row.all_ms, 0.5), percentile(row.all_ms, 0.99)
        start = f"{row.start_seconds:8.0f}" if row.start_seconds is not None else f"{'-':>8}"
        age50 = f"{percentile(row.usage_age_s, 0.5):9.2f}" if row.usage_age_s else f"{'-':>9}"
        agemax = f"{max(row.usage_age_s):9.2f}" if row.usage_age_s else f"{'-':>9}"
        cpu_ratio = f"{row.cpu_percent / base_cpu:8.1f}x" if base_cpu else f"{'-':>9}"
        print(f"{row.label:>8} {start} {percentile(row.list_ms, 0.5):9.1f} {percentile(row.list_ms, 0.99):9.1f} "
              f"{percentile(row.get_ms, 0.5):8.1f} {percentile(row.get_ms, 0.99):8.1f} {p50:8.1f} {p99:8.1f} "
              f"{p50 / base_p50:8.2f}x {p99 / base_p99:8.2f}x {row.cpu_percent:6.1f} "
              f"{cpu_ratio} {age50} {agemax}")
        summary[row.label] = {
            "running": row.running, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
            "cpu_percent": round(row.cpu_percent, 2), "start_seconds": row.start_seconds,
            "usage_age_max_s": round(max(row.usage_age_s), 2) if row.usage_age_s else None,
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="300,1000,3000", help="running tasks per row, ascending")
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind per row")
    parser.add_argument("--window", type=float, default=20.0, help="seconds over which agent CPU is measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait after a count is reached")
    parser.add_argument("--start-timeout", type=float, default=1200.0, help="seconds to reach each count")
    parser.add_argument("--no-disk-limit", action="store_true", help="tasks without a disk_limit (no disk meter)")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    if os.geteuid() != 0:
        print("needs root (the cgroup backend)", file=sys.stderr)
        return 2
    resources = dict(RESOURCES) if args.no_disk_limit else {**RESOURCES, "disk_limit": "100MB"}
    root = Path(tempfile.mkdtemp(prefix="cnet-scale-"))
    root.chmod(0o755)
    group = f"cnet-bench-scale-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(root / "agent", {
        "tasks": {"sandbox": "cgroup", "cgroup_group": group, "run_as": "root", "timeout": 0,
                  "max_concurrent": max(counts) + LISTED + 10, "stop_grace": "2s"},
        "logging": {"level": "warn"},
    })
    work = agent.workdir / "work"
    work.mkdir()
    for i in range(20):  # what a model's directory holds: a few files the tasks read
        (work / f"file-{i}.txt").write_text("x" * 1000)
    rows: list[Row] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        agent.start()
        chosen = agent.api.get("/api/health").body["sandbox"]["backend"]
        if chosen != "cgroup":
            raise RuntimeError(f"agent chose sandbox {chosen!r}, not cgroup")
        finished = [submit(agent, f"done-{i}", "true", [], resources, "work") for i in range(LISTED)]
        for task_id in finished:
            agent.wait_done(task_id, 120)
        print(f"idle: measuring ({args.window:.0f} s + requests)", file=sys.stderr, flush=True)
        rows.append(measure(agent, "idle", [], args.requests, args.window, None))
        ids: list[str] = []
        for n in counts:
            t0 = time.monotonic()
            try:
                grow_to(agent, ids, n, resources, t0 + args.start_timeout)
            except (OSError, RuntimeError) as exc:
                print(f"growing to {n} failed after {time.monotonic() - t0:.0f} s: {exc}", file=sys.stderr)
                break
            reached = running_count(agent)
            took = time.monotonic() - t0
            print(f"{n}: {reached} running after {took:.0f} s; measuring", file=sys.stderr, flush=True)
            time.sleep(args.settle)  # let start-up work (first samples, log tails) settle
            label = str(n) if reached >= n else f"{reached}/{n}"
            rows.append(measure(agent, label, ids[:reached], args.requests, args.window, took))
            print_table(rows, args.requests, args.window)  # so far, in case a larger count fails
            if reached < n:
                print(f"stopped growing: only {reached} of {n} running within {args.start_timeout:.0f} s",
                      file=sys.stderr)
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        if agent.proc is not None and agent.proc.poll() is not None:
            print(f"the agent exited with {agent.proc.returncode}; its log:\n{agent.log_text()[-5000:]}", file=sys.stderr)
        print("cleaning up", file=sys.stderr, flush=True)
        clean_up(agent, group)
        shutil.rmtree(root, ignore_errors=True)
    if rows:
        summary = print_table(rows, args.requests, args.window)
        print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
