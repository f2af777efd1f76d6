"""Start-up time and idle memory of the agent: the one-file binary against `python -m cnetd`.

    .venv/bin/python packaging/measure.py [--binary dist/cnet-agent] [--runs 5] [--idle 5]

For each run: a fresh state dir, the agent started with NOTIFY_SOCKET pointing at a socket
of this script (as systemd would), and the time from spawn to READY=1 and to the first
/api/health 200; after --idle seconds, the resident memory of the agent's processes (for
the binary: the bootloader and the agent it runs, both counted). Prints the medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def one_run(argv: list[str], idle: float) -> tuple[float, float, int, int]:
    with tempfile.TemporaryDirectory(prefix="cnet-measure-") as tmp:
        port = free_port()
        config = Path(tmp) / "config.yaml"
        config.write_text(f"agent:\n  port: {port}\n  state_dir: {tmp}/state\ntasks:\n  sandbox: none\n")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{tmp}/notify.sock")
        notify.settimeout(0.002)
        env = {**os.environ, "NOTIFY_SOCKET": f"{tmp}/notify.sock"}
        started = time.monotonic()
        proc = subprocess.Popen([*argv, "-config", str(config)], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ready = health = 0.0
        try:
            deadline = started + 60
            while (not ready or not health) and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv} exited with {proc.returncode}")
                try:
                    if b"READY=1" in notify.recv(4096).split(b"\n"):
                        ready = time.monotonic() - started
                except TimeoutError:
                    pass
                if not health and healthy(port):
                    health = time.monotonic() - started
            time.sleep(idle)  # measuring idle memory: let it settle
            procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs)
            agent_rss = max(p.memory_info().rss for p in procs)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            notify.close()
        return ready, health, rss, agent_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=str(REPO / "dist" / "cnet-agent"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=5.0)
    args = parser.parse_args()
    variants = {"binary": [args.binary], "python -m cnetd": [sys.executable, "-m", "cnetd"]}
    size = Path(args.binary).stat().st_size
    print(f"binary: {args.binary}, {size / 1e6:.1f} MB ({size} bytes)")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    runs: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in variants}
    for _ in range(args.runs):  # interleaved, so that a load spike hits both alike
        for name, argv in variants.items():
            runs[name].append(one_run(argv, args.idle))
    for name, results in runs.items():
        ready = statistics.median(r[0] for r in results)
        health = statistics.median(r[1] for r in results)
        rss = statistics.median(r[2] for r in results)
        agent_rss = statistics.median(r[3] for r in results)
        print(f"{name:16s} READY {ready * 1000:6.0f} ms  first health 200 {health * 1000:6.0f} ms  "
              f"idle RSS {rss / 2**20:5.1f} MiB (largest process {agent_rss / 2**20:5.1f} MiB)  [median of {args.runs}]")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
