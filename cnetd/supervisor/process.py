"""Process plumbing shared by the sandbox backends: the exit shim, identity, waiting."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from cnetd.background import resolve
from cnetd.supervisor.base import ExitStatus

# The shim runs the command as its child and records the exit code in a file, so the
# status survives the agent (a systemd scope has no exit status of its own). It traps
# TERM/INT/HUP with a no-op so that a stop reaches the command while the shim lives to
# record what happened; a trapped (not ignored) signal is reset to default on exec, so
# the command itself still sees normal dispositions. It runs as root with ROOT_ENV and
# calls no program at all: printf and the redirection are the shell's own, so recording
# needs no fork (a task whose processes fill its pids limit cannot stop it). The file
# needs no rename to be read whole: it is read only once the shim has exited.
SHIM_SCRIPT = 'x="$1"; shift; trap : TERM INT HUP; "$@"; rc=$?; printf "%s\\n" "$rc" > "$x"; exit "$rc"'
SHELL = "/bin/sh"


def shim_argv(exit_path: Path, argv: list[str]) -> list[str]:
    return [SHELL, "-c", SHIM_SCRIPT, "cnet-shim", str(exit_path), *argv]


def proc_start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has finished; only its parent's wait is left
        return None
    return int(fields[19])


def is_same_process(pid: int, start: int) -> bool:
    return proc_start_time(pid) == start


def read_exit_file(path: str | Path) -> ExitStatus | None:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        code = int(text)
    except ValueError:
        return None
    sig = code - 128 if 128 < code < 128 + 65 else None
    return ExitStatus(code=code, signal=sig)


def reap_if_child(pid: int) -> int | None:
    """Collect a finished child's status so it does not linger as a zombie."""
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


async def wait_for_exit(pid: int, start: int, reap: bool = True) -> None:
    """Return when the process (pid, start) is gone; child or not, without polling.

    With reap=False a finished child is left for its Popen object to collect.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        if reap:
            reap_if_child(pid)
        return
    try:
        # The pidfd now pins this pid: check that it is still the process we mean.
        if not is_same_process(pid, start):
            if reap:
                reap_if_child(pid)
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(fd, resolve, done)
        try:
            await done
        finally:
            loop.remove_reader(fd)
        if reap:
            reap_if_child(pid)
    finally:
        os.close(fd)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def session_members(sid: int) -> list[int]:
    """Every live process whose session id is sid (the shim is a session leader)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


def shim_sessions(exit_dir: Path) -> dict[str, int]:
    """Task id -> pid of every exit shim that runs as this agent's user and writes its code
    into exit_dir (`<exit_dir>/<task id>.exit`): the sessions of this agent's tasks, found
    without a saved handle. A task's own processes run under other uids and are never taken
    for a shim, whatever argv they give themselves."""
    want = os.path.realpath(exit_dir)
    head = [SHELL.encode(), b"-c", SHIM_SCRIPT.encode(), b"cnet-shim"]
    found: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.geteuid():
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 5 or argv[:4] != head:
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Between its fork and exec, the shim's child still shows the shim's argv: only
        # the session leader is the shim.
        if int(stat[stat.rindex(b")") + 2 :].split()[3]) != int(entry.name):
            continue
        exit_path = Path(os.fsdecode(argv[4]))
        if exit_path.suffix == ".exit" and os.path.realpath(exit_path.parent) == want:
            found[exit_path.stem] = int(entry.name)
    return found
