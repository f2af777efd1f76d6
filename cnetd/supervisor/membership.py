"""Whether a process belongs to a task: the agent asks before it trusts a worker socket."""

from __future__ import annotations

from pathlib import Path

from cnetd.supervisor.base import Handle
from cnetd.supervisor.cgroupfs import TRACK_ORDER, cgroup_dirs_of


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[3])


def handle_owns_pid(handle: Handle, pid: int) -> bool:
    """pid is in the task's cgroup (or below it), or, without cgroups, in the session its
    exit shim leads."""
    dirs = handle.cgroup or {}
    if dirs:
        try:
            found = cgroup_dirs_of(pid)
        except OSError:
            return False
        for key in TRACK_ORDER:
            if key in dirs and key in found:
                mine, theirs = Path(dirs[key]), found[key]
                return theirs == mine or mine in theirs.parents
        return False
    return _session_of(pid) == handle.pid
