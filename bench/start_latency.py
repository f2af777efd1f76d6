"""Start latency: from `POST /api/tasks` to the task `running`, per sandbox backend, next to
the bare costs measured in the same run.

    .venv/bin/python bench/start_latency.py [--tasks 100] [--backends systemd,cgroup,none]

Needs root. For `systemd` the agent runs inside a real systemd booted in private namespaces
(tests/harness/systemd_ns.py), as it must to make scopes there. For every backend:
  - agent: N tasks `true`, one after another; latency = the task's `running` event time
    minus the moment its POST was sent (same clock, millisecond events);
  - sandbox.start(): the backend alone, N sequential starts (tests/harness/drive_sandbox.py);
and, measured where the sandbox runs, a bare fork/exec and a bare
`systemd-run --scope /bin/true`. Goal: the agent within 2x of the bare scope.

Every series is spaced --gap seconds apart (default 50 ms, about the agent's pace here):
on cgroup v1 moving a process into a cgroup waits for an RCU grace period unless another
move happened just before, so back-to-back starts look several times faster than real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.clock import parse_time  # noqa: E402
from cnetd.supervisor import cgroup, cgroupfs  # noqa: E402
from tests.harness.fixtures import CAPABILITIES, Driver  # noqa: E402
from tests.harness.systemd_ns import SystemdNamespace, available  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def agent_latencies(workdir: Path, backend: str, n: int, ns: SystemdNamespace | None) -> list[float]:
    agent = AgentProcess(
        workdir, {"tasks": {"sandbox": backend}},
        prefix=ns.prefix(cwd=workdir) if ns is not None else None,
    )
    agent.start()
    try:
        health = agent.api.get("/api/health").body
        chosen = health.get("sandbox", {}).get("backend")
        if chosen != backend:
            raise RuntimeError(f"agent chose sandbox {chosen!r}, not {backend!r}")
        out = []
        for i in range(n):
            sent = time.time()
            reply = agent.api.post("/api/tasks", {"name": f"bench-{i}", "command": "true"})
            if reply.status != 201:
                raise RuntimeError(f"POST /api/tasks: {reply.status} {reply.text}")
            task_id = reply.body["id"]
            agent.wait_done(task_id, 60)
            events = agent.api.get(f"/api/tasks/{task_id}/events").body
            running = next(e for e in events if e["type"] in ("started", "running"))
            out.append(parse_time(running["time"]).timestamp() - sent)
        return out
    finally:
        if ns is not None and agent.proc is not None and agent.proc.poll() is None:
            os.kill(ns.inner_pid(agent.proc), signal.SIGTERM)  # nsenter does not forward signals
            agent.proc.wait(timeout=30)
            agent.proc = None
        agent.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--backends", default="systemd,cgroup,none")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between starts (see above)")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    n = args.tasks
    rows: list[tuple[str, list[float]]] = []
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-"))
    root.chmod(0o755)
    group = f"cnet-bench-{uuid.uuid4().hex[:8]}"
    ns: SystemdNamespace | None = None
    try:
        host = Driver("none", root, CAPABILITIES["none"])
        rows.append(("bare fork/exec (host)", host.run("bare_latency", n=n, gap=args.gap)["fork_exec"]))
        if "systemd" in backends:
            ok, why = available()
            if not ok:
                print(f"systemd skipped: {why}", file=sys.stderr)
                backends.remove("systemd")
            else:
                ns = SystemdNamespace().start()
                inside = Driver("systemd", root, CAPABILITIES["systemd"], ns)
                bare = inside.run("bare_latency", n=n, gap=args.gap)
                rows.append(("bare systemd-run --scope /bin/true", bare["systemd_run_scope"]))
        for backend in backends:
            driver = Driver(backend, root, CAPABILITIES[backend], ns if backend == "systemd" else None, group)
            rows.append((f"sandbox.start  {backend}", driver.run("start_latency", n=n, gap=args.gap)["seconds"]))
            rows.append((f"agent POST->running  {backend}",
                         agent_latencies(root / f"agent-{backend}", backend, n, ns if backend == "systemd" else None)))
    finally:
        if ns is not None:
            ns.stop()
        for name in (group, "cnet"):  # the agent's cgroup backend uses the default group
            layout, _ = cgroup.probe(name)
            if layout is not None:
                cgroupfs.remove_dirs(list(layout.bases.values()))
        shutil.rmtree(root, ignore_errors=True)

    summary: dict[str, Any] = {}
    scope = next((v for k, v in rows if k.startswith("bare systemd-run")), None)
    base = percentile(scope, 0.5) if scope else None
    print(f"\n{n} starts each, {args.gap * 1e3:.0f} ms apart{'' if base else '  (no systemd: no scope baseline)'}\n")
    print(f"{'':42} {'p50 ms':>8} {'p99 ms':>8} {'p50 / bare scope':>17}")
    for name, values in rows:
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        ratio = f"{p50 / base:.2f}x" if base else "-"
        print(f"{name:42} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {ratio:>17}")
        summary[name] = {"p50_ms": round(p50 * 1e3, 3), "p99_ms": round(p99 * 1e3, 3)}
    agent_sd = next((v for k, v in rows if k == "agent POST->running  systemd"), None)
    if agent_sd and base:
        times = percentile(agent_sd, 0.5) / base
        verdict = "within" if times <= 2 else "NOT within"
        print(f"\nagent (systemd) p50 is {times:.2f}x the bare scope: {verdict} the 2x goal")
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
