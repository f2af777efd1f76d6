"""Autoscaling figures against a real agent (tests/support/agent.py):

1. cold start: the example linear-regression and neural-network models served with
   min_replicas 0, unloaded, then one request: seconds from it to its answer (scale from
   zero to first answer), next to a prediction task of the same model (a process started per
   prediction: `POST /predict?wait=true` on the model once it is no longer served);
2. a step in load: a model whose answers take --delay s, 1 replica, then --clients clients
   at once: seconds to the first scaling decision and to every wanted replica ready, and
   after the clients stop, seconds back to min_replicas;
3. models per GB: --models models with min_replicas 0 and a serving.memory_budget for
   --budget-replicas replicas, each asked in turn: every one answers, and the models served
   per GB of budget against the same models all resident (their memory_limit each).

    .venv/bin/python bench/autoscale.py [--repeat 3] [--clients 6] [--models 30] [--budget-replicas 8]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.agent import AgentProcess  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402
from tests.test_ml_api import LINEAR_BODY, NETWORK_BODY  # noqa: E402

SLEEPY = REPO / "tests" / "support" / "sleepy_model.py"
MEMORY = 64_000_000
GB = 1e9


def serving_of(agent: AgentProcess, model_id: str) -> dict[str, Any]:
    return agent.api.get(f"/api/ml/models/{model_id}").body["serving"]  # type: ignore[no-any-return]


def wait_ready(agent: AgentProcess, model_id: str, ready: int, timeout: float = 300) -> float:
    started = time.monotonic()
    wait_until(lambda: (s := serving_of(agent, model_id))["ready_replicas"] == ready and len(s["workers"]) == ready,
               timeout, f"{ready} ready replicas of {model_id}", interval=0.05)
    return time.monotonic() - started


def wait_unloaded(agent: AgentProcess, model_id: str) -> None:
    wait_until(lambda: (s := serving_of(agent, model_id))["replicas"] == 0 and not s["workers"], 120,
               "the model unloaded", interval=0.1)


def ask(agent: AgentProcess, model_id: str, x: Any = 1.0) -> tuple[int, float]:
    started = time.monotonic()
    reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": x}, timeout=300)
    return reply.status, time.monotonic() - started


def cold_starts(agent: AgentProcess, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, base, x in (("linear_regression", LINEAR_BODY, 5.5), ("neural_network", NETWORK_BODY, [1.0, 2.0])):
        body = copy.deepcopy(base)
        body["serving"] = {"min_replicas": 0, "max_replicas": 1, "idle_unload_after": 1, "cold_start_timeout": 300}
        model_id = agent.api.post("/api/ml/models", body).body["id"]
        assert agent.wait_done(model_id, 600)["status"] == "completed"
        wait_ready(agent, model_id, 1)
        colds = []
        for _ in range(repeat):
            wait_unloaded(agent, model_id)
            status, seconds = ask(agent, model_id, x)
            assert status == 200, status
            colds.append(seconds)
        warm = [ask(agent, model_id, x)[1] for _ in range(20)]
        agent.api.delete(f"/api/ml/models/{model_id}/serve")
        tasks = []
        for _ in range(repeat):
            status, seconds = ask(agent, model_id, x)
            assert status == 200, status
            tasks.append(seconds)
        out[label] = {"cold_start_to_answer_s": [round(c, 3) for c in colds],
                      "cold_start_median_s": round(statistics.median(colds), 3),
                      "prediction_task_s": [round(t, 3) for t in tasks],
                      "prediction_task_median_s": round(statistics.median(tasks), 3),
                      "warm_median_ms": round(statistics.median(warm) * 1000, 2)}
    return out


def sleepy(agent: AgentProcess, name: str, delay: float, serving: dict[str, Any]) -> str:
    body = {"name": name, "command": sys.executable, "script_path": "scripts/sleepy_model.py",
            "model_path": f"models/{name}.json", "args": ["scripts/sleepy_model.py", "train", f"models/{name}.json",
                                                          str(delay)],
            "resources": {"cpu_limit": 0.1, "memory_limit": MEMORY}, "serving": serving}
    model_id: str = agent.api.post("/api/ml/models", body).body["id"]
    assert agent.wait_done(model_id, 120)["status"] == "completed"
    return model_id


def load_step(agent: AgentProcess, clients: int, delay: float) -> dict[str, Any]:
    settings = {"min_replicas": 1, "max_replicas": clients, "target_in_flight": 1, "stable_window": 10,
                "panic_window": 2, "scale_up_delay": 2, "scale_down_delay": 5, "max_batch_size": 1}
    model_id = sleepy(agent, "step", delay, settings)
    wait_ready(agent, model_id, 1)
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        while not stop.is_set():
            statuses.append(ask(agent, model_id)[0])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    wait_until(lambda: serving_of(agent, model_id)["replicas"] > 1, 120, "a scale-up", interval=0.05)
    first_decision = time.monotonic() - started
    wait_until(lambda: serving_of(agent, model_id)["ready_replicas"] >= clients, 300, "every replica ready",
               interval=0.05)
    all_ready = time.monotonic() - started
    stop.set()
    for t in threads:
        t.join(timeout=60)
    stopped = time.monotonic()
    wait_until(lambda: (s := serving_of(agent, model_id))["replicas"] == 1 and s["ready_replicas"] == 1, 300,
               "back to 1", interval=0.05)
    back = time.monotonic() - stopped
    decisions = serving_of(agent, model_id)["scaling"]["decisions"]
    agent.api.delete(f"/api/ml/models/{model_id}/serve")
    return {"settings": settings, "clients": clients, "answer_delay_s": delay,
            "seconds_to_first_scale_up": round(first_decision, 2), "seconds_to_all_replicas_ready": round(all_ready, 2),
            "seconds_back_to_min_after_stop": round(back, 2), "requests": len(statuses),
            "failed": sum(1 for s in statuses if s != 200), "decisions": [d["reason"] for d in reversed(decisions)]}


def models_per_gb(agent: AgentProcess, models: int, budget_replicas: int) -> dict[str, Any]:
    lazy = {"min_replicas": 0, "max_replicas": 1, "idle_unload_after": 600, "cold_start_timeout": 300}
    ids = [sleepy(agent, f"many-{i}", 0.0, lazy) for i in range(models)]
    most = 0
    times = []
    for model_id in ids:
        status, seconds = ask(agent, model_id)
        assert status == 200, status
        times.append(seconds)
        running = [t for t in agent.api.get("/api/tasks?status=running").body if t["kind"] == "serve"]
        most = max(most, len(running))
    again = [ask(agent, model_id)[1] for model_id in ids]
    budget = budget_replicas * MEMORY
    return {"models": models, "memory_limit_per_replica": MEMORY, "budget_bytes": budget,
            "most_serving_workers_seen": most, "all_answered": True,
            "models_per_gb_unloading": round(models / (budget / GB), 1),
            "models_per_gb_all_resident": round(1 / (MEMORY / GB), 1),
            "first_round_median_s": round(statistics.median(times), 3),
            "second_round_median_s": round(statistics.median(again), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--budget-replicas", type=int, default=8)
    parser.add_argument("--skip-examples", action="store_true", help="leave out the LR/NN cold starts (TensorFlow)")
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cnet-autoscale-") as tmp:
        # the example models ask for more memory each than the budget below: an agent without one
        with running(Path(tmp) / "plain", {}) as agent:
            if not args.skip_examples:
                report["cold_start"] = cold_starts(agent, args.repeat)
            report["load_step"] = load_step(agent, args.clients, args.delay)
        with running(Path(tmp) / "budget", {"memory_budget": MEMORY * args.budget_replicas}) as agent:
            report["models_per_gb"] = models_per_gb(agent, args.models, args.budget_replicas)
    print(json.dumps(report, indent=2))


@contextlib.contextmanager
def running(workdir: Path, serving: dict[str, Any]) -> Iterator[AgentProcess]:
    agent = AgentProcess(workdir, {"tasks": {"max_concurrent": 2}, "serving": serving})
    (agent.workdir / "scripts").mkdir()
    shutil.copy(SLEEPY, agent.workdir / "scripts" / "sleepy_model.py")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


if __name__ == "__main__":
    main()
