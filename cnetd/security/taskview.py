"""What a task sees of the file system: the mount plan that enter.py carries out in the
task's private mount namespace, and access checks that judge a path as the task will.

The rules, in the spirit of systemd's ProtectSystem=strict + TemporaryFileSystem= +
BindPaths=:
- everything is read-only;
- the agent's state dir and every model root are veiled (an empty read-only tmpfs), and so
  is the topmost directory above a needed path that the task user cannot enter (a checkout
  under a 0700 home): a veil hides everything under it but what is bound back;
- bound back read-only: the allowed roots (the code tasks run), the agent's Python
  environment, the serving worker script; writable: the model's own directory, the task's
  TMPDIR (also mounted on /tmp and /var/tmp, so disk_limit counts what goes there), its
  HOME and a serving worker's socket directory;
- files that hold the agent's secrets (its config file, its token file) are covered by an
  empty inaccessible file even where their directory is bound back;
- a private /dev/shm and a /proc that shows only the task's own processes.

Paths are compared as absolute, symlink-free paths: the planner resolves each source, and
enter.py refuses a source whose real path differs when it opens it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cnetd.security.privilege import EXECUTE, READ, WRITE, TaskUser, access_problem, allows, describe

SHM_SIZE_DEFAULT = 64 * 1024 * 1024
PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))  # each task's own: its TMPDIR is mounted there


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(path))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _depth(path: Path) -> int:
    return len(path.parts)


@dataclass(frozen=True)
class Bind:
    source: Path
    target: Path
    writable: bool = False


@dataclass
class TaskView:
    """The plan for one task. Build it with ViewBuilder; `ops()` is what enter.py runs."""

    user: TaskUser
    veils: list[Path] = field(default_factory=list)
    binds: list[Bind] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    tmp_dir: Path | None = None
    shm_size: int = SHM_SIZE_DEFAULT
    passwd: Path | None = None
    group: Path | None = None
    inaccessible_file: Path | None = None

    def ops(self) -> list[dict[str, object]]:
        steps: list[tuple[int, int, dict[str, object]]] = []
        for veil in self.veils:
            steps.append((_depth(veil), 0, {"op": "veil", "path": str(veil)}))
        binds = list(self.binds)
        if self.tmp_dir is not None:
            binds += [Bind(self.tmp_dir, tmp, True) for tmp in PRIVATE_TMP]
        for bind in binds:
            steps.append((_depth(bind.target), 1, {
                "op": "bind", "source": str(bind.source), "target": str(bind.target), "writable": bind.writable,
            }))
        # Deeper paths after shallower ones: a bind inside a veil comes after the veil, and a
        # veil inside something bound back (the state dir inside a checkout) after that bind.
        ordered = [op for _, _, op in sorted(steps, key=lambda s: (s[0], s[1]))]
        tail: list[dict[str, object]] = []
        if self.inaccessible_file is not None:
            tail += [{"op": "bind", "source": str(self.inaccessible_file), "target": str(m), "writable": False}
                     for m in self.masks]
        for name, generated in (("/etc/passwd", self.passwd), ("/etc/group", self.group)):
            if generated is not None:
                tail.append({"op": "bind", "source": str(generated), "target": name, "writable": False})
        tail.append({"op": "tmpfs", "path": "/dev/shm", "mode": "1777", "size": self.shm_size})
        tail.append({"op": "proc"})
        return [{"op": "readonly"}, *ordered, *tail]

    # ---- judging paths as the task will see them -----------------------------------

    def _cover(self, path: Path) -> Path | Bind | None:
        """The deepest veil (a Path) or bind at or above path: what the task sees there. The
        host's /tmp and /var/tmp count as veiled: the task has its own there."""
        best: Path | Bind | None = None
        best_depth = -1
        for veil in [*PRIVATE_TMP, *self.veils]:
            if _under(path, veil) and _depth(veil) > best_depth:
                best, best_depth = veil, _depth(veil)
        for bind in self.binds:
            if _under(path, bind.target) and _depth(bind.target) >= best_depth:
                best, best_depth = bind, _depth(bind.target)
        return best

    def hidden_by(self, path: Path | str) -> Path | None:
        """What hides path from the task (a veil, or the path itself when masked), or None."""
        real = _real(path)
        if real in self.masks:
            return real
        cover = self._cover(real)
        return cover if isinstance(cover, Path) else None

    def access_problem(self, path: Path | str, need: int) -> str | None:
        """None when the task can use path for need (READ/WRITE/EXECUTE bits), else why not,
        judged as from inside its namespace: directories above a bound-back path are
        reached through the veil over them, the bound directory and below by their modes."""
        real = _real(path)
        hidden = self.hidden_by(real)
        if hidden is not None:
            return f"{path} is hidden from tasks ({hidden} is private to the agent)"
        cover = self._cover(real)
        if cover is None:
            return access_problem(self.user, real, need)
        assert isinstance(cover, Bind)
        if need & WRITE and not cover.writable:
            return f"{path} is read-only for tasks (only the model's directory and TMPDIR are writable)"
        for directory in [cover.target, *(p for p in reversed(real.parents) if p != cover.target and _under(p, cover.target))]:
            if directory == real:
                break
            try:
                st = os.stat(directory)
            except OSError:
                return None  # missing: the caller's own checks say so
            if not allows(st, self.user, EXECUTE):
                return f"user '{self.user.name}' cannot reach {path}: {describe(directory, st)}"
        try:
            st = os.stat(real)
        except OSError:
            return None
        if not allows(st, self.user, need):
            use = "read" if need & READ else "write" if need & WRITE else "run"
            return f"user '{self.user.name}' cannot use {path} ({use}): {describe(real, st)}"
        return None


def topmost_blocked(user: TaskUser, path: Path) -> Path | None:
    """The outermost directory above path (or path itself) that user cannot enter."""
    for candidate in [*reversed(path.parents), path]:
        try:
            st = os.stat(candidate)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode) and not allows(st, user, EXECUTE):
            return candidate
    return None


class ViewBuilder:
    """Collects what a task needs and turns it into a TaskView."""

    def __init__(self, user: TaskUser, state_dir: Path, inaccessible_file: Path) -> None:
        self.user = user
        self._state_dir = _real(state_dir)
        self._inaccessible = inaccessible_file
        self._read: list[Path] = []
        self._write: list[Path] = []
        self._hide: list[Path] = [self._state_dir]
        self._masks: list[Path] = []

    def readable(self, paths: Iterable[Path | str]) -> ViewBuilder:
        """Read-only for the task; never the state dir or anything in it (see agent_files)."""
        self._read += [p for p in (_real(p) for p in paths if os.path.exists(p)) if not _under(p, self._state_dir)]
        return self

    def agent_files(self, paths: Iterable[Path | str]) -> ViewBuilder:
        """Read-only files of the agent's own that tasks need (the serving worker script)."""
        self._read += [_real(p) for p in paths if os.path.exists(p)]
        return self

    def writable(self, paths: Iterable[Path | str]) -> ViewBuilder:
        self._write += [_real(p) for p in paths if os.path.isdir(p)]
        return self

    def hidden(self, paths: Iterable[Path | str]) -> ViewBuilder:
        self._hide += [_real(p) for p in paths if os.path.isdir(p)]
        return self

    def masked(self, files: Iterable[Path | str | None]) -> ViewBuilder:
        self._masks += [_real(f) for f in files if f is not None and os.path.isfile(f)]
        return self

    def build(self, tmp_dir: Path | None, shm_size: int | None = None,
              passwd: Path | None = None, group: Path | None = None) -> TaskView:
        binds: dict[Path, Bind] = {}
        for path in self._read:
            binds.setdefault(path, Bind(path, path, False))
        for path in self._write:
            binds[path] = Bind(path, path, True)
        veils = set(self._hide) - set(binds)  # a path bound back whole needs no veil
        for path in binds:
            blocked = topmost_blocked(self.user, path)
            if blocked is not None and blocked != path:
                veils.add(blocked)
        view = TaskView(
            user=self.user,
            veils=sorted(veils, key=_depth),
            binds=sorted(binds.values(), key=lambda b: _depth(b.target)),
            masks=sorted(set(self._masks)),
            tmp_dir=_real(tmp_dir) if tmp_dir is not None else None,
            shm_size=shm_size or SHM_SIZE_DEFAULT,
            passwd=passwd,
            group=group,
            inaccessible_file=self._inaccessible,
        )
        return view
