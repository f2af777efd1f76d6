"""The GPU support checked on a machine with a real NVIDIA GPU, in one go (under 5 minutes).

    sudo python3 bench/gpu_check.py [--timeout 240] [--keep]          # the machine's own Python
    sudo python3 bench/gpu_check.py --simulated                        # no GPU: the NVML double

It starts the agent from this checkout on the Python it is run with (which needs the agent's
packages: aiohttp, msgspec, psutil, PyYAML, Jinja2, nvidia-ml-py), with its state in a temp
dir, and checks, printing one row per check and a last line `gpu_check: N of M passed`:

  - discovery: /api/node lists the GPUs NVML sees (count, names, driver), /metrics has them;
  - a small training run with `gpu_limit: 1` in whatever framework the machine has (PyTorch,
    else TensorFlow, else CuPy) sees exactly one GPU, the one the agent assigned by UUID;
  - a task without GPUs sees none (CUDA_VISIBLE_DEVICES is empty and, where the sandbox
    enforces devices, the /dev/nvidia* nodes cannot be opened);
  - while the training runs, its usage has gpu_memory_bytes > 0 (NVML's per-process
    accounting mapped to the task) and /metrics has cnet_task_gpu_memory_bytes;
  - a `gpu_memory: 256MiB` task that allocates 1 GiB on its GPU is stopped with
    `GPU memory limit exceeded (used ..., limit 256 MiB)`.

With --simulated (for a machine without a GPU) the GPUs come from gpus.simulate_file and
the "framework" is the environment the agent gave the task: it checks the plumbing only.
Exit status 0 when every check passed. The temp dir is removed unless --keep.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("aiohttp", "msgspec", "psutil", "yaml", "jinja2", "pynvml")

# Prints what it sees, then trains a small model on the GPU for a few seconds.
TRAIN = r'''
import json, os, sys, time
seen = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER")}
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 8.0
try:
    import torch
    seen["framework"] = "pytorch " + torch.__version__
    seen["devices"] = torch.cuda.device_count()
    if seen["devices"]:
        seen["names"] = [torch.cuda.get_device_name(i) for i in range(seen["devices"])]
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(4096, 256, device="cuda"), torch.randn(4096, 1, device="cuda")
        end, steps = time.time() + seconds, 0
        while time.time() < end:
            opt.zero_grad(); loss = torch.nn.functional.mse_loss(model(x), y); loss.backward(); opt.step(); steps += 1
        torch.cuda.synchronize()
        seen["steps"], seen["loss"] = steps, float(loss)
except ImportError:
    try:
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        seen["framework"], seen["devices"] = "tensorflow " + tf.__version__, len(gpus)
        if gpus:
            model = tf.keras.Sequential([tf.keras.layers.Dense(512, activation="relu"), tf.keras.layers.Dense(1)])
            model.compile("sgd", "mse")
            x, y = tf.random.normal((4096, 256)), tf.random.normal((4096, 1))
            end, epochs = time.time() + seconds, 0
            while time.time() < end:
                model.fit(x, y, epochs=1, verbose=0); epochs += 1
            seen["steps"] = epochs
    except ImportError:
        try:
            import cupy
            seen["framework"], seen["devices"] = "cupy " + cupy.__version__, cupy.cuda.runtime.getDeviceCount()
            a = cupy.random.random((2048, 2048)); end = time.time() + seconds
            while time.time() < end:
                a = a @ a; a /= a.max()
            cupy.cuda.Device().synchronize()
        except ImportError:
            seen["framework"] = None
dev_dir = os.environ.get("GPU_CHECK_DEV_DIR", "/dev")
opened = {}
for name in sorted(n for n in os.listdir(dev_dir) if n.startswith("nvidia") and n[6:].isdigit()):
    try:
        os.close(os.open(os.path.join(dev_dir, name), os.O_RDWR)); opened[name] = "OK"
    except OSError as exc:
        opened[name] = os.strerror(exc.errno)
seen["device_nodes"] = opened
print(json.dumps(seen), flush=True)
'''

# Takes 1 GiB on its GPU and holds it: over a 256 MiB gpu_memory budget.
HOG = r'''
import time
try:
    import torch
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); x.fill_(1); torch.cuda.synchronize()
except ImportError:
    try:
        import cupy
        x = cupy.ones(1 << 30, dtype=cupy.uint8)
    except ImportError:
        import tensorflow as tf
        with tf.device("/GPU:0"):
            x = tf.ones((1 << 28,), dtype=tf.float32)
print("holding 1 GiB", flush=True)
time.sleep(120)
'''


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                raw = reply.read()
                status = reply.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text


def wait_for(condition: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class Checks:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, float, str]] = []
        self.t0 = time.monotonic()

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, ok, time.monotonic() - self.t0, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {time.monotonic() - self.t0:6.1f}s  {name}: {detail}", flush=True)

    def table(self) -> str:
        width = max(len(name) for name, *_ in self.rows)
        lines = [f"{'check':<{width}}  result  at (s)  detail", f"{'-' * width}  ------  ------  ------"]
        lines += [f"{name:<{width}}  {'pass' if ok else 'FAIL':<6}  {at:6.1f}  {detail}" for name, ok, at, detail in self.rows]
        passed = sum(ok for _, ok, _, _ in self.rows)
        lines.append(f"gpu_check: {passed} of {len(self.rows)} passed")
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Api, Path]:
    port = free_port()
    gpus: dict[str, Any] = {"refresh": "1s"}
    if args.simulated:
        fake = work / "gpus.json"
        fake.write_text(json.dumps({"driver_version": "simulated", "gpus": [
            {"uuid": f"GPU-0000000{n}-0000-4000-8000-000000000000", "name": f"Simulated {n}", "minor": n,
             "memory_total": 8 << 30, "memory_used": 0, "utilization": 0} for n in range(2)]}))
        fake.chmod(0o600)
        gpus["simulate_file"] = str(fake)
    config = {"agent": {"port": port, "state_dir": str(work / "state")}, "gpus": gpus,
              "tasks": {"timeout": "4m"}, "ml": {"allowed_roots": [str(work)]}}
    (work / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    log = work / "agent.log"
    command = [sys.executable, "-c", f"import runpy, sys; sys.path.insert(0, {str(REPO)!r}); "
               "runpy.run_module('cnetd', run_name='__main__', alter_sys=True)", "-config", str(work / "config.yaml")]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = Api(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            return api.call("GET", "/api/health")[0] == 200
        except OSError:
            return False

    if not wait_for(up, 60):
        raise SystemExit(f"the agent did not answer in 60 s:\n{log.read_text(errors='replace')[-3000:]}")
    return proc, api, log


def submit(api: Api, name: str, code: str, resources: dict[str, Any], args: list[str] | None = None,
           env: dict[str, str] | None = None) -> str:
    status, body = api.call("POST", "/api/tasks", {"name": name, "command": sys.executable,
                                                   "args": ["-c", code, *(args or [])], "env": env or {},
                                                   "resources": resources})
    if status != 201:
        raise SystemExit(f"POST /api/tasks ({name}) answered {status}: {body}")
    return str(body["id"])


def task(api: Api, task_id: str) -> dict[str, Any]:
    return dict(api.call("GET", f"/api/tasks/{task_id}")[1])


def ended(api: Api, task_id: str, timeout: float) -> dict[str, Any]:
    done = wait_for(lambda: (t := task(api, task_id))["status"] in ("completed", "failed", "stopped") and t, timeout)
    return done or task(api, task_id)


def run(args: argparse.Namespace, work: Path, checks: Checks) -> None:
    proc, api, log = start_agent(work, args)
    try:
        node = api.call("GET", "/api/node")[1]["gpus"]
        checks.add("discovery", node["count"] >= 1,
                   f"{node['count']} GPU(s) via {node['source']}, driver {node['driver_version']}: "
                   + ", ".join(f"{d['index']}: {d['name']} {d['uuid']}" for d in node["devices"])
                   + (f" (reason: {node['reason']})" if node["reason"] else ""))
        if node["count"] < 1:
            return
        health = api.call("GET", "/api/health")[1]["sandbox"]
        enforced = health["limits_enforced"].get("gpu_limit")
        checks.add("sandbox", True, f"{health['backend']} ({health['reason']}); device isolation "
                                    f"{'enforced' if enforced else 'NOT enforced'}")

        env = {"GPU_CHECK_DEV_DIR": "/dev"}
        trainer = submit(api, "gpu-train", TRAIN, {"gpu_limit": 1}, ["20" if not args.simulated else "3"], env)
        plain = submit(api, "no-gpu", TRAIN, {}, ["0"], env)
        if args.simulated:  # what NVML would account to the trainer
            account(work, wait_for(lambda: _pid(api, trainer), 20), 100 << 20)

        def sampled() -> dict[str, Any] | None:
            usage = task(api, trainer).get("usage") or {}
            return usage if usage.get("gpu_memory_bytes") else None

        usage = wait_for(sampled, 40 if not args.simulated else 5)
        metrics = api.call("GET", "/metrics")[1]
        checks.add("usage", bool(usage) and f'task_id="{trainer}"' in metrics.split("cnet_task_gpu_memory_bytes", 1)[-1],
                   f"task usage {usage or task(api, trainer).get('usage')}; /metrics "
                   f"{'has' if 'cnet_task_gpu_memory_bytes{' in metrics else 'lacks'} cnet_task_gpu_memory_bytes")
        checks.add("nvml figures", "cnet_gpu_memory_used_bytes{" in metrics,
                   "; ".join(line for line in metrics.splitlines() if line.startswith("cnet_gpu_")))

        done = ended(api, trainer, 120)
        seen = _result(done)
        uuid = (done.get("gpus") or [None])[0]
        own = seen.get("CUDA_VISIBLE_DEVICES") == uuid and seen.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
        ok = done["status"] == "completed" and own and (args.simulated or seen.get("devices") == 1)
        checks.add("gpu_limit: 1 sees its GPU", ok, f"{done['status']} {done.get('reason') or ''} assigned {uuid}; "
                                                    f"the task saw {seen}")
        other = _result(ended(api, plain, 60))
        others_nodes = [v for v in (other.get("device_nodes") or {}).values()]
        none_seen = other.get("CUDA_VISIBLE_DEVICES") == "" and (args.simulated or not other.get("devices"))
        isolated = not enforced or all(v != "OK" for v in others_nodes)
        checks.add("no GPU sees none", none_seen and isolated, f"the task saw {other}")

        if args.simulated:
            hog = submit(api, "gpu-hog", "import time; time.sleep(120)", {"gpu_memory": "256MiB"})
            account(work, wait_for(lambda: _pid(api, hog), 20), 1 << 30)
        else:
            hog = submit(api, "gpu-hog", HOG, {"gpu_memory": "256MiB"})
        done = ended(api, hog, 90)
        reason = done.get("reason") or ""
        checks.add("gpu_memory over budget is stopped", done["status"] == "failed" and reason.startswith(
            "GPU memory limit exceeded (used ") and reason.endswith("limit 256 MiB)"), f"{done['status']}: {reason}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if not all(ok for _, ok, _, _ in checks.rows):
            print(f"--- the agent's log (last 4000 characters, {log}) ---\n{log.read_text(errors='replace')[-4000:]}")


def account(work: Path, pid: int, memory: int) -> None:
    """--simulated: the NVML double reports pid using this much of GPU 0."""
    fake = work / "gpus.json"
    data = json.loads(fake.read_text())
    data["processes"] = [*data.get("processes", []), {"pid": pid, "uuid": data["gpus"][0]["uuid"], "memory_used": memory}]
    fake.write_text(json.dumps(data))


def _result(t: dict[str, Any]) -> dict[str, Any]:
    return t.get("result") or {}


def _pid(api: Api, task_id: str) -> int | None:
    status, events = api.call("GET", f"/api/tasks/{task_id}/events")
    for e in events if status == 200 else []:
        if e["type"] == "started":
            return int(e["message"].split("pid ")[1].split(",")[0])
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulated", action="store_true", help="no GPU here: the NVML double, plumbing only")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (state, logs)")
    args = parser.parse_args()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu_check: {sys.executable} lacks {', '.join(missing)}: install the agent's packages "
              f"(pip install -e {REPO}) or run with its venv's python")
        return 2
    work = Path(tempfile.mkdtemp(prefix="cnet-gpu-check-"))
    work.chmod(0o755)  # tasks run under their own uids and read the checkout and this dir
    checks = Checks()
    try:
        run(args, work, checks)
    finally:
        print(checks.table())
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if checks.rows and all(ok for _, ok, _, _ in checks.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
