"""What the parent adds when it passes a call through to a child, or delegates a task.

    .venv/bin/python bench/cluster.py [--requests 400] [--creates 60]

Starts two real agents on loopback (a parent and a child that reports to it every second,
both with a token), then times the same calls made directly to the child and through the
parent (/api/nodes/<child>/api/...), one at a time on a kept-alive connection:

- GET one task, and its last 100 log lines;
- POST /api/tasks (the task runs `true`), direct vs `"node_id": <child>` at the parent.

The ratio (through / direct) is what holds on a noisy machine: the extra hop is one more
HTTP request on loopback plus the parent's routing and auth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-cluster-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def start_agent(root: Path, name: str, extra: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    workdir = root / name
    workdir.mkdir()
    port = free_port()
    config = {
        "agent": {"port": port, "node_id": name, "heartbeat": "1s", "state_dir": str(workdir / "state")},
        "auth": {"tokens": [TOKEN]},
        "tasks": {"sandbox": "none", "run_as": "root", "max_concurrent": 50},
        "logging": {"level": "warn"},
        **extra,
    }
    (workdir / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "cnetd", "-config", str(workdir / "config.yaml")], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc, f"http://127.0.0.1:{port}"


async def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


async def timed(session: aiohttp.ClientSession, method: str, url: str, n: int, body: Any = None) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.request(method, url, json=body) as reply:
            await reply.read()
            assert reply.status < 300, (reply.status, await reply.text())
        times.append((time.perf_counter() - started) * 1000)
    return times


async def run(requests: int, creates: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cnet-bench-cluster-") as tmp:
        root = Path(tmp)
        parent, parent_url = start_agent(root, "parent", {})
        child, child_url = start_agent(root, "child", {
            "discovery": {"enabled": True, "servers": [parent_url], "token": TOKEN},
        })
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                async def child_online() -> bool:
                    async with session.get(parent_url + "/api/nodes/child") as reply:
                        return reply.status == 200 and (await reply.json())["status"] == "online"

                await wait_for(child_online, "the child to report to the parent")
                body = {"name": "bench", "command": "python3", "args": ["-c", "print('\\n'.join(map(str, range(500))))"]}
                async with session.post(child_url + "/api/tasks", json=body) as reply:
                    task_id = (await reply.json())["id"]

                async def finished() -> bool:
                    async with session.get(f"{child_url}/api/tasks/{task_id}") as reply:
                        return (await reply.json())["status"] == "completed"

                await wait_for(finished, "the sample task to finish")
                through = f"{parent_url}/api/nodes/child"
                rows = []
                for label, path in (("GET task", f"/api/tasks/{task_id}"), ("GET 100 log lines", f"/api/tasks/{task_id}/logs")):
                    await timed(session, "GET", child_url + path, 20)  # warm up both paths
                    await timed(session, "GET", through + path, 20)
                    direct = await timed(session, "GET", child_url + path, requests)
                    passed = await timed(session, "GET", through + path, requests)
                    rows.append((label, direct, passed))
                create = {"name": "t", "command": "true"}
                direct = await timed(session, "POST", child_url + "/api/tasks", creates, create)
                passed = await timed(session, "POST", parent_url + "/api/tasks", creates, {**create, "node_id": "child"})
                rows.append(("POST /api/tasks", direct, passed))
        finally:
            for proc in (child, parent):
                proc.terminate()
                proc.wait(timeout=30)

    print(f"{'call':<20} {'direct p50':>11} {'through p50':>12} {'ratio':>6} {'direct p90':>11} {'through p90':>12}")
    for label, direct, passed in rows:
        d50, p50 = percentile(direct, 0.5), percentile(passed, 0.5)
        print(f"{label:<20} {d50:>9.2f}ms {p50:>10.2f}ms {p50 / d50:>5.2f}x "
              f"{percentile(direct, 0.9):>9.2f}ms {percentile(passed, 0.9):>10.2f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--creates", type=int, default=60)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.creates))


if __name__ == "__main__":
    main()
