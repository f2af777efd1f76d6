"""Database size and API latency after 100,000 short tasks, with retention on against the
same with retention off, measured in the same run.

    .venv/bin/python bench/retention.py [--tasks 100000] [--requests 500]

Why the tasks are written rather than run: 100,000 real process starts take hours on a
2-core machine. So this script writes --tasks ended tasks as the task service leaves them
(the task row, its created/started/ended events, 5 log lines with their ingestion cursor,
and a small log file under state/logs), through the store's own functions
(tests/support/stored_tasks.py: store.tasks.insert_task / insert_event,
store.logs.append_lines), ended evenly over the last 20 days. What is measured then runs
for real: the agent (`python -m cnetd`, HTTP on loopback) on a copy of that state,
  - off: tasks.retention.max_age 0 and max_tasks 0 (nothing deleted: the state as before);
  - on:  the defaults (max_age 14d, max_tasks 10000), so the agent's own first pass, at
         start, deletes the tasks, events, log rows and files past them and vacuums;
and sequential keep-alive requests to `GET /api/tasks?limit=50` and `GET /api/tasks/{id}`
(ids drawn from the newest tasks that both runs keep), after a warm-up. For "on",
the same requests are also timed while the first pass runs (until its log line).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncio  # noqa: E402

from cnetd.store.db import Database  # noqa: E402
from cnetd.tasks.model import Status, Task  # noqa: E402
from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.stored_tasks import ago, make_task, record  # noqa: E402

SPAN_DAYS = 20
CHUNK = 2000
PASS_LINE = re.compile(r"retention: deleted (\d+) ended tasks .* in ([\d.]+)s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def write_tasks(state_dir: Path, n: int) -> list[str]:
    """n ended tasks, oldest first, with events, log rows and log files; returns their ids."""
    db = Database(state_dir / "cnet.db")
    await db.open()
    ids: list[str] = []
    step = timedelta(days=SPAN_DAYS) / n
    oldest = ago(days=SPAN_DAYS)
    try:
        for start in range(0, n, CHUNK):
            batch = []
            for i in range(start, min(n, start + CHUNK)):
                ended = oldest + step * i
                status = Status.FAILED if i % 10 == 0 else Status.COMPLETED
                task = make_task(state_dir, status, ended, name=f"bench-{i}", started=ended - timedelta(seconds=2))
                lines = [f"step {k}: loss={1 / (k + 1):.4f}" for k in range(4)] + ['{"prediction": 14.04}']
                batch.append((task, lines))
            await db.write(functools.partial(record_all, batch=batch))
            for task, lines in batch:
                with open(task.log_file, "w") as f:
                    f.write("".join(line + "\n" for line in lines))
            ids += [t.id for t, _ in batch]
    finally:
        await db.close()
    return ids


def record_all(conn: sqlite3.Connection, batch: list[tuple[Task, list[str]]]) -> None:
    for task, lines in batch:
        record(conn, task, lines)


def disk_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512 if path.exists() else 0


def db_bytes(state_dir: Path) -> int:
    return sum(os.path.getsize(p) for p in (state_dir / "cnet.db", state_dir / "cnet.db-wal") if p.exists())


def logs_dir(state_dir: Path) -> tuple[int, int]:
    count = size = 0
    with os.scandir(state_dir / "logs") as entries:
        for entry in entries:
            count += 1
            size += entry.stat(follow_symlinks=False).st_blocks * 512
    return count, size


def ended_tasks(state_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{state_dir / 'cnet.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM tasks WHERE status IN ('completed', 'failed', 'stopped')").fetchone()[0])
    finally:
        conn.close()


class Timer:
    """Sequential requests over one keep-alive connection."""

    def __init__(self, port: int, ids: list[str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.ids = ids
        self.rng = random.Random(7)
        self.list_ms: list[float] = []
        self.get_ms: list[float] = []

    def _get(self, path: str) -> float:
        started = time.perf_counter()
        self.conn.request("GET", path)
        reply = self.conn.getresponse()
        body = reply.read()
        elapsed = (time.perf_counter() - started) * 1000
        if reply.status != 200:
            raise RuntimeError(f"GET {path}: {reply.status} {body[:200]!r}")
        return elapsed

    def one_round(self) -> None:
        self.list_ms.append(self._get("/api/tasks?limit=50"))
        self.get_ms.append(self._get(f"/api/tasks/{self.rng.choice(self.ids)}"))

    def rounds(self, n: int) -> Timer:
        for _ in range(n):
            self.one_round()
        return self

    def close(self) -> None:
        self.conn.close()


def start_agent(workdir: Path, retention: dict[str, object]) -> tuple[AgentProcess, float]:
    agent = AgentProcess(workdir, {"tasks": {"retention": retention}, "logging": {"level": "info"}})
    started = time.monotonic()
    agent.start(ready=False)
    agent.wait_ready(timeout=300)
    return agent, time.monotonic() - started


def on_disk(workdir: Path) -> dict[str, object]:
    state_dir = workdir / "state"
    return {"tasks": ended_tasks(state_dir), "db": db_bytes(state_dir), "logs": logs_dir(state_dir)}


def measure(off_dir: Path, on_dir: Path, ids: list[str], requests: int) -> dict[str, object]:
    """Both agents up at once, their requests interleaved (one to off, one to on), so that
    whatever else loads the machine loads both series alike."""
    off, off_ready = start_agent(off_dir, {"max_age": 0, "max_tasks": 0})
    on: AgentProcess | None = None
    try:
        on, on_ready = start_agent(on_dir, {"max_age": "14d", "max_tasks": 10_000})
        off_during, on_during = Timer(off.port, ids), Timer(on.port, ids)
        deadline = time.monotonic() + 1800
        while not (match := PASS_LINE.search(on.log_text())):  # the first pass, which started with the agent
            for timer in (off_during, on_during) if len(on_during.list_ms) % 2 else (on_during, off_during):
                timer.one_round()
            if time.monotonic() > deadline:
                raise RuntimeError("the first retention pass did not end within 30 minutes")
        off_after, on_after = Timer(off.port, ids).rounds(50), Timer(on.port, ids).rounds(50)  # warm-up
        for timer in (off_after, on_after):
            timer.list_ms.clear()
            timer.get_ms.clear()
        for i in range(requests):  # in turn first, so neither always follows the other
            for timer in (off_after, on_after) if i % 2 else (on_after, off_after):
                timer.one_round()
        for timer in (off_during, on_during, off_after, on_after):
            timer.close()
    finally:
        off.stop()
        if on is not None:
            on.stop()
    return {
        "off": {**on_disk(off_dir), "ready_s": off_ready, "during": off_during, "after": off_after},
        "on": {**on_disk(on_dir), "ready_s": on_ready, "during": on_during, "after": on_after,
               "deleted": int(match.group(1)), "pass_s": float(match.group(2))},
    }


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500, help="requests per endpoint per agent")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cnet-bench-retention-", dir=os.environ.get("BENCH_DIR")))
    try:
        off_dir, on_dir = root / "off", root / "on"
        (off_dir / "state" / "logs").mkdir(parents=True)
        t = time.monotonic()
        ids = asyncio.run(write_tasks(off_dir / "state", args.tasks))
        print(f"wrote {args.tasks} ended tasks through the store in {time.monotonic() - t:.1f}s "
              f"({mb(db_bytes(off_dir / 'state'))} database)", flush=True)
        shutil.copytree(off_dir / "state", on_dir / "state", symlinks=True)
        newest = ids[-min(10_000, args.tasks * 13 // SPAN_DAYS):]  # kept by both bounds
        result = measure(off_dir, on_dir, newest, args.requests)
        report(result, args.tasks, args.requests)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(result: dict[str, object], tasks: int, requests: int) -> None:
    off, on = result["off"], result["on"]
    assert isinstance(off, dict) and isinstance(on, dict)

    def row(name: str, a: float, b: float, fmt: str = "{:.2f}") -> None:
        render = mb if fmt == "MB" else fmt.format
        print(f"| {name} | {render(a)} | {render(b)} | {f'{b / a:.3f}' if a else '-'} |")

    def latency_rows(a: Timer, b: Timer) -> None:
        for name, x, y in (("GET /api/tasks?limit=50", a.list_ms, b.list_ms), ("GET /api/tasks/{id}", a.get_ms, b.get_ms)):
            row(f"{name} p50 ms", percentile(x, 0.5), percentile(y, 0.5))
            row(f"{name} p99 ms", percentile(x, 0.99), percentile(y, 0.99))

    print(f"\n{tasks} ended tasks over {SPAN_DAYS} days; on = tasks.retention defaults (max_age 14d, "
          f"max_tasks 10000); {requests} requests per endpoint per agent, sequential, keep-alive, "
          "interleaved between the two agents\n")
    print("| after the first pass | retention off | retention on | on / off |")
    print("|---|---|---|---|")
    row("ended tasks kept", off["tasks"], on["tasks"], "{:.0f}")
    row("cnet.db + wal", off["db"], on["db"], "MB")
    row("log files", off["logs"][0], on["logs"][0], "{:.0f}")
    row("logs/ on disk", off["logs"][1], on["logs"][1], "MB")
    latency_rows(off["after"], on["after"])
    row("agent start to ready, s", off["ready_s"], on["ready_s"])
    print(f"\nwhile the first pass ran ({on['deleted']} tasks deleted and the file vacuumed in {on['pass_s']}s; "
          f"{len(on['during'].list_ms)} rounds):\n")
    print("| during the pass | retention off | retention on | on / off |")
    print("|---|---|---|---|")
    latency_rows(off["during"], on["during"])


if __name__ == "__main__":
    main()
