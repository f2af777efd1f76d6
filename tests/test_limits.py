"""Limits really enforced: by systemd scopes (inside a real systemd) and by cgroupfs
directly. Memory over the limit is an OOM kill read from the cgroup, CPU is held to its
quota, a fork loop stops at its pids limit, a stopped tree leaves no survivor; and the disk
meter counts what a task writes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnetd.config import ResourceLimits, TasksSection
from cnetd.supervisor.disk import DiskMeter, format_bytes, measure_all
from cnetd.tasks.model import Status, Task
from tests.harness.fixtures import BACKENDS, Driver, make_driver
from tests.support.launch import make_launcher

ENFORCING = [p for p in BACKENDS if p.values[0] != "none"]


@pytest.fixture(params=ENFORCING)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    yield from make_driver(request, request.param, tmp_path)


def test_allocating_past_the_memory_limit_is_an_oom_kill(driver: Driver) -> None:
    result = driver.run("oom", alloc_mb=300, limit_mb=100)
    assert result["status"]["oom_killed"] is True
    assert result["status"]["code"] == 137
    assert "allocated" not in result["log"]


def test_allocating_under_the_memory_limit_works(driver: Driver) -> None:
    result = driver.run("oom", alloc_mb=50, limit_mb=100)
    assert result["status"] == {"code": 0, "signal": None, "oom_killed": False, "lost": False}
    assert "allocated" in result["log"]


def test_cpu_limit_holds_two_busy_processes_to_half_a_core(driver: Driver) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to show the quota rather than the machine's size")
    for _attempt in range(3):
        result = driver.run("cpu", cpu_limit=0.5, window=3.0)
        assert result["cpu_percent"] <= 60, result  # the quota holds, however idle the machine
        if result["cpu_percent"] >= 40:
            return
        if result["idle_cores"] >= 0.5:  # half a core was there to take, and it did not get it
            raise AssertionError(f"got {result['cpu_percent']:.1f}% of a core with a 50% quota: {result}")
    # Other processes took every core in each window: only the upper bound could be shown.
    pytest.skip(f"machine saturated by other processes (idle {result['idle_cores']:.2f} cores): "
                f"got {result['cpu_percent']:.1f}%, the 40% lower bound is not observable")


def test_a_fork_loop_stops_at_tasks_max_and_its_neighbour_still_starts(driver: Driver) -> None:
    result = driver.run("fork_loop", tasks_max=16, attempts=200)
    # the shim and the loop itself count too: at most 14 children, and the rest refused
    assert 1 <= result["made"] <= 14, result
    assert result["failed"] >= 200 - 14, result
    assert result["pids"] is not None and result["pids"] <= 16, result
    # a task beside it starts and ends as usual while the loop holds every pid it may have
    assert result["neighbour"]["code"] == 0 and result["neighbour_log"] == "neighbour ran\n", result
    assert result["neighbour_seconds"] < 10, result
    # and the capped task stops within its grace plus the SIGKILL round, leaving nothing
    assert result["stop_seconds"] < 10, result


def test_devices_outside_the_allow_list_cannot_be_opened(driver: Driver, tmp_path: Path) -> None:
    """Limits.devices as a backend holds it: NVIDIA-numbered nodes (mknod; no driver answers,
    so an open let through gets ENXIO) under /dev, where no nodev mount hides them."""
    assert driver.capabilities.enforces_devices
    nodes = Path(tempfile.mkdtemp(prefix="cnet-test-devices-", dir="/dev"))
    try:
        for minor in (0, 1):
            os.mknod(nodes / f"nvidia{minor}", 0o600 | stat.S_IFCHR, os.makedev(195, minor))
        result = driver.run("devices", allow=[[195, 0]], paths=[str(nodes / "nvidia0"), str(nodes / "nvidia1")])
    finally:
        shutil.rmtree(nodes, ignore_errors=True)
    assert result["status"]["code"] == 0, result
    assert result["opened"] == {"null": "OK", "nvidia0": "ENXIO", "nvidia1": "EPERM"}, result


@pytest.mark.parametrize(("asked", "launched"), [(None, 32), (16, 16), (100, 32)])
def test_a_launch_asks_for_at_most_tasks_max_pids(tmp_path: Path, asked: int | None, launched: int) -> None:
    """tasks.max_pids is the default and the ceiling, also for a task stored before the
    operator lowered it (a model's predictions copy the max_pids it was deployed with)."""
    launcher = make_launcher(tmp_path / "state", tmp_path, TasksSection(max_pids=32))
    task = Task(id=str(uuid.uuid4()), name="t", type="process", kind="run", status=Status.PENDING, command="true",
                args=[], env={}, working_dir=".", resources=ResourceLimits(max_pids=asked), created_at="",
                log_file=str(tmp_path / "t.log"), node_id="n")
    assert launcher.spec_for(task).limits.tasks_max == launched


def test_stopped_tree_leaves_no_process_anywhere(driver: Driver) -> None:
    marker = f"cnet-tree-{uuid.uuid4()}"
    result = driver.run("stop_tree", marker=marker, grace=0.5)
    assert result["survivors"] == []
    # and seen from the host, independently of the backend's own bookkeeping
    assert processes_with(marker) == []


def processes_with(marker: str) -> list[int]:
    found = []
    needle = marker.encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- disk meter -----------------------------------------------------------------------


def test_disk_meter_counts_log_and_new_or_modified_files(tmp_path: Path) -> None:
    work, model, log = tmp_path / "work", tmp_path / "models", tmp_path / "task.log"
    work.mkdir()
    model.mkdir()
    old_untouched = work / "dataset.csv"
    old_untouched.write_bytes(b"x" * 5000)
    old_modified = model / "model.pkl"
    old_modified.write_bytes(b"x" * 100)
    past = time.time() - 60
    for f in (old_untouched, old_modified):
        os.utime(f, (past, past))
    started = time.time() - 1  # as the supervisor records it: before the task's first write

    meter = DiskMeter(log, [work, model, work / "sub"], since=started)
    assert meter.measure() == 0  # nothing written yet; the old files do not count

    log.write_bytes(b"l" * 1000)
    (work / "sub").mkdir()
    (work / "sub" / "out.bin").write_bytes(b"o" * (2 << 20))
    with open(old_modified, "ab") as out:
        out.write(b"y" * 900)  # rewritten: its whole size counts now
    (work / "link").symlink_to(old_untouched)  # never followed
    assert meter.measure() == 1000 + (2 << 20) + 1000
    assert not meter.truncated


def test_disk_meter_takes_the_started_at_text_and_bounds_its_work(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i}").write_bytes(b"z" * 10)
    meter = DiskMeter(tmp_path / "none.log", [tmp_path], since="2000-01-01T00:00:00.000Z", max_entries=20)
    assert 0 < meter.measure() <= 200
    assert meter.truncated
    assert DiskMeter(tmp_path / "none.log", [tmp_path], since="2000-01-01T00:00:00.000Z").measure() == 500


def test_meters_measured_together_share_a_scan_and_each_count_their_own_new_files(tmp_path: Path) -> None:
    shared, own_a, own_b = tmp_path / "model", tmp_path / "tmp-a", tmp_path / "tmp-b"
    for d in (shared, own_a, own_b):
        d.mkdir()
    (shared / "data.csv").write_bytes(b"d" * 700)
    past = time.time() - 60
    os.utime(shared / "data.csv", (past, past))
    a = DiskMeter(tmp_path / "a.log", [shared, own_a], since=time.time() - 1)
    (shared / "early.bin").write_bytes(b"e" * 300)  # after a started
    (own_a / "a.bin").write_bytes(b"a" * 50)
    later = time.time() + 30  # b started after early.bin was written
    b = DiskMeter(tmp_path / "b.log", [shared, own_b], since=later)
    (shared / "late.bin").write_bytes(b"l" * 20)
    (own_b / "b.bin").write_bytes(b"b" * 5)
    os.utime(shared / "late.bin", (later + 1, later + 1))
    os.utime(own_b / "b.bin", (later + 1, later + 1))
    assert measure_all([a, b]) == [300 + 50 + 20, 20 + 5]
    assert [a.measure(), b.measure()] == [370, 25]  # the same, measured alone


def test_a_dir_found_empty_is_remembered_until_an_entry_appears(tmp_path: Path) -> None:
    own = tmp_path / "tmp-a"
    own.mkdir()
    past = time.time() - 60
    os.utime(own, (past, past))  # settled: its mtime is older than the coarse clock's doubt
    meter = DiskMeter(tmp_path / "a.log", [own], since=time.time() - 1)
    empty: dict[str, int] = {}
    assert measure_all([meter], empty) == [0]
    assert list(empty) == [str(own.resolve())]  # the next rounds stat it instead of reading it
    (own / "new.bin").write_bytes(b"n" * 10)  # a new entry moves the directory's mtime
    assert measure_all([meter], empty) == [10]
    assert empty == {}
    assert measure_all([], empty) == [] and empty == {}  # a task gone: its dirs are forgotten


def test_disk_meter_counts_what_a_real_task_writes(tmp_path: Path) -> None:
    import subprocess

    started = time.time()
    meter = DiskMeter(tmp_path / "task.log", [tmp_path], since=started)
    subprocess.run(["/bin/sh", "-c", "head -c 3000000 /dev/zero > out.bin"], cwd=tmp_path, timeout=30, check=True)
    assert meter.measure() == 3_000_000


def test_format_bytes() -> None:
    assert format_bytes(100 << 20) == "100 MiB"
    assert format_bytes(int(1.2 * (1 << 30))) == "1.29 GB"
    assert format_bytes(int(1.2 * (1 << 30)), like=1 << 30) == "1.20 GiB"
    assert format_bytes(1 << 30) == "1 GiB"
    assert format_bytes(512) == "512 B"
