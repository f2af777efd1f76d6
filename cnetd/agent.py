"""The running agent's parts, as the composition root wires them (no globals)."""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from cnetd.cluster.describe import NodeDescriber
from cnetd.cluster.runtime import ClusterNode
from cnetd.config import Config
from cnetd.gpus.status import GpuStatus, gpu_status
from cnetd.logs.reader import LogReader
from cnetd.metrics.resources import ResourceSampler
from cnetd.ml.envs.service import Environments
from cnetd.ml.monitor.service import Monitor
from cnetd.ml.service import ModelService
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.versions.service import VersionService
from cnetd.node import NodeIdentity
from cnetd.supervisor.launcher import Launcher
from cnetd.tasks.service import TaskService


@dataclass
class Agent:
    """What handlers reach: the services, and summaries of this node. The launcher is here
    for those summaries only; no handler touches it (tests/test_seams.py)."""

    config: Config
    base_dir: Path
    identity: NodeIdentity
    launcher: Launcher
    logs: LogReader
    tasks: TaskService
    models: ModelService
    resources: ResourceSampler
    serving: ServingManager
    versions: VersionService
    environments: Environments
    cluster: ClusterNode | None  # None: a single node (no cluster section)
    describe: NodeDescriber  # this node as its record in the cluster says it
    sandbox_reason: str
    monitor: Monitor | None = None  # per-version roll-ups and input drift of served models
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: str = ""

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def node_json(self) -> dict[str, object]:
        """This node as /api/node and the UI's dashboard show it."""
        return {
            **self.identity.to_json(),
            "started_at": self.started_at,
            "uptime_seconds": round(self.uptime, 3),
            "sandbox": self.sandbox_summary(),
            "ml_enabled": self.config.ml.enabled,
            "max_concurrent": self.config.tasks.max_concurrent,
            "url": self.describe.url,
            "cluster": None if self.cluster is None else self.cluster.status_json(),
        }

    async def gpu_status(self) -> GpuStatus:
        return await gpu_status(self.tasks.db, self.launcher.gpus.inventory)

    def enforcement(self, backend_name: str | None) -> dict[str, bool]:
        """Per limit, whether the backend a task ran under enforces it."""
        backend = self.launcher.started_backend(backend_name or self.launcher.sandbox.name)
        if backend is None:
            return {"cpu_limit": False, "memory_limit": False, "disk_limit": True, "max_pids": False, "gpu_limit": False,
                    "gpu_memory": True}
        return backend.capabilities.enforcement()

    @property
    def sandbox_name(self) -> str:
        """The backend tasks start in."""
        return self.launcher.sandbox.name

    def sandbox_summary(self) -> dict[str, object]:
        """The backend tasks start in, why it was chosen, which limits it enforces, who
        tasks run as and what they can see (for /api/health, /api/node and the UI)."""
        sandbox = self.launcher.sandbox
        return {
            "backend": sandbox.name,
            "reason": self.sandbox_reason,
            "limits_enforced": sandbox.capabilities.enforcement(),
            "task_user": self.task_user(),
            "isolation": self.launcher.isolation.summary(),
        }

    def task_user(self) -> dict[str, object]:
        """Who task processes run as: a uid of their own, one configured user, or the
        agent's own user."""
        identities = self.launcher.identities
        if identities.mode == "dynamic":
            r = identities.uid_range
            return {"mode": "dynamic", "name": "a uid of its own per model and process task",
                    "uid": None, "uid_range": [r.start, r.end]}
        if identities.static_user is not None:
            return {"mode": "static", **identities.static_user.to_json()}
        try:
            name = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            name = str(os.geteuid())
        return {"mode": "agent", "name": name, "uid": os.geteuid(), "gid": os.getegid()}


AGENT = web.AppKey("agent", Agent)
