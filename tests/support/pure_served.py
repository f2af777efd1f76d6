"""The standard-library model (tests/support/pure_model.py) trained and served as "pure" on an
agent: what the V2 and request-body tests need before they can send anything."""
from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.agent import AgentProcess

PURE_MODEL = Path(__file__).with_name("pure_model.py")


def serve_pure_model(agent: AgentProcess) -> str:
    """Deploys the model as "pure", waits for its training and for one warm replica; the deploy id
    is returned and kept as agent.model_id."""
    scripts = agent.workdir / "scripts"
    scripts.mkdir(exist_ok=True)
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    deployed = agent.api.post("/api/ml/models", {"name": "pure", "command": sys.executable,
                                                 "script_path": "scripts/pure_model.py", "model_path": "models/p.json"})
    assert deployed.status == 201, deployed.text
    model_id: str = deployed.body["id"]
    assert agent.wait_done(model_id)["status"] == "completed"
    agent.model_id = model_id  # type: ignore[attr-defined]
    serving = agent.api.post(f"/api/ml/models/{model_id}/serve?wait=true", {"replicas": 1})
    assert serving.status == 200, serving.text
    return model_id


@contextlib.contextmanager
def pure_model_agent(agent: AgentProcess) -> Iterator[AgentProcess]:
    """Start `agent` (not started yet), serve the model on it, and stop the agent and its
    tasks' processes afterwards."""
    agent.start()
    try:
        serve_pure_model(agent)
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()
