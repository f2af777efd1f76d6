"""The seed's walk-through script runs green against a real agent."""

from __future__ import annotations

import os
import subprocess

from tests.support.agent import REPO, AgentProcess


def test_demo_script_passes_against_a_running_agent(agent: AgentProcess) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "examples/ml_deployment_demo.sh")],
        cwd=agent.workdir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "AGENT_URL": agent.url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "14.0" in result.stdout


def test_demo_script_fails_when_the_agent_is_down(agent: AgentProcess) -> None:
    url = agent.url
    agent.stop()
    result = subprocess.run(
        ["bash", str(REPO / "examples/ml_deployment_demo.sh")],
        cwd=agent.workdir, capture_output=True, text=True, timeout=60,
        env={**os.environ, "AGENT_URL": url},
    )
    assert result.returncode != 0
