"""constraints.txt, the lock (written by bin/lock), and what a venv holds against it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "constraints.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version}; a line that is not an exact pin is an error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: not an exact pin (name==version): {line!r}")
        pins[canonical(match[1])] = match[2]
    return pins


def installed(python: Path) -> dict[str, str]:
    """{canonical name: version} of what `pip list` shows in python's venv, less editables
    (the agent itself)."""
    proc = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=120, check=True, stdin=subprocess.DEVNULL,
    )
    return {canonical(p["name"]): p["version"] for p in json.loads(proc.stdout)}


def unpinned(python: Path) -> list[str]:
    """What python's venv holds that the lock does not pin, or pins at another version."""
    pins = read_lock()
    out = []
    for name, version in sorted(installed(python).items()):
        if name not in pins:
            out.append(f"{name} {version} (not in constraints.txt)")
        elif pins[name] != version:
            out.append(f"{name} {version} (constraints.txt pins {pins[name]})")
    return out
