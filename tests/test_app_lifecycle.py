"""The app's lifetime, in-process through create_app with real parts (SQLite file, the
none sandbox, real child processes): one cleanup context per resource, entered in order and
left in reverse, so a start that fails part-way leaves nothing running: no background task
of the agent, no store thread, and no task launched (the scheduler starts last). And a real
agent whose port is taken stops before it has started anything."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from cnetd.app import create_app
from cnetd.cluster.runtime import ClusterNode
from cnetd.config import ClusterSection, Config, EtcdSection, default_config
from cnetd.store.db import Database
from cnetd.tasks.model import Status
from tests.support.agent import AgentProcess
from tests.support.stored_tasks import make_task, record
from tests.support.waiting import wait_until


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argument of the sleeper task; whatever carries it is killed afterwards."""
    mark = f"cnet-lifecycle-{uuid.uuid4().hex}"
    yield mark
    for pid in processes_with(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def agent_with_a_pending_task(tmp_path: Path, marker: str) -> tuple[Config, Path, str]:
    """A config for an agent whose store already holds a pending sleeper task (as a
    restarted agent finds one), and that task's id."""
    work = tmp_path / "work"
    work.mkdir()
    config = default_config(work, state_dir=work / "state", tasks={"sandbox": "none"})
    db = Database(config.agent.state_dir / "cnet.db")
    await db.open()
    try:
        task = dataclasses.replace(
            make_task(config.agent.state_dir, Status.PENDING), name="sleeper", started_at=None,
            command=sys.executable, args=["-c", "import time; time.sleep(120)", marker], working_dir=str(work),
        )
        await db.write(lambda c: record(c, task, []))
    finally:
        await db.close()
    return config, work, task.id


def status_of(config: Config, task_id: str) -> str:
    conn = sqlite3.connect(config.agent.state_dir / "cnet.db")
    try:
        return str(conn.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()[0])
    finally:
        conn.close()


def handle_of(config: Config, task_id: str) -> str:
    conn = sqlite3.connect(config.agent.state_dir / "cnet.db")
    try:
        return str(conn.execute("SELECT handle FROM tasks WHERE id = ?", (task_id,)).fetchone()[0])
    finally:
        conn.close()


def nothing_of_the_agent_runs() -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}, asyncio.all_tasks()
    assert [t.name for t in threading.enumerate() if t.name.startswith("sqlite-")] == []


async def test_a_part_that_fails_to_start_leaves_nothing_running(tmp_path: Path, marker: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config, work, task_id = await agent_with_a_pending_task(tmp_path, marker)
    # A cluster member (its etcd never called: the start that would call it fails first).
    cluster = ClusterSection(etcd=EtcdSection(endpoints=("http://127.0.0.1:9",)), token="t" * 32)
    config = dataclasses.replace(config, cluster=cluster)

    async def cannot_start(self: ClusterNode) -> None:
        raise RuntimeError("injected: the cluster part cannot start")

    # Nothing in a config makes the cluster part fail to start on a healthy machine (an etcd
    # that does not answer only makes it degraded): the failure is injected, standing for
    # any part after the store, the ingester, task supervision, retention, serving and the
    # resource sampler, which have all started by then.
    monkeypatch.setattr(ClusterNode, "start", cannot_start)
    runner = web.AppRunner(create_app(config, base_dir=work))
    with pytest.raises(RuntimeError, match="injected"):
        await runner.setup()
    await runner.cleanup()  # what serve() does on the way out
    nothing_of_the_agent_runs()
    assert status_of(config, task_id) == "pending"  # never launched: the scheduler was not started
    assert processes_with(marker) == []


async def test_the_same_agent_started_whole_launches_the_task_and_stops_cleanly(tmp_path: Path, marker: str) -> None:
    """The control: without the failure the pending task is launched, so the test above
    would see it had the scheduler run before the failure."""
    config, work, task_id = await agent_with_a_pending_task(tmp_path, marker)
    runner = web.AppRunner(create_app(config, base_dir=work))
    await runner.setup()
    try:
        await asyncio.to_thread(wait_until, lambda: processes_with(marker), 30, "the sleeper to start")
        # End it while the agent watches it (a task left running would outlive this
        # in-process agent, as tasks outlive the agent, with its Popen collected unreaped).
        pid = int(json.loads(handle_of(config, task_id))["pid"])
        os.killpg(pid, signal.SIGKILL)
        await asyncio.to_thread(wait_until, lambda: status_of(config, task_id) == "failed", 30, "the exit")
    finally:
        await runner.cleanup()
    nothing_of_the_agent_runs()


def test_a_port_in_use_stops_the_agent_before_anything_starts(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory()
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", agent.port))
        taken.listen()
        agent.start(ready=False)
        assert agent.proc is not None and agent.proc.wait(timeout=60) == 1
    assert f"cannot listen on 127.0.0.1:{agent.port}: Address already in use" in agent.log_text()
    assert not (agent.state_dir / "cnet.db").exists()  # the store was never opened
