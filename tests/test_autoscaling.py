"""Autoscaling against a real agent with real workers (short windows and delays): a ramp of
concurrent clients raises the replicas to max_replicas and they fall back to min_replicas
after the delay; a burst panics; min_replicas 0 unloads an idle model and the next request
is answered after a cold start, or gets a 503 with Retry-After past cold_start_timeout; many
models under a memory budget all answer, the node stays within it, and a busy model's
requests never fail because another model needed room."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Reply
from tests.support.waiting import wait_until

SLEEPY = Path(__file__).with_name("support") / "sleepy_model.py"
MEMORY = 64_000_000  # each replica's memory_limit
BUDGET_REPLICAS = 8
FAST = {"target_in_flight": 1, "stable_window": 3, "panic_window": 1, "scale_up_delay": 1, "scale_down_delay": 3,
        "max_batch_size": 1}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path_factory.mktemp("autoscale") / "agent",
                         {"tasks": {"max_concurrent": 4}, "serving": {"memory_budget": MEMORY * BUDGET_REPLICAS}})
    (agent.workdir / "scripts").mkdir()
    shutil.copy(SLEEPY, agent.workdir / "scripts" / "sleepy_model.py")
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def deploy(agent: AgentProcess, name: str, delay: float = 0.2, ready_delay: float = 0.0,
           serving: dict[str, Any] | None = None) -> str:
    body = {"name": name, "command": sys.executable, "script_path": "scripts/sleepy_model.py",
            "model_path": f"models/{name}.json",
            "args": ["scripts/sleepy_model.py", "train", f"models/{name}.json", str(delay), str(ready_delay)],
            "resources": {"cpu_limit": 0.1, "memory_limit": MEMORY}}
    if serving is not None:
        body["serving"] = serving
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    return str(reply.body["id"])


def serving_of(agent: AgentProcess, model_id: str) -> dict[str, Any]:
    body = agent.api.get(f"/api/ml/models/{model_id}").body
    serving: dict[str, Any] = body["serving"]
    return serving


def ask(agent: AgentProcess, model_id: str, x: float = 1.0, timeout: float = 60) -> Reply:
    return agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": x}, timeout=timeout)


def wait_replicas(agent: AgentProcess, model_id: str, ready: int, timeout: float, target: int | None = None) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        s = serving_of(agent, model_id)
        ok = s.get("state") == "serving" and s["ready_replicas"] == ready and len(s["workers"]) == ready
        return s if ok and (target is None or s["replicas"] == target) else None

    return wait_until(reached, timeout, f"{ready} ready replica(s) of {model_id}", interval=0.2)


class Load:
    """Clients that each ask the model again as soon as it answers; every reply is kept."""

    def __init__(self, agent: AgentProcess, model_id: str) -> None:
        self.agent, self.model_id = agent, model_id
        self.stopping = threading.Event()
        self.replies: list[int] = []
        self.threads: list[threading.Thread] = []

    def add(self, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _client(self) -> None:
        while not self.stopping.is_set():
            self.replies.append(ask(self.agent, self.model_id).status)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)


def test_a_ramp_raises_replicas_to_the_bound_and_they_fall_back_to_min(agent: AgentProcess) -> None:
    model_id = deploy(agent, "ramp", delay=0.3,
                      serving={"min_replicas": 1, "max_replicas": 3, **FAST, "panic_window": 3})
    agent.wait_done(model_id)
    wait_replicas(agent, model_id, 1, 60)
    load = Load(agent, model_id)
    try:
        for clients in (1, 1, 2, 2):  # 1, 2, 4, 6 clients, a few seconds apart
            load.add(clients)
            time.sleep(2)  # the ramp's pace (not a synchronisation)
        serving = wait_replicas(agent, model_id, 3, 90, target=3)
        assert serving["max_replicas"] == 3 and serving["min_replicas"] == 1 and serving["in_flight"] >= 1
    finally:
        load.stop()
    assert set(load.replies) == {200}, sorted(set(load.replies))
    stopped_at = time.monotonic()
    serving = wait_replicas(agent, model_id, 1, 60, target=1)
    assert time.monotonic() - stopped_at >= 3  # not before scale_down_delay
    kinds = [d["kind"] for d in serving["scaling"]["decisions"]]
    assert "down" in kinds and ("up" in kinds or "panic" in kinds), serving["scaling"]
    events = agent.api.get(f"/api/tasks/{model_id}/events").body
    scaled = [e for e in events if e["type"] == "scaled"]
    assert any("-> 3" in e["message"] for e in scaled) and any("3 -> " in e["message"] or "2 -> 1" in e["message"]
                                                                for e in scaled), scaled
    metrics = agent.api.get("/metrics").text
    assert f'cnet_serving_scaling_decisions_total{{model="ramp",model_id="{model_id}",kind="down"}}' in metrics
    card = agent.api.get(f"/models/{model_id}/serving", headers={"Accept": "text/html"})
    assert card.status == 200 and "Autoscaling 1–3 replicas" in card.text and "<polyline" in card.text, card.text
    # settings that do not go together: a 400 naming the field, and nothing changed
    for body, field in (({"min_replicas": 5, "max_replicas": 2}, "min_replicas"),
                        ({"replicas": 2, "min_replicas": 1}, "min_replicas"),
                        ({"target_in_flight": 1e12}, "target_in_flight"),
                        ({"scale_down_delay": -1}, "scale_down_delay"),
                        ({"idle_unload_after": "soon"}, "idle_unload_after")):
        refused = agent.api.post(f"/api/ml/models/{model_id}/serve", body)
        assert refused.status == 400 and refused.body["details"]["field"] == field, refused.text
    assert serving_of(agent, model_id)["max_replicas"] == 3


def test_a_short_burst_panics(agent: AgentProcess) -> None:
    model_id = deploy(agent, "burst", delay=0.5,
                      serving={"min_replicas": 1, "max_replicas": 4, **FAST, "stable_window": 30,
                               "scale_up_delay": 30, "scale_down_delay": 2})
    agent.wait_done(model_id)
    wait_replicas(agent, model_id, 1, 60)
    with ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda _: ask(agent, model_id).status, range(24)))
    assert set(replies) == {200}
    serving = wait_until(lambda: (s := serving_of(agent, model_id))["scaling"]["decisions"] and s, 30, "a decision")
    (first, *_) = reversed(serving["scaling"]["decisions"])
    assert first["kind"] == "panic" and first["to"] > 1 and first["reason"].startswith("panic"), serving["scaling"]


def test_min_zero_unloads_when_idle_and_answers_after_a_cold_start(agent: AgentProcess) -> None:
    model_id = deploy(agent, "scale-to-zero", delay=0.0,
                      serving={"min_replicas": 0, "max_replicas": 1, "idle_unload_after": 2, "cold_start_timeout": 60})
    agent.wait_done(model_id)
    first = wait_replicas(agent, model_id, 1, 60)
    worker = first["workers"][0]["task_id"]
    assert ask(agent, model_id).status == 200
    unloaded = wait_replicas(agent, model_id, 0, 30, target=0)
    assert unloaded["scaling"]["decisions"][0]["kind"] == "idle"
    assert agent.wait_done(worker, 30)["status"] == "stopped"
    started = time.monotonic()
    reply = ask(agent, model_id, 2.0)
    assert reply.status == 200, reply.text
    assert reply.body["prediction"] == pytest.approx(7.0)
    assert time.monotonic() - started < 60
    serving = serving_of(agent, model_id)
    assert serving["replicas"] == 1 and serving["scaling"]["last_cold_start_seconds"] > 0
    metrics = agent.api.get("/metrics").text
    assert f'cnet_serving_cold_start_seconds_count{{model="scale-to-zero",model_id="{model_id}"}} 1' in metrics


def test_past_the_cold_start_timeout_a_503_with_retry_after(agent: AgentProcess) -> None:
    model_id = deploy(agent, "slow-load", delay=0.0, ready_delay=6.0,
                      serving={"min_replicas": 0, "max_replicas": 1, "idle_unload_after": 1, "cold_start_timeout": 1})
    agent.wait_done(model_id)
    wait_replicas(agent, model_id, 1, 60)
    wait_replicas(agent, model_id, 0, 30, target=0)
    reply = ask(agent, model_id)
    assert reply.status == 503, reply.text
    assert "cold_start_timeout" in reply.body["error"] and int(reply.headers["Retry-After"]) >= 1
    v2 = agent.api.post("/v2/models/slow-load/infer",
                        {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]})
    assert v2.status in (200, 503) and (v2.status == 200 or "Retry-After" in v2.headers), v2.text


def test_many_models_within_a_memory_budget(agent: AgentProcess) -> None:
    """30 models, min_replicas 0, a budget for 8 replicas: every model answers when asked,
    the serving workers never pass the budget, and a busy model never fails meanwhile."""
    for model_id in [m["id"] for m in agent.api.get("/api/ml/models").body if m.get("serving")]:
        agent.api.delete(f"/api/ml/models/{model_id}/serve")
    n = 30
    lazy = {"min_replicas": 0, "max_replicas": 1, "idle_unload_after": 600, "cold_start_timeout": 120}
    busy_id = deploy(agent, "busy", delay=0.05, serving={**lazy})
    ids = [deploy(agent, f"many-{i}", delay=0.0, serving={**lazy}) for i in range(n)]
    for model_id in [busy_id, *ids]:
        assert agent.wait_done(model_id, 180)["status"] == "completed"
    over: list[int] = []
    stop = threading.Event()

    def watch_budget() -> None:
        while not stop.is_set():
            running = [t for t in agent.api.get("/api/tasks?status=running").body
                       if t["kind"] == "serve" and t["status"] == "running"]
            if len(running) > BUDGET_REPLICAS:
                over.append(len(running))
            stop.wait(0.2)

    watcher = threading.Thread(target=watch_budget, daemon=True)
    watcher.start()
    busy = Load(agent, busy_id)
    busy.add(1)
    try:
        for model_id in ids:
            reply = ask(agent, model_id, 1.0, timeout=150)
            assert reply.status == 200, (model_id, reply.text)
    finally:
        busy.stop()
        stop.set()
        watcher.join(timeout=10)
    assert not over, f"more serving workers than the budget holds: {over}"
    assert busy.replies and set(busy.replies) == {200}, sorted(set(busy.replies))
    unloads = sum(1 for model_id in ids for d in serving_of(agent, model_id)["scaling"]["decisions"]
                  if d["kind"] == "unload")
    assert unloads >= n - BUDGET_REPLICAS
