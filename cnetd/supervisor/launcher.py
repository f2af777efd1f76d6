"""Turns a task record into a LaunchSpec and keeps the backends a handle may name."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from cnetd.config import TasksSection
from cnetd.supervisor.base import Handle, LaunchSpec, Limits, Sandbox, SpawnError
from cnetd.supervisor.none import NoneSandbox
from cnetd.tasks.model import Task


def agent_python_bin() -> str | None:
    """The bin/ of the virtualenv the agent runs in, put first on tasks' PATH so that
    "command": "python3" finds the packages installed beside the agent."""
    if sys.prefix != sys.base_prefix:
        return str(Path(sys.prefix) / "bin")
    return None


def task_environment(agent_env: Mapping[str, str], task_env: Mapping[str, str]) -> dict[str, str]:
    env = dict(agent_env)
    venv_bin = agent_python_bin()
    if venv_bin:
        path = env.get("PATH", os.defpath)
        env["PATH"] = venv_bin + os.pathsep + path if path else venv_bin
    env.pop("VIRTUAL_ENV_PROMPT", None)
    env.setdefault("PYTHONUNBUFFERED", "1")  # so log lines and progress arrive as printed
    env.update(task_env)
    return env


def resolve_working_dir(base_dir: Path, working_dir: str) -> Path:
    path = Path(working_dir)
    return path if path.is_absolute() else (base_dir / path)


def resolve_command(command: str, env: Mapping[str, str], cwd: Path) -> str:
    """Absolute path of the program, as the task's PATH and working dir find it."""
    if "/" in command:
        candidate = Path(command) if Path(command).is_absolute() else cwd / command
        if not candidate.exists():
            raise SpawnError(f"spawn failed: {command}: no such file")
        if not os.access(candidate, os.X_OK) or candidate.is_dir():
            raise SpawnError(f"spawn failed: {command}: not executable")
        return str(candidate)
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise SpawnError(f"spawn failed: {command}: not found on PATH")
    return found


class Launcher:
    def __init__(
        self, sandbox: Sandbox, state_dir: Path, base_dir: Path, agent_env: Mapping[str, str],
        settings: TasksSection | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.settings = settings or TasksSection()
        self.base_dir = base_dir
        self.logs_dir = state_dir / "logs"
        self.run_dir = state_dir / "run"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._agent_env = dict(agent_env)
        self._backends: dict[str, Sandbox] = {sandbox.name: sandbox}

    def log_path(self, task_id: str) -> Path:
        return self.logs_dir / f"{task_id}.log"

    def exit_path(self, task_id: str) -> Path:
        return self.run_dir / f"{task_id}.exit"

    def started_backend(self, name: str) -> Sandbox | None:
        """The backend of that name if this agent has one in use, else None."""
        return self._backends.get(name)

    def backend_for(self, handle: Handle) -> Sandbox:
        """The backend that started a handle (after a restart it may differ from today's)."""
        backend = self._backends.get(handle.backend)
        if backend is None:
            backend = self._make_backend(handle.backend)
            self._backends[handle.backend] = backend
        return backend

    def _make_backend(self, name: str) -> Sandbox:
        if name == "none":
            return NoneSandbox()
        from cnetd.supervisor import select

        return select.backend_by_name(name, self.settings.cgroup_group, self.settings.slice)

    def spec_for(self, task: Task) -> LaunchSpec:
        cwd = resolve_working_dir(self.base_dir, task.working_dir)
        if not cwd.is_dir():
            raise SpawnError(f"spawn failed: working_dir {task.working_dir}: no such directory")
        env = task_environment(self._agent_env, task.env)
        program = resolve_command(task.command, env, cwd)
        exit_path = self.exit_path(task.id)
        exit_path.unlink(missing_ok=True)
        r = task.resources
        return LaunchSpec(
            task_id=task.id,
            argv=[program, *task.args],
            env=env,
            working_dir=cwd,
            log_path=Path(task.log_file),
            exit_path=exit_path,
            limits=Limits(cpu_limit=r.cpu_limit, memory_limit=r.memory_limit, disk_limit=r.disk_limit),
        )

    def check_startable(self, command: str, working_dir: str, task_env: Mapping[str, str]) -> None:
        """Raise SpawnError now for what would make the start fail (checked at submit)."""
        cwd = resolve_working_dir(self.base_dir, working_dir)
        if not cwd.is_dir():
            raise SpawnError(f"working_dir {working_dir}: no such directory")
        resolve_command(command, task_environment(self._agent_env, task_env), cwd)
