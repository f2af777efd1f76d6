"""cnet-enter: the last root step of a task's launch, then the task itself.

Run by the exit shim as root, with a fixed minimal environment, as
``python -I -S enter.py SPEC``. SPEC is a JSON file the agent wrote (root-only, in its run
dir); this program reads and removes it, then:

1. gives the task a private mount and IPC namespace, and there opens every bind source up
   front (before anything is hidden), checking that each one is the directory or file the
   agent meant (no symlink swapped in since it looked);
2. sets the namespace up: the whole tree read-only, tmpfs
   "veils" over what the task must not see (the agent's state dir, directories the task
   user cannot enter, model roots), the paths it needs bound back (read-only or writable),
   a private /tmp and /var/tmp (its TMPDIR, counted against disk_limit), a private
   /dev/shm, a /proc that shows only its own processes, and a passwd entry for its uid;
3. drops to the task's uid/gid with no way back (no supplementary groups beyond its own,
   empty capability bounding set, no_new_privs);
4. execs the program with exactly the task's environment.

It imports nothing but the standard library and never cnetd: it is copied next to the
agent's state and must run wherever the agent runs. Any failure is written to the error
file the spec names (the agent turns it into the task's "spawn failed: ..." reason) and
to stderr (the task's log), and nothing of the task runs.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
VEIL_OPTIONS = "mode=0755,size=1m,nr_inodes=4096"
SPEC_VERSION = 1

# typing is not imported at run time (it would add ~10 ms to every launch): the names below
# exist for the type checker only, and annotations are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, TypedDict

    class MountStep(TypedDict, total=False):
        """One step of cnetd.security.taskview.TaskView.ops()."""

        op: str  # readonly | veil | bind | tmpfs | proc
        path: str  # veil, tmpfs
        source: str  # bind
        target: str  # bind
        writable: bool  # bind
        mode: str  # tmpfs
        size: int  # tmpfs

    class Identity(TypedDict, total=False):
        uid: int
        gid: int
        groups: list[int]

    class LaunchSpec(TypedDict, total=False):
        """What the agent wrote (cnetd.supervisor.launcher)."""

        version: int
        error_file: str
        namespace: list[MountStep] | None
        identity: Identity | None
        umask: int
        cwd: str
        argv: list[str]
        env: dict[str, str]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class EnterError(Exception):
    """The task cannot be entered; the message says what failed."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise EnterError(f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {fstype or source or '(remount)'} on {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _mount_flags(options: str) -> int:
    """The per-mount flags (mountinfo's 6th field) a remount must keep."""
    flags = 0
    for option in options.split(","):
        flags |= {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}.get(option, 0)
    return flags


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_only_everywhere() -> None:
    """Every mount of this namespace read-only: one mount_setattr where the kernel has it
    (5.12+), else a remount of each mount point with its other flags kept."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    if result == 0:
        return
    if ctypes.get_errno() != 38:  # anything but ENOSYS is a real failure
        _check(result, "mount_setattr / read-only")
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = _unescape(fields[4])
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(fields[5]))
        except EnterError:
            if point == "/":
                raise  # the others may be covered by a later mount; the root may not fail


def _current_flags(target: str) -> int:
    """Per-mount flags of the mount at target (the last one listed wins)."""
    flags = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == target:
                flags = _mount_flags(fields[5])
    return flags


def _make_target(path: str, is_dir: bool) -> None:
    """The mount point inside a veil (tmpfs, writable until the end) or an existing path."""
    if os.path.lexists(path):
        return
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if is_dir:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))


def open_sources(ops: list[MountStep]) -> dict[str, int]:
    """O_PATH descriptors of every bind source, each checked to be the path the agent
    meant: a symlink swapped into the path since the agent looked makes the real path
    differ, and the launch is refused."""
    fds: dict[str, int] = {}
    for op in ops:
        if op["op"] != "bind" or op["source"] in fds:
            continue
        source = op["source"]
        fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        real = os.readlink(f"/proc/self/fd/{fd}")
        if real != source:
            os.close(fd)
            raise EnterError(f"{source} is now {real} (a symlink was put in its path); refusing to bind it")
        fds[source] = fd
    return fds


def apply_ops(ops: list[MountStep], fds: dict[str, int]) -> None:
    veils: list[tuple[str, int]] = []
    for op in ops:
        kind = op["op"]
        if kind == "readonly":
            read_only_everywhere()
        elif kind == "veil":
            target = op["path"]
            _make_target(target, True)
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, VEIL_OPTIONS)
            # Held, so that the veil itself is remounted read-only at the end even where
            # something was mounted over its path since.
            veils.append((target, os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
        elif kind == "bind":
            fd, target = fds[op["source"]], op["target"]
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
            _make_target(target, is_dir)
            mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | _current_flags(target)
            mount(None, target, None, flags if op.get("writable") else flags | MS_RDONLY)
        elif kind == "tmpfs":
            target = op["path"]
            _make_target(target, True)
            options = f"mode={op.get('mode', '1777')}" + (f",size={op['size']:d}" if op.get("size") else "")
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        elif kind == "proc":
            try:
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")
            except EnterError:  # kernels before 5.8 know only the number
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        else:
            raise EnterError(f"unknown mount step {kind!r}")
    for target, fd in veils:  # the task may look into a veil but never write to it
        try:
            mount(None, f"/proc/self/fd/{fd}", "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, VEIL_OPTIONS)
        except EnterError as exc:
            raise EnterError(f"veil {target}: {exc}") from exc
        os.close(fd)


def private_namespace(ops: list[MountStep]) -> None:
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare (mount, IPC)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    # Opened in the new namespace (a mount of another namespace cannot be bound), before
    # anything is hidden.
    fds = open_sources(ops)
    apply_ops(ops, fds)
    for fd in fds.values():
        os.close(fd)


def drop_privileges(identity: Identity) -> None:
    uid, gid = identity["uid"], identity["gid"]
    os.setgroups(identity.get("groups") or [gid])
    os.setresgid(gid, gid, gid)
    try:
        with open(LAST_CAP_FILE) as f:
            last_cap = int(f.read())
    except (OSError, ValueError):
        last_cap = 63
    for cap in range(last_cap + 1):  # empty bounding set: nothing exec'd can gain a capability
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
        raise EnterError(f"could not switch to uid {uid} gid {gid}")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")


def enter(spec: LaunchSpec) -> NoReturn:
    if spec.get("version") != SPEC_VERSION:
        raise EnterError(f"launch spec version {spec.get('version')!r} is not {SPEC_VERSION} (agent and enter.py differ)")
    os.umask(0o022)  # the mount points made in veils must be enterable whatever the agent's umask
    namespace, identity = spec.get("namespace"), spec.get("identity")
    if namespace is not None:
        private_namespace(namespace)
    if identity is not None:
        drop_privileges(identity)
    os.umask(spec.get("umask", 0o022))
    try:
        os.chdir(spec["cwd"])
    except OSError as exc:
        raise EnterError(f"working_dir {spec['cwd']}: {exc.strerror}") from exc
    argv, env = spec["argv"], spec["env"]
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        raise EnterError(f"exec {argv[0]}: {exc.strerror}") from exc


def main(args: list[str]) -> int:
    if len(args) != 2:
        sys.stderr.write("usage: enter.py SPEC\n")
        return 2
    error_fd: int | None = None
    try:
        with open(args[1]) as f:
            spec: LaunchSpec = json.load(f)
        os.unlink(args[1])  # it holds the task's environment: gone before the task runs
        if spec.get("error_file"):
            error_fd = os.open(spec["error_file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        enter(spec)
    except (EnterError, OSError, ValueError, KeyError, TypeError) as exc:
        message = str(exc) if isinstance(exc, EnterError) else f"{type(exc).__name__}: {exc}"
        sys.stderr.write(f"cnet: cannot start the task: {message}\n")
        if error_fd is not None:
            os.write(error_fd, message.encode(errors="replace")[:4000])
        return 126
    return 0  # not reached: enter() execs or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv))
