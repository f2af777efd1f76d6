"""cgroupfs plumbing shared by the `cgroup` and `systemd` backends: finding a process's cgroup
directories, reading their counters, watching for OOM kills, signalling and removing them.

A task's cgroup directories are kept in Handle.cgroup as a map from hierarchy key to
directory: v1 controller names ("memory", "cpu", "cpuacct", "pids", "systemd" for
name=systemd) and "unified" for the cgroup2 hierarchy (the whole tree on a pure v2 machine,
a controller-less tracking tree on a hybrid one). Co-mounted v1 controllers share a directory.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cnetd.supervisor.base import CPU_MIN_WINDOW, ExitStatus, Handle, SpawnError, Usage
from cnetd.supervisor.none import SessionProcesses

log = logging.getLogger(__name__)

V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
     "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
)
# Where a cgroup's processes are listed, best first (every key holds every process).
TRACK_ORDER = ("unified", "systemd", "memory", "pids", "cpu", "cpuacct")


# --- finding cgroup directories -------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    point: Path
    root: str  # the hierarchy directory mounted at point (mountinfo field 4)
    keys: frozenset[str]  # "unified", or the v1 controllers / "systemd"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, Mount]:
    """Hierarchy key -> the mount that shows it (the last mount on a mount point wins)."""
    by_point: dict[str, Mount] = {}
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            fstype, options = tail[0], tail[2].split(",")
            if fstype == "cgroup2":
                keys = frozenset({"unified"})
            elif fstype == "cgroup":
                keys = frozenset(
                    [o for o in options if o in V1_CONTROLLERS]
                    + [o[5:] for o in options if o.startswith("name=")]
                )
            else:
                continue
            point = _unescape(fields[4])
            by_point[point] = Mount(Path(point), _unescape(fields[3]), keys)
    out: dict[str, Mount] = {}
    for mount in by_point.values():
        for key in mount.keys:
            # Prefer the canonical place when a hierarchy is mounted twice.
            if key not in out or str(mount.point).startswith("/sys/fs/cgroup"):
                out[key] = mount
    return out


def cgroup_dirs_of(pid: int | str, mounts: Mapping[str, Mount] | None = None) -> dict[str, Path]:
    """The directories of pid's cgroups, as this process's mounts show them ("self" works).

    /proc/<pid>/cgroup shows paths relative to the reader's cgroup namespace, and a mount
    may show a sub-tree (a bind mount, a container): strip the mount's root from the path.
    """
    mounts = mounts if mounts is not None else cgroup_mounts()
    out: dict[str, Path] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, names, path = line.rstrip("\n").split(":", 2)
            keys = ["unified"] if names == "" else [n[5:] if n.startswith("name=") else n for n in names.split(",")]
            for key in keys:
                mount = mounts.get(key)
                if mount is None:
                    continue
                root = mount.root.rstrip("/")
                if path != root and not path.startswith(root + "/"):
                    continue  # not visible through our mount
                out[key] = mount.point / path[len(root):].lstrip("/")
    return out


def unique_dirs(dirs: Mapping[str, str | Path]) -> list[Path]:
    seen: dict[Path, None] = {}
    for d in dirs.values():
        seen.setdefault(Path(d), None)
    return list(seen)


# --- reading a cgroup -----------------------------------------------------------------


def read_bytes(path: str | Path) -> bytes | None:
    """The file's bytes, or None when it cannot be read. Plain os calls: this runs for every
    task every few seconds, where pathlib's open() costs more than the read itself."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_text(path: str | Path) -> str | None:
    data = read_bytes(path)
    return None if data is None else data.decode()


def read_int(path: str | Path) -> int | None:
    data = read_bytes(path)
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None  # "max"


def read_keyed(path: str | Path, key: str) -> int | None:
    text = read_text(path)
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


def tracking_dir(dirs: Mapping[str, str]) -> Path | None:
    for key in TRACK_ORDER:
        if key in dirs:
            return Path(dirs[key])
    return next(iter(Path(d) for d in dirs.values()), None)


def cgroup_pids(dirs: Mapping[str, str]) -> list[int]:
    """Every process in the task's cgroup and below it (pids as our PID namespace sees them)."""
    top = tracking_dir(dirs)
    if top is None:
        return []
    pids: list[int] = []
    for current, _subdirs, _files in os.walk(top):
        text = read_text(Path(current) / "cgroup.procs")
        pids.extend(int(p) for p in (text or "").split())
    return pids


def is_empty(dirs: Mapping[str, str]) -> bool:
    unified = dirs.get("unified")
    if unified is not None:
        populated = read_keyed(Path(unified) / "cgroup.events", "populated")
        if populated is not None:
            return populated == 0
    return not cgroup_pids(dirs)


def exists(dirs: Mapping[str, str]) -> bool:
    top = tracking_dir(dirs)
    return top is not None and top.is_dir()


def read_cpu_usec(dirs: Mapping[str, str]) -> int | None:
    """CPU time used by the cgroup: cgroup2's cpu.stat (present even without the cpu
    controller, so hybrid machines have it too), else v1 cpuacct.usage."""
    if "unified" in dirs:
        usec = read_keyed(f"{dirs['unified']}/cpu.stat", "usage_usec")
        if usec is not None:
            return usec
    if "cpuacct" in dirs:
        ns = read_int(f"{dirs['cpuacct']}/cpuacct.usage")
        if ns is not None:
            return ns // 1000
    return None


def read_memory(dirs: Mapping[str, str]) -> tuple[int | None, int | None]:
    """(current, peak) bytes: v1 usage_in_bytes/max_usage_in_bytes, v2 memory.current/peak."""
    if "memory" in dirs:
        d = dirs["memory"]
        return read_int(f"{d}/memory.usage_in_bytes"), read_int(f"{d}/memory.max_usage_in_bytes")
    if "unified" in dirs:
        d = dirs["unified"]
        return read_int(f"{d}/memory.current"), read_int(f"{d}/memory.peak")
    return None, None


def read_oom_kills(dirs: Mapping[str, str]) -> int | None:
    if "memory" in dirs:
        return read_keyed(Path(dirs["memory"]) / "memory.oom_control", "oom_kill")
    if "unified" in dirs:
        return read_keyed(Path(dirs["unified"]) / "memory.events", "oom_kill")
    return None


def read_pids_current(dirs: Mapping[str, str]) -> int | None:
    for key in ("pids", "unified"):
        if key in dirs:
            value = read_int(f"{dirs[key]}/pids.current")
            if value is not None:
                return value
    return None


class CpuMeter:
    """CPU percent from the growth of a cgroup's usage counter between two samples.

    Samples may come from a sampling round and from a read on demand at nearly the same
    moment (each on its own thread): see CPU_MIN_WINDOW."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, tuple[float, int, float | None]] = {}  # key -> (time, usec, percent)
        self._lock = threading.Lock()

    def percent(self, key: str, usage_usec: int | None) -> float | None:
        if usage_usec is None:
            return None
        with self._lock:
            now = self._clock()
            previous = self._last.get(key)
            if previous is not None and now - previous[0] < CPU_MIN_WINDOW:
                return previous[2]
            percent = None
            if previous is not None:
                percent = max(0.0, (usage_usec - previous[1]) / 1e6 / (now - previous[0]) * 100)
            self._last[key] = (now, usage_usec, percent)
        return percent

    def forget(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)


def cgroup_usage(dirs: Mapping[str, str], meter: CpuMeter, key: str) -> Usage:
    current, peak = read_memory(dirs)
    pids = read_pids_current(dirs)
    if pids is None and exists(dirs):
        pids = len(cgroup_pids(dirs))
    return Usage(
        cpu_percent=meter.percent(key, read_cpu_usec(dirs)),
        memory_bytes=current,
        memory_peak_bytes=peak,
        pids=pids,
    )


# --- OOM kills ------------------------------------------------------------------------

_IN_MODIFY, _IN_NONBLOCK, _IN_CLOEXEC = 0x2, os.O_NONBLOCK, os.O_CLOEXEC


class OomWatch:
    """Notices OOM kills while a cgroup's processes run.

    A systemd scope's cgroup is removed as soon as it is empty, often before anyone could
    read its counters, so the kernel's notifications are taken while waiting: v1 an eventfd
    on memory.oom_control (signalled on each OOM, before the kill is counted, and once more
    when the cgroup goes away), v2 inotify on memory.events. While the cgroup can be read,
    its oom_kill counter is the answer; once it is gone, what was seen before decides.
    """

    def __init__(self, dirs: Mapping[str, str]) -> None:
        self._dirs = dict(dirs)
        self._fd: int | None = None
        self._v1 = "memory" in dirs
        self._signals = 0  # v1 eventfd count
        self._kills = read_oom_kills(dirs) or 0
        self._notified = False  # a v1 OOM notification arrived while the cgroup existed
        self._loop: asyncio.AbstractEventLoop | None = None
        if not exists(dirs):
            return  # already gone: nothing left to watch
        try:
            if self._v1:
                self._fd = self._v1_eventfd(Path(dirs["memory"]))
            elif "unified" in dirs and (Path(dirs["unified"]) / "memory.events").exists():
                self._fd = self._v2_inotify(Path(dirs["unified"]) / "memory.events")
        except OSError as exc:
            log.warning("cannot watch OOM events of %s: %s", tracking_dir(dirs), exc)

    @staticmethod
    def _v1_eventfd(memory_dir: Path) -> int:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(memory_dir / "cgroup.event_control", "w") as f:
                    f.write(f"{efd} {ofd}")
            finally:
                os.close(ofd)
        except OSError:
            os.close(efd)
            raise
        return efd

    @staticmethod
    def _v2_inotify(events_file: Path) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        fd: int = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if libc.inotify_add_watch(fd, str(events_file).encode(), _IN_MODIFY) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {events_file}")
        return fd

    def start(self) -> None:
        if self._fd is not None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._fd, self._on_event)

    def _on_event(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        kills = read_oom_kills(self._dirs)
        if kills is not None:
            self._kills = max(self._kills, kills)
        if self._v1:
            self._signals += int.from_bytes(data[:8], "little")
            if kills is not None:
                self._notified = True

    def oom_killed(self) -> bool:
        self._on_event()  # take what arrived since the loop last looked
        kills = read_oom_kills(self._dirs)
        if kills is not None:
            return kills > 0
        # Gone: the removal accounts for one v1 signal, anything beyond it was an OOM.
        return self._kills > 0 or self._notified or self._signals >= 2

    def close(self) -> None:
        if self._fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


# --- acting on a cgroup ---------------------------------------------------------------


def signal_cgroup(dirs: Mapping[str, str], sig: signal.Signals) -> int:
    sent = 0
    for pid in cgroup_pids(dirs):
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            pass
    return sent


def kill_cgroup(dirs: Mapping[str, str]) -> None:
    """SIGKILL everything, atomically through cgroup.kill where the kernel has it."""
    unified = dirs.get("unified")
    if unified is not None and (Path(unified) / "cgroup.kill").exists():
        try:
            (Path(unified) / "cgroup.kill").write_text("1")
            return
        except OSError as exc:
            log.debug("cgroup.kill in %s failed (%s); signalling each process", unified, exc)
    signal_cgroup(dirs, signal.SIGKILL)


async def wait_in_cgroups(procs: SessionProcesses, handle: Handle) -> ExitStatus:
    """The shim's exit once its cgroups are empty, with OOM kills read from the cgroup."""
    dirs = handle.cgroup or {}
    watch = OomWatch(dirs)
    watch.start()
    try:
        status = await procs.wait(handle)
        await wait_empty(dirs, None)
        oom = watch.oom_killed()
    finally:
        watch.close()
    return replace(status, oom_killed=oom)


async def wait_empty(dirs: Mapping[str, str], timeout: float | None) -> bool:
    """Poll until the cgroup has no processes (or is gone); False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while exists(dirs) and not is_empty(dirs):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.25)
    return True


async def terminate(dirs: Mapping[str, str], grace: float, what: str) -> None:
    """SIGTERM every process, SIGKILL what is left after grace, until none is left."""
    signal_cgroup(dirs, signal.SIGTERM)
    if await wait_empty(dirs, grace):
        return
    log.info("%s: still running %.1fs after SIGTERM; sending SIGKILL", what, grace)
    for _ in range(20):
        kill_cgroup(dirs)
        if await wait_empty(dirs, 0.5):
            return
    log.error("%s: processes survive SIGKILL: %s", what, cgroup_pids(dirs))


def remove_dirs(dirs: Iterable[Path]) -> list[Path]:
    """rmdir the given cgroups and their sub-cgroups, deepest first; return what stayed."""
    left = []
    for top in dirs:
        if not top.is_dir():
            continue
        for current, _subdirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(current)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove cgroup %s: %s", current, exc)
                left.append(Path(current))
    return left


async def wait_for_start(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float) -> bool:
    """Poll ready() until it is true, or until proc has ended (False). On a timeout or a
    cancellation proc is killed: a start returns a handle or leaves nothing running."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    try:
        while True:
            if ready():
                return True
            if proc.poll() is not None:
                return ready()
            if time.monotonic() >= deadline:
                raise SpawnError(f"spawn failed: the process did not start within {timeout:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise

