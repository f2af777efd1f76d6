"""The `cgroup` backend: limits written straight to cgroupfs, and the cgroupfs plumbing it
shares with the systemd backend.

A task's cgroup directories are kept in Handle.cgroup as a map from hierarchy key to
directory: v1 controller names ("memory", "cpu", "cpuacct", "pids", "systemd" for
name=systemd) and "unified" for the cgroup2 hierarchy (the whole tree on a pure v2 machine,
a controller-less tracking tree on a hybrid one). Co-mounted v1 controllers share a directory.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
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

from cnetd.supervisor.base import CPU_MIN_WINDOW, Capabilities, ExitStatus, Handle, LaunchSpec, SpawnError, Usage
from cnetd.supervisor.none import SessionProcesses, spawn_in_new_session
from cnetd.supervisor.process import SHELL, is_same_process, proc_start_time, shim_argv

log = logging.getLogger(__name__)

V1_CONTROLLERS = frozenset(
    {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
     "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
)
# Where a cgroup's processes are listed, best first (every key holds every process).
TRACK_ORDER = ("unified", "systemd", "memory", "pids", "cpu", "cpuacct")
CFS_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """cgroupfs cannot be used for tasks here; the message says why."""


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


def _read_bytes(path: str | Path) -> bytes | None:
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


def _read(path: str | Path) -> str | None:
    data = _read_bytes(path)
    return None if data is None else data.decode()


def _read_int(path: str | Path) -> int | None:
    data = _read_bytes(path)
    try:
        return int(data) if data is not None else None
    except ValueError:
        return None  # "max"


def _keyed(path: str | Path, key: str) -> int | None:
    text = _read(path)
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
        text = _read(Path(current) / "cgroup.procs")
        pids.extend(int(p) for p in (text or "").split())
    return pids


def is_empty(dirs: Mapping[str, str]) -> bool:
    unified = dirs.get("unified")
    if unified is not None:
        populated = _keyed(Path(unified) / "cgroup.events", "populated")
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
        usec = _keyed(f"{dirs['unified']}/cpu.stat", "usage_usec")
        if usec is not None:
            return usec
    if "cpuacct" in dirs:
        ns = _read_int(f"{dirs['cpuacct']}/cpuacct.usage")
        if ns is not None:
            return ns // 1000
    return None


def read_memory(dirs: Mapping[str, str]) -> tuple[int | None, int | None]:
    """(current, peak) bytes: v1 usage_in_bytes/max_usage_in_bytes, v2 memory.current/peak."""
    if "memory" in dirs:
        d = dirs["memory"]
        return _read_int(f"{d}/memory.usage_in_bytes"), _read_int(f"{d}/memory.max_usage_in_bytes")
    if "unified" in dirs:
        d = dirs["unified"]
        return _read_int(f"{d}/memory.current"), _read_int(f"{d}/memory.peak")
    return None, None


def read_oom_kills(dirs: Mapping[str, str]) -> int | None:
    if "memory" in dirs:
        return _keyed(Path(dirs["memory"]) / "memory.oom_control", "oom_kill")
    if "unified" in dirs:
        return _keyed(Path(dirs["unified"]) / "memory.events", "oom_kill")
    return None


def read_pids_current(dirs: Mapping[str, str]) -> int | None:
    for key in ("pids", "unified"):
        if key in dirs:
            value = _read_int(f"{dirs[key]}/pids.current")
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


# --- the backend ----------------------------------------------------------------------

# Placed in the cgroups before the shim (and so the command) is exec'd: the wrapper
# writes its own pid into each cgroup.procs, then becomes the shim with the same pid.
JOIN_SCRIPT = (
    'while [ "$1" != -- ]; do echo $$ > "$1" || '
    '{ echo "cnet: cannot join cgroup $1" >&2; exit 125; }; shift; done; shift; exec "$@"'
)


@dataclass(frozen=True)
class CgroupLayout:
    version: str  # "v1" or "v2"
    bases: dict[str, Path]  # hierarchy key -> the directory that holds one group per task
    limit_keys: tuple[str, ...]  # hierarchies written to (with "unified" for tracking on v1)

    @classmethod
    def detect(cls, group: str = "cnet") -> CgroupLayout:
        """Groups go under the agent's own cgroup in each hierarchy; raise when unusable."""
        if os.geteuid() != 0:
            raise CgroupUnavailable("not running as root")
        mounts = cgroup_mounts()
        own = cgroup_dirs_of("self", mounts)
        v1 = [k for k in ("memory", "cpu", "cpuacct", "pids") if k in own]
        if {"memory", "cpu"} <= set(v1):
            keys = tuple(v1) + (("unified",) if "unified" in own else ())
            bases = {k: own[k] / group for k in keys}
            for key in keys:
                try:
                    bases[key].mkdir(exist_ok=True)
                except OSError as exc:
                    if key == "unified":  # tracking only: go without it
                        log.info("cgroup2 tracking tree not writable (%s); using v1 only", exc)
                        bases.pop(key)
                        continue
                    raise CgroupUnavailable(f"cgroup v1 {key} not writable: {bases[key]}: {exc.strerror}") from exc
            return cls("v1", bases, tuple(bases))
        if "unified" in own:
            return cls("v2", {"unified": _prepare_v2(own["unified"], group)}, ("unified",))
        raise CgroupUnavailable("no cgroup v1 memory+cpu hierarchies and no cgroup2 mount")

    def task_dirs(self, task_id: str) -> dict[str, str]:
        return {k: str(base / task_id) for k, base in self.bases.items()}

    def describe(self) -> str:
        if self.version == "v1":
            return "cgroup v1 (" + ", ".join(k for k in self.limit_keys if k != "unified") + ")"
        return "cgroup v2"


def _prepare_v2(own: Path, group: str) -> Path:
    """Make <own>/<group> a cgroup2 parent with memory, cpu and pids delegated to children.

    Controllers can only be enabled in a cgroup without processes of its own, so when
    the agent sits in `own`, it first moves itself into the leaf <own>/agent.
    """
    wanted = {"memory", "cpu", "pids"}
    available = set((_read(own / "cgroup.controllers") or "").split())
    if not wanted <= available:
        raise CgroupUnavailable(
            f"cgroup2 at {own} lacks controllers {', '.join(sorted(wanted - available))}"
        )
    enable = " ".join(f"+{c}" for c in sorted(wanted))
    try:
        (own / "cgroup.subtree_control").write_text(enable)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise CgroupUnavailable(f"cgroup2 {own} not writable: {exc.strerror}") from exc
        leaf = own / "agent"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(str(os.getpid()))
        log.info("moved the agent into %s so that %s can delegate controllers", leaf, own)
        (own / "cgroup.subtree_control").write_text(enable)
    base = own / group
    base.mkdir(exist_ok=True)
    (base / "cgroup.subtree_control").write_text(enable)
    return base


def probe(group: str = "cnet") -> tuple[CgroupLayout | None, str]:
    try:
        layout = CgroupLayout.detect(group)
    except CgroupUnavailable as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cgroupfs not usable: {exc}"
    where = layout.bases.get("memory") or layout.bases["unified"]
    return layout, f"{layout.describe()} writable under {where.parent}"


def _write(path: Path, value: str, task_id: str, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        if not optional:
            raise SpawnError(f"spawn failed: cgroup file {path} is missing") from None
        log.info("task %s: %s not available; limit not set", task_id, path.name)
    except OSError as exc:
        if not optional:
            raise SpawnError(f"spawn failed: cannot write {value} to {path}: {exc.strerror}") from exc
        log.warning("task %s: cannot write %s to %s: %s", task_id, value, path, exc.strerror)


def write_limits(layout: CgroupLayout, dirs: Mapping[str, str], spec: LaunchSpec) -> None:
    lim, tid = spec.limits, spec.task_id
    if layout.version == "v1":
        if lim.memory_limit is not None:
            mem = Path(dirs["memory"])
            _write(mem / "memory.limit_in_bytes", str(lim.memory_limit), tid)
            # memory+swap at the same value: no escape into swap (present only with swap accounting)
            _write(mem / "memory.memsw.limit_in_bytes", str(lim.memory_limit), tid, optional=True)
        if lim.cpu_limit is not None:
            cpu = Path(dirs["cpu"])
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US), tid)
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, round(lim.cpu_limit * CFS_PERIOD_US))), tid)
        if lim.tasks_max is not None and "pids" in dirs:
            _write(Path(dirs["pids"]) / "pids.max", str(lim.tasks_max), tid)
        return
    d = Path(dirs["unified"])
    if lim.memory_limit is not None:
        _write(d / "memory.max", str(lim.memory_limit), tid)
        _write(d / "memory.swap.max", "0", tid, optional=True)
    if lim.cpu_limit is not None:
        _write(d / "cpu.max", f"{max(1000, round(lim.cpu_limit * CFS_PERIOD_US))} {CFS_PERIOD_US}", tid)
    if lim.tasks_max is not None:
        _write(d / "pids.max", str(lim.tasks_max), tid)


class CgroupSandbox:
    name = "cgroup"
    stats_on_loop = True  # read_stats reads four cgroupfs files
    capabilities = Capabilities(
        enforces_cpu=True,
        enforces_memory=True,
        detects_oom=True,
        kills_whole_tree=True,
        survives_agent_restart=True,
        enforces_pids=True,
    )

    def __init__(self, layout: CgroupLayout | None = None, group: str = "cnet") -> None:
        self.layout = layout if layout is not None else CgroupLayout.detect(group)
        if self.layout.version == "v1" and "pids" not in self.layout.bases:
            # write_limits has nowhere to put pids.max: say so rather than pretend
            self.capabilities = replace(CgroupSandbox.capabilities, enforces_pids=False)
        self._procs = SessionProcesses()
        self._cpu = CpuMeter()

    async def start(self, spec: LaunchSpec) -> Handle:
        dirs = self.layout.task_dirs(spec.task_id)
        for d in unique_dirs(dirs):
            try:
                d.mkdir()
            except FileExistsError:
                if cgroup_pids({"x": str(d)}):
                    raise SpawnError(f"spawn failed: cgroup {d} already holds processes") from None
        procs_files = [d / "cgroup.procs" for d in unique_dirs(dirs)]
        try:
            write_limits(self.layout, dirs, spec)
            Path(spec.exit_path).unlink(missing_ok=True)  # a stale code must not pass for this run's
            argv = [SHELL, "-c", JOIN_SCRIPT, "cnet-join", *map(str, procs_files), "--", *shim_argv(spec.exit_path, spec.argv)]
            proc = spawn_in_new_session(argv, spec)
        except BaseException:
            remove_dirs(unique_dirs(dirs))
            raise
        start = proc_start_time(proc.pid)
        last = procs_files[-1]
        try:
            joined = await wait_for_start(proc, lambda: str(proc.pid) in (_read(last) or "").split(), 30)
        except BaseException:
            remove_dirs(unique_dirs(dirs))
            raise
        if not joined and not Path(spec.exit_path).exists():
            # it ended without ever running the shim: the join failed (its message is in the log)
            remove_dirs(unique_dirs(dirs))
            raise SpawnError(f"spawn failed: could not place the process in its cgroup {last.parent}")
        adopted_start = self._procs.adopt(proc)
        handle = Handle(
            backend=self.name,
            pid=proc.pid,
            pid_start=start if start is not None else adopted_start,
            exit_path=str(spec.exit_path),
            cgroup=dirs,
        )
        log.debug("task %s: started pid %d in %s", spec.task_id, proc.pid, last.parent)
        return handle

    async def wait(self, handle: Handle) -> ExitStatus:
        return await wait_in_cgroups(self._procs, handle)

    async def stop(self, handle: Handle, grace: float) -> None:
        await terminate(handle.cgroup or {}, grace, f"task cgroup {tracking_dir(handle.cgroup or {})}")

    async def recover(self, handle: Handle) -> bool:
        dirs = handle.cgroup or {}
        return exists(dirs) and not is_empty(dirs) and is_same_process(handle.pid, handle.pid_start)

    async def stats(self, handle: Handle) -> Usage:
        return await asyncio.to_thread(self.read_stats, handle)

    def read_stats(self, handle: Handle) -> Usage:
        return cgroup_usage(handle.cgroup or {}, self._cpu, str(handle.pid))

    async def release(self, handle: Handle) -> None:
        self._cpu.forget(str(handle.pid))
        remove_dirs(unique_dirs(handle.cgroup or {}))

    async def cleanup_orphans(self, keep: set[str], exit_dir: Path) -> list[str]:
        # Tasks are found in the memory (v2: unified) base only: it lies under the agent's
        # own cgroup, while the other v1 bases may be shared with agents in other cgroups.
        primary = self.layout.bases.get("memory") or self.layout.bases["unified"]
        found = {e.name for e in os.scandir(primary) if e.is_dir(follow_symlinks=False)} if primary.is_dir() else set()
        removed = []
        for task_id in sorted(found - keep):
            dirs = self.layout.task_dirs(task_id)
            if exists(dirs) and not is_empty(dirs):
                log.warning("task %s: not reattached at start but still running in its cgroup; killing it", task_id)
                kill_cgroup(dirs)
                if not await wait_empty(dirs, 10):
                    log.error("task %s: orphan processes survive SIGKILL: %s", task_id, cgroup_pids(dirs))
            remove_dirs(unique_dirs(dirs))
            removed.append(task_id)
        return removed
