"""Least privilege: the configured user tasks run as when the agent runs as root (when
tasks.run_as names one; the default is a dynamic uid per model and task, see identity.py),
and what a user may read, write and enter.

The switch itself happens in enter.py, the last root step of a launch, with no_new_privs
set and an empty capability bounding set, so a task cannot regain root through a setuid
program.

Access is judged from mode bits, owners and groups (ACLs are not read): good enough to
turn "the model crashed with PermissionError" into a 400 that names the field, the user
and the directory in the way.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnetd.config import Config, ConfigError

DEFAULT_TASK_USER = "nobody"
DYNAMIC = "dynamic"
READ, WRITE, EXECUTE = 4, 2, 1
_FILE_VERBS = {READ: "read", WRITE: "write", EXECUTE: "execute", READ | EXECUTE: "read"}
_DIR_VERBS = {READ: "list", EXECUTE: "enter", WRITE | EXECUTE: "create files in", READ | EXECUTE: "list"}


class TaskUserError(Exception):
    """tasks.run_as cannot be honoured; the message says why and what to do."""


@dataclass(frozen=True)
class TaskUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included
    home: str  # from the password database; may not exist (nobody: /nonexistent)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "uid": self.uid, "gid": self.gid}


def resolve_task_user(run_as: str | None, euid: int | None = None) -> TaskUser | None:
    """The user tasks run as, or None when they run as the agent's own user.

    run_as None means the default: "nobody" when the agent is root, else the agent's user.
    "root" (or 0) keeps tasks as root: an explicit choice, never a fallback.
    """
    euid = os.geteuid() if euid is None else euid
    spec = (run_as or "").strip()
    if spec == DYNAMIC:
        spec = ""
    if euid != 0:
        if spec and _lookup_user(spec.split(":", 1)[0]).pw_uid != euid:
            raise TaskUserError(
                f"'{spec}' needs the agent to run as root (it runs as uid {euid}, so tasks run as that user); "
                "remove tasks.run_as or start the agent as root"
            )
        return None
    user_part, _, group_part = (spec or DEFAULT_TASK_USER).partition(":")
    entry = _lookup_user(user_part)
    if entry.pw_uid == 0:
        return None
    gid = _lookup_group(group_part) if group_part else entry.pw_gid
    groups = (gid,) if group_part else tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return TaskUser(name=entry.pw_name, uid=entry.pw_uid, gid=gid, groups=groups, home=entry.pw_dir)


def _lookup_user(text: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        raise TaskUserError(f"no such user '{text}'") from None


def _lookup_group(text: str) -> int:
    try:
        return grp.getgrgid(int(text)).gr_gid if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise TaskUserError(f"no such group '{text}'") from None


# --------------------------------------------------------------------------- access


def allows(st: os.stat_result, user: TaskUser, need: int) -> bool:
    if st.st_uid == user.uid:
        granted = (st.st_mode >> 6) & 7
    elif st.st_gid in user.groups or st.st_gid == user.gid:
        granted = (st.st_mode >> 3) & 7
    else:
        granted = st.st_mode & 7
    return granted & need == need


def describe(path: Path, st: os.stat_result) -> str:
    """'/root is drwx------ root:root', for error messages."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{path} is {stat.filemode(st.st_mode)} {owner}:{group}"


def _walk_blocker(user: TaskUser, path: Path) -> str | None:
    """Why user cannot reach path (search permission on every directory above it)."""
    for parent in reversed(path.parents):
        try:
            st = os.stat(parent)
        except OSError:
            return None  # a missing directory is reported by the caller's own checks
        if not allows(st, user, EXECUTE):
            return describe(parent, st)
    return None


def access_problem(user: TaskUser | None, path: Path, need: int) -> str | None:
    """None when user can reach path and read/write/execute it (need), else why not.

    Checks both the path as written and its real path: the kernel walks the first and,
    through each symlink, the directories of the second."""
    if user is None:
        return None
    path = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    for candidate in dict.fromkeys((path, real)):
        blocker = _walk_blocker(user, candidate)
        if blocker is not None:
            return f"user '{user.name}' cannot reach {path}: {blocker}"
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not allows(st, user, need):
        shown = path if real == path else f"{path} (-> {real})"
        verb = (_DIR_VERBS if stat.S_ISDIR(st.st_mode) else _FILE_VERBS).get(need, "use")
        return f"user '{user.name}' cannot {verb} {shown}: {describe(real, st)}"
    return None


def private_dir_for(user: TaskUser, directory: Path) -> Path:
    """A directory only user (and root) may use, made or fixed up as needed."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chown(directory, user.uid, user.gid)
    os.chmod(directory, 0o700)
    return directory


def task_user_for(config: Config) -> TaskUser | None:
    """resolve_task_user for a loaded config; a problem is a ConfigError naming file and key."""
    try:
        return resolve_task_user(config.tasks.run_as)
    except TaskUserError as exc:
        label = str(config.source) if config.source else "config"
        raise ConfigError(f"{label}: tasks.run_as: {exc}") from None



def uses_dynamic_uids(run_as: str | None, euid: int | None = None) -> bool:
    """tasks.run_as unset or "dynamic", on an agent that runs as root: each model and each
    process task gets a uid of its own from tasks.uid_range."""
    euid = os.geteuid() if euid is None else euid
    return euid == 0 and (run_as or DYNAMIC).strip() == DYNAMIC


def task_uid_predicate(config: Config, euid: int | None = None) -> Callable[[int], bool]:
    """Whether a uid is one this agent runs tasks as (the API refuses such callers unless
    they present a token). Where tasks share the agent's own uid nothing can tell them
    apart, and the answer is always False (docs/security.md says so)."""
    euid = os.geteuid() if euid is None else euid
    if uses_dynamic_uids(config.tasks.run_as, euid):
        low, high = config.tasks.uid_range.start, config.tasks.uid_range.end
        return lambda uid: low <= uid <= high
    if euid != 0:
        return lambda uid: False
    user = task_user_for(config)
    if user is None:  # run_as: root
        return lambda uid: False
    return lambda uid: uid == user.uid
