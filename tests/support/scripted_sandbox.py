"""A scripted FAKE sandbox backend, for in-process tests of the task service.

It is a fake on purpose, and the only one: it implements the Sandbox protocol without
starting any process, so that a test decides exactly when a start returns, when a process
exits and when a stop lands. The races it is used for ("stop during launch", "exit during
stop", "a stop while the scheduler holds the task", "a crash before the handle is saved")
depend on the order of those events; with real processes they would be timing luck, here
each order is chosen by the test. Everything around it is real: the SQLite file, the task
service, the launcher, the log ingester.

Its "processes" live in a World that outlives one TaskService, so a test can drop an agent
without shutting it down (a crash) and start another one on the same store and World.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from cnetd.supervisor.base import Capabilities, ExitStatus, Handle, LaunchSpec, Usage

NAME = "scripted"


@dataclass
class FakeProcess:
    task_id: str
    pid: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    exit: ExitStatus | None = None
    signals: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.exit is None

    def end(self, exit: ExitStatus) -> None:
        if self.exit is None:
            self.exit = exit
            self.ended.set()


class World:
    """The fake processes, by task id, and what was asked of the backends."""

    def __init__(self) -> None:
        self.processes: dict[str, FakeProcess] = {}
        self.starts: list[str] = []  # task ids, in the order start() was called
        self.released: list[str] = []
        self.destroyed: list[str] = []  # by cleanup_orphans
        self.most_alive = 0  # the most processes alive at once
        self._pids = itertools.count(40000)

    def spawn(self, task_id: str) -> FakeProcess:
        process = FakeProcess(task_id, next(self._pids))
        self.processes[task_id] = process
        self.most_alive = max(self.most_alive, len(self.running()))
        return process

    def running(self) -> set[str]:
        return {t for t, p in self.processes.items() if p.running}

    def exit(self, task_id: str, code: int) -> None:
        """The task's process ends on its own with this code."""
        self.processes[task_id].end(ExitStatus(code=code))


class ScriptedSandbox:
    """start() can be held on a gate the test opens; stop() can be held too."""

    name = NAME
    capabilities = Capabilities(enforces_cpu=False, enforces_memory=False, detects_oom=False,
                                kills_whole_tree=True, survives_agent_restart=True)

    def __init__(self, world: World) -> None:
        self.world = world
        self.start_gates: dict[str, asyncio.Event] = {}  # task id -> start() returns once set
        self.stop_gates: dict[str, asyncio.Event] = {}  # task id -> stop() signals once set
        self.starting: dict[str, asyncio.Event] = {}  # task id -> set when start() was called
        self.stopping: dict[str, asyncio.Event] = {}  # task id -> set when stop() was called
        self.agent_crashed = False  # then a start cut short leaves its process running: no one is left to kill it
        self.fail_release = False
        self.fail_stop = False

    def hold_start(self, task_id: str) -> asyncio.Event:
        return self.start_gates.setdefault(task_id, asyncio.Event())

    def hold_stop(self, task_id: str) -> asyncio.Event:
        return self.stop_gates.setdefault(task_id, asyncio.Event())

    def start_called(self, task_id: str) -> asyncio.Event:
        return self.starting.setdefault(task_id, asyncio.Event())

    def stop_called(self, task_id: str) -> asyncio.Event:
        return self.stopping.setdefault(task_id, asyncio.Event())

    async def start(self, spec: LaunchSpec) -> Handle:
        self.world.starts.append(spec.task_id)
        Path(spec.log_path).touch()
        # Like systemd-run: the process exists before start() returns its handle.
        process = self.world.spawn(spec.task_id)
        self.start_called(spec.task_id).set()
        gate = self.start_gates.get(spec.task_id)
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:  # a start returns a handle or leaves nothing running
                if not self.agent_crashed:
                    process.end(ExitStatus(code=137, signal=9))
                raise
        return Handle(backend=self.name, pid=process.pid, pid_start=1, exit_path=str(spec.exit_path))

    def _process(self, handle: Handle) -> FakeProcess:
        return self.world.processes[Path(handle.exit_path).stem]

    async def wait(self, handle: Handle) -> ExitStatus:
        process = self._process(handle)
        await process.ended.wait()
        assert process.exit is not None
        return process.exit

    async def stop(self, handle: Handle, grace: float) -> None:
        process = self._process(handle)
        self.stop_called(process.task_id).set()
        if self.fail_stop:
            raise OSError("scripted: systemctl kill failed")
        gate = self.stop_gates.get(process.task_id)
        if gate is not None:
            await gate.wait()
        process.signals.append("TERM")
        process.end(ExitStatus(code=143, signal=15))

    async def recover(self, handle: Handle) -> bool:
        return self._process(handle).running

    async def stats(self, handle: Handle) -> Usage:
        running = self._process(handle).running
        return Usage(cpu_percent=0.0, memory_bytes=1 << 20 if running else None, pids=1 if running else 0)

    async def release(self, handle: Handle) -> None:
        self.world.released.append(self._process(handle).task_id)
        if self.fail_release:
            raise OSError("scripted: the cgroup cannot be removed")

    async def cleanup_orphans(self, keep: set[str], exit_dir: Path | None = None) -> list[str]:
        removed = []
        for task_id in sorted(self.world.running() - keep):
            self.world.processes[task_id].end(ExitStatus(code=137, signal=9))
            self.world.destroyed.append(task_id)
            removed.append(task_id)
        return removed
