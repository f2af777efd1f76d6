"""The narrow interface every sandbox backend implements.

In the spirit of Nomad's task drivers: start / wait / stop / recover / stats, an
opaque handle that is all a restarted agent needs to reattach, and capabilities
that are declared up front rather than discovered by failure.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


class SpawnError(Exception):
    """The process could not be started; the message is shown to the user as is."""


@dataclass(frozen=True)
class Limits:
    cpu_limit: float | None = None  # cores, fractional
    memory_limit: int | None = None  # bytes
    disk_limit: int | None = None  # bytes the task may write
    tasks_max: int | None = None  # processes/threads in the task
    # None: any device; else only the standard pseudo devices (STANDARD_DEVICES) and these
    # character devices (major, minor): a task's own GPUs on a node with GPUs
    devices: tuple[tuple[int, int], ...] | None = None


# What every task with a device allow-list may open (systemd's DevicePolicy=closed set):
# null, zero, full, random, urandom, tty, ptmx and the pseudo terminals.
STANDARD_DEVICES: tuple[tuple[int, int | None, str], ...] = (
    (1, 3, "rwm"), (1, 5, "rwm"), (1, 7, "rwm"), (1, 8, "rwm"), (1, 9, "rwm"),
    (5, 0, "rwm"), (5, 2, "rw"), (136, None, "rw"),
)


@dataclass(frozen=True)
class LaunchSpec:
    task_id: str
    argv: list[str]  # argv[0] already resolved to an absolute path
    env: dict[str, str]  # the complete environment of the process
    working_dir: Path
    log_path: Path  # stdout and stderr are appended here
    exit_path: Path  # the shim writes the exit code here
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Handle:
    """Everything needed to find the task's processes again, saved in SQLite."""

    backend: str
    pid: int  # the shim's pid, as the agent's PID namespace sees it
    pid_start: int  # start time of that pid in clock ticks since boot (guards PID reuse)
    exit_path: str
    unit: str | None = None  # systemd unit name
    cgroup: dict[str, str] | None = None  # controller (or "unified") -> cgroup directory

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Handle:
        """The handle as saved; UnreadableHandle when the text is not one this agent wrote
        (damaged, or written by a newer agent with fields this one does not know)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UnreadableHandle(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UnreadableHandle(f"a JSON {type(data).__name__}, not an object")
        unknown = set(data) - _HANDLE_FIELDS.keys()
        if unknown:
            raise UnreadableHandle(f"unknown fields {sorted(unknown)} (written by a newer agent?)")
        for name, (types, required) in _HANDLE_FIELDS.items():
            value = data.get(name)
            if value is None:
                if required:
                    raise UnreadableHandle(f"{name} is missing")
                continue
            if not isinstance(value, types) or isinstance(value, bool):
                raise UnreadableHandle(f"{name} is a {type(value).__name__}")
        cgroup = data.get("cgroup")
        if cgroup is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in cgroup.items()):
            raise UnreadableHandle("cgroup is not a map of names to directories")
        return cls(**data)


class UnreadableHandle(ValueError):
    """A saved handle this agent cannot use; the message says what is wrong with it."""


# field -> (accepted types, required)
_HANDLE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "backend": (str, True),
    "pid": (int, True),
    "pid_start": (int, True),
    "exit_path": (str, True),
    "unit": (str, False),
    "cgroup": (dict, False),
}


@dataclass(frozen=True)
class ExitStatus:
    code: int | None  # exit code as the shell reports it (128+N after signal N)
    signal: int | None = None  # the signal that ended the command, when known
    oom_killed: bool = False  # read from the cgroup, never guessed from 137
    lost: bool = False  # the processes are gone and no exit status was recorded


# CPU percent is the growth of a CPU-time counter over the window since the previous
# sample; a sample taken sooner than this after the previous one keeps the previous figure
# (and window), so two reads at nearly the same moment never give a figure over milliseconds.
CPU_MIN_WINDOW = 0.5


@dataclass(frozen=True)
class Usage:
    cpu_percent: float | None = None  # 100 = one full core
    memory_bytes: int | None = None
    memory_peak_bytes: int | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Capabilities:
    enforces_cpu: bool
    enforces_memory: bool
    detects_oom: bool
    kills_whole_tree: bool  # stop reaches every descendant, even ones that left the group
    survives_agent_restart: bool
    enforces_pids: bool = False  # max_pids: a pids controller caps the task's processes and threads
    enforces_devices: bool = False  # Limits.devices: a task opens only its own GPUs' device nodes

    def enforcement(self) -> dict[str, bool]:
        """Per limit, whether it is really enforced (disk and GPU memory are enforced by the supervisor)."""
        return {
            "cpu_limit": self.enforces_cpu,
            "memory_limit": self.enforces_memory,
            "disk_limit": True,
            "max_pids": self.enforces_pids,
            "gpu_limit": self.enforces_devices,
            "gpu_memory": True,  # the agent stops the task from NVML's per-process accounting
        }


@runtime_checkable
class Sandbox(Protocol):
    name: str
    capabilities: Capabilities

    async def start(self, spec: LaunchSpec) -> Handle:
        """Start the process; raise SpawnError with a human message when it cannot."""
        ...

    async def wait(self, handle: Handle) -> ExitStatus:
        """Return once every process of the task is gone. Works for recovered handles."""
        ...

    async def stop(self, handle: Handle, grace: float) -> None:
        """SIGTERM to every process of the task, SIGKILL to what is left after grace."""
        ...

    async def recover(self, handle: Handle) -> bool:
        """True when the task's processes still run (PID reuse ruled out)."""
        ...

    async def stats(self, handle: Handle) -> Usage: ...

    async def release(self, handle: Handle) -> None:
        """Free what the backend holds for a finished task (cgroups, units)."""
        ...

    async def cleanup_orphans(self, keep: set[str], exit_dir: Path) -> list[str]:
        """Destroy every task of this agent's that runs in this backend but is not in keep
        (the tasks reattached at start), and what such tasks left behind (cgroups, units);
        return their ids. exit_dir is where this agent's exit shims write their codes
        (the `none` backend finds its tasks' sessions by it)."""
        ...


@runtime_checkable
class BlockingStats(Protocol):
    """A backend whose stats can also be read without the event loop, so that a sampler
    reads many tasks in one hop to a worker thread instead of one await per task."""

    # read_stats is a handful of reads of in-memory files (cgroupfs, tens of microseconds):
    # short enough to run on the event loop for one task, where a hop to a worker thread
    # would cost more (each of its syscalls waits for the GIL behind busier threads).
    stats_on_loop: bool

    def read_stats(self, handle: Handle) -> Usage:
        """stats() as plain blocking reads; safe to call from any thread."""
        ...
