"""Retention of model versions (serving.keep_versions) against a real agent: the oldest ready
versions beyond the bound are retired with an event and their copies removed; the default,
the previous default and served versions are kept even when oldest; a copy shared by a kept
version (same sha256) stays; a retired version is refused with a 409 naming it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import tests.test_versions as tv
from cnetd.config import ConfigError, load_config
from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

KEEP = 2


@pytest.fixture
def ragent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    agent = agent_factory({"serving": {"rollback_window": "1h", "keep_versions": KEEP}})
    shutil.copy(tv.MODEL, agent.workdir / "versioned_model.py")
    (agent.workdir / "models").mkdir()
    return agent.start()


def rows(agent: AgentProcess, name: str) -> dict[int, dict[str, Any]]:
    return {v["version"]: v for v in tv.model(agent, name)["versions"]}


def wait_states(agent: AgentProcess, name: str, states: dict[int, str], timeout: float = 60) -> dict[int, dict[str, Any]]:
    def check() -> dict[int, dict[str, Any]] | None:
        found = rows(agent, name)
        return found if {n: found[n]["state"] for n in states if n in found} == states else None

    return wait_until(check, timeout, f"states {states} of {name}")


def assert_retired_refused(agent: AgentProcess, name: str, version: int, model_id: str) -> None:
    status, text = tv.infer(agent, name, 1.0, version=version)
    assert status == 409 and f"version {version} of {name} is retired" in text and "keep_versions" in text, text
    cold = agent.api.post(f"/api/ml/models/{model_id}/predict", {"input_data": 1})
    assert cold.status == 409 and f"version {version} of {name} is retired" in cold.text, cold.text
    served = agent.api.post(f"/api/ml/models/{model_id}/serve", {"replicas": 1})
    assert served.status == 409 and "retired" in served.text, served.text
    promoted = agent.api.post(f"/api/ml/models/{name}/promote", {"version": version})
    assert promoted.status == 409 and "retired" in promoted.text, promoted.text


def test_keep_versions_retires_the_oldest_and_removes_their_copies(ragent: AgentProcess) -> None:
    agent = ragent
    tv.deploy(agent, tv.body("k", 1, serving={"replicas": 1}))
    tv.wait_default(agent, "k", 1)
    for n in range(2, KEEP + 3):  # KEEP + 2 versions in all, each the default once warm
        tv.deploy(agent, tv.body("k", n))
        tv.wait_default(agent, "k", n)
    # Default 4, previous 3: versions 1 and 2 retired (2 once it is no longer served).
    found = wait_states(agent, "k", {1: "retired", 2: "retired", 3: "ready", 4: "ready"})
    for n in (1, 2):
        assert "serving.keep_versions is 2" in found[n]["reason"], found[n]
        assert found[n]["artifact"] and not Path(found[n]["artifact"]).exists(), found[n]
        assert not Path(found[n]["artifact"]).parent.exists()  # the sha256 directory went with it
    for n in (3, 4):
        assert Path(found[n]["artifact"]).is_file()
    assert found[4]["role"] == "default" and found[3]["role"] == "previous"
    events = [e for e in tv.model(agent, "k")["events"] if e["type"] == "retired"]
    assert sorted(e["version"] for e in events) == [1, 2], events
    assert all("retention" in e["message"] and "keep_versions" in e["message"] for e in events), events
    assert tv.infer(agent, "k", 1.0) == (200, ("4", 4.0))
    assert tv.infer(agent, "k", 1.0, version=3) == (200, ("3", 3.0))
    assert_retired_refused(agent, "k", 1, found[1]["model_id"])
    # Only KEEP + 2 directories were ever made; two remain.
    store = agent.workdir / "state" / "versions"
    assert sorted(e.name for e in store.iterdir() if not e.name.startswith(".")) == sorted(
        found[n]["sha256"] for n in (3, 4))


def test_default_and_previous_kept_when_oldest_and_a_shared_copy_stays(ragent: AgentProcess) -> None:
    agent = ragent
    tv.deploy(agent, tv.body("p", 2, serving={"replicas": 1}))
    tv.wait_default(agent, "p", 1)
    tv.deploy(agent, tv.body("p", 3))
    tv.wait_default(agent, "p", 2)
    back = agent.api.post("/api/ml/models/p/rollback", timeout=120)
    assert back.status == 200 and back.body["default_version"] == 1, back.text  # default 1, previous 2
    tv.deploy(agent, tv.body("p", 2, promote="manual"))  # version 3: the same bytes as version 1
    found = wait_states(agent, "p", {1: "ready", 2: "ready", 3: "ready"})
    assert found[3]["sha256"] == found[1]["sha256"] and found[3]["artifact"] == found[1]["artifact"]
    tv.deploy(agent, tv.body("p", 4, promote="manual"))  # version 4: 4 ready, 2 to keep
    # 1 (default) and 2 (previous) are the oldest, and kept; 4 is the newest: 3 goes.
    found = wait_states(agent, "p", {1: "ready", 2: "ready", 3: "retired", 4: "ready"})
    assert "keep_versions" in found[3]["reason"]
    assert Path(found[1]["artifact"]).is_file()  # shared with version 1, which is kept
    assert tv.infer(agent, "p", 1.0) == (200, ("1", 2.0))
    assert tv.infer(agent, "p", 1.0, version=1) == (200, ("1", 2.0))
    assert_retired_refused(agent, "p", 3, found[3]["model_id"])
    tv.deploy(agent, tv.body("p", 5, promote="manual"))  # version 5: 4 goes, its own copy with it
    found = wait_states(agent, "p", {1: "ready", 2: "ready", 3: "retired", 4: "retired", 5: "ready"})
    assert not Path(found[4]["artifact"]).exists()
    # Promote 5: 1 becomes the previous default and stays although it is the oldest; 2, let go
    # of, is retired once it is no longer served.
    promoted = agent.api.post("/api/ml/models/p/promote", {"version": 5}, timeout=120)
    assert promoted.status == 200, promoted.text
    found = wait_states(agent, "p", {1: "ready", 2: "retired", 5: "ready"})
    assert found[1]["role"] == "previous" and found[5]["role"] == "default"
    assert not Path(found[2]["artifact"]).exists() and Path(found[1]["artifact"]).is_file()
    back = agent.api.post("/api/ml/models/p/rollback", timeout=120)
    assert back.status == 200 and back.body["default_version"] == 1, back.text
    assert tv.infer(agent, "p", 1.0) == (200, ("1", 2.0))
    # A restart changes nothing: the same states, retention at start finds nothing more.
    agent.stop()
    agent.start()
    again = rows(agent, "p")
    assert {n: v["state"] for n, v in again.items()} == {n: v["state"] for n, v in found.items()}
    wait_until(lambda: tv.infer(agent, "p", 1.0) == (200, ("1", 2.0)), 60, "version 1 answering after a restart")
    assert_retired_refused(agent, "p", 4, found[4]["model_id"])


def test_keep_versions_is_checked(tmp_path: Path) -> None:
    def load(value: str) -> Any:
        path = tmp_path / "config.yaml"
        path.write_text(f"serving: {{keep_versions: {value}}}\n")
        return load_config(path, environ={}).serving.keep_versions

    assert load("0") is None and load("null") is None and load("3") == 3
    (tmp_path / "empty.yaml").write_text("{}\n")
    assert load_config(tmp_path / "empty.yaml", environ={}).serving.keep_versions == 5
    for bad in ("-1", "many", "1.5", "true", "10000000"):
        with pytest.raises(ConfigError, match=r"serving\.keep_versions"):
            load(bad)
