"""The `systemd` backend: each task in its own transient scope, `cnet-<task-id>.scope` in
cnet.slice, made by `systemd-run --scope` so systemd's cgroups enforce the limits.

`systemd-run --scope` asks systemd (over /run/systemd/private as root) to put its own
process into a new scope and then execs the command in place, so the spawned pid becomes
the exit shim. The scope is made from that pid as the caller's PID namespace sees it: the
agent must run in systemd's PID namespace. Scope processes are outside the agent's service
cgroup, so an agent restart does not touch them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from cnetd.supervisor.base import Capabilities, ExitStatus, Handle, LaunchSpec, SpawnError, Usage
from cnetd.supervisor.cgroupfs import (
    CpuMeter,
    Mount,
    cgroup_dirs_of,
    cgroup_mounts,
    cgroup_usage,
    exists,
    is_empty,
    wait_empty,
    wait_for_start,
    wait_in_cgroups,
)
from cnetd.supervisor.none import SessionProcesses, spawn_in_new_session
from cnetd.supervisor.process import is_same_process, proc_start_time, shim_argv

log = logging.getLogger(__name__)

PRIVATE_SOCKET = Path("/run/systemd/private")
USABLE_STATES = ("running", "degraded", "starting")
UNIT_PREFIX = "cnet-"
SYSTEMCTL_TIMEOUT = 15.0
START_TIMEOUT = 30.0
LOG_TAIL_BYTES = 2000


class SystemdUnavailable(Exception):
    """systemd cannot make scopes here; the message says why."""


def probe(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether transient scopes can be made here, and why (not)."""
    if shutil.which("systemd-run") is None or shutil.which("systemctl") is None:
        return False, "systemd-run/systemctl not installed"
    if os.geteuid() != 0:
        return False, "not running as root (system scopes need root)"
    if not PRIVATE_SOCKET.exists():
        return False, f"systemd is not running ({PRIVATE_SOCKET} missing)"
    try:
        answer = subprocess.run(
            ["systemctl", "is-system-running"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"systemctl is-system-running failed: {exc}"
    state = answer.stdout.strip() or answer.stderr.strip() or f"exit {answer.returncode}"
    if state in USABLE_STATES:
        return True, f"systemd is {state} ({PRIVATE_SOCKET})"
    return False, f"systemd is not usable: is-system-running says {state!r}"


def unit_name(task_id: str) -> str:
    return f"{UNIT_PREFIX}{task_id}.scope"


def task_id_of(unit: str) -> str | None:
    if unit.startswith(UNIT_PREFIX) and unit.endswith(".scope"):
        return unit[len(UNIT_PREFIX) : -len(".scope")]
    return None


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _log_tail(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(offset, os.path.getsize(path) - LOG_TAIL_BYTES))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return ""
    return text.splitlines()[-1] if text else ""


class SystemdSandbox:
    name = "systemd"
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

    def __init__(self, slice_name: str = "cnet.slice") -> None:
        systemd_run, systemctl = shutil.which("systemd-run"), shutil.which("systemctl")
        if systemd_run is None or systemctl is None:
            raise SystemdUnavailable("systemd-run/systemctl not installed")
        self.slice = slice_name
        self._systemd_run = systemd_run
        self._systemd_run_exe = os.path.realpath(systemd_run)
        self._systemctl = systemctl
        self._procs = SessionProcesses()
        self._cpu = CpuMeter()
        mounts = cgroup_mounts()
        if not _has_pids_controller(mounts):
            # TasksMax= is accepted but nothing holds it
            self.capabilities = replace(SystemdSandbox.capabilities, enforces_pids=False)
        if "devices" not in mounts and "unified" in mounts and "memory" in mounts:
            # a hybrid machine without the v1 devices controller: DeviceAllow= holds nothing
            self.capabilities = replace(self.capabilities, enforces_devices=False)
        # On cgroup v1, systemd ignores MemorySwapMax; memory.memsw is written directly.
        self._memory_v1 = "memory" in mounts
        if self._memory_v1:
            log.info("systemd on cgroup v1: MemorySwapMax is not applied by systemd; "
                     "memory.memsw.limit_in_bytes is written to each scope instead")

    def _properties(self, spec: LaunchSpec) -> list[str]:
        lim = spec.limits
        props = ["MemoryAccounting=yes", "CPUAccounting=yes", "TasksAccounting=yes"]
        if lim.memory_limit is not None:
            props.append(f"MemoryMax={lim.memory_limit}")
            if not self._memory_v1:
                props.append("MemorySwapMax=0")
        if lim.cpu_limit is not None:
            props.append(f"CPUQuota={max(1, round(lim.cpu_limit * 100))}%")
        if lim.tasks_max is not None:
            props.append(f"TasksMax={lim.tasks_max}")
        if lim.devices is not None:
            # closed: systemd's standard pseudo devices, plus these (named by number, so the
            # nodes may live anywhere: gpus.device_dir)
            props.append("DevicePolicy=closed")
            props += [f"DeviceAllow=/dev/char/{major}:{minor} rw" for major, minor in lim.devices]
        return [arg for p in props for arg in ("-p", p)]

    async def start(self, spec: LaunchSpec) -> Handle:
        unit = unit_name(spec.task_id)
        argv = [
            self._systemd_run, "--scope", f"--unit={unit}", f"--slice={self.slice}",
            "--collect", "--quiet", *self._properties(spec),
            "--", *shim_argv(spec.exit_path, spec.argv),
        ]
        Path(spec.exit_path).unlink(missing_ok=True)  # a stale code must not pass for this run's
        log_offset = os.path.getsize(spec.log_path) if os.path.exists(spec.log_path) else 0
        proc = spawn_in_new_session(argv, spec)
        start = proc_start_time(proc.pid)
        dirs: dict[str, str] = {}

        def ready() -> bool:
            # systemd-run execs the shim only once the scope is complete in every hierarchy.
            exe = _exe(proc.pid)
            if exe is None or exe == self._systemd_run_exe:
                return False
            try:
                found = cgroup_dirs_of(proc.pid)
            except (FileNotFoundError, ProcessLookupError):
                return True  # exec'd and already gone
            dirs.update({k: str(v) for k, v in found.items() if v.name == unit})
            return True

        execed = await wait_for_start(proc, ready, START_TIMEOUT)
        if not execed and not Path(spec.exit_path).exists():
            reason = _log_tail(spec.log_path, log_offset) or f"systemd-run exited with {proc.returncode}"
            log.error("task %s: systemd-run failed: %s", spec.task_id, reason)
            raise SpawnError(f"spawn failed: systemd-run: {reason}")
        if not dirs:  # it ran to its end before we saw it in the scope
            dirs = self._guess_dirs(unit)
        if spec.limits.memory_limit is not None and "memory" in dirs:
            memsw = Path(dirs["memory"]) / "memory.memsw.limit_in_bytes"
            try:
                memsw.write_text(str(spec.limits.memory_limit))
            except FileNotFoundError:
                pass  # kernel without swap accounting: there is no swap to escape into
            except OSError as exc:
                log.warning("unit %s: cannot write %s: %s", unit, memsw, exc.strerror)
        adopted_start = self._procs.adopt(proc)
        log.debug("task %s: started pid %d in %s", spec.task_id, proc.pid, unit)
        return Handle(
            backend=self.name,
            pid=proc.pid,
            pid_start=start if start is not None else adopted_start,
            exit_path=str(spec.exit_path),
            unit=unit,
            cgroup=dirs,
        )

    def _guess_dirs(self, unit: str) -> dict[str, str]:
        """Where the scope's cgroups would be, assuming our mounts show systemd's root."""
        path = "/".join([*_slice_path(self.slice), unit])
        keys = ("memory", "cpu", "pids", "systemd", "unified")
        return {k: str(m.point / path) for k, m in cgroup_mounts().items() if k in keys}

    async def wait(self, handle: Handle) -> ExitStatus:
        return await wait_in_cgroups(self._procs, handle)

    async def stop(self, handle: Handle, grace: float) -> None:
        unit, dirs = self._unit(handle), handle.cgroup or {}
        await self._systemctl_run("kill", "--kill-who=all", "-s", "SIGTERM", unit)
        if await wait_empty(dirs, grace):
            return
        log.info("unit %s: still running %.1fs after SIGTERM; sending SIGKILL", unit, grace)
        for _ in range(20):
            await self._systemctl_run("kill", "--kill-who=all", "-s", "SIGKILL", unit)
            if await wait_empty(dirs, 0.5):
                return
        log.error("unit %s: processes survive SIGKILL", unit)

    async def recover(self, handle: Handle) -> bool:
        dirs = handle.cgroup or {}
        if dirs:
            running = exists(dirs) and not is_empty(dirs)
        else:
            _, out, _ = await self._systemctl_run("is-active", self._unit(handle))
            running = out.strip() == "active"
        return running and is_same_process(handle.pid, handle.pid_start)

    async def stats(self, handle: Handle) -> Usage:
        return await asyncio.to_thread(self.read_stats, handle)

    def read_stats(self, handle: Handle) -> Usage:
        return cgroup_usage(handle.cgroup or {}, self._cpu, self._unit(handle))

    async def release(self, handle: Handle) -> None:
        unit, dirs = self._unit(handle), handle.cgroup or {}
        self._cpu.forget(unit)
        if exists(dirs) and not is_empty(dirs):
            log.warning("unit %s: processes left at release; killing them", unit)
            await self._systemctl_run("kill", "--kill-who=all", "-s", "SIGKILL", unit)
            await wait_empty(dirs, 5)
        await self._systemctl_run("reset-failed", unit)

    async def cleanup_orphans(self, keep: set[str], exit_dir: Path) -> list[str]:
        _, out, _ = await self._systemctl_run(
            "list-units", "--all", "--plain", "--no-legend", "--no-pager", f"{UNIT_PREFIX}*.scope"
        )
        units = [line.split()[0] for line in out.splitlines() if line.strip()]
        if not units:
            return []
        _, out, _ = await self._systemctl_run("show", "-p", "Id,Slice,ControlGroup", *units)
        removed = []
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            unit, task_id = props.get("Id", ""), task_id_of(props.get("Id", ""))
            if task_id is None or props.get("Slice") != self.slice or task_id in keep:
                continue
            log.warning("unit %s: its task was not reattached at start; stopping it", unit)
            await self._systemctl_run("kill", "--kill-who=all", "-s", "SIGKILL", unit)
            await self._systemctl_run("stop", unit)
            await self._systemctl_run("reset-failed", unit)
            removed.append(task_id)
        return removed

    def _unit(self, handle: Handle) -> str:
        if handle.unit is None:
            raise ValueError(f"handle of pid {handle.pid} has no unit")
        return handle.unit

    async def _systemctl_run(self, *args: str) -> tuple[int, str, str]:
        """Run systemctl; failures are logged (a unit that is already gone is not an error)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self._systemctl, *args,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except OSError as exc:
            log.error("systemctl %s: %s", " ".join(args), exc)
            return 1, "", str(exc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), SYSTEMCTL_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("systemctl %s: no answer within %.0fs", " ".join(args), SYSTEMCTL_TIMEOUT)
            return 1, "", "timeout"
        rc, err_text = proc.returncode or 0, err.decode(errors="replace").strip()
        if rc != 0 and args[0] not in ("is-active", "reset-failed") and "not loaded" not in err_text:
            log.warning("systemctl %s: exit %d: %s", " ".join(args), rc, err_text)
        return rc, out.decode(errors="replace"), err_text


def _has_pids_controller(mounts: Mapping[str, Mount]) -> bool:
    """A v1 pids hierarchy, or a cgroup2 tree whose root offers the pids controller."""
    if "pids" in mounts:
        return True
    unified = mounts.get("unified")
    if unified is None:
        return False
    try:
        return "pids" in (unified.point / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def _slice_path(slice_name: str) -> list[str]:
    """cnet-test.slice -> [cnet.slice, cnet-test.slice] (a dash nests a slice)."""
    stem = slice_name.removesuffix(".slice")
    if stem in ("", "-"):
        return []
    parts = stem.split("-")
    return ["-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))]
