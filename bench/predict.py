"""Prediction latency and throughput: a process per prediction, warm workers behind the
agent (the seed's /predict?wait=true and the V2 infer endpoint), and the floor — a bare
aiohttp server holding the same model in its own process — all in one run.

    .venv/bin/python bench/predict.py [--requests 3000] [--seconds 6] [--rounds 10] [--task-samples 10]
                                      [--busy-poll-us 1000]

One agent (sandbox none) trains the example linear regression model twice: two versions
of one name, each addressed by its deploy id. Prediction tasks are measured first, on their own (nothing is served yet):
--task-samples one after another, then one round of 64 at once. Then the first is served
with the built-in loader (the worker holds the model, as the floor does) and the second with
the script loader (the example script's own serve loop, JSON lines on its stdin), and the
warm paths and the floor take turns, --rounds times: each its share of --requests
sequential requests (p50/p99 at concurrency 1), then each its share of --seconds with 64
requests always in flight (requests/s at concurrency 64). Taking turns matters on a shared
machine: whatever else runs weighs on every path alike. Goals, for warm V2 with the
built-in loader (the like-for-like of the floor): p50 within 1.25x of the floor and p99
within 1.5x (issue 14), throughput at least 0.7x the floor's, and at least 300x faster (p50)
than a process per prediction. The script loader's row is there to compare: its script
sleeps on its stdin between requests, which the agent cannot change.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess, free_port  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402
from tests.test_ml_api import LINEAR_BODY  # noqa: E402

NAME = "linear-regression-model"
CONCURRENCY = 64


@dataclass
class Row:
    label: str
    p50: float = float("nan")  # seconds, concurrency 1
    p99: float = float("nan")
    rps: float = float("nan")  # concurrency 64
    samples: int = 0
    errors: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Call = Callable[[aiohttp.ClientSession, int], Awaitable[bool]]


def v2_call(base: str, version: str | None = None) -> Call:
    url = f"{base}/v2/models/{NAME}{'' if version is None else f'/versions/{version}'}/infer"

    async def call(session: aiohttp.ClientSession, i: int) -> bool:
        x = (i % 100) / 10
        body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [x]}]}
        async with session.post(url, json=body) as resp:
            data = await resp.json()
            return resp.status == 200 and abs(data["outputs"][0]["data"][0] - (2 * x + 3)) < 0.5

    return call


def predict_call(base: str, model_id: str) -> Call:
    url = f"{base}/api/ml/models/{model_id}/predict?wait=true"

    async def call(session: aiohttp.ClientSession, i: int) -> bool:
        x = (i % 100) / 10
        async with session.post(url, json={"input_data": x}) as resp:
            data = await resp.json()
            return resp.status == 200 and abs(data["prediction"] - (2 * x + 3)) < 0.5

    return call


async def sequential(session: aiohttp.ClientSession, call: Call, n: int, offset: int = 0) -> tuple[list[float], int]:
    times, errors = [], 0
    for i in range(offset, offset + n):
        began = time.perf_counter()
        ok = await call(session, i)
        times.append(time.perf_counter() - began)
        errors += not ok
    return times, errors


async def concurrent(
    session: aiohttp.ClientSession, call: Call, seconds: float | None, total: int | None
) -> tuple[int, float, int]:
    """(requests done, seconds, errors) with CONCURRENCY requests in flight, for `seconds`
    or for `total` requests."""
    done = errors = 0
    began = time.perf_counter()
    deadline = began + seconds if seconds else None
    counter = iter(range(10**9))

    async def client() -> None:
        nonlocal done, errors
        while True:
            i = next(counter)
            if total is not None and i >= total:
                return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            ok = await call(session, i)
            done += 1
            errors += not ok

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return done, time.perf_counter() - began, errors


def sessions() -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=900)
    return (aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout),
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY), timeout=timeout))


def report(row: Row, extra: str = "") -> None:
    print(f"  {row.label}: p50 {row.p50 * 1000:.3f} ms, p99 {row.p99 * 1000:.3f} ms, {row.rps:.1f} req/s, "
          f"{row.errors} errors{extra}", flush=True)


async def measure_tasks(call: Call, samples: int) -> Row:
    """Prediction tasks on their own: they are slow, and they load the machine."""
    row = Row("prediction tasks (process each)")
    one, many = sessions()
    async with one, many:
        times, errors = await sequential(one, call, samples)
        done, seconds, errors2 = await concurrent(many, call, None, CONCURRENCY)
    row.p50, row.p99, row.samples = percentile(times, 0.5), percentile(times, 0.99), samples
    row.rps, row.errors = (done - errors2) / seconds, errors + errors2
    report(row, f" ({samples} sequential, {done} at c={CONCURRENCY})")
    return row


async def measure_interleaved(paths: list[tuple[Row, Call]], requests: int, seconds: float, rounds: int) -> None:
    """The warm paths and the floor take turns, round after round, so that whatever else
    the machine does weighs on all of them alike."""
    pairs = [(row, call, *sessions()) for row, call in paths]
    try:
        for _row, call, one, many in pairs:  # warm up, and open the 64 connections
            await sequential(one, call, 200)
            await concurrent(many, call, None, 4 * CONCURRENCY)
        times: dict[str, list[float]] = {row.label: [] for row, *_ in pairs}
        totals: dict[str, list[float]] = {row.label: [0, 0.0] for row, *_ in pairs}
        for r in range(rounds):
            for row, call, one, _many in pairs:
                batch, errors = await sequential(one, call, requests // rounds, r * requests)
                times[row.label] += batch
                row.errors += errors
            for row, call, _one, many in pairs:
                done, spent, errors = await concurrent(many, call, seconds / rounds, None)
                totals[row.label][0] += done - errors
                totals[row.label][1] += spent
                row.errors += errors
        for row, *_ in pairs:
            row.p50, row.p99 = percentile(times[row.label], 0.5), percentile(times[row.label], 0.99)
            row.samples = len(times[row.label])
            row.rps = totals[row.label][0] / totals[row.label][1]
            report(row, f" ({row.samples} sequential, {int(totals[row.label][0])} at c={CONCURRENCY})")
    finally:
        for _, _, one, many in pairs:
            await one.close()
            await many.close()


def table(rows: list[Row], floor: Row, tasks: Row) -> str:
    head = (
        f"{'path':<34} {'p50 ms':>9} {'p99 ms':>9} {'req/s c=64':>11} {'p50/floor':>10} {'p99/floor':>10} {'rps/floor':>10} "
        f"{'x faster than tasks':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.label:<34} {r.p50 * 1000:>9.3f} {r.p99 * 1000:>9.3f} {r.rps:>11.1f} {r.p50 / floor.p50:>10.2f} "
            f"{r.p99 / floor.p99:>10.2f} {r.rps / floor.rps:>10.2f} {tasks.p50 / r.p50:>20.0f}"
        )
    return "\n".join(lines)


def start_floor(workdir: Path, model: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "floor_server.py"), "--model", str(model), "--port", str(port)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("the floor server exited")
        try:
            import urllib.request

            with urllib.request.urlopen(base + "/v2/health/live", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_until(up, 30, "the floor server")
    return proc, base


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cnet-bench-predict-"))
    # Every prediction task of the c=64 round runs at once, with time to finish on a small machine.
    config = {"tasks": {"max_concurrent": CONCURRENCY, "sandbox": args.sandbox}, "ml": {"timeout": "10m"},
              "serving": {"busy_poll_us": args.busy_poll_us}}
    agent = AgentProcess(workdir / "agent", config)
    agent.start()
    floor_proc = None
    try:
        model_id, script_id = (agent.api.post("/api/ml/models", copy.deepcopy(LINEAR_BODY)).body["id"] for _ in range(2))
        for trained in (model_id, script_id):
            done = agent.wait_status(trained, {"completed", "failed"}, 120, path="/api/ml/models/")
            assert done["status"] == "completed", done
        print(f"agent {agent.url} ({agent.api.get('/api/health').body['sandbox']['backend']} sandbox, "
              f"serving.busy_poll_us {args.busy_poll_us}), {os.cpu_count()} CPUs; models {model_id} (built-in "
              f"loader), {script_id} (script loader)", flush=True)

        if args.task_samples > 0:
            tasks = await measure_tasks(predict_call(agent.url, model_id), args.task_samples)
        else:  # --task-samples 0: the warm paths alone (64 tasks at once load a shared machine for seconds)
            tasks = Row("prediction tasks (not measured)")
        for served_id, loader in ((model_id, "builtin"), (script_id, "script")):
            serving = {"replicas": args.replicas, "max_batch_size": args.max_batch_size,
                       "max_delay_ms": args.max_delay_ms, "loader": loader}
            served = agent.api.post(f"/api/ml/models/{served_id}/serve?wait=true", serving)
            assert served.status == 200, served.text
            print(f"serving {served_id}: {json.dumps({k: served.body['serving'][k] for k in serving})}", flush=True)
        floor_proc, floor_base = start_floor(agent.workdir, agent.workdir / LINEAR_BODY["model_path"])
        warm, v2, v2_script = Row("warm /predict?wait=true"), Row("warm V2 infer"), Row("warm V2 infer, script loader")
        floor = Row("floor: bare aiohttp + model")
        await measure_interleaved(
            [(warm, predict_call(agent.url, model_id)), (v2, v2_call(agent.url, model_id)),
             (v2_script, v2_call(agent.url, script_id)), (floor, v2_call(floor_base))],
            args.requests, args.seconds, args.rounds,
        )
        rows = [tasks, warm, v2, v2_script, floor]
        print()
        print(table(rows, floor, tasks))
        print()
        goals = [
            ("warm V2 p50 within 1.25x of the floor", v2.p50 / floor.p50 <= 1.25, f"{v2.p50 / floor.p50:.2f}x"),
            ("warm V2 p99 within 1.5x of the floor", v2.p99 / floor.p99 <= 1.5, f"{v2.p99 / floor.p99:.2f}x"),
            ("warm V2 req/s at c=64 >= 0.7x the floor", v2.rps / floor.rps >= 0.7, f"{v2.rps / floor.rps:.2f}x"),
        ]
        if args.task_samples > 0:
            goals.append(("warm V2 >= 300x faster than a task (p50)", tasks.p50 / v2.p50 >= 300, f"{tasks.p50 / v2.p50:.0f}x"))
        for text, ok, value in goals:
            print(f"{'PASS' if ok else 'MISS'}  {text}: {value}")
        if any(r.errors for r in rows):
            print("errors: " + ", ".join(f"{r.label}: {r.errors}" for r in rows if r.errors))
    finally:
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait()
        agent.stop()
        agent.kill_task_processes()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests per warm path (c=1)")
    parser.add_argument("--seconds", type=float, default=6.0, help="time at c=64 per warm path, all rounds together")
    parser.add_argument("--rounds", type=int, default=10, help="turns the warm paths and the floor take")
    parser.add_argument("--task-samples", type=int, default=10,
                        help="sequential prediction tasks (c=1); 0 measures no prediction tasks")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=2)
    parser.add_argument("--busy-poll-us", type=int, default=1000, help="serving.busy_poll_us (0: no busy polling)")
    parser.add_argument("--sandbox", default="none")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
