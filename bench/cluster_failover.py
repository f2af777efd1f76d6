"""Failover of a served model, timed: how long V2 goes unanswered, and how long until the
lost replica serves again elsewhere, when the node that trained the model is SIGKILLed.

    .venv/bin/python bench/cluster_failover.py [--rounds 2] [--ttl 3]

Each round starts one etcd member and three real agents (a, b, c) on loopback with lease TTL
--ttl, deploys the scikit-learn example with serving on c and waits until the model is copied
to a second node (X) and served there. Two clients then send V2 inferences one after another,
one through X (which serves the model itself) and one through the third agent Y (which holds
no copy: it passes each call on to a node that does). c is SIGKILLed, and the round records:

- kill -> c offline as a lists it (the lease expiring: about the TTL);
- kill -> the lost replica re-placed: Y's replica ready (its endpoint in etcd), which the
  design puts after the lease expiry plus a grace of 2 x TTL;
- kill -> the first inference Y answers itself (the first answer from a re-placed replica);
- per client: failed calls after the kill and the window they span (first to last failure),
  and the longest gap between two answers.

Baselines from the same round: the cold start of a served replica on one node (c: training
completed -> its replica ready), and the copy to the second node (c ready -> X ready:
placement, pull with sha256 check, worker start). Ratios are against the cold start and
against the bound the design gives for re-placing, TTL + 2 x TTL.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
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
from tests.support.cluster import cluster_agent  # noqa: E402
from tests.support.etcd import EtcdCluster, EtcdMember  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

NAME = "linear"
BODY = {
    "name": NAME, "model_type": "linear_regression", "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py", "command": "python3",
    "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
    "working_dir": ".", "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000},
    "serving": {"replicas": 1},
}
INFER = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [2.0]}]}


# Polled finely: the bench times the moments these conditions turn true.
wait = functools.partial(wait_until, interval=0.02)


def etcd_list(member: EtcdMember, key_prefix: str) -> dict[str, Any]:
    start = key_prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    answer = member.request("/v3/kv/range", {"key": base64.b64encode(start).decode(),
                                             "range_end": base64.b64encode(end).decode()})
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"])) for kv in answer.get("kvs", [])}


def ready_nodes(member: EtcdMember, prefix: str) -> set[str]:
    return {e["node_id"] for e in etcd_list(member, f"{prefix}/serving/{NAME}/").values() if e["ready_replicas"] > 0}


class Client:
    """V2 inferences through one agent, one after another; every outcome kept."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.outcomes: list[tuple[float, int, str]] = []  # (when, status, node that answered)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.agent.api.post(f"/v2/models/{NAME}/infer", INFER, timeout=30)
                status, node = reply.status, reply.headers.get("X-CNET-Node", self.agent.workdir.name)
            except OSError:
                status, node = 0, ""
            self.outcomes.append((time.monotonic(), status, node))

    def after(self, t0: float) -> dict[str, float]:
        after = [o for o in self.outcomes if o[0] >= t0]
        errors = [o for o in after if o[1] != 200]
        answered = [o[0] for o in self.outcomes if o[1] == 200]
        gaps = [b - a for a, b in itertools.pairwise(answered) if b >= t0]
        return {"calls": len(after), "errors": len(errors),
                "window": errors[-1][0] - errors[0][0] if errors else 0.0, "gap": max(gaps, default=0.0)}


def one_round(root: Path, etcd: EtcdCluster, ttl: int, round_no: int) -> dict[str, float]:
    prefix = f"/bench-failover-{round_no}"
    made: list[AgentProcess] = []

    def make(config: dict[str, Any], name: str) -> AgentProcess:
        agent = AgentProcess(root / f"r{round_no}" / name, {**config, "logging": {"level": "warning"}})
        made.append(agent)
        return agent

    agents = {n: cluster_agent(make, etcd.endpoints, n, prefix=prefix,
                               extra={"cluster": {"lease_ttl": f"{ttl}s"}}) for n in "abc"}
    member = etcd.members[0]
    clients: list[Client] = []
    try:
        for agent in agents.values():
            agent.start(ready=False)
        for agent in agents.values():
            agent.wait_ready()
        a, c = agents["a"], agents["c"]
        model = c.api.post("/api/ml/models", BODY).body
        done = wait(lambda: (m := c.api.get(f"/api/ml/models/{model['id']}").body)["status"] in
                    ("completed", "failed") and m, 180, "training")
        assert done["status"] == "completed", done
        trained = time.monotonic()
        wait(lambda: "c" in ready_nodes(member, prefix), 60, "c's replica")
        origin_ready = time.monotonic()
        two = wait(lambda: len(n := ready_nodes(member, prefix)) == 2 and n, 60, "the copy served")
        copy_ready = time.monotonic()
        (x,) = two - {"c"}
        (y,) = {"a", "b"} - {x}
        clients = [Client(agents[x]), Client(agents[y])]
        for client in clients:
            client.start()
        wait(lambda: all(len(cl.outcomes) >= 20 for cl in clients), 30, "the clients to get going")
        c.kill()
        killed = time.monotonic()

        def offline() -> bool:
            nodes = {n["node_id"]: n for n in a.api.get("/api/nodes").body}
            return nodes["c"]["status"] == "offline"

        wait(offline, 60, "c offline")
        seen_offline = time.monotonic()
        wait(lambda: y in ready_nodes(member, prefix), 60, "the re-placed replica")
        replaced = time.monotonic()
        first = wait(lambda: next((o[0] for o in clients[1].outcomes if o[0] > killed and o[1] == 200 and o[2] == y),
                                  None), 30, "an answer from the re-placed replica")
        time.sleep(1.0)  # a second of answers after it
        for client in clients:
            client.stop()
        via_x, via_y = clients[0].after(killed), clients[1].after(killed)
        return {
            "cold serve on one node (training done -> ready)": origin_ready - trained,
            "copy to a 2nd node (origin ready -> copy ready)": copy_ready - origin_ready,
            "kill -> offline (lease expired)": seen_offline - killed,
            "kill -> re-placed replica ready": replaced - killed,
            "kill -> first answer from re-placed replica": first - killed,
            "client via holder X: failed calls": via_x["errors"],
            "client via holder X: error window": via_x["window"],
            "client via holder X: longest gap": via_x["gap"],
            "client via Y (forwarding): failed calls": via_y["errors"],
            "client via Y (forwarding): error window": via_y["window"],
            "client via Y (forwarding): longest gap": via_y["gap"],
            "calls after the kill": via_x["calls"] + via_y["calls"],
        }
    finally:
        for client in clients:
            client.stop()
        for agent in made:
            agent.stop()
            agent.kill_task_processes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttl", type=int, default=3, help="cluster.lease_ttl in seconds (>= 2)")
    args = parser.parse_args()
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="cnet-bench-failover-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # task users read the agents' work dirs
        with EtcdCluster(root / "etcd") as etcd:
            for i in range(args.rounds):
                results.append(one_round(root, etcd, args.ttl, i))
                print(f"round {i + 1} of {args.rounds} done", file=sys.stderr)
    bound = 3.0 * args.ttl
    keys = list(results[0])
    print(f"\nfailover of a served model, {args.rounds} round(s), lease TTL {args.ttl}s, grace {2 * args.ttl}s "
          f"(bound for re-placing: TTL + grace = {bound:g}s)\n")
    head = f"{'measure':50} " + " ".join(f"{'r' + str(i + 1):>8}" for i in range(args.rounds))
    print(head + f" {'mean':>8} {'x cold':>8} {'x bound':>8}")
    print("-" * len(head + " " * 27))
    cold = statistics.mean(r[keys[0]] for r in results)
    for key in keys:
        values = [r[key] for r in results]
        mean = statistics.mean(values)
        counted = "failed" in key or key.startswith("calls")
        cells = " ".join(f"{v:>8.0f}" if counted else f"{v:>7.2f}s" for v in values)
        ratios = f"{'':>8} {'':>8}" if counted else f"{mean / cold:>8.2f} {mean / bound:>8.2f}"
        mean_text = f"{mean:>8.1f}" if counted else f"{mean:>7.2f}s"
        print(f"{key:50} {cells} {mean_text} {ratios}")


if __name__ == "__main__":
    main()
