"""Warm serving against a real agent with real workers: both example models served and
answering through /predict?wait=true and the V2 protocol, 64 concurrent requests, a worker
killed under load, bad input, the built-in loader, /metrics, and workers outliving an agent
restart."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Reply
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY, NETWORK_BODY, deploy_and_train

PIPELINE_DEPTH = 2  # batches a worker may hold (cnetd.ml.serving.batcher)

# A model whose script cannot serve: it only trains, writing a plain pickled estimator.
PLAIN_SCRIPT = '''
import json, pickle, sys
from sklearn.linear_model import LinearRegression
command, path = sys.argv[1], sys.argv[2]
if command != "train":
    print(json.dumps({"status": "error", "error": "only train"})); sys.exit(2)
model = LinearRegression().fit([[0.0], [1.0], [2.0]], [-1.0, 2.0, 5.0])  # y = 3x - 1
with open(path, "wb") as f:
    pickle.dump(model, f)
print(json.dumps({"status": "success"}))
'''

# A model whose serve sleeps as many seconds as its largest instance, then echoes them.
SLOW_SCRIPT = '''
import json, sys, time
command, path = sys.argv[1], sys.argv[2]
if command == "train":
    open(path, "w").write("slow")
    print(json.dumps({"status": "success"}))
elif command == "serve":
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        time.sleep(max(request["instances"]))
        print(json.dumps({"id": request["id"], "predictions": request["instances"]}), flush=True)
'''


def script_body(name: str, script: str, model_path: str) -> dict[str, Any]:
    return {"name": name, "model_path": model_path, "script_path": script, "command": "python3",
            "args": [script, "train", model_path]}


def wait_ready(agent: AgentProcess, model_id: str, replicas: int = 1, timeout: float = 90) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        serving = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]
        return serving if serving and serving["state"] == "serving" and serving["ready_replicas"] >= replicas else None

    return wait_until(ready, timeout, f"{replicas} ready replica(s) of {model_id}")


def infer(agent: AgentProcess, name: str, data: list[Any], shape: list[int], datatype: str = "FP64",
          version: str | None = None, **extra: Any) -> Reply:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return agent.api.post(path, {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}], **extra})


def line_value(metrics: str, name: str, default: float | None = None, **labels: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"no {name} {labels} in /metrics")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One agent (max_concurrent 1: serving workers must not take the slot) with the linear
    model trained and served by two replicas."""
    agent = AgentProcess(tmp_path_factory.mktemp("serving") / "agent", {"tasks": {"max_concurrent": 1}})
    (agent.workdir / "plain_model.py").write_text(PLAIN_SCRIPT)
    (agent.workdir / "slow_model.py").write_text(SLOW_SCRIPT)
    agent.start()
    try:
        body = copy.deepcopy(LINEAR_BODY)
        body["serving"] = {"replicas": 2, "max_batch_size": 16}
        reply = agent.api.post("/api/ml/models", body)
        assert reply.status == 201, reply.text
        assert reply.body["serving"]["state"] == "awaiting_training"
        done = agent.wait_status(reply.body["id"], {"completed", "failed"}, 60, path="/api/ml/models/")
        assert done["status"] == "completed", done
        info = done["result"]["model_info"]
        wait_ready(agent, done["id"], replicas=2)
        yield {"agent": agent, "id": done["id"], "coef": info["coefficient"], "intercept": info["intercept"]}
    finally:
        agent.stop()
        agent.kill_task_processes()


def expected(served: dict[str, Any], x: float) -> float:
    return served["coef"] * x + served["intercept"]


def test_linear_model_answers_warm(served: dict[str, Any]) -> None:
    agent, model_id = served["agent"], served["id"]
    serving = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]
    assert serving["replicas"] == 2 and serving["max_batch_size"] == 16 and serving["max_delay_ms"] == 2
    assert serving["n_features"] == 1 and len(serving["workers"]) == 2
    workers = [agent.api.get(f"/api/tasks/{w['task_id']}").body for w in serving["workers"]]
    assert all(w["kind"] == "serve" and w["type"] == "ml_model" and w["model_id"] == model_id for w in workers)
    assert all(w["status"] == "running" and w["resources"]["memory_limit"] == 512000000 for w in workers)
    # ml.resource_limits gives them one core: they poll for a lone request's successor (serving.busy_poll_us)
    assert all(w["args"][w["args"].index("--busy-poll-us") + 1] == "1000" for w in workers)

    reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": 5.5})
    assert reply.status == 200, reply.text
    assert reply.body["prediction_task_id"] is None and reply.body["status"] == "completed"
    assert abs(reply.body["prediction"] - 14.0) < 0.2
    assert reply.body["prediction"] == pytest.approx(expected(served, 5.5))
    assert reply.body["result"]["status"] == "success" and reply.body["result"]["prediction"] == reply.body["prediction"]
    assert reply.body["served_by"] in {w["task_id"] for w in serving["workers"]}
    several = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": [1, 2]}).body
    assert several["prediction"] == pytest.approx([expected(served, 1), expected(served, 2)])
    # Without wait the seed's contract holds: a prediction task.
    task = agent.api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 5.5})
    assert task.status == 201 and set(task.body) == {"prediction_task_id", "message"}

    v2 = infer(agent, "linear-regression-model", [[5.5], [0.0]], [2, 1], "FP32", id="req-1")
    assert v2.status == 200, v2.text
    assert v2.body["model_name"] == "linear-regression-model" and v2.body["model_version"] == "1"  # its version
    assert v2.body["id"] == "req-1"
    (out,) = v2.body["outputs"]
    assert out["name"] == "predictions" and out["datatype"] == "FP64" and out["shape"] == [2]
    assert out["data"] == pytest.approx([expected(served, 5.5), expected(served, 0.0)])
    flat = infer(agent, "linear-regression-model", [5.5], [1], "FP64", version=model_id)
    assert flat.status == 200 and flat.body["outputs"][0]["data"] == pytest.approx([expected(served, 5.5)])

    assert agent.api.get("/v2/health/live").body == {"live": True}
    assert agent.api.get("/v2/health/ready").status == 200
    assert agent.api.get("/v2/models/linear-regression-model/ready").body == {"name": "linear-regression-model", "ready": True}
    meta = agent.api.get("/v2/models/linear-regression-model").body
    assert meta["name"] == "linear-regression-model" and meta["versions"] == ["1"]
    assert meta["inputs"][0]["shape"] == [-1, 1] and meta["outputs"][0]["name"] == "predictions"


def test_64_concurrent_requests_all_correct(served: dict[str, Any]) -> None:
    agent, model_id = served["agent"], served["id"]
    start = threading.Barrier(64)

    def one(i: int) -> tuple[int, float, Any]:
        x = i / 4
        start.wait()
        if i % 2:
            reply = infer(agent, "linear-regression-model", [x], [1, 1])
            return reply.status, x, reply.body["outputs"][0]["data"][0] if reply.status == 200 else reply.text
        reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": x})
        return reply.status, x, reply.body["prediction"] if reply.status == 200 else reply.text

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert [r[0] for r in results] == [200] * 64, results
    for _, x, y in results:
        assert y == pytest.approx(expected(served, x)), (x, y)
    metrics = agent.api.get("/metrics").text
    batches = line_value(metrics, "cnet_inference_batch_size_count", model_id=model_id)
    assert batches < line_value(metrics, "cnet_inference_requests_total", model_id=model_id, code="200")


def test_bad_input_gets_a_clear_4xx(served: dict[str, Any]) -> None:
    agent, model_id = served["agent"], served["id"]
    name = "linear-regression-model"
    cases = [
        (infer(agent, "no-such-model", [1.0], [1]), 404, "unknown model"),
        (infer(agent, name, [1.0], [1], version="not-a-version"), 404, "has no version"),
        (infer(agent, name, [1.0, 2.0, 3.0], [2]), 400, "holds 2 values but data has 3"),
        (infer(agent, name, [1.0], [1], "FP128"), 400, "datatype"),
        # BYTES and BOOL reach the model (an echo answers them: tests/test_v2_datatypes.py);
        # this one takes numbers, and its loader says so.
        (infer(agent, name, ["a"], [1], "BYTES"), 400, 'not a number: "a"'),
        (infer(agent, name, [True], [1], "BOOL"), 400, "not a number: true"),
        (infer(agent, name, [1.0, "x"], [2]), 400, 'not a number: "x"'),
        (infer(agent, name, [1.5], [1], "INT32"), 400, "not an integer"),
        # The worker's own message when the model rejects the input: 2 features, it takes 1.
        (infer(agent, name, [1.0, 2.0], [1, 2]), 400, "expected 1 feature per sample, got 2"),
        (agent.api.post(f"/v2/models/{name}/infer", raw=b"{not json"), 400, "not valid JSON"),
        (agent.api.post(f"/v2/models/{name}/infer", {"inputs": []}), 400, "inputs"),
    ]
    for reply, status, text in cases:
        assert reply.status == status, (status, text, reply.text)
        assert text in reply.body["error"], (text, reply.body)
        assert set(reply.body) == {"error"}

    # The seed's response to a model refusing its input, from a warm worker this time.
    bad = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": "not-a-number"})
    assert bad.status == 422 and bad.body["error"].startswith("prediction failed:"), bad.text
    assert "not a number" in bad.body["error"]
    # One bad request in a batch fails alone: the others in that batch still succeed.
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(
            lambda i: infer(agent, name, [1.0, 2.0], [1, 2]) if i == 7 else infer(agent, name, [float(i)], [1]), range(16),
        ))
    assert [r.status for r in replies] == [200] * 7 + [400] + [200] * 8

    for body, field in [({"replicas": 0}, "replicas"), ({"max_batch_size": 1.5}, "max_batch_size"),
                        ({"max_delay_ms": "2"}, "max_delay_ms"), ({"loader": "magic"}, "loader"), ({"bogus": 1}, "bogus")]:
        reply = agent.api.post(f"/api/ml/models/{model_id}/serve", body)
        assert reply.status == 400 and reply.body["details"]["field"] == field, reply.text
    deploy = copy.deepcopy(LINEAR_BODY)
    deploy["serving"] = {"replicas": -1}
    reply = agent.api.post("/api/ml/models", deploy)
    assert reply.status == 400 and reply.body["details"]["field"] == "serving.replicas", reply.text
    assert agent.api.post("/api/ml/models/nope/serve", {}).status == 404


def test_a_killed_worker_loses_no_request_it_had_not_taken(served: dict[str, Any]) -> None:
    agent = served["agent"]
    body = copy.deepcopy(LINEAR_BODY)
    body["name"] = "linear-one-replica"  # another model: a file of its own (the served one's is not its to replace)
    body["model_path"] = "models/linear-one-replica.joblib"
    body["args"] = [body["args"][0], "train", body["model_path"], *body["args"][3:]]
    model = deploy_and_train(agent, body, timeout=60)
    serve = agent.api.post(f"/api/ml/models/{model['id']}/serve?wait=true", {"replicas": 1, "max_batch_size": 8})
    assert serve.status == 200, serve.text
    (victim,) = serve.body["serving"]["workers"]
    info = model["result"]["model_info"]

    stop = threading.Event()
    results: list[tuple[int, float, Any]] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            x = worker + i / 100
            reply = infer(agent, "linear-one-replica", [x], [1])
            with lock:
                results.append((reply.status, x, reply.body))
            i += 1

    with ThreadPoolExecutor(16) as pool:
        for w in range(16):
            pool.submit(load, w)
        wait_until(lambda: len(results) >= 100, 30, "100 answers before the kill")
        os.kill(victim["pid"], signal.SIGKILL)
        replaced = wait_until(
            lambda: next((w for w in agent.api.get(f"/api/ml/models/{model['id']}").body["serving"]["workers"]
                          if w["state"] == "ready" and w["task_id"] != victim["task_id"]), None),
            60, "a new worker to be ready",
        )
        after = len(results)
        wait_until(lambda: len(results) >= after + 100, 30, "100 answers after the restart")
        stop.set()

    lost = [r for r in results if r[0] == 503]
    others = [r for r in results if r[0] not in (200, 503)]
    assert not others, others[:3]
    assert len(lost) <= PIPELINE_DEPTH * 8, len(lost)  # at most what the worker held
    assert all("went away while it held this request" in r[2]["error"] for r in lost)
    for status, x, reply in results:
        if status == 200:
            assert reply["outputs"][0]["data"][0] == pytest.approx(info["coefficient"] * x + info["intercept"])
    assert replaced["restarts"] == 1 and replaced["pid"] != victim["pid"]
    metrics = agent.api.get("/metrics").text
    assert line_value(metrics, "cnet_serving_worker_restarts_total", model_id=model["id"]) == 1
    assert line_value(metrics, "cnet_inference_errors_total", model_id=model["id"], reason="unavailable", default=0) == len(lost)
    dead = agent.api.get(f"/api/tasks/{victim['task_id']}").body
    assert dead["status"] == "failed" and "SIGKILL" in dead["reason"], dead

    # Stopping serving stops the workers (status stopped) and the model is then not served.
    stopped = agent.api.delete(f"/api/ml/models/{model['id']}/serve")
    assert stopped.status == 200 and stopped.body["serving"]["state"] == "stopped", stopped.text
    assert agent.api.get(f"/api/tasks/{replaced['task_id']}").body["status"] == "stopped"
    not_served = infer(agent, "linear-one-replica", [1.0], [1])
    assert not_served.status == 409 and "is not being served" in not_served.body["error"]
    assert agent.api.get("/v2/models/linear-one-replica/ready").status == 503
    assert agent.api.delete(f"/api/ml/models/{model['id']}/serve").status == 409
    # /predict?wait=true falls back to the seed's prediction task.
    waited = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 5.5})
    assert waited.status == 200 and waited.body["prediction_task_id"] is not None


def test_full_queue_is_429_and_a_slow_worker_504(served: dict[str, Any]) -> None:
    agent = served["agent"]
    model = deploy_and_train(agent, script_body("slow", "slow_model.py", "models/slow.txt"), timeout=30)
    reply = agent.api.post(f"/api/ml/models/{model['id']}/serve?wait=true",
                           {"max_queue": 1, "max_batch_size": 1, "max_delay_ms": 0, "timeout_ms": 10_000})
    assert reply.status == 200, reply.text
    start = threading.Barrier(6)

    def one(_: int) -> Reply:
        start.wait()
        return infer(agent, "slow", [0.3], [1])

    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(r.status for r in pool.map(one, range(6)))
    # The worker holds two batches and one request may wait: the rest are turned away.
    assert statuses.count(429) >= 1 and set(statuses) == {200, 429}, statuses
    assert statuses.count(200) <= PIPELINE_DEPTH + 1

    changed = agent.api.post(f"/api/ml/models/{model['id']}/serve", {"timeout_ms": 300})
    assert changed.status == 202 and changed.body["serving"]["timeout_ms"] == 300
    began = time.monotonic()
    late = infer(agent, "slow", [2.0], [1])
    assert late.status == 504 and "did not answer within 0.3s" in late.body["error"], late.text
    assert time.monotonic() - began < 2
    metrics = agent.api.get("/metrics").text
    assert line_value(metrics, "cnet_inference_errors_total", model="slow", reason="queue_full") == statuses.count(429)
    assert line_value(metrics, "cnet_inference_errors_total", model="slow", reason="timeout") == 1


def test_builtin_loader_serves_a_model_without_a_serve_command(served: dict[str, Any]) -> None:
    agent = served["agent"]
    body = script_body("plain", "plain_model.py", "models/plain.pkl")
    body["serving"] = {}
    body["resources"] = {"cpu_limit": 0.5}
    model = deploy_and_train(agent, body, timeout=60)
    serving = wait_ready(agent, model["id"])
    assert serving["workers"][0]["loader"] == "builtin-joblib"
    worker = agent.api.get(f"/api/tasks/{serving['workers'][0]['task_id']}").body
    assert "--busy-poll-us" not in worker["args"]  # half a core: polling would spend its quota
    reply = infer(agent, "plain", [0.0, 2.0, 10.0], [3, 1], "FP32")
    assert reply.status == 200, reply.text
    assert reply.body["outputs"][0]["data"] == pytest.approx([-1.0, 5.0, 29.0])
    rejected = infer(agent, "plain", [1.0, 2.0], [1, 2])
    assert rejected.status == 400 and rejected.body["error"] == "expected 1 feature per sample, got 2"
    # The explicit built-in loader for the example model works the same.
    linear = agent.api.post(f"/api/ml/models/{served['id']}/serve?wait=true", {"loader": "builtin"})
    assert linear.status == 200 and {w["loader"] for w in linear.body["serving"]["workers"]} == {"builtin-joblib"}
    again = infer(agent, "linear-regression-model", [5.5], [1])
    assert again.body["outputs"][0]["data"] == pytest.approx([expected(served, 5.5)])


@pytest.mark.slow
def test_neural_network_served_with_the_tasks_answer(served: dict[str, Any]) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow-cpu is not installed in this venv")
    agent = served["agent"]
    body = copy.deepcopy(NETWORK_BODY)
    body["args"] = [*body["args"][:3], "400", "8"]  # small and quick; the answer need not be good
    model = deploy_and_train(agent, body, timeout=180)
    by_task = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": [1.0, 2.0]})
    assert by_task.status == 200 and by_task.body["prediction_task_id"], by_task.text
    serve = agent.api.post(f"/api/ml/models/{model['id']}/serve?wait=true", {"cache_size": 100})
    assert serve.status == 200, serve.text
    assert serve.body["serving"]["workers"][0]["loader"] == "script"
    warm = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": [1.0, 2.0]})
    assert warm.status == 200 and warm.body["prediction_task_id"] is None, warm.text
    assert warm.body["prediction"] == pytest.approx(by_task.body["prediction"], rel=1e-5)
    v2 = infer(agent, "neural-network-model", [1.0, 2.0, 3.0, 4.0], [2, 2], "FP32")
    assert v2.status == 200 and v2.body["outputs"][0]["shape"] == [2], v2.text
    assert v2.body["outputs"][0]["data"][0] == pytest.approx(by_task.body["prediction"], rel=1e-5)
    bad = infer(agent, "neural-network-model", [1.0, 2.0, 3.0], [1, 3])
    assert bad.status == 400 and bad.body["error"] == "expected 2 features per sample, got 3"
    # The same input again comes from the cache.
    cached = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": [1.0, 2.0]})
    # (A batch of two computes in float32 a little differently from a batch of one.)
    assert cached.body["served_by"] == "cache"
    assert cached.body["prediction"] == pytest.approx(warm.body["prediction"], rel=1e-5)


def test_metrics_show_the_counts(served: dict[str, Any]) -> None:
    agent, model_id = served["agent"], served["id"]
    for i in range(64):
        assert infer(agent, "linear-regression-model", [float(i)], [1]).status == 200
    assert infer(agent, "linear-regression-model", [1.0, 2.0], [1, 2]).status == 400
    reply = agent.api.get("/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = reply.text
    assert line_value(text, "cnet_inference_requests_total", model_id=model_id, code="200") >= 64
    assert line_value(text, "cnet_inference_requests_total", model_id=model_id, code="400") >= 1
    assert line_value(text, "cnet_inference_errors_total", model_id=model_id, reason="bad_input") >= 1
    assert line_value(text, "cnet_inference_request_duration_seconds_count", model_id=model_id) >= 64
    assert line_value(text, "cnet_inference_request_duration_seconds_bucket", model_id=model_id, le="+Inf") >= 64
    assert line_value(text, "cnet_inference_queue_depth", model_id=model_id) == 0
    assert line_value(text, "cnet_serving_replicas", model_id=model_id, state="ready") == 2
    assert line_value(text, "cnet_tasks", status="running") >= 2
    workers = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]["workers"]
    assert line_value(text, "cnet_task_memory_bytes", task_id=workers[0]["task_id"], kind="serve") > 1_000_000
    assert re.search(r'^# TYPE cnet_inference_batch_size histogram$', text, re.M)


def test_workers_outlive_an_agent_restart(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory().start()
    body = copy.deepcopy(LINEAR_BODY)
    body["serving"] = {"replicas": 1}
    model = deploy_and_train(agent, body, timeout=60)
    info = model["result"]["model_info"]
    (before,) = wait_ready(agent, model["id"])["workers"]
    assert before["loader"] == "script"

    # Requests in flight when the agent dies leave their answers in the script's stdout:
    # the next agent must not take them for answers to its own questions.
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                infer(agent, "linear-regression-model", [1.0] * 50, [50])

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(load)
        wait_until(lambda: line_value(agent.api.get("/metrics").text, "cnet_inference_requests_total",
                                      model_id=model["id"], code="200") >= 20, 30, "load on the worker")
        agent.kill()  # SIGKILL: the worker is not the agent's child and holds no pipe of it
        stop.set()
    agent.start()

    (after,) = wait_ready(agent, model["id"], timeout=30)["workers"]
    assert (after["task_id"], after["pid"], after["restarts"]) == (before["task_id"], before["pid"], 0)
    for i in range(50):
        reply = infer(agent, "linear-regression-model", [float(i)], [1])
        assert reply.status == 200, reply.text
        assert reply.body["outputs"][0]["data"] == pytest.approx([info["coefficient"] * i + info["intercept"]])
    events = [e["type"] for e in agent.api.get(f"/api/tasks/{after['task_id']}/events").body]
    assert events == ["created", "starting", "started", "recovered"]
