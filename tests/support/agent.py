"""Runs the real agent as a child process on a free loopback port, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.http import Client
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "failed", "stopped"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class AgentProcess:
    """One agent: its own work dir (with examples/ linked in, so the seed's relative
    paths work), config file, state dir and port."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None,
                 prefix: list[str] | None = None, env: dict[str, str] | None = None,
                 command: list[str] | None = None,
                 inner_pid: Callable[[subprocess.Popen[bytes]], int] | None = None,
                 ca_file: Path | None = None) -> None:
        """prefix runs the agent inside something (nsenter into the systemd harness);
        then inner_pid finds the real agent, since nsenter does not forward signals.
        ca_file: the agent serves HTTPS (agent.tls) with a certificate this CA signed."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Like a checkout (git clone makes it 0755): tasks, running under their own uids,
        # read the code in it; what lies above it may be 0700 (pytest's tmp dirs).
        self.workdir.chmod(0o755)
        examples = self.workdir / "examples"
        if not examples.exists():
            examples.symlink_to(REPO / "examples")
        self.port = free_port()
        self.state_dir = self.workdir / "state"
        self.config = deep_merge(
            {
                "agent": {"port": self.port, "state_dir": str(self.state_dir)},
                # Tasks run as the default: a uid of their own in a private namespace, where
                # pytest's 0700 tmp dirs are reached through veils (docs/security.md).
                "tasks": {"sandbox": "none"},
                # examples/ is a symlink into the checkout: allow where it really lives
                "ml": {"allowed_roots": [str(self.workdir), str(REPO / "examples")]},
            },
            config or {},
        )
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.prefix = prefix or []
        self.inner_pid = inner_pid
        self.command = command or [sys.executable, "-I", "-m", "cnetd"]  # or [the built binary]
        self.env = env or {}
        self.log_path = self.workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.api = Client(self.url, ssl_context=self.ssl_context)

    def start(self, ready: bool = True) -> AgentProcess:
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, *self.command, "-config", str(self.config_path)],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                return self.api.get("/api/health", timeout=2).status == 200
            except OSError:
                return False

        wait_until(up, timeout, "the agent to answer /api/health")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        if self.inner_pid is not None:
            os.kill(self.inner_pid(self.proc), sig)
        else:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # A shutdown that hangs is a failure, but the agent must not outlive the test.
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise AssertionError(f"the agent did not exit within 30s of signal {sig} (its log: {self.log_path})") from None
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)
        self.proc = None

    def wait_status(self, task_id: str, statuses: set[str], timeout: float = 60, path: str = "/api/tasks/") -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            reply = self.api.get(path + task_id)
            assert reply.status == 200, reply.text
            return reply.body if reply.body["status"] in statuses else None

        return wait_until(reached, timeout, f"task {task_id} to reach {statuses}")

    def wait_done(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        return self.wait_status(task_id, TERMINAL, timeout)

    def kill_task_processes(self) -> None:
        """Teardown: end every process a task of this agent may have left running.
        (Inside the harness the pids are the namespace's own: the harness cleans up there.)"""
        db = self.state_dir / "cnet.db"
        if not db.exists() or self.inner_pid is not None:
            return
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT handle FROM tasks WHERE handle IS NOT NULL").fetchall()
        except sqlite3.DatabaseError:  # a test may have damaged it on purpose
            rows = []
        finally:
            conn.close()
        import json

        for (handle,) in rows:
            try:
                pid = int(json.loads(handle)["pid"])
            except (ValueError, KeyError, TypeError):  # a test damaged it on purpose
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


