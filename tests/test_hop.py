"""The agent -> worker hop against a real agent and real built-in-loader workers: a 1 MB FP32
binary request answered through a batching model, concurrent binary and JSON requests
batched and split back per request, the seed's predict with text unchanged, and a hostile
model that writes a malformed frame into the worker's connection: that request fails with a
502 saying what was wrong, and the replica is replaced and answers again."""

from __future__ import annotations

import json
import pickle
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.support.agent import AgentProcess
from tests.support.http import Reply
from tests.support.waiting import wait_until
from tests.test_serving import line_value, wait_ready

PY = sys.executable
FEATURES = 100

# A linear model of FEATURES features, pickled by the sklearn the tests run with.
WIDE_SCRIPT = f'''
import json, pickle, sys
import numpy as np
from sklearn.linear_model import LinearRegression
command, path = sys.argv[1], sys.argv[2]
rng = np.random.RandomState(0)
x = rng.standard_normal((400, {FEATURES}))
model = LinearRegression().fit(x, x @ (np.arange({FEATURES}) / 10) + 0.5)
with open(path, "wb") as f:
    pickle.dump(model, f)
print(json.dumps({{"status": "success"}}))
'''

# A model that, asked about 666 (or 667), writes a frame that is not the protocol straight
# into the worker's connection to the agent before answering: what hostile model code in the
# worker's process can do. Anything else: y = 2x.
EVIL_MODULE = '''
import json, os, pickle, socket, struct, sys

class Evil:
    n_features_in_ = 1

    def predict(self, x):
        first = float(x[0][0])
        if first in (666.0, 667.0):
            garbage = (bytes([9, 0, 0, 0]) + b"\\0" * 12 if first == 666.0
                       else struct.pack("<BBBBIQ", 1, 12, 1, 0, 1, 2**40) + struct.pack("<Q", 2**37))
            for name in os.listdir("/proc/self/fd"):
                try:
                    s = socket.socket(fileno=os.dup(int(name)))
                except OSError:
                    continue
                try:
                    if s.type == socket.SOCK_STREAM and s.family == socket.AF_UNIX:
                        s.getpeername()  # the listener has no peer: only the connection answers
                        s.sendall(garbage)
                except OSError:
                    pass
                finally:
                    s.close()
        return x[:, 0] * 2

if __name__ == "__main__":
    import evil_model
    with open(sys.argv[2], "wb") as f:
        pickle.dump(evil_model.Evil(), f)
    print(json.dumps({"status": "success"}))
'''


def deploy(agent: AgentProcess, name: str, script: str, model_path: str, serving: dict[str, Any]) -> str:
    body = {"name": name, "command": PY, "script_path": script, "model_path": model_path, "working_dir": ".",
            "args": [script, "train", model_path], "env": {"PYTHONPATH": "."}, "serving": serving}
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    done = agent.wait_status(reply.body["id"], {"completed", "failed"}, 120, path="/api/ml/models/")
    assert done["status"] == "completed", done
    wait_ready(agent, done["id"])
    return str(done["id"])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path_factory.mktemp("hop") / "agent", {"tasks": {"max_concurrent": 1}})
    (agent.workdir / "wide_model.py").write_text(WIDE_SCRIPT)
    (agent.workdir / "evil_model.py").write_text(EVIL_MODULE)
    agent.start()
    try:
        agent.wide_id = deploy(agent, "wide", "wide_model.py", "models/wide.pkl",  # type: ignore[attr-defined]
                               {"loader": "builtin", "max_batch_size": 64, "max_delay_ms": 20})
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def wide_model(agent: AgentProcess) -> Any:
    with open(agent.workdir / "models/wide.pkl", "rb") as f:
        return pickle.load(f)  # the test's own file, written by the test's script


def post_binary(agent: AgentProcess, name: str, x: np.ndarray[Any, Any], datatype: str = "FP32",
                binary_output: bool = True) -> Reply:
    header: dict[str, Any] = {"inputs": [{"name": "x", "datatype": datatype, "shape": list(x.shape),
                                          "parameters": {"binary_data_size": x.nbytes}}]}
    if binary_output:
        header["parameters"] = {"binary_data_output": True}
    head = json.dumps(header).encode()
    return agent.api.post(f"/v2/models/{name}/infer", raw=head + x.tobytes(),
                          headers={"Content-Type": "application/octet-stream",
                                   "Inference-Header-Content-Length": str(len(head))})


def binary_predictions(reply: Reply) -> np.ndarray[Any, Any]:
    assert reply.status == 200, reply.text[:300]
    length = int(reply.headers["Inference-Header-Content-Length"])
    output = json.loads(reply.raw[:length])["outputs"][0]
    assert output["datatype"] == "FP64" and output["parameters"]["binary_data_size"] == len(reply.raw) - length
    return np.frombuffer(reply.raw[length:], dtype="<f8").reshape(output["shape"])


def test_a_1mb_fp32_binary_request_is_answered_through_a_batching_model(agent: AgentProcess) -> None:
    x = np.random.RandomState(1).standard_normal((2500, FEATURES)).astype("<f4")
    assert x.nbytes == 1_000_000
    got = binary_predictions(post_binary(agent, "wide", x))
    assert got.shape == (2500,)
    np.testing.assert_allclose(got, wide_model(agent).predict(x.astype("float64")), rtol=1e-12)
    # The same tensor with a JSON answer: the same numbers.
    reply = post_binary(agent, "wide", x[:3], binary_output=False)
    assert reply.status == 200 and reply.body["outputs"][0]["datatype"] == "FP64"
    np.testing.assert_allclose(reply.body["outputs"][0]["data"], got[:3], rtol=1e-12)


def test_concurrent_requests_are_batched_and_split_back_per_request(agent: AgentProcess) -> None:
    model, model_id = wide_model(agent), agent.wide_id  # type: ignore[attr-defined]
    rng = np.random.RandomState(2)
    inputs = [rng.standard_normal((1 + i % 4, FEATURES)).astype("<f4") for i in range(48)]
    before = agent.api.get("/metrics").text
    batches_before = line_value(before, "cnet_inference_batch_size_count", 0, model_id=model_id)
    start = threading.Barrier(len(inputs))

    def one(i: int) -> tuple[int, Any]:
        x = inputs[i]
        start.wait()
        if i % 3 == 0:  # JSON mode among them: batched with each other, not with the arrays
            reply = agent.api.post("/v2/models/wide/infer", {"inputs": [
                {"name": "x", "datatype": "FP64", "shape": list(x.shape), "data": x.astype("float64").ravel().tolist()}]})
            return reply.status, reply.body["outputs"][0]["data"] if reply.status == 200 else reply.text
        reply = post_binary(agent, "wide", x)
        return reply.status, binary_predictions(reply).tolist() if reply.status == 200 else reply.text

    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(one, range(len(inputs))))
    for x, (status, got) in zip(inputs, results, strict=True):
        assert status == 200, got
        np.testing.assert_allclose(got, model.predict(x.astype("float64")), rtol=1e-12)
    after = agent.api.get("/metrics").text
    batches = line_value(after, "cnet_inference_batch_size_count", model_id=model_id) - batches_before
    assert batches < len(inputs), f"{batches} batches for {len(inputs)} requests: nothing was batched"


def test_text_and_bad_input_get_the_same_answers_as_before(agent: AgentProcess) -> None:
    model_id = agent.wide_id  # type: ignore[attr-defined]
    text = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": "你好"})
    assert text.status == 422 and text.body["error"] == 'prediction failed: not a number: "\\u4f60\\u597d"', text.text
    assert text.body["details"]["reason"] == 'not a number: "\\u4f60\\u597d"'
    workers = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]["workers"]
    assert text.body["details"]["served_by"] == workers[0]["task_id"]
    short = agent.api.post("/v2/models/wide/infer", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3],
                                                                  "data": [1, 2, 3]}]})
    assert short.status == 400 and short.body["error"] == "expected 100 features per sample, got 3"
    binary_short = post_binary(agent, "wide", np.zeros((2, 3), dtype="<f4"))
    assert binary_short.status == 400 and binary_short.body["error"] == "expected 100 features per sample, got 3"
    nan = np.zeros((1, FEATURES), dtype="<f8")
    nan[0, 5] = np.nan
    refused = post_binary(agent, "wide", nan, "FP64")
    assert refused.status == 400 and refused.body["error"] == "inputs[0].data[5]: not a finite number: nan"


def test_a_worker_writing_a_malformed_frame_fails_that_request_and_is_replaced(agent: AgentProcess) -> None:
    model_id = deploy(agent, "evil", "evil_model.py", "models/evil.pkl", {"loader": "builtin"})

    def infer(x: float) -> Reply:
        return agent.api.post("/v2/models/evil/infer", {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 1],
                                                                     "data": [x]}]})

    assert infer(4.0).body["outputs"][0]["data"] == [8.0]
    for poison, problem in ((666.0, "unknown frame kind 9"), (667.0, "a frame of 1099511627776 bytes, more than")):
        first = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]["workers"][0]["task_id"]
        bad = infer(poison)
        assert bad.status == 502, bad.text
        assert "a frame that is not the protocol" in bad.body["error"] and problem in bad.body["error"]

        def replaced(first: str = first) -> bool:
            serving = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]
            worker = serving["workers"][0]
            return worker["state"] == "ready" and worker["task_id"] != first

        wait_until(replaced, 60, "a new worker in place of the one that broke the protocol")
        assert infer(5.0).body["outputs"][0]["data"] == [10.0]
        assert agent.api.get(f"/api/tasks/{first}").body["status"] in ("stopped", "failed", "completed")
    # Nothing else was disturbed.
    ok = post_binary(agent, "wide", np.ones((1, FEATURES), dtype="<f4"))
    assert binary_predictions(ok).shape == (1,)

