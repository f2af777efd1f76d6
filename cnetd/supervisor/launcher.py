"""Turns a task record into a LaunchSpec and keeps the backends a handle may name."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from cnetd.config import TasksSection
from cnetd.errors import Conflict
from cnetd.security.privilege import (
    EXECUTE, READ, TaskUser, access_problem, drop_privileges_argv, make_dirs_for, private_dir_for,
)
from cnetd.supervisor.base import Handle, LaunchSpec, Limits, Sandbox, SpawnError
from cnetd.supervisor.none import NoneSandbox
from cnetd.tasks.model import Task


def agent_python_bin() -> str | None:
    """The bin/ of the virtualenv the agent runs in, put first on tasks' PATH so that
    "command": "python3" finds the packages installed beside the agent."""
    if sys.prefix != sys.base_prefix:
        return str(Path(sys.prefix) / "bin")
    return None


# The agent's own per-user settings that would point a task at root's files.
ROOT_ONLY_VARIABLES = ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "MAIL", "SUDO_USER",
                       "SUDO_UID", "SUDO_GID", "SUDO_COMMAND", "PYTHONUSERBASE")


def task_environment(
    agent_env: Mapping[str, str], task_env: Mapping[str, str], user: TaskUser | None = None, home: Path | None = None,
) -> dict[str, str]:
    env = dict(agent_env)
    venv_bin = agent_python_bin()
    if venv_bin:
        path = env.get("PATH", os.defpath)
        env["PATH"] = venv_bin + os.pathsep + path if path else venv_bin
    env.pop("VIRTUAL_ENV_PROMPT", None)
    env.setdefault("PYTHONUNBUFFERED", "1")  # so log lines and progress arrive as printed
    if user is not None:
        for name in ROOT_ONLY_VARIABLES:
            env.pop(name, None)
        env.update(HOME=str(home or user.home), USER=user.name, LOGNAME=user.name)
    env.update(task_env)
    return env


def resolve_working_dir(base_dir: Path, working_dir: str) -> Path:
    path = Path(working_dir)
    return path if path.is_absolute() else (base_dir / path)


def resolve_command(command: str, env: Mapping[str, str], cwd: Path, user: TaskUser | None = None) -> str:
    """Absolute path of the program, as the task's PATH and working dir find it."""
    if "/" in command:
        candidate = Path(command) if Path(command).is_absolute() else cwd / command
        if not candidate.exists():
            raise SpawnError(f"spawn failed: {command}: no such file")
        if not os.access(candidate, os.X_OK) or candidate.is_dir():
            raise SpawnError(f"spawn failed: {command}: not executable")
        problem = access_problem(user, candidate, EXECUTE)
        if problem is not None:
            raise SpawnError(f"spawn failed: {problem}")
        return str(candidate)
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise SpawnError(f"spawn failed: {command}: not found on PATH")
    problem = access_problem(user, Path(found), EXECUTE)
    if problem is not None:
        raise SpawnError(f"spawn failed: {command} is {found}, but {problem}")
    return found


class Launcher:
    def __init__(
        self, sandbox: Sandbox, state_dir: Path, base_dir: Path, agent_env: Mapping[str, str],
        settings: TasksSection | None = None, user: TaskUser | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.settings = settings or TasksSection()
        self.base_dir = base_dir
        self.user = user  # None: tasks run as the agent's own user
        self.state_dir = state_dir
        self.logs_dir = state_dir / "logs"
        self.run_dir = state_dir / "run"
        self.tmp_root = state_dir / "tmp"
        for directory in (self.logs_dir, self.run_dir, self.tmp_root):
            directory.mkdir(parents=True, exist_ok=True)
        # Task logs can hold anything a task printed: only the agent reads them (a task
        # gets its log as an already open file descriptor).
        os.chmod(self.logs_dir, 0o700)
        self._agent_env = dict(agent_env)
        self._backends: dict[str, Sandbox] = {sandbox.name: sandbox}
        self.home: Path | None = None
        self.state_problem: str | None = None  # why the task user cannot reach state_dir/run
        if user is not None:
            self._prepare_for(user)

    def _prepare_for(self, user: TaskUser) -> None:
        """Let user reach what it must under the state dir (run/ for worker sockets, lib/
        for the worker script, its home) and nothing else: entering is not listing."""
        mode = stat.S_IMODE(os.stat(self.state_dir).st_mode)
        os.chmod(self.state_dir, (mode & ~0o006) | 0o001)  # others: enter, but neither list nor write
        self.state_problem = access_problem(user, self.state_dir, EXECUTE)
        os.chmod(self.run_dir, 0o711)
        os.chmod(self.tmp_root, 0o711)
        home = Path(user.home)
        if access_problem(user, home, READ | EXECUTE) is not None or not home.is_dir() or home.stat().st_uid != user.uid:
            homes = self.state_dir / "home"
            homes.mkdir(exist_ok=True)
            os.chmod(homes, 0o711)
            home = private_dir_for(user, homes / user.name)
        self.home = home

    @property
    def user_name(self) -> str:
        """Who task processes run as: the task user, else the agent's own user."""
        if self.user is not None:
            return self.user.name
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())

    def environment(self, task_env: Mapping[str, str]) -> dict[str, str]:
        return task_environment(self._agent_env, task_env, self.user, self.home)

    def require_run_dir_reachable(self, purpose: str) -> None:
        if self.state_problem is not None:
            raise Conflict(
                f"{purpose} needs tasks to reach {self.run_dir}, but {self.state_problem}; "
                "put agent.state_dir where that user can enter, or change tasks.run_as"
            )

    def tmp_dir(self, task_id: str) -> Path:
        return self.tmp_root / task_id

    def make_tmp_dir(self, task_id: str) -> Path | None:
        """The task's own TMPDIR: private, counted against its disk_limit, removed when it
        ends. None when the task user could not reach it (tasks then use the system's)."""
        if self.state_problem is not None:
            return None
        return self._task_private_dir(self.tmp_dir(task_id))

    def remove_tmp_dir(self, task_id: str) -> None:
        shutil.rmtree(self.tmp_dir(task_id), ignore_errors=True)

    def remove_tmp_dirs_except(self, running: set[str]) -> list[Path]:
        """Remove the TMPDIRs of tasks that no longer run; return what was removed."""
        removed = []
        for entry in os.scandir(self.tmp_root):
            if entry.is_dir(follow_symlinks=False) and entry.name not in running:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
        return removed

    def private_run_dir(self, name: str) -> Path:
        """A directory under run/ that only the task user (and root) can use."""
        return self._task_private_dir(self.run_dir / name)

    def _task_private_dir(self, path: Path) -> Path:
        if self.user is None:  # tasks run as the agent's own user
            path.mkdir(mode=0o700, exist_ok=True)
            return path
        return private_dir_for(self.user, path)

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
        env = self.environment(task.env)
        program = resolve_command(task.command, env, cwd, self.user)
        if "TMPDIR" not in task.env:
            tmp = self.make_tmp_dir(task.id)
            if tmp is not None:
                env["TMPDIR"] = str(tmp)
        argv = [program, *task.args]
        if self.user is not None:
            argv = [*drop_privileges_argv(self.user), *argv]
            # Only a model's own path, which passed ml.allowed_roots at deploy: the agent
            # (root) must not make directories for the task user anywhere a request names.
            model_path = task.env.get("MODEL_PATH")
            if model_path and task.type == "ml_model" and task.kind in ("train", "run"):
                make_dirs_for(self.user, (cwd / model_path).parent)
        exit_path = self.exit_path(task.id)
        exit_path.unlink(missing_ok=True)
        r = task.resources
        return LaunchSpec(
            task_id=task.id,
            argv=argv,
            env=env,
            working_dir=cwd,
            log_path=Path(task.log_file),
            exit_path=exit_path,
            limits=Limits(cpu_limit=r.cpu_limit, memory_limit=r.memory_limit, disk_limit=r.disk_limit,
                          tasks_max=min(r.max_pids or self.settings.max_pids, self.settings.max_pids)),
        )

    def check_startable(self, command: str, working_dir: str, task_env: Mapping[str, str]) -> None:
        """Raise SpawnError now for what would make the start fail (checked at submit)."""
        cwd = resolve_working_dir(self.base_dir, working_dir)
        if not cwd.is_dir():
            raise SpawnError(f"working_dir {working_dir}: no such directory")
        problem = access_problem(self.user, cwd, EXECUTE)
        if problem is not None:
            raise SpawnError(f"working_dir {working_dir}: {problem}")
        resolve_command(command, self.environment(task_env), cwd, self.user)
