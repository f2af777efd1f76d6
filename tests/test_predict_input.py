"""An input_data that cannot be a command-line argument (NUL, a lone surrogate, more
bytes than one argument may hold) is a 400 naming input_data before any task exists, not a
201 for a task that then fails to start (or a 502 with ?wait=true). Against a real agent
with a trained standard-library model; the largest input that fits really runs."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnetd.ml.inputs import MAX_ARGUMENT_BYTES
from tests.support.agent import AgentProcess

PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, str]]:
    agent = AgentProcess(tmp_path_factory.mktemp("predict-input")).start()
    try:
        (agent.workdir / "scripts").mkdir()
        shutil.copy(PURE_MODEL, agent.workdir / "scripts" / "pure_model.py")
        deployed = agent.api.post("/api/ml/models", {"name": "pure", "command": sys.executable,
                                                     "script_path": "scripts/pure_model.py", "model_path": "models/p.json"})
        assert deployed.status == 201, deployed.text
        assert agent.wait_done(deployed.body["id"])["status"] == "completed"
        yield agent, deployed.body["id"]
    finally:
        agent.stop()
        agent.kill_task_processes()


def task_ids(agent: AgentProcess) -> set[str]:
    return {t["id"] for t in agent.api.get("/api/tasks").body}


TOO_LONG = "0" * MAX_ARGUMENT_BYTES + "5"
HOSTILE = {
    "NUL": ('{"input_data": "1\\u00002"}', "must not contain NUL"),
    "lone surrogate": ('{"input_data": "\\ud800"}', "lone surrogate"),
    "one byte too many": (json.dumps({"input_data": TOO_LONG}), f"at most {MAX_ARGUMENT_BYTES} fit"),
    "a long list of numbers": (json.dumps({"input_data": [1.5] * 40_000}), f"at most {MAX_ARGUMENT_BYTES} fit"),
    "multi-byte text": (json.dumps({"input_data": "é" * (MAX_ARGUMENT_BYTES // 2 + 1)}), f"at most {MAX_ARGUMENT_BYTES} fit"),
}


@pytest.mark.parametrize("wait", ["false", "true"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_an_input_no_argument_can_hold_is_a_400_and_creates_nothing(trained: tuple[AgentProcess, str],
                                                                     case: str, wait: str) -> None:
    agent, model_id = trained
    body, why = HOSTILE[case]
    before = task_ids(agent)
    reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait={wait}", raw=body.encode())
    assert reply.status == 400, reply.text
    assert reply.body["error"].startswith("input_data") and why in reply.body["error"], reply.body
    assert task_ids(agent) == before


def test_the_largest_input_that_fits_really_runs(trained: tuple[AgentProcess, str]) -> None:
    agent, model_id = trained
    fits = "0" * (MAX_ARGUMENT_BYTES - 1) + "5"  # float() reads it as 5.0
    reply = agent.api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": fits})
    assert reply.status == 200, reply.text[:500]
    assert reply.body["status"] == "completed" and reply.body["prediction"] == pytest.approx(13.0)
