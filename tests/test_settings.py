"""Settings that act, against a real agent: ml.script_path is where a relative script_path
that is not under the working dir is looked up (still confined to the allowed roots, and
the task then names the real path), ml.model_path is a model root tasks can write their
model into, and the original file's ml.engines, ml.default_engine and ml.port_range are
accepted with a one-line warning that they have no effect."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

PY = sys.executable
PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"


def with_search_root(agent_factory: Callable[..., AgentProcess], search_root: str = "scripts",
                     config: dict[str, object] | None = None) -> AgentProcess:
    agent = agent_factory({"ml": {"script_path": search_root}, **(config or {})})
    (agent.workdir / "scripts").mkdir()
    shutil.copy(PURE_MODEL, agent.workdir / "scripts" / "pure_model.py")
    return agent.start()


def test_a_script_not_under_the_working_dir_is_found_in_ml_script_path(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = with_search_root(agent_factory)
    real = os.path.realpath(agent.workdir / "scripts" / "pure_model.py")
    reply = agent.api.post("/api/ml/models", {"name": "found", "command": PY, "script_path": "pure_model.py",
                                              "model_path": "models/found.json"})
    assert reply.status == 201, reply.text
    model = reply.body
    assert model["script_path"] == real and model["args"] == [real, "train", "models/found.json"]
    assert agent.wait_done(model["id"])["status"] == "completed"
    # Given args that name the script are rewritten the same way; others are left alone.
    reply = agent.api.post("/api/ml/models", {"name": "given-args", "command": PY, "script_path": "pure_model.py",
                                              "args": ["pure_model.py", "train", "models/g.json"],
                                              "model_path": "models/g.json"})
    assert reply.status == 201 and reply.body["args"] == [real, "train", "models/g.json"], reply.text
    # Its predictions run the same file.
    predicted = agent.api.post(f"/api/ml/models/{model['id']}/predict?wait=true", {"input_data": 5})
    assert predicted.status == 200 and predicted.body["prediction"] == pytest.approx(13.0), predicted.text
    assert agent.api.get(f"/api/tasks/{predicted.body['prediction_task_id']}").body["args"][0] == real


def test_the_working_dir_comes_first(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = with_search_root(agent_factory)
    shutil.copy(PURE_MODEL, agent.workdir / "pure_model.py")
    reply = agent.api.post("/api/ml/models", {"name": "local", "command": PY, "script_path": "pure_model.py",
                                              "model_path": "models/local.json"})
    assert reply.status == 201 and reply.body["script_path"] == "pure_model.py", reply.text


def test_the_search_root_never_widens_what_may_run(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    """The attacker names scripts the operator's search root leads to outside the allowed roots."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("print('ran')\n")
    agent = with_search_root(agent_factory)
    (agent.workdir / "scripts" / "link.py").symlink_to(outside / "evil.py")
    body = {"name": "x", "command": PY, "model_path": "models/x.json"}
    reply = agent.api.post("/api/ml/models", {**body, "script_path": "link.py"})
    assert reply.status == 400 and reply.body["error"].startswith("script_path"), reply.text
    assert "outside the allowed roots" in reply.body["error"]
    # "../" does not climb out of the search root (here to a file that does exist).
    climb = os.path.relpath(outside / "evil.py", agent.workdir / "scripts")
    reply = agent.api.post("/api/ml/models", {**body, "script_path": climb})
    assert reply.status == 400 and reply.body["error"].startswith("script_path"), reply.text
    assert "ran" not in reply.text
    reply = agent.api.post("/api/ml/models", {**body, "script_path": "missing.py"})
    assert reply.status == 400, reply.text
    assert reply.body["error"] == (f"script_path: missing.py: no such file (relative to working_dir ., "
                                   f"nor in ml.script_path {agent.workdir / 'scripts'})")
    assert agent.api.get("/api/tasks").body == []


def test_a_search_root_outside_the_allowed_roots_is_refused(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(PURE_MODEL, outside / "other_model.py")
    agent = with_search_root(agent_factory, str(outside))
    reply = agent.api.post("/api/ml/models", {"name": "x", "command": PY, "script_path": "other_model.py",
                                              "model_path": "models/x.json"})
    assert reply.status == 400 and "outside the allowed roots" in reply.body["error"], reply.text
    assert agent.api.get("/api/tasks").body == []


def test_ml_model_path_is_a_model_root_tasks_write_their_model_into(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = with_search_root(agent_factory)
    model_file = agent.state_dir / "models" / "beside" / "m.json"  # the default ml.model_path
    reply = agent.api.post("/api/ml/models", {"name": "beside", "command": PY, "script_path": "scripts/pure_model.py",
                                              "model_path": str(model_file)})
    assert reply.status == 201, reply.text
    done = agent.wait_done(reply.body["id"])
    assert done["status"] == "completed", done
    assert model_file.is_file()
    predicted = agent.api.post(f"/api/ml/models/{reply.body['id']}/predict?wait=true", {"input_data": 1})
    assert predicted.status == 200 and predicted.body["prediction"] == pytest.approx(5.0), predicted.text


def test_the_original_keys_that_do_nothing_say_so_at_start(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"ml": {"engines": ["python", "tensorflow"], "default_engine": "python",
                                  "port_range": {"start": 9000, "end": 9100}}}).start()
    text = agent.log_text()
    for key in ("ml.engines", "ml.default_engine", "ml.port_range"):
        lines = [line for line in text.splitlines() if f"{key}: accepted for compatibility, has no effect" in line]
        assert len(lines) == 1, (key, text)
        assert "WARN" in lines[0].upper()
