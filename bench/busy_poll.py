"""What serving.busy_poll_us does on this machine: agents that differ only in it, each
serving the example linear regression model with the built-in loader, and the floor (a bare
aiohttp server holding the same model), in small alternating blocks of sequential V2
requests, then in turns at concurrency 64.

    .venv/bin/python bench/busy_poll.py [--values 0 1000] [--blocks 15] [--block 100] [--c64-rounds 10]

Blocks alternate in order and in reverse, so that whatever else the machine does weighs on
every agent alike. Where waking a sleeping process is slow (a VM whose idle CPUs halt)
polling should bring p50 near the floor's; where it is cheap the agents should be alike,
and polling then only costs CPU (docs/serving.md, "Busy polling").
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from predict import concurrent, percentile, sequential, start_floor, v2_call  # noqa: E402

from tests.support.agent import AgentProcess  # noqa: E402
from tests.test_ml_api import LINEAR_BODY  # noqa: E402


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cnet-bench-busy-poll-"))
    agents: list[AgentProcess] = []
    floor_proc = None
    try:
        for value in args.values:
            agent = AgentProcess(workdir / f"agent-{value}", {"tasks": {"sandbox": "none"}, "serving": {"busy_poll_us": value}})
            agent.start()
            agents.append(agent)
            model_id = agent.api.post("/api/ml/models", copy.deepcopy(LINEAR_BODY)).body["id"]
            done = agent.wait_status(model_id, {"completed", "failed"}, 120, path="/api/ml/models/")
            assert done["status"] == "completed", done
            served = agent.api.post(f"/api/ml/models/{model_id}/serve?wait=true", {"loader": "builtin"})
            assert served.status == 200, served.text
        floor_proc, floor_base = start_floor(agents[0].workdir, agents[0].workdir / LINEAR_BODY["model_path"])
        paths = [("floor", v2_call(floor_base))]
        paths += [(f"busy_poll_us {v}", v2_call(a.url)) for v, a in zip(args.values, agents, strict=True)]
        timeout = aiohttp.ClientTimeout(total=900)
        ones = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) for _ in paths]
        manys = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=timeout) for _ in paths]
        try:
            times: dict[str, list[float]] = {label: [] for label, _ in paths}
            errors = 0
            for (_, call), one, many in zip(paths, ones, manys, strict=True):  # warm up, and open the connections
                await sequential(one, call, 300)
                await concurrent(many, call, None, 256)
            for b in range(args.blocks):
                order = list(zip(paths, ones, strict=True))
                for (label, call), one in (reversed(order) if b % 2 else order):
                    batch, failed = await sequential(one, call, args.block, b * args.block)
                    times[label] += batch
                    errors += failed
            totals = {label: [0, 0.0] for label, _ in paths}
            for _ in range(args.c64_rounds):
                for (label, call), many in zip(paths, manys, strict=True):
                    done_count, spent, failed = await concurrent(many, call, 0.5, None)
                    totals[label][0] += done_count - failed
                    totals[label][1] += spent
                    errors += failed
        finally:
            for session in ones + manys:
                await session.close()
        f50, f99 = percentile(times["floor"], 0.5), percentile(times["floor"], 0.99)
        frps = totals["floor"][0] / totals["floor"][1]
        print(f"{'path':<20} {'p50 us':>8} {'p99 us':>8} {'req/s c=64':>11} "
              f"{'p50/floor':>10} {'p99/floor':>10} {'rps/floor':>10}")
        for label, _ in paths:
            p50, p99 = percentile(times[label], 0.5), percentile(times[label], 0.99)
            rps = totals[label][0] / totals[label][1]
            print(f"{label:<20} {p50 * 1e6:>8.0f} {p99 * 1e6:>8.0f} {rps:>11.0f} {p50 / f50:>10.2f} {p99 / f99:>10.2f} "
                  f"{rps / frps:>10.2f}")
        if errors:
            print(f"errors: {errors}")
    finally:
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait()
        for agent in agents:
            agent.stop()
            agent.kill_task_processes()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, nargs="+", default=[0, 1000], help="serving.busy_poll_us of each agent")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--block", type=int, default=100, help="sequential requests per path and block")
    parser.add_argument("--c64-rounds", type=int, default=10, help="turns of 0.5 s at concurrency 64 per path")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
