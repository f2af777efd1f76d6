"""The agent speaks sd_notify on its own (no systemd needed to check it): the test plays
the service manager with a datagram socket of its own as NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cnetd.sdnotify import Notifier
from tests.support.agent import AgentProcess
from tests.support.waiting import wait_until

PY = sys.executable


class FakeManager:
    """Collects the datagrams the agent sends, each with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.on_ready: Callable[[], int] | None = None  # called the moment READY=1 arrives
        self.ready_check: int | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = data.decode().split("\n")
            if "READY=1" in fields and self.on_ready is not None and self.ready_check is None:
                self.ready_check = self.on_ready()
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def fields(self) -> list[str]:
        with self._lock:
            return [f for _, fields in self.messages for f in fields]

    def times_of(self, field: str) -> list[float]:
        with self._lock:
            return [t for t, fields in self.messages if field in fields]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    fake = FakeManager(tmp_path / "notify.sock")
    yield fake
    fake.close()


def health_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/api/health", timeout=5) as resp:
            return int(resp.status)
    except OSError:
        return 0


def test_ready_only_once_serving_then_watchdog_then_stopping(agent_factory, manager: FakeManager) -> None:  # type: ignore[no-untyped-def]
    agent: AgentProcess = agent_factory(env={"NOTIFY_SOCKET": str(manager.path), "WATCHDOG_USEC": "400000"})
    # The moment READY=1 arrives, the API must already answer.
    manager.on_ready = lambda: health_status(agent.url)
    agent.start(ready=False)
    wait_until(lambda: manager.times_of("READY=1"), 30, "READY=1")
    assert manager.ready_check == 200, "READY=1 came before the HTTP server answered"
    fields = manager.fields()
    statuses = [f for f in fields if f.startswith("STATUS=")]
    assert statuses[0].startswith("STATUS=starting"), statuses
    assert any(s.startswith("STATUS=serving http://127.0.0.1:") for s in statuses), statuses
    # WATCHDOG_USEC=0.4s: a ping every 0.2s from the event loop
    wait_until(lambda: len(manager.times_of("WATCHDOG=1")) >= 3, 10, "three WATCHDOG=1 pings")

    # Tasks do not inherit the notify socket (they could speak for the agent).
    env_probe = "import os; print([k for k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID') if k in os.environ])"
    task = agent.api.post("/api/tasks", {"name": "env", "command": PY, "args": ["-c", env_probe]}).body
    agent.wait_done(task["id"])
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["[]"]

    # SIGTERM with a task mid-output and a log follower open: STOPPING=1, every line
    # written so far in SQLite, a clean exit within a few seconds.
    gate = agent.workdir / "gate"
    n = 500
    code = f"import os, time\nfor i in range({n}): print(i)\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)"
    task = agent.api.post("/api/tasks", {"name": "printer", "command": PY, "args": ["-c", code]}).body
    log_file = agent.state_dir / "logs" / f"{task['id']}.log"
    wait_until(lambda: log_file.exists() and log_file.read_bytes().count(b"\n") == n, 30, "the task to print its lines")
    follower = urllib.request.urlopen(f"{agent.url}/api/tasks/{task['id']}/logs?follow=1", timeout=30)
    assert agent.proc is not None
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code_ = agent.proc.wait(timeout=15)
    took = time.monotonic() - started
    follower.close()
    agent.proc = None
    assert code_ == 0, agent.log_text()
    assert took < 5, f"the agent took {took:.1f}s to exit after SIGTERM"
    assert "STOPPING=1" in manager.fields()
    conn = sqlite3.connect(agent.state_dir / "cnet.db")
    try:
        rows = conn.execute("SELECT line FROM log_lines WHERE task_id = ? ORDER BY seq", (task["id"],)).fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == [str(i) for i in range(n)]
    gate.touch()


def test_notifier_reads_and_unsets_the_environment(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": "@cnet-test-abstract", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier(env)
    assert notifier.enabled and notifier.address == b"\0cnet-test-abstract"
    assert notifier.watchdog_interval == 15.0
    assert env == {}
    # a watchdog meant for another process is not ours
    other = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.enabled and other.watchdog_interval is None
    # outside systemd every call is a no-op
    none = Notifier({})
    assert not none.enabled and none.notify("READY=1") is False
    # a socket that is not there: False, once logged, never raised
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    try:
        assert gone.ready("x") is False and gone.watchdog() is False
    finally:
        gone.close()


def test_under_journald_lines_carry_no_timestamp_of_their_own(agent_factory) -> None:  # type: ignore[no-untyped-def]
    """journald stamps each line: with JOURNAL_STREAM set the agent adds none, and the
    service's variables do not leak into the tasks."""
    service_env = {"JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0" * 32}
    agent: AgentProcess = agent_factory(env=service_env).start()
    lines = [line for line in agent.log_text().splitlines() if line.strip()]
    assert lines and all(line.startswith(("DEBUG ", "INFO ", "WARNING ", "ERROR ")) for line in lines), lines
    probe = "import os; print(sorted(k for k in ('JOURNAL_STREAM', 'INVOCATION_ID') if k in os.environ))"
    task = agent.api.post("/api/tasks", {"name": "env", "command": PY, "args": ["-c", probe]}).body
    agent.wait_done(task["id"])
    assert agent.api.get(f"/api/tasks/{task['id']}/logs").body == ["[]"]

    if "JOURNAL_STREAM" not in os.environ:  # (the test runner itself may run under journald)
        plain = agent_factory(name="plain").start()
        first = plain.log_text().splitlines()[0]
        assert first[:4].isdigit() and first[4] == "-", first  # 2026-01-01 12:00:00,000 INFO ...
