"""CI's rules: no test may skip where CI is set, the systemd harness must boot where
CNET_REQUIRE_SYSTEMD=1, .ci/run installs what is missing, sets both and runs the README's
test command, and that command (bin/test) runs ruff and mypy --strict before the suite."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import fixtures
from tests.harness.systemd_ns import SystemdNamespace

REPO = Path(__file__).resolve().parents[1]

SAMPLE_TESTS = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("no widget here")

@pytest.mark.skipif(True, reason="marked away")
def test_marked():
    pass

@pytest.fixture
def gadget():
    pytest.skip("no gadget in the fixture")

def test_needs_gadget(gadget):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_xfails():
    assert False
"""


def run_pytest(where: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """A real pytest over `where` with only the no-skip hooks loaded."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    (where / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.no_skip", "-p", "no:cacheprovider", "-rA", str(where)],
        capture_output=True, text=True, timeout=120, cwd=where, env=env, stdin=subprocess.DEVNULL,
    )


def counts(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """pytest's closing line as {"passed": 1, "skipped": 3, ...}."""
    line = proc.stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", line.split(" in ")[0])}


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_every_skip_is_a_failure_naming_its_reason(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    proc = run_pytest(tmp_path, ci)
    assert proc.returncode == 1, proc.stdout
    # a skip in the test body fails it; one in set-up (skipif, a fixture) is an error
    assert counts(proc) == {"passed": 1, "failed": 1, "errors": 2, "xfailed": 1}, proc.stdout
    for reason in ("no widget here", "marked away", "no gadget in the fixture"):
        assert reason in proc.stdout, proc.stdout
    assert proc.stdout.count("no test may skip there") >= 3, proc.stdout


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path: Path, ci: str | None) -> None:
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    proc = run_pytest(tmp_path, ci)
    assert proc.returncode == 0, proc.stdout
    assert counts(proc) == {"passed": 1, "skipped": 3, "xfailed": 1}, proc.stdout


def test_in_ci_a_conftest_that_skips_its_directory_fails_the_run(tmp_path: Path) -> None:
    """As tests/ui/conftest.py does where Chromium is missing."""
    ui = tmp_path / "ui"
    ui.mkdir()
    (ui / "conftest.py").write_text('import pytest\npytest.skip("no browser here", allow_module_level=True)\n')
    (ui / "test_page.py").write_text("def test_page():\n    pass\n")
    proc = run_pytest(tmp_path, "true")
    assert proc.returncode != 0 and "no browser here" in proc.stdout and "no test may skip there" in proc.stdout, proc.stdout
    assert "passed" not in counts(proc), proc.stdout
    outside = run_pytest(tmp_path, None)
    assert outside.returncode in (0, 5) and "no browser here" in outside.stdout, outside.stdout


# --- the systemd harness: fail where it is required, skip with the reason elsewhere -------------


class BootFails(SystemdNamespace):
    """A fake whose boot fails as a real one would report it. Fake because a real boot
    failure cannot be made on demand on a machine where the harness works."""

    def __init__(self) -> None:  # nothing made, so nothing to clean up
        pass

    def start(self) -> SystemdNamespace:
        raise RuntimeError("systemd harness: systemd did not reach running (last state 'starting') within 30s")


def can_run() -> tuple[bool, str]:
    return True, "root, writable cgroupfs, systemd installed"


def cannot_run() -> tuple[bool, str]:
    return False, "missing tools: nsenter"


def test_a_harness_that_cannot_boot_fails_where_systemd_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNET_REQUIRE_SYSTEMD", "1")
    with pytest.raises(pytest.fail.Exception, match=r"boot failed: .*did not reach running.*CNET_REQUIRE_SYSTEMD=1"):
        fixtures.boot_systemd(probe=can_run, make=BootFails)
    with pytest.raises(pytest.fail.Exception, match=r"missing tools: nsenter.*CNET_REQUIRE_SYSTEMD=1"):
        fixtures.boot_systemd(probe=cannot_run, make=BootFails)
    with pytest.raises(pytest.fail.Exception, match=r"cgroup backend unavailable: no cgroupfs"):
        fixtures.harness_unavailable("cgroup backend unavailable: no cgroupfs")


@pytest.mark.parametrize("value", [None, "0", ""])
def test_a_harness_that_cannot_boot_skips_with_the_reason_elsewhere(monkeypatch: pytest.MonkeyPatch,
                                                                    value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CNET_REQUIRE_SYSTEMD", raising=False)
    else:
        monkeypatch.setenv("CNET_REQUIRE_SYSTEMD", value)
    with pytest.raises(pytest.skip.Exception, match=r"real systemd harness unavailable: boot failed: .*did not reach running"):
        fixtures.boot_systemd(probe=can_run, make=BootFails)
    with pytest.raises(pytest.skip.Exception, match=r"real systemd harness unavailable: missing tools: nsenter$"):
        fixtures.boot_systemd(probe=cannot_run, make=BootFails)


# --- .ci/run ------------------------------------------------------------------------------------


def fake_ci_checkout(tmp_path: Path, installed: set[str]) -> tuple[Path, Path, dict[str, str]]:
    """A copy of .ci/run beside a bin/test that records its arguments and environment, with
    dpkg-query and apt-get on PATH that answer from `installed` and record what they are
    asked. Fakes, because the real ones would install packages on this machine and run the
    whole suite."""
    checkout, tools, calls = tmp_path / "checkout", tmp_path / "tools", tmp_path / "calls"
    (checkout / ".ci").mkdir(parents=True)
    (checkout / "bin").mkdir()
    tools.mkdir()
    shutil.copy(REPO / ".ci" / "run", checkout / ".ci" / "run")
    scripts = {
        checkout / "bin" / "test":
            f'#!/bin/sh\necho "bin/test $* CI=$CI CNET_REQUIRE_SYSTEMD=$CNET_REQUIRE_SYSTEMD" >> {calls}\n',
        tools / "dpkg-query":
            f'#!/bin/sh\nfor p in "$@"; do last=$p; done\n'
            f'case " {" ".join(sorted(installed))} " in *" $last "*) printf installed;; *) exit 1;; esac\n',
        tools / "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {calls}\n',
    }
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return checkout, calls, env


CI_PACKAGES = {"chromium", "util-linux", "systemd", "openssl", "etcd-server", "python3", "python3-venv"}


def test_ci_run_sets_its_rules_and_runs_the_readme_test_command(tmp_path: Path) -> None:
    checkout, calls, env = fake_ci_checkout(tmp_path, CI_PACKAGES)
    proc = subprocess.run(["bash", str(checkout / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == ["bin/test -rs CI=true CNET_REQUIRE_SYSTEMD=1"]  # nothing installed


def test_ci_run_installs_the_packages_the_tests_need_when_missing(tmp_path: Path) -> None:
    checkout, calls, env = fake_ci_checkout(tmp_path, CI_PACKAGES - {"openssl", "etcd-server"})
    proc = subprocess.run(["bash", str(checkout / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines() == [
        "apt-get update -qq",
        "apt-get install -y -qq openssl etcd-server",
        "bin/test -rs CI=true CNET_REQUIRE_SYSTEMD=1",
    ]


# --- bin/test: lint and types before the suite --------------------------------------------------


def fake_test_checkout(tmp_path: Path, failing: str | None = None) -> tuple[Path, Path, dict[str, str]]:
    """Copies of bin/test and .ci/run in a checkout whose bin/setup-venv does nothing and whose
    .venv/bin/python records each `-m <tool> args` it is run with, failing for the tool named
    by `failing`. Fakes, because the real ones would lint this checkout and run the whole
    suite; dpkg-query says every package is installed, so .ci/run installs nothing."""
    checkout, tools, calls = tmp_path / "checkout", tmp_path / "tools", tmp_path / "calls"
    for d in (checkout / ".ci", checkout / "bin", checkout / ".venv" / "bin", tools):
        d.mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", checkout / ".ci" / "run")
    shutil.copy(REPO / "bin" / "test", checkout / "bin" / "test")
    scripts = {
        checkout / "bin" / "setup-venv": "#!/bin/sh\nexit 0\n",
        checkout / ".venv" / "bin" / "python":
            f'#!/bin/sh\necho "$*" >> {calls}\n[ "$2" = "{failing}" ] && {{ echo "{failing}: 1 problem"; exit 1; }}\nexit 0\n',
        tools / "dpkg-query": "#!/bin/sh\nprintf installed\n",
        tools / "apt-get": f'#!/bin/sh\necho "apt-get $*" >> {calls}\n',  # were chromium missing
    }
    for path, text in scripts.items():
        path.write_text(text)
        path.chmod(0o755)
    return checkout, calls, {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}


def python_calls(calls: Path) -> list[str]:
    return [line for line in calls.read_text().splitlines() if line.startswith("-m ")]


def test_bin_test_runs_ruff_and_mypy_strict_before_pytest(tmp_path: Path) -> None:
    checkout, calls, env = fake_test_checkout(tmp_path)
    proc = subprocess.run(["bash", str(checkout / "bin" / "test"), "-k", "x"], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert python_calls(calls) == ["-m ruff check", "-m mypy --strict cnetd/", "-m pytest -k x"]


@pytest.mark.parametrize(("failing", "ran", "says"), [
    ("ruff", ["-m ruff check"], "bin/test: stopped: ruff check found the problems above"),
    ("mypy", ["-m ruff check", "-m mypy --strict cnetd/"], "bin/test: stopped: mypy --strict cnetd/ found the type errors above"),
])
def test_bin_test_stops_at_the_first_failing_check_and_says_which(tmp_path: Path, failing: str, ran: list[str],
                                                                   says: str) -> None:
    checkout, calls, env = fake_test_checkout(tmp_path, failing)
    proc = subprocess.run(["bash", str(checkout / "bin" / "test")], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert python_calls(calls) == ran  # pytest never started
    assert says in proc.stderr and f"{failing}: 1 problem" in proc.stdout


def test_ci_run_therefore_lints_and_type_checks(tmp_path: Path) -> None:
    """The real .ci/run and the real bin/test together: CI runs both checks, then the suite."""
    checkout, calls, env = fake_test_checkout(tmp_path)
    proc = subprocess.run(["bash", str(checkout / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert python_calls(calls) == ["-m ruff check", "-m mypy --strict cnetd/", "-m pytest -rs"]
