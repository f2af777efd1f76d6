"""The running agent's parts, as the composition root wires them (no globals)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cnetd.cluster.federation import Federation
from cnetd.config import Config
from cnetd.logs.ingester import LogIngester
from cnetd.metrics.resources import ResourceSampler
from cnetd.ml.service import ModelService
from cnetd.ml.serving.manager import ServingManager
from cnetd.store.db import Database
from cnetd.supervisor.launcher import Launcher
from cnetd.tasks.service import TaskService


@dataclass
class Agent:
    config: Config
    base_dir: Path
    node_id: str
    db: Database
    launcher: Launcher
    ingester: LogIngester
    tasks: TaskService
    models: ModelService
    resources: ResourceSampler
    serving: ServingManager
    federation: Federation
    sandbox_reason: str
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: str = ""

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def enforcement(self, backend_name: str | None) -> dict[str, bool]:
        """Per limit, whether the backend a task ran under enforces it."""
        backend = self.launcher.started_backend(backend_name or self.launcher.sandbox.name)
        if backend is None:
            return {"cpu_limit": False, "memory_limit": False, "disk_limit": True, "max_pids": False}
        return backend.capabilities.enforcement()

    def sandbox_summary(self) -> dict[str, object]:
        """The backend tasks start in, why it was chosen, which limits it enforces, and who
        tasks run as (for /api/health, /api/node and the UI)."""
        sandbox = self.launcher.sandbox
        return {
            "backend": sandbox.name,
            "reason": self.sandbox_reason,
            "limits_enforced": sandbox.capabilities.enforcement(),
            "task_user": self.task_user(),
        }

    def task_user(self) -> dict[str, object]:
        """Who task processes run as: tasks.run_as, or the agent's own user."""
        user = self.launcher.user
        if user is not None:
            return user.to_json()
        return {"name": self.launcher.user_name, "uid": os.geteuid(), "gid": os.getegid()}


AGENT = web.AppKey("agent", Agent)
