"""Turns a task record into a LaunchSpec and keeps the backends a handle may name.

A launch has two halves. The root half (the backend's cgroup join or systemd-run, the exit
shim, enter.py) runs with ROOT_ENV and absolute paths only; the task half gets its
environment, built here from an allow-list, only at enter.py's final exec, after the switch
to the task's own user. The program is the absolute path resolved at submit with the
agent's PATH (Task.program): a request's PATH never chooses what runs.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from cnetd.config import GpusSection, TasksSection
from cnetd.gpus.devices import GPU_ENV, GpuGrant
from cnetd.gpus.monitor import GpuMonitor
from cnetd.security.identity import Identities, write_account_files
from cnetd.security.isolation import ROOT_ENV, Isolation
from cnetd.security.modeldirs import ModelDirError, ensure_model_dir
from cnetd.security.privilege import EXECUTE, TaskUser, access_problem, private_dir_for
from cnetd.supervisor.base import Handle, LaunchSpec, Limits, Sandbox, SpawnError
from cnetd.supervisor.none import NoneSandbox
from cnetd.tasks.model import Task

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
# Taken from the agent's environment into every task's, with PATH (see default_task_path);
# nothing else is (never CNET_*, a token, or anything else the agent was configured with).
INHERITED = frozenset({"LANG", "LANGUAGE", "TZ"})
TASK_UMASK = 0o027  # a model's files are its own (its group is its own too)
BUILD_UMASK = 0o022  # an environment's files are for every task that runs in it
ENV_KEY = re.compile(r"^[0-9a-f]{24}$")
ENV_READY_MARKER = ".cnet-ready"  # written by the agent once it has sealed a build (cnetd.ml.envs)


def agent_python_bin() -> str | None:
    """The bin/ of the virtualenv the agent runs in, put first on tasks' PATH so that
    "command": "python3" finds the packages installed beside the agent."""
    if sys.prefix != sys.base_prefix:
        return str(Path(sys.prefix) / "bin")
    return None


def default_task_path(agent_env: Mapping[str, str] | None = None) -> str:
    """The PATH every task starts with and commands are resolved with: the agent's venv
    bin/, then the agent's own PATH (the operator's, never a request's). A request's env
    may set another PATH for what the task itself runs."""
    path = (os.environ if agent_env is None else agent_env).get("PATH") or SYSTEM_PATH
    venv_bin = agent_python_bin()
    return f"{venv_bin}:{path}" if venv_bin else path


def task_environment(agent_env: Mapping[str, str], task_env: Mapping[str, str],
                     own: Mapping[str, str] | None = None) -> dict[str, str]:
    """A task's complete environment: the allow-listed locale variables of the agent, the
    default PATH, what the agent sets for the task (HOME, USER, TMPDIR, ...), then the
    request's own variables."""
    env = {k: v for k, v in agent_env.items() if k in INHERITED or k.startswith("LC_")}
    env["PATH"] = default_task_path(agent_env)
    env["PYTHONUNBUFFERED"] = "1"  # so log lines and progress arrive as printed
    env.update(own or {})
    env.update(task_env)
    return env


def resolve_working_dir(base_dir: Path, working_dir: str) -> Path:
    path = Path(working_dir)
    return path if path.is_absolute() else (base_dir / path)


def resolve_program(command: str, cwd: Path) -> str:
    """Absolute path of the program, found with the agent's default task PATH (a path with
    a slash is taken relative to the working dir)."""
    if "/" in command:
        candidate = Path(command) if Path(command).is_absolute() else cwd / command
        if not candidate.exists():
            raise SpawnError(f"spawn failed: {command}: no such file")
        if not os.access(candidate, os.X_OK) or candidate.is_dir():
            raise SpawnError(f"spawn failed: {command}: not executable")
        return os.path.abspath(candidate)
    found = shutil.which(command, path=default_task_path())
    if found is None:
        raise SpawnError(f"spawn failed: {command}: not found on PATH ({default_task_path()})")
    return found


def model_dir_of(cwd: Path, model_path: str) -> Path:
    """The directory of a model's file, absolute and normalised but not resolved (the
    model-dir walk refuses symlinks below its root instead)."""
    return Path(os.path.normpath(cwd / model_path)).parent


class TaskPaths:
    """Where a task's files live under the state dir: its log, its run-dir files (exit code,
    start error, account files, launch spec) and its TMPDIR."""

    RUN_SUFFIXES: tuple[str, ...] = (".exit", ".err", ".passwd", ".group", ".launch.json")

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.logs_dir = state_dir / "logs"
        self.run_dir = state_dir / "run"
        self.tmp_root = state_dir / "tmp"
        self.envs_root = state_dir / "envs"  # Python environments (cnetd.ml.envs), one dir per key
        for directory in (self.logs_dir, self.run_dir, self.tmp_root, self.envs_root):
            directory.mkdir(parents=True, exist_ok=True)

    def tmp_dir(self, task_id: str) -> Path:
        return self.tmp_root / task_id

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

    def log_path(self, task_id: str) -> Path:
        return self.logs_dir / f"{task_id}.log"

    def exit_path(self, task_id: str) -> Path:
        return self.run_dir / f"{task_id}.exit"

    def error_path(self, task_id: str) -> Path:
        """Where enter.py writes why it could not start the task."""
        return self.run_dir / f"{task_id}.err"

    def run_files(self, task_id: str) -> list[Path]:
        """A task's files in the run dir: exit code, start error, account files, launch spec."""
        return [self.run_dir / f"{task_id}{suffix}" for suffix in self.RUN_SUFFIXES]

    def forget_files(self, task_id: str) -> None:
        """The run dir's files of an ended task."""
        for path in self.run_files(task_id):
            path.unlink(missing_ok=True)


class Launcher(TaskPaths):
    def __init__(
        self, sandbox: Sandbox, state_dir: Path, base_dir: Path, agent_env: Mapping[str, str],
        settings: TasksSection, identities: Identities, isolation: Isolation, gpus: GpuMonitor | None = None,
    ) -> None:
        super().__init__(state_dir)
        self.gpus = gpus if gpus is not None else GpuMonitor(GpusSection(enabled=False))
        self.sandbox = sandbox
        self.settings = settings
        self.base_dir = base_dir
        self.identities = identities
        self.isolation = isolation
        # model id -> the agent's copy of its version's artifact (cnetd.ml.versions), if any
        self.version_copy_of: Callable[[str], Path | None] | None = None
        # Task logs can hold anything a task printed: only the agent reads them (a task
        # gets its log as an already open file descriptor). The run dir holds launch specs
        # (a task's environment) and exit files; tasks reach their socket dirs through
        # their namespace, or by name where namespaces are off.
        os.chmod(self.logs_dir, 0o700)
        os.chmod(self.run_dir, 0o711)
        os.chmod(self.tmp_root, 0o711)
        os.chmod(self.envs_root, 0o711)
        os.chmod(state_dir, 0o711)
        self._agent_env = dict(agent_env)
        self._backends: dict[str, Sandbox] = {sandbox.name: sandbox}
        isolation.prepare()

    # ---- who runs a task -------------------------------------------------------------------

    def user_for(self, task: Task) -> TaskUser | None:
        return self.identities.user(task.uid)

    def user_name(self, task: Task) -> str:
        """Who the task's processes run as, for its record and events."""
        user = self.user_for(task)
        if user is not None:
            return user.name
        try:
            return pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            return str(os.geteuid())

    def socket_dir(self, name: str, gid: int | None) -> Path:
        """A serving worker's socket directory: root's, enterable and writable by the
        model's group only, so the worker can bind there, no other task can enter, and the
        worker cannot swap the directory itself."""
        path = self.run_dir / name
        path.mkdir(mode=0o700, exist_ok=True)
        if gid is not None:
            os.chown(path, 0, gid)
            os.chmod(path, 0o730)
        return path

    # ---- backends ----------------------------------------------------------------------------

    def started_backend(self, name: str) -> Sandbox | None:
        """The backend of that name if this agent has one in use, else None."""
        return self._backends.get(name)

    def backends_to_sweep(self) -> list[Sandbox]:
        """Every backend in use (the one tasks start in, and each one a recovered handle
        named), then `none`: its sweep finds this agent's exit shims by their exit files,
        whichever backend started them, so it catches what the others could not."""
        backends = [b for b in self._backends.values() if b.name != "none"]
        return [*backends, self._backends.get("none") or NoneSandbox()]

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

    # ---- the launch --------------------------------------------------------------------------

    def working_dir(self, task_working_dir: str) -> Path:
        return Path(os.path.realpath(resolve_working_dir(self.base_dir, task_working_dir)))

    def _confined_working_dir(self, task: Task) -> Path:
        """The working dir, resolved and checked again at start: a symlink swapped in since
        the submit cannot take the task outside the allowed roots."""
        cwd = self.working_dir(task.working_dir)
        if not cwd.is_dir():
            raise SpawnError(f"spawn failed: working_dir {task.working_dir}: no such directory")
        roots = self.isolation.allowed_roots
        if roots and not any(cwd == r or r in cwd.parents for r in roots):
            raise SpawnError(f"spawn failed: working_dir {task.working_dir} now resolves to {cwd}, outside the allowed roots")
        return cwd

    def model_dir(self, task: Task, cwd: Path) -> Path | None:
        """The model's own directory (ML tasks): made ready for its uid, symlinks refused."""
        model_path = task.env.get("MODEL_PATH")
        if task.type != "ml_model" or not model_path:
            return None
        directory = model_dir_of(cwd, model_path)
        try:
            return ensure_model_dir(directory, self.isolation.model_roots, task.uid, task.uid)
        except ModelDirError as exc:
            raise SpawnError(f"spawn failed: model_path: {exc}") from None

    def _worker_socket_dir(self, task: Task) -> Path | None:
        if task.kind != "serve" or "--socket" not in task.args:
            return None
        index = task.args.index("--socket") + 1
        if index >= len(task.args):
            return None
        directory = Path(os.path.realpath(Path(task.args[index]).parent))
        return directory if directory.parent == Path(os.path.realpath(self.run_dir)) else None

    def environment_dir(self, key: str) -> Path:
        if not ENV_KEY.match(key):
            raise SpawnError(f"spawn failed: {key!r} is not an environment key")
        return self.envs_root / key

    def _fresh_build_dir(self, task: Task) -> Path:
        """An environment build's directory: empty and its user's, whatever an earlier try of
        the same key left there (nothing half-built is ever built upon)."""
        directory = self.environment_dir(task.environment or "")
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o755)
        if task.uid is not None and os.geteuid() == 0:
            user = self.user_for(task)
            os.chown(directory, task.uid, user.gid if user is not None else task.uid)
        return directory

    def _environment(self, task: Task, cwd: Path) -> tuple[Path, str] | None:
        """The ready environment a task runs in, and its program found with the environment's
        bin/ first (a command with a slash is the one checked at submit)."""
        if task.environment is None or task.kind == "env":
            return None
        directory = self.environment_dir(task.environment)
        if not (directory / ENV_READY_MARKER).is_file():
            raise SpawnError(f"spawn failed: its environment {task.environment} is not built")
        program = task.program or resolve_program(task.command, cwd)
        if "/" not in task.command:
            found = shutil.which(task.command, path=f"{directory / 'bin'}:{default_task_path()}")
            if found is None:
                raise SpawnError(f"spawn failed: {task.command}: not found in its environment or on PATH")
            program = found
        return directory, program

    def _version_copy_dirs(self, task: Task) -> list[Path]:
        """A serving worker or prediction task of a model version reads the agent's copy of
        its artifact (cnetd.ml.versions.artifacts): that copy's directory, bound back
        read-only; only the copy of the task's own model, and only when its args name it."""
        if task.kind not in ("serve", "predict") or task.model_id is None or self.version_copy_of is None:
            return []
        copy = self.version_copy_of(task.model_id)
        if copy is None or str(copy) not in task.args:
            return []
        return [copy.parent]

    def spec_for(self, task: Task, grant: GpuGrant | None = None) -> LaunchSpec:
        """grant: the task's GPUs on a node that has GPUs (None: a node without GPUs, where
        neither its CUDA variables nor its device nodes are touched)."""
        building = self._fresh_build_dir(task) if task.kind == "env" else None
        cwd = building or self._confined_working_dir(task)
        user = self.user_for(task)
        program = task.program or resolve_program(task.command, cwd)
        environment = self._environment(task, cwd)
        if environment is not None:
            program = environment[1]
        model_dir = self.model_dir(task, cwd)
        tmp = self.tmp_dir(task.id)
        own: dict[str, str] = {}
        if user is not None:
            private_dir_for(user, tmp)
            home = self.identities.make_home(user)
            own.update(HOME=str(home), USER=user.name, LOGNAME=user.name)
        else:
            tmp.mkdir(mode=0o700, exist_ok=True)
        own["TMPDIR"] = str(tmp)
        if environment is not None:
            env_bin = str(environment[0] / "bin")
            own.update(VIRTUAL_ENV=str(environment[0]), PATH=f"{env_bin}:{default_task_path(self._agent_env)}")
        env = task_environment(self._agent_env, task.env, own)
        if grant is not None:
            for name in GPU_ENV:  # the request's own values never stand: only what the agent gave
                env.pop(name, None)
            env.update(grant.env())
        spec_path = self.run_dir / f"{task.id}.launch.json"
        namespace = None
        if user is not None and self.isolation.namespaces:
            accounts = None
            if self.identities.mode == "dynamic":
                accounts = write_account_files(user, Path(own["HOME"]), self.run_dir, task.id)
            writable = [p for p in (model_dir, tmp, Path(own["HOME"]), self._worker_socket_dir(task), building)
                        if p is not None]
            shm = task.resources.memory_limit
            readable = [environment[0]] if environment is not None else []
            readable += self._version_copy_dirs(task)
            namespace = self.isolation.view(user, writable, tmp, shm_size=shm, accounts=accounts,
                                            agent_files=readable).ops()
        error_path = self.error_path(task.id)
        error_path.unlink(missing_ok=True)
        self.isolation.write_spec(spec_path, {
            "version": 1,
            "task_id": task.id,
            "argv": [program, *task.args],
            "env": env,
            "cwd": str(cwd),
            "identity": None if user is None else {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
            "namespace": namespace,
            "umask": (BUILD_UMASK if building else TASK_UMASK) if user is not None else 0o022,
            "error_file": str(error_path),
        })
        exit_path = self.exit_path(task.id)
        exit_path.unlink(missing_ok=True)
        r = task.resources
        return LaunchSpec(
            task_id=task.id,
            argv=self.isolation.enter_argv(spec_path),
            env=dict(ROOT_ENV),
            working_dir=Path("/"),
            log_path=Path(task.log_file),
            exit_path=exit_path,
            limits=Limits(cpu_limit=r.cpu_limit, memory_limit=r.memory_limit, disk_limit=r.disk_limit,
                          tasks_max=min(r.max_pids or self.settings.max_pids, self.settings.max_pids),
                          devices=None if grant is None else grant.device_numbers()),
        )

    def start_problem(self, task_id: str) -> str | None:
        """Why enter.py could not start the task (it wrote it down), or None."""
        try:
            text = self.error_path(task_id).read_text(errors="replace").strip()
        except OSError:
            return None
        return text or None

    # ---- checks at submit ----------------------------------------------------------------------

    def path_problem(self, user: TaskUser | None, path: Path, need: int) -> str | None:
        """Why user could not use path for need, judged as the task will see it."""
        if user is None:
            return None
        if self.isolation.namespaces:
            view = self.isolation.view(user, [], None)
            return view.access_problem(path, need)
        return access_problem(user, path, need)

    def check_startable(self, program_command: str, working_dir: str, user: TaskUser | None) -> str:
        """Raise SpawnError now for what would make the start fail; returns the program's
        absolute path (resolved with the agent's PATH, never the request's)."""
        cwd = resolve_working_dir(self.base_dir, working_dir)
        if not cwd.is_dir():
            raise SpawnError(f"working_dir {working_dir}: no such directory")
        problem = self.path_problem(user, cwd, EXECUTE)
        if problem is not None:
            raise SpawnError(f"working_dir {working_dir}: {problem}")
        program = resolve_program(program_command, cwd)
        problem = self.path_problem(user, Path(program), EXECUTE)
        if problem is not None:
            raise SpawnError(f"spawn failed: {program_command} is {program}, but {problem}")
        return program
