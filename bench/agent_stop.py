"""How long a real agent takes to exit on SIGTERM, and whether it exits at all.

    .venv/bin/python bench/agent_stop.py [--runs 20] [--running 300] [--backend none] [--limit 15]
                                         [--checkout DIR]

Rows, each with a fresh agent per run (`tasks.sandbox` --backend, no task timeout):
  - idle: nothing submitted; SIGTERM once it answers (the baseline of the ratios);
  - after a launch: two short tasks submitted, SIGTERM at once, while they start, run and
    end (the moment the agent of the old wait_for loops sometimes never left);
  - N running (one run): --running `sleep` tasks started, then SIGTERM; it also reports how
    long the N took to be running (launches run side by side, at most four at once).
A run still alive --limit seconds after the signal counts as hung and is SIGKILLed.
--checkout runs the agent from another checkout's cnetd/ (e.g. an export of an older
commit), to compare with this one.
Every task process the bench started is killed at the end (tasks outlive the agent), and
its directories are removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cnetd.supervisor import cgroup, cgroupfs  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402


def stop_seconds(agent: AgentProcess, limit: float) -> float | None:
    """Seconds from SIGTERM to exit; None when it was still running after limit."""
    assert agent.proc is not None
    t0 = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    try:
        agent.proc.wait(timeout=limit)
    except Exception:
        agent.proc.kill()
        agent.proc.wait()
        return None
    finally:
        agent.proc = None
    return time.monotonic() - t0


def make_agent(root: Path, n: int, args: argparse.Namespace, max_concurrent: int) -> AgentProcess:
    tasks = {"sandbox": args.backend, "timeout": 0, "max_concurrent": max_concurrent}
    if args.backend == "cgroup":
        tasks["cgroup_group"] = f"cnet-bench-stop-{os.getpid()}-{n}"
    command = None
    if args.checkout is not None:  # its cnetd/ first on sys.path, before the installed one
        command = [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(args.checkout)!r}); "
                   "runpy.run_module('cnetd', run_name='__main__', alter_sys=True)"]
    return AgentProcess(root / f"agent{n}", {"tasks": tasks}, command=command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--running", type=int, default=300)
    parser.add_argument("--backend", default="none", choices=["none", "cgroup"])
    parser.add_argument("--limit", type=float, default=15.0)
    parser.add_argument("--checkout", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-stop-"))
    agents: list[AgentProcess] = []
    rows: list[tuple[str, int, int, list[float], str]] = []
    try:
        for label, submit in (("idle", 0), ("after a launch", 2)):
            times, hung = [], 0
            for _ in range(args.runs):
                agent = make_agent(root, len(agents), args, 10)
                agents.append(agent)
                agent.start()
                for i in range(submit):
                    agent.api.post("/api/tasks", {"name": f"t{i}", "command": sys.executable, "args": ["-c", "1"]})
                took = stop_seconds(agent, args.limit)
                if took is None:
                    hung += 1
                else:
                    times.append(took)
            rows.append((label, args.runs, hung, times, ""))
        if args.running:
            agent = make_agent(root, len(agents), args, args.running + 10)
            agents.append(agent)
            agent.start()
            t0 = time.monotonic()
            for i in range(args.running):
                agent.api.post("/api/tasks", {"name": f"s{i}", "command": "sleep", "args": ["3600"]})
            wait_until(lambda: agent.api.get("/api/health").body["tasks"].get("running", 0) >= args.running,
                       600, f"{args.running} tasks to run", interval=0.5)
            started = time.monotonic() - t0
            took = stop_seconds(agent, args.limit)
            rows.append((f"{args.running} running", 1, int(took is None), [] if took is None else [took],
                         f"{args.running} running after {started:.1f}s"))
    finally:
        for agent in agents:
            agent.stop()
            agent.kill_task_processes()
        if args.backend == "cgroup":
            for n in range(len(agents)):
                layout, _ = cgroup.probe(f"cnet-bench-stop-{os.getpid()}-{n}")
                if layout is not None:
                    cgroupfs.remove_dirs(list(layout.bases.values()))
        shutil.rmtree(root, ignore_errors=True)

    base = sorted(rows[0][3])[len(rows[0][3]) // 2] if rows[0][3] else float("nan")
    print(f"backend {args.backend}, limit {args.limit:.0f}s, cnetd from {args.checkout or REPO}")
    print(f"{'row':<16} {'runs':>5} {'hung':>5} {'p50 s':>7} {'max s':>7} {'p50/idle':>9}  note")
    for label, runs, hung, times, note in rows:
        ordered = sorted(times)
        p50 = ordered[len(ordered) // 2] if ordered else float("nan")
        worst = ordered[-1] if ordered else float("nan")
        print(f"{label:<16} {runs:>5} {hung:>5} {p50:>7.2f} {worst:>7.2f} {p50 / base:>9.1f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
