"""The command line: flags, version, and one-line config errors (no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnetd import __version__


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnetd", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_version_and_help() -> None:
    assert cli("--version").stdout.strip() == f"cnet-agent {__version__}"
    assert cli("-version").stdout.strip() == f"cnet-agent {__version__}"
    helped = cli("--help")
    assert helped.returncode == 0 and "-c CONFIG, --config CONFIG" in helped.stdout


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        (None, ["cannot read"]),
        ("agent: [1, 2\n", ["invalid YAML", "line"]),
        ("agent:\n  port: eighty\n", ["agent.port"]),
        ("agent:\n  port: 70000\n", ["agent.port", "65535"]),
        ("tasks:\n  sandbox: docker\n", ["tasks.sandbox", "auto"]),
        ("tasks:\n  timeout: soon\n", ["tasks.timeout"]),
        ("tasks:\n  retention:\n    max_age: soon\n", ["tasks.retention.max_age", "duration"]),
        ("tasks:\n  retention:\n    max_tasks: -5\n", ["tasks.retention.max_tasks", "integer >= 0", "-5"]),
        ("tasks:\n  retention: forever\n", ["tasks.retention", "mapping"]),
        ("logs:\n  max_bytes_per_task: lots\n", ["logs.max_bytes_per_task", "size"]),
    ],
)
def test_config_mistakes_stop_with_one_line(tmp_path: Path, content: str | None, needles: list[str]) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    for flag in ("-config", "--config", "-c"):
        result = cli(flag, str(path))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"cnet-agent: {path}")
        for needle in needles:
            assert needle in lines[0]
        assert "Traceback" not in result.stderr


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("agent:\n  port: 9999\ntasks:\n  max_concurent: 3\n")
    result = cli("check-config", "-config", str(path))
    assert result.returncode == 0, result.stderr
    assert '"port": 9999' in result.stdout
    assert "unknown key 'tasks.max_concurent'" in result.stderr


def test_env_overrides_reach_the_agent(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("agent:\n  port: 9999\n")
    result = subprocess.run(
        [sys.executable, "-m", "cnetd", "check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=60, env={"CNET_PORT": "7777", "CNET_NODE_ID": "n1", "PATH": "/usr/bin:/bin"},
    )
    assert '"port": 7777' in result.stdout and '"node_id": "n1"' in result.stdout


def test_json_log_format_is_honoured(agent_factory) -> None:  # type: ignore[no-untyped-def]
    import json

    agent = agent_factory({"logging": {"format": "json", "level": "debug"}}).start()
    agent.stop()
    entries = [json.loads(line) for line in agent.log_text().splitlines() if line.strip()]
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("starting" in e["message"] for e in entries)


def test_an_explicit_sandbox_that_cannot_work_stops_with_one_line(agent_factory) -> None:  # type: ignore[no-untyped-def]
    import os

    if os.path.exists("/run/systemd/system"):
        pytest.skip("systemd runs here as PID 1: an explicit systemd sandbox would work")
    agent = agent_factory({"tasks": {"sandbox": "systemd"}})
    agent.start(ready=False)
    assert agent.proc is not None and agent.proc.wait(timeout=30) == 1
    lines = [line for line in agent.log_text().splitlines() if line.startswith("cnet-agent:")]
    assert len(lines) == 1 and "tasks.sandbox is systemd, but" in lines[0]
    assert "Traceback" not in agent.log_text()
