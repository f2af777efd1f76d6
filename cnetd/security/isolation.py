"""The task boundary as one object: which paths tasks may read and write, what stays
private to the agent, and the launch step (enter.py) that sets it up.

Built once at start-up from the config; the launcher asks it for a task's view and for the
root half of its argv, and the API reports what it enforces.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnetd.bundle import is_frozen, stable_copy
from cnetd.security.privilege import TaskUser
from cnetd.security.taskview import TaskView, ViewBuilder

log = logging.getLogger(__name__)

ENTER_RELATIVE = "cnetd/security/enter.py"
# The root half of a launch runs with this and nothing else: no request's variable and none
# of the agent's own reaches a root process (the task's environment is applied by enter.py
# at its final exec, after the switch to the task's user).
ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ROOT_ENV = {"PATH": ROOT_PATH, "LANG": "C.UTF-8"}
PROBE_TIMEOUT = 20.0


def enter_interpreter() -> str:
    """An interpreter for enter.py (stdlib only, run with -I -S): the one the agent's venv
    was made from, outside any checkout; the system's python3 under the one-file binary."""
    if not is_frozen():
        base = getattr(sys, "_base_executable", None) or sys.executable
        return os.path.realpath(base)
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable  # the binary itself: cli.py runs enter.py for `cnet-agent --enter SPEC`


@dataclass
class Isolation:
    state_dir: Path
    allowed_roots: Sequence[Path]  # read-only for tasks: the code they run
    model_roots: Sequence[Path]  # where model directories may be
    secret_files: Sequence[Path]  # the agent's config and token files
    namespaces: bool = True  # False: tasks switch user but see the host's file system
    problem: str | None = None  # why namespaces are off, when they are
    enter_script: Path = field(default=Path())
    interpreter: str = ""

    def __post_init__(self) -> None:
        self.run_dir = self.state_dir / "run"
        self.lib_dir = self.state_dir / "lib"
        self.inaccessible = self.run_dir / "inaccessible"

    def prepare(self) -> None:
        """Files the launch step needs under the state dir."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.inaccessible.exists():
            self.inaccessible.touch()
        os.chmod(self.inaccessible, 0)
        self.enter_script = stable_copy(ENTER_RELATIVE, self.state_dir, always=True)
        self.interpreter = enter_interpreter()

    def enter_argv(self, spec_path: Path) -> list[str]:
        if is_frozen() and self.interpreter == sys.executable:
            return [self.interpreter, "--enter", str(spec_path)]
        return [self.interpreter, "-I", "-S", str(self.enter_script), str(spec_path)]

    def python_paths(self) -> list[Path]:
        """The agent's Python environment, which tasks run their scripts with."""
        paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
        return sorted(p for p in paths if not is_frozen() or p != Path(sys.prefix))

    def view(self, user: TaskUser, writable: Sequence[Path], tmp_dir: Path | None,
             shm_size: int | None = None, accounts: tuple[Path, Path] | None = None,
             agent_files: Sequence[Path] = ()) -> TaskView:
        """agent_files: more of the agent's own directories the task reads (its environment)."""
        builder = (
            ViewBuilder(user, self.state_dir, self.inaccessible)
            .readable([*self.allowed_roots, *self.python_paths()])
            .agent_files([self.lib_dir, *agent_files])
            .writable(writable)
            .hidden(self.model_roots)
            .masked(self.secret_files)
        )
        passwd, group = accounts if accounts is not None else (None, None)
        return builder.build(tmp_dir, shm_size=shm_size, passwd=passwd, group=group)

    def write_spec(self, path: Path, spec: dict[str, object]) -> None:
        """The launch spec: root's alone (it holds the task's environment), removed by
        enter.py as soon as it has read it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)

    def probe(self, user: TaskUser) -> None:
        """Try the whole launch step once (namespace, veils, user switch) with /bin/true;
        on failure tasks still switch user but namespaces are off, and /api/health says why."""
        if os.geteuid() != 0:
            self.namespaces, self.problem = False, "the agent does not run as root"
            return
        with tempfile.TemporaryDirectory(prefix="probe-", dir=self.run_dir) as tmp:
            tmp_dir = Path(tmp)
            os.chown(tmp_dir, user.uid, user.gid)
            view = self.view(user, [tmp_dir], tmp_dir)
            spec_path, error_path = tmp_dir / "spec.json", self.run_dir / f"probe-{os.getpid()}.err"
            self.write_spec(spec_path, {
                "version": 1, "argv": ["/bin/true"], "env": {"PATH": ROOT_PATH}, "cwd": "/",
                "identity": {"uid": user.uid, "gid": user.gid, "groups": list(user.groups)},
                "namespace": view.ops(), "error_file": str(error_path),
            })
            try:
                done = subprocess.run(self.enter_argv(spec_path), env=ROOT_ENV, capture_output=True,
                                      timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
                ok, why = done.returncode == 0, _error_text(error_path) or done.stderr.decode(errors="replace").strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, why = False, str(exc)
            finally:
                error_path.unlink(missing_ok=True)
        if ok:
            self.namespaces, self.problem = True, None
        else:
            self.namespaces, self.problem = False, f"private mount namespaces do not work here: {why}"
            log.error("%s; tasks run under their own uids but see the host's file system", self.problem)

    def summary(self) -> dict[str, object]:
        return {
            "namespaces": self.namespaces,
            "problem": self.problem,
            "readable": [str(p) for p in self.allowed_roots],
            "model_roots": [str(p) for p in self.model_roots],
        }


def _error_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""
