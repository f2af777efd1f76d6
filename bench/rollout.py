"""Version switches under load, against a real agent (tests/support/versioned_model.py
trained twice as "bench": v1 answers 2x, v2 answers 3x; both served, one replica each).

    .venv/bin/python bench/rollout.py [--clients 4] [--switches 20] [--gap 0.25] [--rollbacks 5]
                                      [--requests 2000]

Rows:
  - switches: --switches rollbacks (each one swaps the default between v1 and v2, inside the
    rollback window: pointer switches) --gap seconds apart while --clients threads send V2
    infer requests for the name over keep-alive connections; failed requests (goal 0);
  - rollback to all traffic on the old version: for --rollbacks rollbacks under the same
    load, seconds from sending POST .../rollback to the end of the last answer that came
    from the version rolled away from (median and max), and the rollback call's own time;
  - canary split overhead: one client, --requests sequential requests each, p50 and p99 of
    the pinned route (/versions/1/infer: no routing), the name's route without a rollout,
    and with a 50 % canary (hashing X-Request-Key); the difference is the split's cost.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

MODEL = REPO / "tests" / "support" / "versioned_model.py"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}).encode()


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def infer(self, path: str, key: str | None = None) -> tuple[int, str | None]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["X-Request-Key"] = key
        try:
            self.http.request("POST", path, BODY, headers)
            resp = self.http.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            self.http.close()
            self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            return 0, None
        if resp.status != 200:
            return resp.status, None
        return 200, json.loads(data)["model_version"]


class Load:
    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.results: list[tuple[float, float, int, str | None]] = []  # sent, answered, status, version
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, client: int) -> None:
        conn = Conn(self.port)
        n = 0
        while not self.stop.is_set():
            n += 1
            sent = time.monotonic()
            status, version = conn.infer("/v2/models/bench/infer", f"{client}-{n}")
            self.results.append((sent, time.monotonic(), status, version))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def deploy(agent: AgentProcess, slope: int, promote: str) -> str:
    body = {"name": "bench", "model_path": "models/b.json", "script_path": "versioned_model.py", "command": "python3",
            "args": ["versioned_model.py", "train", "models/b.json", str(slope)], "promote": promote,
            "serving": {"replicas": 1, "max_batch_size": 32}}
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    model_id: str = reply.body["id"]
    assert agent.wait_status(model_id, {"completed", "failed"}, 120, path="/api/ml/models/")["status"] == "completed"
    return model_id


def default_version(agent: AgentProcess) -> Any:
    return agent.api.get("/api/ml/models/bench").body["default_version"]


def latencies(conn: Conn, path: str, n: int, keyed: bool) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        status, _ = conn.infer(path, f"k{i}" if keyed else None)
        out.append(time.perf_counter() - t0)
        assert status == 200, status
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.25)
    parser.add_argument("--rollbacks", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cnet-bench-rollout-"))
    agent = AgentProcess(root / "agent", {"serving": {"rollback_window": "1h"}})
    shutil.copy(MODEL, agent.workdir / "versioned_model.py")
    (agent.workdir / "models").mkdir()
    agent.start()
    try:
        deploy(agent, 2, "auto")
        wait_until(lambda: default_version(agent) == 1, 120, "v1 as the default")
        deploy(agent, 3, "manual")
        promoted = agent.api.post("/api/ml/models/bench/promote", {"version": 2}, timeout=120)
        assert promoted.status == 200, promoted.text  # both warm now, v2 the default, v1 the previous

        with Load(agent.port, args.clients) as load:
            wait_until(lambda: len(load.results) > 50, 30, "load")
            start = len(load.results)
            for _ in range(args.switches):
                reply = agent.api.post("/api/ml/models/bench/rollback")
                assert reply.status == 200 and reply.body["reloaded"] is False, reply.text
                time.sleep(args.gap)  # the pace of the switches
            done = len(load.results)
            during = load.results[start:done]
            failed = [r for r in during if r[2] != 200]
            print(f"switches: {args.switches} rollbacks {args.gap:g}s apart, {args.clients} clients: "
                  f"{len(during)} requests, {len(failed)} failed, {len(during) / (during[-1][1] - during[0][0]):.0f} req/s")

            takes, calls = [], []
            for _ in range(args.rollbacks):
                time.sleep(0.5)  # steady traffic on the current default first
                before = str(default_version(agent))
                t0 = time.monotonic()
                reply = agent.api.post("/api/ml/models/bench/rollback")
                calls.append(time.monotonic() - t0)
                assert reply.status == 200, reply.text
                time.sleep(0.5)  # answers after the switch
                last_old = max((r[1] for r in load.results if r[3] == before and r[0] < t0 + 5), default=t0)
                takes.append(max(0.0, last_old - t0))
            failed_all = [r for r in load.results if r[2] != 200]
        print(f"rollback to all traffic on the old version ({args.rollbacks} rollbacks): median "
              f"{statistics.median(takes) * 1000:.1f} ms, max {max(takes) * 1000:.1f} ms "
              f"(the rollback call itself: median {statistics.median(calls) * 1000:.1f} ms); "
              f"failed requests over the whole load: {len(failed_all)} of {len(load.results)}")

        conn = Conn(agent.port)
        latencies(conn, "/v2/models/bench/infer", 200, False)  # warm-up
        pinned = latencies(conn, "/v2/models/bench/versions/1/infer", args.requests, False)
        plain = latencies(conn, "/v2/models/bench/infer", args.requests, True)
        other = 3 - int(default_version(agent))  # the version that is not the default
        started = agent.api.post("/api/ml/models/bench/rollout", {"version": other, "canary_percent": 50, "duration": "1h",
                                                                  "min_requests": 0}, timeout=60)
        assert started.status == 202, started.text
        split = latencies(conn, "/v2/models/bench/infer", args.requests, True)
        agent.api.post("/api/ml/models/bench/rollout/abort")
        for label, values in (("pinned version", pinned), ("name, no rollout", plain), ("name, 50% canary", split)):
            print(f"  {label:18s} p50 {pct(values, 0.5) * 1e6:7.0f} us  p99 {pct(values, 0.99) * 1e6:7.0f} us")
        print(f"canary split overhead (p50, canary - no rollout): {(pct(split, 0.5) - pct(plain, 0.5)) * 1e6:+.0f} us")
    finally:
        agent.stop()
        agent.kill_task_processes()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
