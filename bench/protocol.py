"""V2 protocol costs: a 1 MB FP32 tensor through binary HTTP, gRPC and JSON, and a small
request through gRPC and HTTP, each against a floor measured in the same run.

    .venv/bin/python bench/protocol.py [--rounds 5] [--big 20] [--small 400] [--loader builtin|script]

One agent (sandbox none, gRPC on) serves bench/sum_model.py, whose answer is each
instance's sum: a big tensor in, a small answer out. With --loader builtin (the default) it
is a scikit-learn model loaded by the agent's built-in loader, so tensors travel to the
worker as raw bytes and reach the model as numpy arrays; with --loader script it is the
script's own serve command, which reads JSON lines (the seed's serving protocol). The floor (bench/protocol_floor.py) is
one bare process answering the same requests with numpy in place, over the same three
protocols. The clients are the official ones in their default modes (tritonclient.http:
binary tensors; tritonclient.grpc: raw_input_contents; JSON: urllib with Content-Type
application/json), one request at a time (c=1): on a small shared machine that is the
steadiest measure. Paths take turns, --rounds times, so that whatever else runs weighs on
all alike. For the big tensor the agent's own CPU (user + system, psutil on its pid; the
worker's is not counted) per request is shown too.

The big tensor is [1, 250000] FP32 = 1,000,000 bytes (about 3 MB as JSON), well within
serving.max_request_bytes (set to 64 MiB here); a path the agent refuses says so in its row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess, free_port  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

NAME = "sum"  # the big tensor's model (BIG_VALUES features)
SMALL_NAME = "sum-small"  # the small request's (one feature)
BIG_VALUES = 250_000  # x 4 bytes (FP32) = 1,000,000 bytes
MAX_REQUEST = 64 << 20


@dataclass
class Path_:
    label: str
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    cpu: float = 0.0  # the agent's CPU seconds over the timed calls
    error: str | None = None

    @property
    def p50(self) -> float:
        ordered = sorted(self.times)
        return ordered[len(ordered) // 2] if ordered else float("nan")

    @property
    def rps(self) -> float:
        return len(self.times) / sum(self.times) if self.times else float("nan")


def http_call(client: httpclient.InferenceServerClient, x: np.ndarray[Any, Any], datatype: str,
              binary: bool, name: str = NAME) -> Callable[[], Any]:
    tensor = httpclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("predictions", binary_data=binary)]
    expected = float(x.reshape(x.shape[0], -1).sum(dtype=np.float64)) if x.ndim > 1 else float(x[0])

    def call() -> Any:
        got = client.infer(name, [tensor], outputs=outputs).as_numpy("predictions")
        assert abs(float(got[0]) - expected) <= 1e-6 * max(1.0, abs(expected)), (got, expected)

    return call


def json_call(url: str, x: np.ndarray[Any, Any], datatype: str) -> Callable[[], Any]:
    """JSON with Content-Type: application/json, built by hand (the floor is a bare aiohttp
    server that would read a body without one all the same)."""
    body = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": datatype,
                                   "data": x.reshape(-1).tolist()}]}).encode()
    expected = float(x.reshape(x.shape[0], -1).sum(dtype=np.float64))

    def call() -> Any:
        request = urllib.request.Request(f"http://{url}/v2/models/{NAME}/infer", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                got = json.loads(response.read())["outputs"][0]["data"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"[{exc.code}] {json.loads(exc.read()).get('error', '')}") from None
        assert abs(float(got[0]) - expected) <= 1e-6 * max(1.0, abs(expected)), (got, expected)

    return call


def grpc_call(client: grpcclient.InferenceServerClient, x: np.ndarray[Any, Any], datatype: str,
              name: str = NAME) -> Callable[[], Any]:
    tensor = grpcclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    expected = float(x.reshape(x.shape[0], -1).sum(dtype=np.float64)) if x.ndim > 1 else float(x[0])

    def call() -> Any:
        got = client.infer(name, [tensor]).as_numpy("predictions")
        assert abs(float(got[0]) - expected) <= 1e-6 * max(1.0, abs(expected)), (got, expected)

    return call


def paths_for(who: str, http_url: str, grpc_url: str) -> dict[str, Path_]:
    http = httpclient.InferenceServerClient(http_url, connection_timeout=120, network_timeout=120)
    grpc_client = grpcclient.InferenceServerClient(grpc_url, channel_args=[("grpc.max_send_message_length", MAX_REQUEST),
                                                                           ("grpc.max_receive_message_length", MAX_REQUEST)])
    big = np.random.default_rng(7).random((1, BIG_VALUES), dtype=np.float32)
    small = np.array([[1.5]], dtype=np.float64)
    return {
        "big binary HTTP": Path_(f"{who}: 1 MB binary HTTP", http_call(http, big, "FP32", True)),
        "big gRPC": Path_(f"{who}: 1 MB gRPC", grpc_call(grpc_client, big, "FP32")),
        "big JSON": Path_(f"{who}: 1 MB JSON", json_call(http_url, big, "FP32")),
        "small HTTP": Path_(f"{who}: small HTTP (binary)", http_call(http, small, "FP64", True, SMALL_NAME)),
        "small gRPC": Path_(f"{who}: small gRPC", grpc_call(grpc_client, small, "FP64", SMALL_NAME)),
    }


def run_path(path: Path_, n: int, proc: psutil.Process | None) -> None:
    if path.error is not None:
        return
    before = proc.cpu_times() if proc is not None else None
    for _ in range(n):
        began = time.perf_counter()
        try:
            path.call()
        except Exception as exc:  # a refused path is reported, not fatal
            path.error = str(exc).splitlines()[0][:90]
            return
        path.times.append(time.perf_counter() - began)
    if proc is not None and before is not None:
        after = proc.cpu_times()
        path.cpu += (after.user - before.user) + (after.system - before.system)


def start_floor(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "protocol_floor.py"), "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port)], cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"127.0.0.1:{http_port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("the floor server exited")
        try:
            return bool(httpclient.InferenceServerClient(url).is_server_live())
        except Exception:
            return False

    wait_until(up, 30, "the floor server")
    return proc, url, f"127.0.0.1:{grpc_port}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big", type=int, default=20, help="1 MB requests per path per round")
    parser.add_argument("--small", type=int, default=400, help="small requests per path per round")
    parser.add_argument("--loader", choices=("builtin", "script"), default="builtin",
                        help="builtin: a scikit-learn model, tensors as bytes to the worker; script: JSON lines")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cnet-bench-protocol-"))
    grpc_port = free_port()
    agent = AgentProcess(workdir / "agent", {"serving": {"grpc_port": grpc_port, "max_request_bytes": MAX_REQUEST}})
    agent.start()
    floor_proc = None
    try:
        scripts = agent.workdir / "scripts"
        scripts.mkdir()
        shutil.copy(REPO / "bench" / "sum_model.py", scripts / "sum_model.py")
        for name, features in ((NAME, BIG_VALUES), (SMALL_NAME, 1)):
            model_path = f"models/{name}.joblib" if args.loader == "builtin" else f"models/{name}.txt"
            deployed = agent.api.post("/api/ml/models", {
                "name": name, "command": sys.executable, "script_path": "scripts/sum_model.py", "model_path": model_path,
                "args": ["scripts/sum_model.py", "train", model_path, str(features)]})
            assert deployed.status == 201, deployed.text
            assert agent.wait_done(deployed.body["id"])["status"] == "completed"
            served = agent.api.post(f"/api/ml/models/{deployed.body['id']}/serve?wait=true",
                                    {"replicas": 1, "loader": args.loader})
            assert served.status == 200, served.text
        assert agent.proc is not None
        agent_cpu = psutil.Process(agent.proc.pid)
        floor_proc, floor_http, floor_grpc = start_floor(workdir)
        mine = paths_for("agent", f"127.0.0.1:{agent.port}", f"127.0.0.1:{grpc_port}")
        floor = paths_for("floor", floor_http, floor_grpc)
        for paths in (mine, floor):  # warm up (connections, first allocations)
            for key, path in paths.items():
                run_path(path, 3 if key.startswith("big") else 50, None)
                path.times.clear()
        for _ in range(args.rounds):
            for key in mine:
                n = args.big if key.startswith("big") else args.small
                run_path(mine[key], n, agent_cpu)
                run_path(floor[key], n, None)
        print(f"{psutil.cpu_count()} CPUs; loader {args.loader}; c=1; {args.rounds} rounds; big = [1, {BIG_VALUES}] FP32 "
              f"({BIG_VALUES * 4:,} bytes); small = [1, 1] FP64\n")
        head = (f"{'path':<26} {'req/s':>8} {'p50 ms':>8} {'floor req/s':>12} {'floor p50':>10} {'x floor':>8} "
                f"{'agent CPU ms/req':>17}")
        print(head)
        print("-" * len(head))
        for key in mine:
            a, f = mine[key], floor[key]
            if a.error is not None:
                print(f"{key:<26} refused: {a.error}")
                continue
            ratio = f"{a.rps / f.rps:.3f}" if key.startswith("big") else f"{a.p50 / f.p50:.2f}"
            cpu = f"{a.cpu / len(a.times) * 1000:.2f}" if key.startswith("big") else ""
            print(f"{key:<26} {a.rps:>8.1f} {ms(a.p50):>8} {f.rps:>12.1f} {ms(f.p50):>10} {ratio:>8} {cpu:>17}")
        print("\nx floor: req/s against the floor's for the 1 MB rows (higher is better), p50 against the floor's "
              "for the small rows (lower is better)")
        small_http, small_grpc = mine["small HTTP"], mine["small gRPC"]
        if small_http.times and small_grpc.times:
            print(f"small request p50: gRPC {ms(small_grpc.p50)} ms, HTTP {ms(small_http.p50)} ms "
                  f"(gRPC/HTTP {small_grpc.p50 / small_http.p50:.2f}x)")
    finally:
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait()
        agent.stop()
        agent.kill_task_processes()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
