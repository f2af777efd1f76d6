"""The `cgroup` backend: limits written straight to cgroupfs (v2, or v1 where that is what the
machine has), the child placed in its cgroups before it execs. The plumbing it shares with the
systemd backend is in cgroupfs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cnetd.supervisor.base import STANDARD_DEVICES, Capabilities, ExitStatus, Handle, LaunchSpec, SpawnError, Usage
from cnetd.supervisor.cgroupfs import (
    CpuMeter,
    cgroup_dirs_of,
    cgroup_mounts,
    cgroup_pids,
    cgroup_usage,
    exists,
    is_empty,
    kill_cgroup,
    read_text,
    remove_dirs,
    terminate,
    tracking_dir,
    unique_dirs,
    wait_empty,
    wait_for_start,
    wait_in_cgroups,
)
from cnetd.supervisor.none import SessionProcesses, spawn_in_new_session
from cnetd.supervisor.process import SHELL, is_same_process, proc_start_time, shim_argv

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """cgroupfs cannot be used for tasks here; the message says why."""


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
            keys: tuple[str, ...] = tuple(v1) + tuple(k for k in ("devices", "unified") if k in own)
            bases = {k: own[k] / group for k in keys}
            for key in keys:
                try:
                    bases[key].mkdir(exist_ok=True)
                except OSError as exc:
                    if key == "devices":  # GPU isolation only: reported as not enforced
                        log.info("cgroup v1 devices controller not writable (%s); GPU device isolation is off", exc)
                        bases.pop(key)
                        continue
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
    available = set((read_text(own / "cgroup.controllers") or "").split())
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
        if lim.devices is not None and "devices" in dirs:
            write_device_rules(Path(dirs["devices"]), lim.devices, tid)
        return
    d = Path(dirs["unified"])
    if lim.memory_limit is not None:
        _write(d / "memory.max", str(lim.memory_limit), tid)
        _write(d / "memory.swap.max", "0", tid, optional=True)
    if lim.cpu_limit is not None:
        _write(d / "cpu.max", f"{max(1000, round(lim.cpu_limit * CFS_PERIOD_US))} {CFS_PERIOD_US}", tid)
    if lim.tasks_max is not None:
        _write(d / "pids.max", str(lim.tasks_max), tid)


def write_device_rules(directory: Path, devices: tuple[tuple[int, int], ...], task_id: str) -> None:
    """The v1 devices controller as an allow-list: nothing, then the standard pseudo devices
    and the task's own GPU nodes (the same set as systemd's DevicePolicy=closed + DeviceAllow=)."""
    _write(directory / "devices.deny", "a", task_id)
    rules = [f"c {major}:{'*' if minor is None else minor} {access}" for major, minor, access in STANDARD_DEVICES]
    rules += [f"c {major}:{minor} rw" for major, minor in devices]
    for rule in rules:
        _write(directory / "devices.allow", rule, task_id)


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
        enforces_devices=True,
    )

    def __init__(self, layout: CgroupLayout | None = None, group: str = "cnet") -> None:
        self.layout = layout if layout is not None else CgroupLayout.detect(group)
        if self.layout.version == "v1" and "pids" not in self.layout.bases:
            # write_limits has nowhere to put pids.max: say so rather than pretend
            self.capabilities = replace(CgroupSandbox.capabilities, enforces_pids=False)
        if self.layout.version == "v2" or "devices" not in self.layout.bases:
            # v2 filters devices with a BPF program, which this backend does not load
            self.capabilities = replace(self.capabilities, enforces_devices=False)
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
            joined = await wait_for_start(proc, lambda: str(proc.pid) in (read_text(last) or "").split(), 30)
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
