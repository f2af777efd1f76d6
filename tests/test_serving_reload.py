"""A served model whose file changes is reloaded by the agent: new workers are started one
replica at a time and take over once ready, the old ones finish their batches and stop, and
no request fails on the way. A file that cannot be loaded leaves the old workers serving,
with the error in the serving JSON. Real agents, real workers."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY, deploy_and_train

PURE_MODEL = Path(__file__).resolve().parent / "support" / "pure_model.py"
MODEL_PATH = "models/pure.json"
# Served from the model file itself, reloaded when it changes (by default a version is served
# from the agent's own copy of its artifact, which never changes: tests/test_versions.py).
IN_PLACE = {"serving": {"version_copies": False}}


def pure_body(name: str, serving: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "model_path": MODEL_PATH, "script_path": "pure_model.py", "command": "python3",
            "args": ["pure_model.py", "train", MODEL_PATH], "serving": serving}


def serving_of(agent: AgentProcess, model_id: str) -> dict[str, Any]:
    reply = agent.api.get(f"/api/ml/models/{model_id}")
    assert reply.status == 200, reply.text
    return reply.body["serving"]  # type: ignore[no-any-return]


def wait_serving(agent: AgentProcess, model_id: str, replicas: int, timeout: float = 60) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        serving = serving_of(agent, model_id)
        return serving if serving and serving["state"] == "serving" and serving["ready_replicas"] >= replicas else None

    return wait_until(ready, timeout, f"{replicas} ready replica(s) of {model_id}")


def predict(agent: AgentProcess, model_id: str, x: float) -> tuple[int, Any]:
    reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": x}, timeout=30)
    return reply.status, reply.body["prediction"] if reply.status == 200 else reply.text


def replace_file(path: Path, text: str) -> None:
    """As a deploy tool would: write aside, rename over the served file."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


def stamp_of(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_mtime_ns, st.st_size]


def serve_tasks(agent: AgentProcess, model_id: str) -> list[dict[str, Any]]:
    reply = agent.api.get(f"/api/tasks?kind=serve&model_id={model_id}")
    assert reply.status == 200, reply.text
    return reply.body  # type: ignore[no-any-return]


@contextmanager
def under_load(agent: AgentProcess, model_id: str, threads: int = 4) -> Iterator[list[tuple[int, float, Any]]]:
    """Predictions sent without pause from `threads` threads while the body runs; every
    (status, x, prediction-or-error) is collected."""
    results: list[tuple[int, float, Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            x = worker + (i % 100) / 10
            status, answer = predict(agent, model_id, x)
            with lock:
                results.append((status, x, answer))
            i += 1

    pool = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(threads)]
    for thread in pool:
        thread.start()
    try:
        wait_until(lambda: len(results) >= 20, 30, "the first answers under load")
        yield results
    finally:
        stop.set()
        for thread in pool:
            thread.join(30)


def answers_with(results: list[tuple[int, float, Any]], line: Callable[[float], float], since: int = 0) -> int:
    return sum(1 for status, x, y in results[since:] if status == 200 and y == pytest.approx(line(x)))


@pytest.fixture
def pure_agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    agent = agent_factory(IN_PLACE)
    shutil.copy(PURE_MODEL, agent.workdir / "pure_model.py")
    (agent.workdir / "models").mkdir()
    return agent.start()


def test_replaced_model_file_is_reloaded_without_a_failed_request(pure_agent: AgentProcess) -> None:
    agent = pure_agent
    model = deploy_and_train(agent, pure_body("pure", {"replicas": 2, "max_batch_size": 8, "cache_size": 100}), timeout=60)
    model_id = model["id"]
    before = wait_serving(agent, model_id, 2)
    model_file = agent.workdir / MODEL_PATH
    assert before["reload_state"] == "idle" and before["reloads"] == 0 and before["reload_error"] is None
    assert before["model_stamp"] == stamp_of(model_file)
    for worker in before["workers"]:
        assert worker["model_stamp"] == stamp_of(model_file) and worker["loaded_at"] and worker["reloads"] == 0
    old_ids = {w["task_id"] for w in before["workers"]}

    def old(x: float) -> float:
        return 2 * x + 3

    def new(x: float) -> float:
        return -4 * x + 1

    with under_load(agent, model_id) as results:
        assert answers_with(results, old) >= 20
        replace_file(model_file, json.dumps({"slope": -4.0, "intercept": 1.0}))
        changed_at = len(results)
        # Within a deadline every answer has the new weights (the cache included).
        wait_until(lambda: answers_with(results, new, since=changed_at) >= 50, 60, "answers with the new weights")
        wait_until(lambda: serving_of(agent, model_id)["reloads"] == 1, 30, "the reload to be complete")
        for task_id in old_ids:  # they answer what they hold, then stop
            ended = agent.wait_status(task_id, {"completed", "failed", "stopped"}, 30)
            assert ended["status"] == "stopped", ended
            events = agent.api.get(f"/api/tasks/{task_id}/events").body
            assert events[-1]["message"].startswith("stopped by the agent: the model file changed"), events
        settled = len(results)
        wait_until(lambda: len(results) >= settled + 100, 30, "100 more answers")
    reloads = re.search(rf'^cnet_serving_worker_reloads_total{{[^}}]*model_id="{model_id}"[^}}]*}} (\S+)$',
                        agent.api.get("/metrics").text, re.M)
    assert reloads is not None and float(reloads.group(1)) == 2  # both replicas

    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    assert all(y == pytest.approx(old(x)) or y == pytest.approx(new(x)) for _, x, y in results)
    assert answers_with(results[-50:], new) == 50, "an old answer long after the reload"

    after = serving_of(agent, model_id)
    assert after["reload_state"] == "idle" and after["reload_error"] is None and after["last_reload_at"]
    assert after["model_stamp"] == stamp_of(model_file) and after["ready_replicas"] == 2
    new_ids = {w["task_id"] for w in after["workers"]}
    assert not new_ids & old_ids
    for worker in after["workers"]:
        assert worker["state"] == "ready" and worker["model_stamp"] == stamp_of(model_file)
        assert worker["reloads"] == 1 and worker["restarts"] == 0 and worker["last_error"] is None
    assert len(serve_tasks(agent, model_id)) == 4  # two, then their two replacements: nothing else

    # The cold path (a prediction task) agrees with the warm one.
    cold = agent.api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 2.5})
    assert cold.status == 201, cold.text
    done = agent.wait_done(cold.body["prediction_task_id"], 60)
    assert done["result"]["prediction"] == pytest.approx(new(2.5))
    assert predict(agent, model_id, 2.5) == (200, pytest.approx(new(2.5)))


def test_unloadable_file_keeps_the_old_model_serving(pure_agent: AgentProcess) -> None:
    agent = pure_agent
    model = deploy_and_train(agent, pure_body("pure", {"replicas": 2, "loader": "script"}), timeout=60)
    model_id = model["id"]
    before = wait_serving(agent, model_id, 2)
    old_ids = {w["task_id"] for w in before["workers"]}
    model_file = agent.workdir / MODEL_PATH

    with under_load(agent, model_id, threads=2) as results:
        replace_file(model_file, "{this is not json")
        broken = wait_until(lambda: (s := serving_of(agent, model_id))["reload_state"] == "failed" and s, 60,
                            "the reload to fail")
        failed_at = len(results)
        wait_until(lambda: len(results) >= failed_at + 50, 30, "50 answers after the failure")
    assert not [r for r in results if r[0] != 200], [r for r in results if r[0] != 200][:5]
    assert all(y == pytest.approx(2 * x + 3) for _, x, y in results)  # the old weights throughout

    error = broken["reload_error"]
    assert error.startswith("reload failed: ") and "could not be loaded" in error, error
    assert "before it was ready" in error, error  # the worker's own account: its script's serve exited
    assert "until the file changes again" in error
    # The roll stopped at the first replica: the other one was not touched.
    assert {w["task_id"] for w in broken["workers"]} == old_ids
    assert [w["last_error"] for w in broken["workers"]].count(error) == 1
    assert all(w["state"] == "ready" and w["reloads"] == 0 for w in broken["workers"])
    (tried,) = [t for t in serve_tasks(agent, model_id) if t["id"] not in old_ids]
    assert tried["status"] == "failed", tried
    assert all(agent.api.get(f"/api/tasks/{t}").body["status"] == "running" for t in old_ids)

    # The broken file is not tried again, and a missing file is no change to act on: for
    # several checks (one a second) no worker is started and the old ones answer.
    def nothing_tried_for(seconds: float) -> None:
        until = time.monotonic() + seconds

        def quiet() -> bool:
            assert len(serve_tasks(agent, model_id)) == 3
            assert predict(agent, model_id, 1.0) == (200, pytest.approx(5.0))
            return time.monotonic() > until

        wait_until(quiet, seconds + 30, f"{seconds}s without a new worker")

    nothing_tried_for(3)
    model_file.unlink()
    nothing_tried_for(3)
    assert serving_of(agent, model_id)["reload_state"] == "failed"

    # Fixed: the next change is tried, and the error goes away.
    replace_file(model_file, json.dumps({"slope": 10.0, "intercept": 0.0}))
    fixed = wait_until(lambda: (s := serving_of(agent, model_id))["reloads"] == 1 and s, 60, "the reload to succeed")
    assert fixed["reload_state"] == "idle" and fixed["reload_error"] is None
    assert all(w["last_error"] is None and w["task_id"] not in old_ids for w in fixed["workers"])
    # Nothing tried the broken file again: the two first, the failed one, two replacements.
    assert len(serve_tasks(agent, model_id)) == 5
    assert predict(agent, model_id, 1.5) == (200, pytest.approx(15.0))


def test_one_replica_retrained_by_a_new_deploy(agent_factory: Callable[..., AgentProcess]) -> None:
    """The usual case: a new deploy retrains into the served model's file (the example
    model, scikit-learn); one replica, so the old worker serves until the new one is ready."""
    agent = agent_factory(IN_PLACE).start()
    body = copy.deepcopy(LINEAR_BODY)
    body["serving"] = {"replicas": 1}
    first = deploy_and_train(agent, body, timeout=90)
    model_id = first["id"]
    (old_worker,) = wait_serving(agent, model_id, 1, timeout=90)["workers"]
    info = first["result"]["model_info"]

    retrain = copy.deepcopy(LINEAR_BODY)  # the same model (name) again: its uid may replace its file
    retrain["args"] = [*retrain["args"][:3], "12"]  # 12 samples: another fit
    with under_load(agent, model_id) as results:
        second = deploy_and_train(agent, retrain, timeout=90)
        new_info = second["result"]["model_info"]
        assert new_info["coefficient"] != pytest.approx(info["coefficient"], abs=1e-6)

        def fitted(x: float) -> float:
            return float(new_info["coefficient"] * x + new_info["intercept"])

        retrained_at = len(results)
        wait_until(lambda: answers_with(results, fitted, since=retrained_at) >= 20, 90, "answers from the new fit")
    assert not [r for r in results if r[0] != 200], [r for r in results if r[0] != 200][:5]

    (new_worker,) = serving_of(agent, model_id)["workers"]
    assert new_worker["task_id"] != old_worker["task_id"] and new_worker["reloads"] == 1
    assert agent.wait_status(old_worker["task_id"], {"completed", "failed", "stopped"}, 30)["status"] == "stopped"


# A model whose serve takes as long to load as its file says.
SLOW_LOADING_SCRIPT = """
import json, sys, time
command, path = sys.argv[1], sys.argv[2]
if command == "train":
    with open(path, "w") as f:
        json.dump({"slope": 2.0, "intercept": 3.0, "load_seconds": 0}, f)
    print(json.dumps({"status": "success"}))
elif command == "serve":
    with open(path) as f:
        model = json.load(f)
    time.sleep(model["load_seconds"])
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        predictions = [model["slope"] * v + model["intercept"] for v in request["instances"]]
        print(json.dumps({"id": request["id"], "predictions": predictions}), flush=True)
"""


def test_the_old_worker_serves_while_the_new_one_loads_and_unserve_stops_both(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory(IN_PLACE)
    (agent.workdir / "slow_loading.py").write_text(SLOW_LOADING_SCRIPT)
    (agent.workdir / "models").mkdir()
    agent.start()
    body = {"name": "slow-loading", "model_path": "models/slow.json", "script_path": "slow_loading.py",
            "command": "python3", "args": ["slow_loading.py", "train", "models/slow.json"],
            "serving": {"replicas": 1, "loader": "script"}}
    model = deploy_and_train(agent, body, timeout=60)
    model_id = model["id"]
    (old,) = wait_serving(agent, model_id, 1)["workers"]

    replace_file(agent.workdir / "models/slow.json", json.dumps({"slope": 7.0, "intercept": 0.0, "load_seconds": 600}))
    loading = wait_until(lambda: (s := serving_of(agent, model_id))["workers"][0]["successor_task_id"] and s, 30,
                         "a replacement worker to be started")
    assert loading["reload_state"] == "reloading" and loading["ready_replicas"] == 1
    successor = loading["workers"][0]["successor_task_id"]
    agent.wait_status(successor, {"running"}, 30)
    for i in range(20):  # the old worker answers meanwhile
        assert predict(agent, model_id, float(i)) == (200, pytest.approx(2.0 * i + 3.0))
    assert serving_of(agent, model_id)["workers"][0]["task_id"] == old["task_id"]

    stopped = agent.api.delete(f"/api/ml/models/{model_id}/serve")
    assert stopped.status == 200, stopped.text
    for task_id in (old["task_id"], successor):
        assert agent.wait_status(task_id, {"completed", "failed", "stopped"}, 30)["status"] == "stopped"
    assert {t["status"] for t in serve_tasks(agent, model_id)} == {"stopped"}
