from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cnetd.store.db import Database
from tests.support.agent import AgentProcess

LINEAR_SCRIPT = Path(__file__).resolve().parents[1] / "examples/ml_models/simple_linear_regression.py"


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Make (unstarted) agents; every one is stopped and its tasks killed afterwards."""
    made: list[AgentProcess] = []

    def make(config: dict[str, Any] | None = None, name: str = "agent", root: Path | None = None,
             **kw: Any) -> AgentProcess:
        """root: where the agent's work dir goes instead of tmp_path (which is 0700)."""
        agent = AgentProcess((root or tmp_path) / name, config, **kw)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.stop()
        agent.kill_task_processes()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A real SQLite store in the test's own directory, open for the test."""
    database = Database(tmp_path / "cnet.db")
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    return agent_factory().start()


from tests.harness.fixtures import cgroup_group, systemd_ns  # noqa: E402,F401  (session fixtures)
from tests.support.etcd import etcd_one, etcd_shared, etcd_three  # noqa: E402,F401  (real etcd members)
from tests.support.no_skip import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401  (CI: no skips)


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example linear regression model, trained once per test module (a joblib file)."""
    path = tmp_path_factory.mktemp("model") / "lr.joblib"
    subprocess.run([sys.executable, str(LINEAR_SCRIPT), "train", str(path), "200"], check=True, capture_output=True)
    return path
