"""The lock: constraints.txt pins every package the agent's venvs install, bin/setup-venv
installs with it, and this venv (made by bin/setup-venv for ./bin/test) holds exactly that.
The build venv of packaging/build-binary.sh is checked in tests/test_packaging.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.support.lock import LOCK, REPO, canonical, read_lock, unpinned

EXAMPLE_REQUIREMENTS = REPO / "examples" / "ml_models" / "requirements.txt"


def declared_requirements() -> list[Requirement]:
    """pyproject's dependencies, every extra's, and the example models' requirements."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    lines += [line.split("#")[0].strip() for line in EXAMPLE_REQUIREMENTS.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_the_lock_pins_an_exact_version_within_every_declared_range() -> None:
    pins = read_lock()  # raises on a line that is not name==version
    assert {"pip", "setuptools"} <= pins.keys(), "the lock pins the installers too (bin/lock freezes with --all)"
    wrong = []
    for req in declared_requirements():
        name = canonical(req.name)
        if name not in pins:
            wrong.append(f"{req} is not in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            wrong.append(f"{req}: constraints.txt pins {pins[name]}")
    assert not wrong, "run bin/lock to refresh the lock:\n" + "\n".join(wrong)


def test_every_package_in_this_venv_is_the_locked_version() -> None:
    venv = Path(sys.prefix)
    assert (venv / ".cnet-installed").exists(), f"{venv} was not made by bin/setup-venv: run ./bin/test"
    left = unpinned(Path(sys.executable))
    assert not left, ("this venv differs from constraints.txt; a package installed by hand, or a "
                      "dependency added without bin/lock:\n" + "\n".join(left))


def test_this_venv_has_no_broken_requirements() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check", "--disable-pip-version-check"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def fake_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """bin/setup-venv and what it reads, copied, with a .venv whose python records its
    arguments instead of running pip. A fake, because a real install takes minutes and the
    package index; that the real one installs the locked versions is shown by the test
    above, on the venv this suite runs in."""
    root, calls = tmp_path / "checkout", tmp_path / "calls"
    for rel in ("bin/setup-venv", "bin/lib/python.sh", "pyproject.toml", "constraints.txt",
                "examples/ml_models/requirements.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    python.chmod(0o755)
    return root, calls


def setup_venv(root: Path, extras: str) -> None:
    proc = subprocess.run(["bash", str(root / "bin" / "setup-venv"), extras], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr


def test_setup_venv_installs_with_the_lock_and_again_when_the_lock_changes(tmp_path: Path) -> None:
    root, calls = fake_checkout(tmp_path)
    lock = root / LOCK.name

    setup_venv(root, "ml,dev")
    first = calls.read_text().splitlines()
    assert len(first) == 2 and all(line.startswith("-m pip install") for line in first), first
    assert all(f"-c {lock} " in line for line in first), first  # pip itself, then the agent
    assert f"-e {root}[ml,dev]" in first[1]

    setup_venv(root, "ml,dev")
    setup_venv(root, "dev")
    assert calls.read_text().splitlines() == first, "nothing changed, yet pip ran again"

    lock.write_text(lock.read_text().replace("aiohttp==", "aiohttp==0.0.0-was-"))
    setup_venv(root, "ml,dev")
    again = calls.read_text().splitlines()[len(first):]
    assert len(again) == 2 and all(f"-c {lock} " in line for line in again), again
