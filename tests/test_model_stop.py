"""Stopping a model stops its warm serving too, from the API and from the UI alike (the rule
lives in ModelService.stop, not in a handler), against a real agent with real workers."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.agent import TERMINAL, AgentProcess
from tests.support.http import Reply
from tests.support.waiting import wait_until

# A model whose training writes its file at once and then keeps going (as a long training
# that saves checkpoints would), so the model is served while its deploy task still runs.
# Its serve echoes the instances back: a worker without any ML import.
STILL_TRAINING = '''
import json, sys, time
command, path = sys.argv[1], sys.argv[2]
if command == "train":
    open(path, "w").write("checkpoint")
    print(json.dumps({"progress": 0.5}), flush=True)
    time.sleep(600)
elif command == "serve":
    print(json.dumps({"ready": True, "n_features": 1}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps({"id": request["id"], "predictions": request["instances"]}), flush=True)
'''
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "same-origin"}
STOP_FORM = re.compile(r'<form method="post" action="([^"]+)"[^>]*hx-confirm="Stop ')


@pytest.fixture
def serving_agent(agent_factory: Any) -> Iterator[AgentProcess]:
    agent: AgentProcess = agent_factory()
    (agent.workdir / "still_training.py").write_text(STILL_TRAINING)
    yield agent.start()


def served_while_training(agent: AgentProcess, name: str) -> tuple[str, list[str]]:
    """Deploy the model, wait for its first checkpoint, serve it: (model id, worker task ids)."""
    reply = agent.api.post("/api/ml/models", {
        "name": name, "model_path": f"models/{name}.ckpt", "script_path": "still_training.py",
        "command": "python3", "args": ["still_training.py", "train", f"models/{name}.ckpt"],
    })
    assert reply.status == 201, reply.text
    model_id = reply.body["id"]
    checkpoint = agent.workdir / "models" / f"{name}.ckpt"
    wait_until(checkpoint.exists, 60, "the training's first checkpoint")
    served = agent.api.post(f"/api/ml/models/{model_id}/serve?wait=true&timeout=60", {})
    assert served.status == 200, served.text
    workers = [w["task_id"] for w in served.body["serving"]["workers"]]
    assert workers and all(agent.api.get(f"/api/tasks/{w}").body["status"] == "running" for w in workers)
    assert agent.api.get(f"/api/ml/models/{model_id}").body["status"] == "running"  # still training
    return model_id, workers


def stop_form_action(agent: AgentProcess, model_id: str) -> str:
    """Where the model page's Stop button posts to (as a browser would find it)."""
    page = agent.api.get(f"/models/{model_id}")
    assert page.status == 200, page.text
    found = STOP_FORM.search(page.text)
    assert found, "the model page shows no Stop button"
    return html.unescape(found.group(1))


def post_form(agent: AgentProcess, path: str, headers: dict[str, str] = FORM) -> Reply:
    return agent.api.post(path, raw=b"", headers=headers)


def wait_stopped(agent: AgentProcess, task_ids: list[str]) -> None:
    def all_ended() -> bool:
        return all(agent.api.get(f"/api/tasks/{t}").body["status"] in TERMINAL for t in task_ids)

    wait_until(all_ended, 30, f"tasks {task_ids} to end")
    assert {agent.api.get(f"/api/tasks/{t}").body["status"] for t in task_ids} == {"stopped"}


def test_stop_on_the_model_page_stops_its_warm_workers(serving_agent: AgentProcess) -> None:
    """The UI's Stop on a model page went to the task stop, which left the model's warm
    workers running and its serving state "serving": a model shown as stopped that still
    answered predictions. It now stops the model as DELETE /api/ml/models/{id} does."""
    agent = serving_agent
    model_id, workers = served_while_training(agent, "ui-stopped")
    action = stop_form_action(agent, model_id)
    reply = post_form(agent, action)
    assert reply.status == 200, reply.text  # the model page, after the redirect
    wait_stopped(agent, [model_id, *workers])
    model = agent.api.get(f"/api/ml/models/{model_id}").body
    assert model["status"] == "stopped" and model["serving"]["state"] == "stopped"
    assert model["serving"]["workers"] == []
    # Nothing answers warm any more: a prediction is a task again.
    answer = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": 1.0})
    assert answer.body.get("prediction_task_id") is not None, answer.text


def test_stop_from_the_api_and_the_ui_leave_the_same_state(serving_agent: AgentProcess) -> None:
    agent = serving_agent
    by_api, api_workers = served_while_training(agent, "api-stopped")
    by_ui, ui_workers = served_while_training(agent, "ui-stopped-too")
    assert agent.api.delete(f"/api/ml/models/{by_api}").status == 200
    assert post_form(agent, stop_form_action(agent, by_ui)).status == 200
    wait_stopped(agent, [by_api, *api_workers, by_ui, *ui_workers])

    def state(model_id: str) -> tuple[str, str]:
        body = agent.api.get(f"/api/ml/models/{model_id}").body
        return body["status"], body["serving"]["state"]

    assert state(by_api) == state(by_ui) == ("stopped", "stopped")


def test_a_cross_site_post_cannot_stop_a_model(serving_agent: AgentProcess) -> None:
    """Attacker: another site's page makes the browser post to the model's stop route."""
    agent = serving_agent
    model_id, workers = served_while_training(agent, "guarded")
    action = stop_form_action(agent, model_id)
    for headers in ({"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"},
                    {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"}):
        reply = post_form(agent, action, headers)
        assert reply.status == 403, reply.text
    assert agent.api.get(f"/api/ml/models/{model_id}").body["serving"]["state"] == "serving"
    assert all(agent.api.get(f"/api/tasks/{t}").body["status"] == "running" for t in [model_id, *workers])
    # An id that is no model is the not-found page, and stops nothing.
    bystander = {"name": "bystander", "command": "python3", "args": ["-c", "import time; time.sleep(600)"]}
    task = agent.api.post("/api/tasks", bystander)
    assert task.status == 201, task.text
    assert post_form(agent, f"/models/{task.body['id']}/stop").status == 404
    assert post_form(agent, "/models/no-such-model/stop").status == 404
    assert agent.api.get(f"/api/tasks/{task.body['id']}").body["status"] in {"pending", "starting", "running"}
