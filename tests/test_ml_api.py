"""The seed document's ML walk-through, with its bodies verbatim, against a real agent."""

from __future__ import annotations

import copy

import pytest

from tests.support.agent import AgentProcess

LINEAR_BODY = {
    "name": "linear-regression-model",
    "model_type": "linear_regression",
    "model_path": "models/linear_regression_model.joblib",
    "script_path": "examples/ml_models/simple_linear_regression.py",
    "command": "python3",
    "args": ["examples/ml_models/simple_linear_regression.py", "train", "models/linear_regression_model.joblib", "1000"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000},
}

NETWORK_BODY = {
    "name": "neural-network-model",
    "model_type": "neural_network",
    "model_path": "models/neural_network_model.h5",
    "script_path": "examples/ml_models/neural_network.py",
    "command": "python3",
    "args": ["examples/ml_models/neural_network.py", "train", "models/neural_network_model.h5", "1000", "50"],
    "working_dir": ".",
    "env": {"PYTHONPATH": "examples/ml_models"},
    "resources": {"cpu_limit": 2.0, "memory_limit": 1024000000, "disk_limit": 2000000000},
}


def deploy_and_train(agent: AgentProcess, body: dict[str, object], timeout: float = 180) -> dict[str, object]:
    reply = agent.api.post("/api/ml/models", copy.deepcopy(body))
    assert reply.status == 201, reply.text
    model = reply.body
    done = agent.wait_status(model["id"], {"completed", "failed", "stopped"}, timeout, path="/api/ml/models/")
    assert done["status"] == "completed", (done["reason"], agent.api.get(f"/api/ml/models/{model['id']}/logs").body)
    return done


def test_linear_regression_walkthrough(agent: AgentProcess) -> None:
    reply = agent.api.post("/api/ml/models", copy.deepcopy(LINEAR_BODY))
    assert reply.status == 201, reply.text
    model = reply.body
    # The list item has the seed's shape, env with MODEL_PATH and MODEL_TYPE added.
    assert model["type"] == "ml_model" and model["kind"] == "train"
    assert model["env"] == {
        "PYTHONPATH": "examples/ml_models",
        "MODEL_PATH": "models/linear_regression_model.joblib",
        "MODEL_TYPE": "linear_regression",
    }
    # The seed's three limits as given; gpu_limit filled in from ml.resource_limits.
    assert model["resources"] == {"cpu_limit": 1.0, "memory_limit": 512000000, "disk_limit": 1000000000, "gpu_limit": 0}
    assert model["args"] == LINEAR_BODY["args"] and model["working_dir"] == "."
    listed = agent.api.get("/api/ml/models").body
    assert [m["id"] for m in listed] == [model["id"]]

    done = agent.wait_status(model["id"], {"completed", "failed"}, 120, path="/api/ml/models/")
    assert done["status"] == "completed", done
    assert done["result"]["status"] == "success"
    assert done["progress"] == 1.0
    assert (agent.workdir / "models/linear_regression_model.joblib").exists()

    logs = agent.api.get(f"/api/ml/models/{model['id']}/logs?lines=100")
    assert logs.status == 200 and isinstance(logs.body, list) and logs.body
    assert all(isinstance(line, str) for line in logs.body)

    predicted = agent.api.post(f"/api/ml/models/{model['id']}/predict", {"input_data": 5.5})
    assert predicted.status == 201, predicted.text
    assert set(predicted.body) == {"prediction_task_id", "message"}
    task = agent.wait_done(predicted.body["prediction_task_id"])
    assert task["status"] == "completed" and task["kind"] == "predict" and task["model_id"] == model["id"]
    assert task["args"][1:] == ["predict", "models/linear_regression_model.joblib", "5.5"]
    assert abs(task["result"]["prediction"] - 14.0) < 0.2

    waited = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 5.5})
    assert waited.status == 200, waited.text
    assert abs(waited.body["prediction"] - 14.0) < 0.2
    assert waited.body["result"]["status"] == "success"

    bad = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": "not-a-number"})
    assert bad.status == 422 and bad.body["error"].startswith("prediction failed:")

    # The model list holds models, not their prediction tasks.
    assert [m["id"] for m in agent.api.get("/api/ml/models").body] == [model["id"]]
    assert len(agent.api.get("/api/tasks?kind=predict").body) == 3


def test_predict_before_the_model_file_exists_is_a_conflict(agent: AgentProcess) -> None:
    body = copy.deepcopy(LINEAR_BODY)
    body["command"] = "sleep"
    body["args"] = ["30"]
    model = agent.api.post("/api/ml/models", body).body
    reply = agent.api.post(f"/api/ml/models/{model['id']}/predict", {"input_data": 5.5})
    assert reply.status == 409 and "no model file yet" in reply.body["error"]
    stopped = agent.api.delete(f"/api/ml/models/{model['id']}")
    assert stopped.status == 200 and stopped.body["status"] == "stopped"


def test_model_defaults_come_from_ml_resource_limits(agent_factory) -> None:  # type: ignore[no-untyped-def]
    agent = agent_factory({"ml": {"resource_limits": {"cpu_limit": 0.5, "memory_limit": "256MiB"}}}).start()
    body = {k: v for k, v in LINEAR_BODY.items() if k != "resources"}
    model = agent.api.post("/api/ml/models", body).body
    assert model["resources"]["cpu_limit"] == 0.5 and model["resources"]["memory_limit"] == 256 * 1024 * 1024
    assert model["resources"]["disk_limit"] == 1073741824


@pytest.mark.slow
def test_neural_network_walkthrough(agent: AgentProcess) -> None:
    pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed in this venv")
    done = deploy_and_train(agent, NETWORK_BODY, timeout=300)
    assert done["result"]["status"] == "success"
    assert done["progress"] == 1.0
    waited = agent.api.post(f"/api/ml/models/{done['id']}/predict?wait=true", {"input_data": [1.0, 2.0]})
    assert waited.status == 200, waited.text
    assert waited.body["result"]["status"] == "success"
    assert isinstance(waited.body["prediction"], float)
    predict_task = agent.api.get(f"/api/tasks/{waited.body['prediction_task_id']}").body
    assert predict_task["args"][-1] == "1.0,2.0"
