"""Handlers parse, call a service and render: no module of cnetd/api/ or cnetd/ui/ imports
the store or the supervisor, or reaches for the database, the launcher or the log ingester
through the agent. (Read from the modules' source: nothing is imported or run.)"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("cnetd/api", "cnetd/ui")
FORBIDDEN = ("cnetd.store", "cnetd.supervisor")
# Imports from the forbidden packages that a handler may still make, and why.
ALLOWED = {
    # The record type ModelService.addressed / .named return (a frozen dataclass): v2 names
    # it in its signatures; it runs no query.
    ("cnetd.store.models", "ModelRecord"): "a return type of the model services",
}
# Attributes only the services' own wiring uses; a handler that reads one of them talks to
# the database, a sandbox backend or the ingester itself.
FORBIDDEN_ATTRIBUTES = {"db", "launcher", "ingester", "backend_for"}


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def problems(source: str, where: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if (_forbidden(node.module) or _forbidden(full)) and (node.module, alias.name) not in ALLOWED:
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"{where}:{node.lineno}: .{node.attr}")
    return found


def layer_modules() -> list[Path]:
    modules = [p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))]
    assert len(modules) > 20, modules  # the layout moved: this test would check nothing
    return modules


def test_api_and_ui_reach_the_store_and_supervisor_only_through_services() -> None:
    found = [p for path in layer_modules() for p in problems(path.read_text(), str(path.relative_to(REPO)))]
    assert found == [], "handlers must call a service instead:\n" + "\n".join(found)


def test_the_check_sees_each_way_in() -> None:
    """The check itself: each of these lines would let a handler past a service."""
    sneaky = [
        "from cnetd.store import logs as lq",
        "from cnetd.store.logs import tail",
        "import cnetd.store.tasks",
        "import cnetd.supervisor.base as base",
        "from cnetd.supervisor.base import Handle",
        "from cnetd import store",
        "rows = await agent.db.read(lambda c: c.execute('SELECT 1'))",
        "usage = await agent.launcher.backend_for(handle).stats(handle)",
        "await request.app[AGENT].ingester.wait_for_lines(task_id, 0, 1.0)",
    ]
    for line in sneaky:
        assert problems(line, "x.py"), f"not caught: {line}"
    allowed = [
        "from cnetd.store.models import ModelRecord",
        "from cnetd.ml.catalog import Model",
        "rows = await agent.logs.tail(task_id, 100)",
    ]
    for line in allowed:
        assert problems(line, "x.py") == [], line
