"""pytest fixtures for the sandbox harness (tests/conftest.py imports `systemd_ns`).

`systemd_ns`: a real systemd booted once per session; skips, with the reason, only where
it cannot run, and fails instead where CNET_REQUIRE_SYSTEMD=1 says it must (.ci/run sets
it: on the CI machine the harness runs, so a skip there would hide a broken harness).
`make_driver` gives a Driver that runs scenarios of drive_sandbox.py for one
backend: on the host for none/cgroup, inside the namespace for systemd.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cnetd.supervisor import cgroup, cgroupfs
from cnetd.supervisor.base import Capabilities
from cnetd.supervisor.cgroup import CgroupSandbox
from cnetd.supervisor.none import NoneSandbox
from cnetd.supervisor.systemd import SystemdSandbox
from tests.harness.systemd_ns import SystemdNamespace, available, clean_stale, owned_name

REPO = Path(__file__).resolve().parents[2]
CGROUP_TEST_PREFIX = "cnet-ctest-"
DRIVER = Path(__file__).with_name("drive_sandbox.py")
CAPABILITIES: dict[str, Capabilities] = {
    "none": NoneSandbox.capabilities,
    "cgroup": CgroupSandbox.capabilities,
    "systemd": SystemdSandbox.capabilities,
}
BACKENDS = [
    pytest.param("none", id="none"),
    pytest.param("cgroup", id="cgroup"),
    pytest.param("systemd", id="systemd", marks=pytest.mark.systemd),
]


REQUIRE_SYSTEMD = "CNET_REQUIRE_SYSTEMD"


def harness_unavailable(reason: str) -> NoReturn:
    """Skip with the reason; where CNET_REQUIRE_SYSTEMD=1, fail with it instead."""
    if os.environ.get(REQUIRE_SYSTEMD) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SYSTEMD}=1: the harness must run here)", pytrace=False)
    pytest.skip(reason)


def boot_systemd(
    probe: Callable[[], tuple[bool, str]] = available,
    make: Callable[[], SystemdNamespace] = SystemdNamespace,
) -> SystemdNamespace:
    """A booted systemd, or harness_unavailable() with why it could not be had: missing
    prerequisites or a boot that failed (start() has cleaned up after itself then)."""
    ok, reason = probe()
    if ok:
        ns = make()
        try:
            return ns.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            reason = f"boot failed: {exc}"
    harness_unavailable(f"real systemd harness unavailable: {reason}")


@pytest.fixture(scope="session")
def systemd_ns() -> Iterator[SystemdNamespace]:
    """A real systemd booted once per test session; skips (with the reason) where it cannot
    run, fails where CNET_REQUIRE_SYSTEMD=1."""
    ns = boot_systemd()
    try:
        yield ns
    finally:
        ns.stop()


@pytest.fixture(scope="session")
def cgroup_group() -> Iterator[str]:
    """A cgroup group name of this session's own, so that cleanup_orphans in a test cannot
    touch another run's tasks; its directories are removed at the end."""
    clean_stale(CGROUP_TEST_PREFIX)
    name = owned_name(CGROUP_TEST_PREFIX)
    layout, why = cgroup.probe(name)
    if layout is None:
        harness_unavailable(f"cgroup backend unavailable: {why}")
    yield name
    left = cgroupfs.remove_dirs(list(layout.bases.values()))
    assert not left, f"cgroups left behind: {left}"


@dataclass
class Driver:
    backend: str
    workdir: Path
    capabilities: Capabilities
    ns: SystemdNamespace | None = None
    group: str | None = None

    def run(self, scenario: str, timeout: float = 120, **params: Any) -> dict[str, Any]:
        params = {"workdir": str(self.workdir), "group": self.group, **params}
        argv = [sys.executable, str(DRIVER), self.backend, scenario, json.dumps(params)]
        if self.ns is not None:
            proc = self.ns.run(argv, timeout=timeout, cwd=REPO)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                                  stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise AssertionError(f"{self.backend} {scenario} failed (exit {proc.returncode}):\n{proc.stderr}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def task_processes(self) -> list[int]:
        """Processes (host pids) whose working dir is this test's workdir: the tasks."""
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    cwd = os.readlink(f"/proc/{entry.name}/cwd")
                except OSError:
                    continue
                if cwd == str(self.workdir) or cwd.startswith(f"{self.workdir}/"):
                    found.append(int(entry.name))
        return found

    def leftovers(self) -> list[str]:
        """What a test left behind: task processes, task cgroups, scopes."""
        out = [f"process {pid}" for pid in self.task_processes()]
        if self.backend == "cgroup":
            assert self.group is not None
            layout, _ = cgroup.probe(self.group)
            assert layout is not None
            out += [f"cgroup {d}/{e}" for d in layout.bases.values() for e in os.listdir(d)
                    if (Path(d) / e).is_dir()]
        if self.ns is not None:
            units = self.ns.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "cnet-*.scope"],
                                timeout=30).stdout
            out += [f"unit {line.split()[0]}" for line in units.splitlines() if line.strip()]
        return out

    def assert_clean(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.leftovers()
        for pid in self.task_processes():  # leave the machine clean even when failing
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"{self.backend}: left behind {left}"


def make_driver(request: pytest.FixtureRequest, backend: str, workdir: Path) -> Iterator[Driver]:
    """Yield a Driver for backend; after the test, check that nothing was left behind."""
    ns = request.getfixturevalue("systemd_ns") if backend == "systemd" else None
    group = request.getfixturevalue("cgroup_group") if backend == "cgroup" else None
    workdir.chmod(0o755)
    driver = Driver(backend, workdir, CAPABILITIES[backend], ns, group)
    yield driver
    driver.assert_clean()
