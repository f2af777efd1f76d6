"""Who a task runs as: a dynamic uid per model and per process task (the default when the
agent is root), one configured user for every task, or the agent's own user.

Dynamic identities work like systemd's DynamicUser: a uid from tasks.uid_range is handed to
an owner ("model:<name>" for every task of a model, so it can read its own files across
training, predictions and serving; "task:<id>" for a process task), recorded in SQLite, and
given back when the owner is done (a process task when it ends). The uid's group is the gid
of the same number and its only group. It has no passwd entry on the host; inside its
namespace the task sees one (cnet-<n>), so tools that look their user up work.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cnetd.clock import utc_now
from cnetd.config import Config, UidRange
from cnetd.security.privilege import TaskUser, private_dir_for, task_user_for, uses_dynamic_uids
from cnetd.store import identities as iq

Mode = Literal["dynamic", "static", "agent"]
NAME_PREFIX = "cnet-"


def model_owner(name: str) -> str:
    return f"model:{name}"


def task_owner(task_id: str) -> str:
    return f"task:{task_id}"


@dataclass(frozen=True)
class Identities:
    mode: Mode
    uid_range: UidRange
    static_user: TaskUser | None  # mode "static"
    homes: Path  # <state_dir>/home: one private HOME per task uid

    @classmethod
    def from_config(cls, config: Config, euid: int | None = None) -> Identities:
        euid = os.geteuid() if euid is None else euid
        homes = config.agent.state_dir / "home"
        if uses_dynamic_uids(config.tasks.run_as, euid):
            return cls("dynamic", config.tasks.uid_range, None, homes)
        user = task_user_for(config) if euid == 0 else None
        return cls("static" if user is not None else "agent", config.tasks.uid_range, user, homes)

    @property
    def drops_privileges(self) -> bool:
        return self.mode != "agent"

    def allocate(self, conn: sqlite3.Connection, owner: str) -> int | None:
        """The uid owner's tasks run as, handed out now if it has none (in the caller's
        write transaction). None when tasks run as the agent's own user."""
        if self.mode == "dynamic":
            return iq.allocate(conn, owner, self.uid_range.start, self.uid_range.end, utc_now())
        if self.mode == "static":
            assert self.static_user is not None
            return self.static_user.uid
        return None

    def known_uid(self, conn: sqlite3.Connection, owner: str) -> int | None:
        """owner's uid if it has one already (for checks before anything is written)."""
        if self.mode == "dynamic":
            return iq.uid_of(conn, owner)
        return self.static_user.uid if self.static_user is not None else None

    def release(self, conn: sqlite3.Connection, owner: str) -> int | None:
        return iq.release(conn, owner) if self.mode == "dynamic" else None

    def user(self, uid: int | None) -> TaskUser | None:
        """The TaskUser a task with this uid runs as (None: the agent's own user)."""
        if uid is None or self.mode == "agent":
            return None
        if self.mode == "static":
            assert self.static_user is not None
            return self.static_user
        return TaskUser(name=self.name_of(uid), uid=uid, gid=uid, groups=(uid,), home=str(self.home_of(uid)))

    def stranger(self) -> TaskUser | None:
        """A user who owns nothing: how a model or task that has no uid yet sees the files
        it would be given (only the 'others' permission bits count)."""
        if self.mode == "static":
            return self.static_user
        if self.mode == "dynamic":
            return TaskUser(name="a new task user", uid=-1, gid=-1, groups=(), home="/nonexistent")
        return None

    def name_of(self, uid: int) -> str:
        return f"{NAME_PREFIX}{uid - self.uid_range.start}" if self.mode == "dynamic" else str(uid)

    def home_of(self, uid: int) -> Path:
        return self.homes / str(uid)

    def make_home(self, user: TaskUser) -> Path:
        """The user's private HOME under the state dir (the static user's own home when it
        has a usable one is not used: a private one keeps tasks off the host's files)."""
        self.homes.mkdir(parents=True, exist_ok=True)
        os.chmod(self.homes, 0o711)
        return private_dir_for(user, self.homes / str(user.uid))

    def remove_home(self, uid: int) -> None:
        shutil.rmtree(self.home_of(uid), ignore_errors=True)


def passwd_lines(user: TaskUser, home: Path) -> tuple[str, str]:
    """The passwd and group lines that name a dynamic user inside its namespace."""
    return (
        f"{user.name}:x:{user.uid}:{user.gid}:cnet task:{home}:/usr/sbin/nologin\n",
        f"{user.name}:x:{user.gid}:\n",
    )


def write_account_files(user: TaskUser, home: Path, target_dir: Path, stem: str) -> tuple[Path, Path] | None:
    """Copies of /etc/passwd and /etc/group with the user added, for enter.py to bind over
    the originals in the task's namespace; None where those are not plain files."""
    passwd_src, group_src = Path("/etc/passwd"), Path("/etc/group")
    if not (passwd_src.is_file() and group_src.is_file()) or passwd_src.is_symlink() or group_src.is_symlink():
        return None
    line_p, line_g = passwd_lines(user, home)
    out = []
    for source, line, suffix in ((passwd_src, line_p, "passwd"), (group_src, line_g, "group")):
        target = target_dir / f"{stem}.{suffix}"
        text = source.read_text(errors="replace")
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        out.append(target)
    return out[0], out[1]
