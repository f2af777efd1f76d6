"""A Launcher for in-process tests: tasks as the agent's own user, no namespace."""

from __future__ import annotations

import os
from pathlib import Path

from cnetd.config import TasksSection, UidRange
from cnetd.security.identity import Identities
from cnetd.security.isolation import Isolation
from cnetd.supervisor.base import Sandbox
from cnetd.supervisor.launcher import Launcher
from cnetd.supervisor.none import NoneSandbox


def make_launcher(state_dir: Path, base_dir: Path, settings: TasksSection | None = None,
                  sandbox: Sandbox | None = None) -> Launcher:
    identities = Identities("agent", UidRange(), None, state_dir / "home")
    isolation = Isolation(state_dir=state_dir, allowed_roots=[base_dir], model_roots=[base_dir / "models"],
                          secret_files=[], namespaces=False, problem="tasks run as the agent's own user")
    return Launcher(sandbox or NoneSandbox(), state_dir, base_dir, os.environ, settings or TasksSection(),
                    identities, isolation)
