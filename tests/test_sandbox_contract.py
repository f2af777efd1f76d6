"""One contract every sandbox backend available here passes: start, wait, stop, recover,
stats, cleanup_orphans — through the same scenarios (tests/harness/drive_sandbox.py), each
run in a fresh process as a (re)started agent would. systemd runs inside a real systemd
booted in private namespaces; here (root, writable cgroupfs) it must run, not skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnetd.supervisor import systemd
from cnetd.supervisor.base import Handle
from tests.harness.fixtures import BACKENDS, REPO, Driver, harness_unavailable, make_driver
from tests.harness.systemd_ns import SystemdNamespace
from tests.support.waiting import wait_until


@pytest.fixture(params=BACKENDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    yield from make_driver(request, request.param, tmp_path)


def test_exit_codes_and_signals(driver: Driver) -> None:
    result = driver.run("exit_codes")
    assert result["zero"] == {"code": 0, "signal": None, "oom_killed": False, "lost": False}
    assert result["three"]["code"] == 3
    assert (result["term"]["code"], result["term"]["signal"]) == (143, 15)
    # killed by SIGKILL is exit 137, and not mistaken for an OOM kill
    assert result["kill"] == {"code": 137, "signal": 9, "oom_killed": False, "lost": False}


def test_log_file_receives_stdout_and_stderr(driver: Driver) -> None:
    result = driver.run("log_output")
    assert result["status"]["code"] == 0
    assert result["log"].splitlines() == ["out-line", "err-line"]


def test_stop_ends_the_whole_tree(driver: Driver) -> None:
    result = driver.run("stop_tree", grace=1.0)
    assert result["status"]["code"] == 143  # the root process ended by the SIGTERM
    # one child ignores SIGTERM: the stop had to wait out the grace and SIGKILL it
    assert 0.9 <= result["elapsed"] < 15
    if driver.capabilities.kills_whole_tree:
        assert result["survivors"] == []
    else:  # a process group/session cannot hold one that setsid()s away
        assert set(result["survivors"]) <= {"setsid"}


def test_recover_while_running_and_after_exit(driver: Driver) -> None:
    result = driver.run("recover_running")
    assert result["while_running"] is True
    assert result["after_exit"] is False


def test_restarted_agent_waits_from_the_saved_handle(driver: Driver) -> None:
    go = driver.workdir / "go"
    script = f'while [ ! -e {go} ]; do sleep 0.05; done; echo finished; exit 7'
    started = driver.run("start_detached", argv=["/bin/sh", "-c", script])
    assert Handle.from_json(started["handle"]).backend == driver.backend
    # a fresh process with nothing but the handle JSON: recover, let the task end, wait
    result = driver.run("resume", handle=started["handle"], touch=str(go))
    assert result["recovered"] is True
    assert result["status"] == {"code": 7, "signal": None, "oom_killed": False, "lost": False}
    assert Path(started["log"]).read_text() == "finished\n"


def test_exit_while_agent_was_down_is_read_from_the_exit_file(driver: Driver) -> None:
    started = driver.run("start_detached", argv=["/bin/sh", "-c", "exit 5"])
    wait_until(lambda: Path(started["exit"]).exists(), 30, "the shim to record the exit")
    result = driver.run("resume", handle=started["handle"])
    assert result["recovered"] is False
    assert result["status"]["code"] == 5 and not result["status"]["lost"]


def test_processes_gone_without_recorded_exit_are_lost(driver: Driver) -> None:
    started = driver.run("start_detached", argv=["/bin/sh", "-c", "exit 4"])
    exit_file = Path(started["exit"])
    wait_until(exit_file.exists, 30, "the shim to record the exit")
    exit_file.unlink()  # as if the processes had vanished without a word
    result = driver.run("resume", handle=started["handle"])
    assert result["status"] == {"code": None, "signal": None, "oom_killed": False, "lost": True}


def test_stats_report_memory_and_cpu(driver: Driver) -> None:
    usage = driver.run("stats")["usage"]
    assert usage["memory_bytes"] >= 50 << 20
    assert usage["cpu_percent"] > 10
    if driver.backend != "none":  # from the cgroup
        assert usage["memory_peak_bytes"] >= usage["memory_bytes"]
        assert usage["pids"] >= 1


def test_cleanup_orphans_destroys_every_task_not_kept(driver: Driver) -> None:
    """Every backend finds its tasks without a saved handle (the `none` one by its exit
    shim's session), and destroys those it is not told to keep."""
    result = driver.run("orphans")
    assert result["known_running"] is True
    assert result["removed"] == [result["unknown_id"]]
    assert result["unknown_gone"] is True


# --- choosing a backend ---------------------------------------------------------------


@pytest.mark.systemd
def test_auto_picks_systemd_where_it_runs(systemd_ns: SystemdNamespace) -> None:
    code = "from cnetd.supervisor.select import choose_sandbox; s, why = choose_sandbox('auto'); print(s.name); print(why)"
    out = systemd_ns.run([sys.executable, "-c", code], timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    name, why = out.stdout.strip().splitlines()
    assert name == "systemd"
    assert why.startswith("auto: systemd is running (/run/systemd/private)")


def test_auto_without_systemd_falls_back_to_cgroup(cgroup_group: str) -> None:
    from cnetd.supervisor.select import choose_sandbox

    if systemd.probe()[0]:
        pytest.skip("systemd runs here: auto picks it")
    sandbox, why = choose_sandbox("auto", cgroup_group=cgroup_group)
    assert sandbox.name == "cgroup"
    assert why.startswith("auto: systemd not usable: not running")
    assert "limits enforced by cgroups" in why


def test_explicit_backend_that_cannot_work_is_an_error() -> None:
    from cnetd.supervisor.select import SandboxUnavailable, choose_sandbox

    if systemd.probe()[0]:
        pytest.skip("systemd runs here")
    with pytest.raises(SandboxUnavailable, match=r"tasks\.sandbox is systemd, but systemd is not running"):
        choose_sandbox("systemd")
    sandbox, why = choose_sandbox("none")
    assert sandbox.name == "none" and "NOT enforced" in why


# --- cgroupfs plumbing ----------------------------------------------------------------


def test_cgroup_mounts_take_the_last_mount_and_its_root(tmp_path: Path) -> None:
    from cnetd.supervisor.cgroupfs import cgroup_mounts

    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        # the systemd harness: a sub-cgroup bind-mounted over the hierarchy
        "90 35 0:32 /process_api/x/cnet-sdns-1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "91 31 0:39 /a\\040b /mnt/odd\\040place rw - cgroup cgroup rw,pids\n"
    )
    mounts = cgroup_mounts(str(mountinfo))
    assert mounts["memory"].root == "/process_api/x/cnet-sdns-1"
    assert mounts["cpu"] is mounts["cpuacct"]
    assert mounts["cpu"].point == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert mounts["systemd"].point == Path("/sys/fs/cgroup/systemd")
    assert mounts["unified"].keys == frozenset({"unified"})
    assert (mounts["pids"].point, mounts["pids"].root) == (Path("/mnt/odd place"), "/a b")


def test_cgroup_dirs_of_self_are_real_directories() -> None:
    from cnetd.supervisor.cgroupfs import cgroup_dirs_of

    dirs = cgroup_dirs_of("self")
    assert dirs, "no cgroup hierarchy visible"
    for key, path in dirs.items():
        assert (path / "cgroup.procs").exists(), (key, path)


def test_harness_cleans_only_stale_namespaces() -> None:
    from tests.harness import systemd_ns as h

    ok, why = h.available()
    if not ok:
        harness_unavailable(why)
    own = next(iter(h._cgroup_hierarchies().values()))
    live = own / f"{h.PREFIX}{os.getpid()}-{h._start_ticks(os.getpid())}-999"
    dead = own / f"{h.PREFIX}{os.getpid()}-1-999"  # this pid, but not this process's start
    for d in (live, dead / "cnet.slice"):
        d.mkdir(parents=True)
    try:
        h.clean_stale()
        assert live.is_dir() and not dead.exists()
    finally:
        for d in (dead / "cnet.slice", dead, live):
            if d.exists():
                d.rmdir()
