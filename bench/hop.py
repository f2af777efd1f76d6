"""Big tensors through the agent -> worker hop: 1 MB FP32 V2 infer requests against a real
agent serving a 100-feature linear model with the built-in loader (the socket channel), sent
with the binary tensor extension and, as the baseline measured in the same run, as JSON
(a 120 KB FP32 tensor: 1 MB of FP32 as JSON would pass the agent's 1 MiB body cap).

    .venv/bin/python bench/hop.py [--requests 40] [--rounds 3]

For each way: p50 latency of sequential requests, the tensor bytes served per second, and
the agent's CPU time per MB of tensor (user + system of the agent process, from /proc,
around the requests). The ways take turns, --rounds times, so that whatever else runs on
the machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess  # noqa: E402

FEATURES = 100
ROWS = 2500  # x 100 FP32 = 1,000,000 bytes
JSON_ROWS = 300  # 120 KB of FP32, about 660 KB as JSON
TRAIN = f'''
import json, pickle, sys
import numpy as np
from sklearn.linear_model import LinearRegression
rng = np.random.RandomState(0)
x = rng.standard_normal((400, {FEATURES}))
model = LinearRegression().fit(x, x @ (np.arange({FEATURES}) / 10) + 0.5)
with open(sys.argv[2], "wb") as f:
    pickle.dump(model, f)
print(json.dumps({{"status": "success"}}))
'''


def agent_cpu(pid: int) -> float:
    """User + system seconds the agent process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def binary_call(agent: AgentProcess, x: np.ndarray[Any, Any]) -> Any:
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                          "parameters": {"binary_data_size": x.nbytes}}],
              "parameters": {"binary_data_output": True}}
    head = json.dumps(header).encode()
    body = head + x.tobytes()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}

    def call() -> bool:
        reply = agent.api.post("/v2/models/wide/infer", raw=body, headers=headers)
        return reply.status == 200

    return call


def json_call(agent: AgentProcess, x: np.ndarray[Any, Any]) -> Any:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}

    def call() -> bool:
        reply = agent.api.post("/v2/models/wide/infer", body)
        return reply.status == 200

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cnet-bench-hop-"))
    agent = AgentProcess(workdir / "agent", {"tasks": {"sandbox": "none"}})
    (agent.workdir / "wide_model.py").write_text(TRAIN)
    agent.start()
    try:
        body = {"name": "wide", "command": sys.executable, "script_path": "wide_model.py", "model_path": "models/wide.pkl",
                "args": ["wide_model.py", "train", "models/wide.pkl"], "working_dir": ".",
                "serving": {"loader": "builtin", "max_batch_size": 64}}
        reply = agent.api.post("/api/ml/models", body)
        assert reply.status == 201, reply.text
        done = agent.wait_status(reply.body["id"], {"completed", "failed"}, 120, path="/api/ml/models/")
        assert done["status"] == "completed", done
        served = agent.api.post(f"/api/ml/models/{done['id']}/serve?wait=true", {"loader": "builtin"})
        assert served.status == 200, served.text
        assert agent.proc is not None
        pid = agent.proc.pid
        rng = np.random.RandomState(1)
        x, small = rng.standard_normal((ROWS, FEATURES)).astype("<f4"), rng.standard_normal((JSON_ROWS, FEATURES)).astype("<f4")
        base = "JSON (120 KB FP32)"
        ways = {"binary (1 MB FP32)": (binary_call(agent, x), x.nbytes), base: (json_call(agent, small), small.nbytes)}
        times: dict[str, list[float]] = {name: [] for name in ways}
        cpu: dict[str, float] = dict.fromkeys(ways, 0.0)
        errors: dict[str, int] = dict.fromkeys(ways, 0)
        for call, _ in ways.values():  # warm up
            for _ in range(3):
                call()
        for _ in range(args.rounds):
            for name, (call, _) in ways.items():
                before = agent_cpu(pid)
                for _ in range(args.requests):
                    began = time.perf_counter()
                    errors[name] += not call()
                    times[name].append(time.perf_counter() - began)
                cpu[name] += agent_cpu(pid) - before
        p50 = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        mb = {name: ways[name][1] / 1e6 for name in ways}
        rate = {name: mb[name] * len(t) / sum(t) for name, t in times.items()}  # tensor MB/s
        per_mb = {name: cpu[name] / len(times[name]) / mb[name] for name in ways}  # agent CPU s per tensor MB
        head = (f"{'way':<20} {'p50 ms':>8} {'tensor MB/s':>12} {'agent CPU ms/MB':>16} {'MB/s vs JSON':>13} "
                f"{'CPU/MB vs JSON':>15} {'errors':>7}")
        print(f"agent {agent.url}, {os.cpu_count()} CPUs, {len(times[base])} requests per way")
        print(head)
        print("-" * len(head))
        for name in ways:
            print(f"{name:<20} {p50[name] * 1000:>8.1f} {rate[name]:>12.1f} {per_mb[name] * 1000:>16.1f} "
                  f"{rate[name] / rate[base]:>13.2f} {per_mb[name] / per_mb[base]:>15.2f} {errors[name]:>7}")
    finally:
        agent.stop()
        agent.kill_task_processes()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
