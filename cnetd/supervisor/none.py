"""The `none` backend: a process group in its own session, and no enforced limits.

Every response that shows this backend says cpu and memory limits are not enforced.
The processes do not depend on the agent (no pipes, own session), so they outlive an
agent crash and are recovered by (pid, start time) afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

from cnetd.supervisor.base import CPU_MIN_WINDOW, Capabilities, ExitStatus, Handle, LaunchSpec, SpawnError, Usage
from cnetd.supervisor.process import (
    is_same_process,
    proc_start_time,
    read_exit_file,
    session_members,
    shim_argv,
    shim_sessions,
    wait_for_exit,
)

log = logging.getLogger(__name__)


def open_log_for_append(path: os.PathLike[str] | str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def spawn_in_new_session(argv: list[str], spec: LaunchSpec) -> subprocess.Popen[bytes]:
    """Start argv with stdout+stderr appended to the task's log, stdin closed."""
    log_fd = open_log_for_append(spec.log_path)
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            cwd=spec.working_dir,
            env=spec.env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise SpawnError(f"spawn failed: {exc.strerror or exc}") from exc
    finally:
        os.close(log_fd)


KILL_SETTLE_SECONDS = 2.0  # SIGKILL is not instant: wait until the session is really empty


class SessionProcesses:
    """Bookkeeping for processes started in their own session (shared with other backends)."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._cpu_samples: dict[int, tuple[float, float, float | None]] = {}  # pid -> (time, cpu s, percent)

    def adopt(self, proc: subprocess.Popen[bytes]) -> int:
        start = proc_start_time(proc.pid)
        self._children[proc.pid] = proc
        # A command that ends within microseconds may already be a zombie; it still
        # started, so use the zombie-free marker 0 and let wait() collect it.
        return start if start is not None else 0

    async def wait(self, handle: Handle) -> ExitStatus:
        child = self._children.pop(handle.pid, None)
        if child is not None:
            await wait_for_exit(handle.pid, handle.pid_start, reap=False)
            code = child.wait()  # already exited: this only collects the status
            self._cpu_samples.pop(handle.pid, None)
            recorded = read_exit_file(handle.exit_path)
            if recorded is not None:
                return recorded
            # The shim itself was killed (a stop past its grace): report how it ended.
            return ExitStatus(code=128 - code if code < 0 else code, signal=-code if code < 0 else None)
        await wait_for_exit(handle.pid, handle.pid_start)
        self._cpu_samples.pop(handle.pid, None)
        recorded = read_exit_file(handle.exit_path)
        return recorded if recorded is not None else ExitStatus(code=None, lost=True)

    def members(self, handle: Handle) -> list[int]:
        """The shim's session, limited to processes not older than the shim (PID reuse)."""
        out = []
        for pid in session_members(handle.pid):
            start = proc_start_time(pid)
            if start is not None and start >= handle.pid_start:
                out.append(pid)
        return out

    async def stop(self, handle: Handle, grace: float) -> None:
        self._signal_all(handle, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.members(handle):
                return
            await asyncio.sleep(0.05)
        self._signal_all(handle, signal.SIGKILL)
        deadline = time.monotonic() + KILL_SETTLE_SECONDS
        while self.members(handle) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def kill(self, handle: Handle) -> None:
        """SIGKILL the whole session at once, and wait until it is empty."""
        self._signal_all(handle, signal.SIGKILL)
        deadline = time.monotonic() + KILL_SETTLE_SECONDS
        while self.members(handle) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _signal_all(self, handle: Handle, sig: signal.Signals) -> None:
        for pid in self.members(handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def alive(self, handle: Handle) -> bool:
        return is_same_process(handle.pid, handle.pid_start)

    def usage(self, handle: Handle) -> Usage:
        rss = 0
        cpu_seconds = 0.0
        pids = 0
        for pid in self.members(handle):
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu_seconds += t.user + t.system
                    pids += 1
            except psutil.Error:
                continue
        now = time.monotonic()
        previous = self._cpu_samples.get(handle.pid)
        if previous is not None and now - previous[0] < CPU_MIN_WINDOW:
            return Usage(cpu_percent=previous[2], memory_bytes=rss, pids=pids)
        cpu_percent = None
        if previous is not None:
            cpu_percent = max(0.0, (cpu_seconds - previous[1]) / (now - previous[0]) * 100)
        self._cpu_samples[handle.pid] = (now, cpu_seconds, cpu_percent)
        return Usage(cpu_percent=cpu_percent, memory_bytes=rss, pids=pids)


class NoneSandbox:
    name = "none"
    stats_on_loop = False  # read_stats walks /proc: a worker thread only
    capabilities = Capabilities(
        enforces_cpu=False,
        enforces_memory=False,
        detects_oom=False,
        kills_whole_tree=False,
        survives_agent_restart=True,
    )

    def __init__(self) -> None:
        self._procs = SessionProcesses()

    async def start(self, spec: LaunchSpec) -> Handle:
        proc = spawn_in_new_session(shim_argv(spec.exit_path, spec.argv), spec)
        start = self._procs.adopt(proc)
        return Handle(backend=self.name, pid=proc.pid, pid_start=start, exit_path=str(spec.exit_path))

    async def wait(self, handle: Handle) -> ExitStatus:
        return await self._procs.wait(handle)

    async def stop(self, handle: Handle, grace: float) -> None:
        await self._procs.stop(handle, grace)

    async def recover(self, handle: Handle) -> bool:
        return self._procs.alive(handle)

    async def stats(self, handle: Handle) -> Usage:
        return await asyncio.to_thread(self.read_stats, handle)

    def read_stats(self, handle: Handle) -> Usage:
        return self._procs.usage(handle)

    async def release(self, handle: Handle) -> None:
        return None

    async def cleanup_orphans(self, keep: set[str], exit_dir: Path) -> list[str]:
        removed = []
        for task_id, pid in sorted((await asyncio.to_thread(shim_sessions, exit_dir)).items()):
            start = proc_start_time(pid)
            if task_id in keep or start is None:
                continue
            log.warning("task %s: not reattached at start but its session (pid %d) still runs; killing it", task_id, pid)
            orphan = Handle(backend=self.name, pid=pid, pid_start=start, exit_path=str(exit_dir / f"{task_id}.exit"))
            await self._procs.kill(orphan)
            removed.append(task_id)
        return removed
