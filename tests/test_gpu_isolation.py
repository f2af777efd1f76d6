"""GPU device isolation for real, on the cgroup and the systemd backends: character devices
with NVIDIA's major number (195), made with mknod in a directory the agent is pointed at
(gpus.device_dir). No driver answers them, so a task allowed to open a node gets ENXIO from
the kernel, and one the devices controller stops gets EPERM before that. The GPUs themselves
come from the NVML test double (tests/support/fake_gpus.py): no GPU here.

The directory is made under /dev: a task sees the host's /dev in its namespace as it is,
while every directory bound into its view (its code, pytest's tmp dirs) is mounted nodev."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.fake_gpus import FakeGpus

UVM_MAJOR = 237  # nvidia-uvm's major is given out at load time; any unused one stands for it
NODES = {"nvidia0": (195, 0), "nvidia1": (195, 1), "nvidiactl": (195, 255),
         "nvidia-uvm": (UVM_MAJOR, 0), "nvidia-uvm-tools": (UVM_MAJOR, 1)}
_numbers = itertools.count(1)

PROBE = """
import errno, json, os, sys
out = {}
for name in sys.argv[1:]:
    path = os.path.join(os.environ['GPU_DEV_DIR'], name) if name != 'null' else '/dev/null'
    try:
        os.close(os.open(path, os.O_RDWR))
        out[name] = 'OK'
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


@pytest.fixture
def device_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cnet-test-gpus-", dir="/dev"))
    try:
        path.chmod(0o755)
        for name, (major, minor) in NODES.items():
            os.mknod(path / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            (path / name).chmod(0o666)  # as the driver's nodes are (mknod applied the umask)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["cgroup", pytest.param("systemd", marks=pytest.mark.systemd)])
def gpu_sandboxed(request: pytest.FixtureRequest, agent_factory: Callable[..., AgentProcess], cgroup_group: str,
                  device_dir: Path, tmp_path: Path) -> tuple[AgentProcess, FakeGpus]:
    n = next(_numbers)
    fake = FakeGpus(tmp_path / f"gpus{n}.json")
    tasks: dict[str, Any] = {"sandbox": request.param, "stop_grace": "2s"}
    config = {"tasks": tasks, "gpus": {"simulate_file": str(fake.path), "device_dir": str(device_dir)}}
    if request.param == "cgroup":
        tasks["cgroup_group"] = f"{cgroup_group}-gpu{n}"
        return agent_factory(config, name=f"cg{n}").start(), fake
    ns = request.getfixturevalue("systemd_ns")
    tasks["slice"] = f"cnet-g{n}.slice"
    workdir = tmp_path / f"sd{n}"
    workdir.mkdir()
    agent = agent_factory(config, name=f"sd{n}", prefix=ns.prefix(cwd=workdir), inner_pid=ns.inner_pid)
    return agent.start(), fake


def probe(agent: AgentProcess, device_dir: Path, resources: dict[str, Any]) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {
        "name": "probe", "command": sys.executable, "args": ["-c", PROBE, "null", *NODES],
        "env": {"GPU_DEV_DIR": str(device_dir)}, "resources": resources,
    })
    assert reply.status == 201, reply.text
    done = agent.wait_done(reply.body["id"], timeout=60)
    assert done["status"] == "completed", (done, agent.api.get(f"/api/tasks/{done['id']}/logs").body)
    return done


def test_a_task_opens_only_its_own_gpus_nodes(gpu_sandboxed: tuple[AgentProcess, FakeGpus], device_dir: Path) -> None:
    agent, fake = gpu_sandboxed
    assert agent.api.get("/api/health").body["sandbox"]["limits_enforced"]["gpu_limit"] is True
    one = probe(agent, device_dir, {"gpu_limit": 1})
    assert one["gpus"] == [fake.uuids[0]] and one["limits_enforced"]["gpu_limit"] is True
    # ENXIO: the devices controller let the open through, and no driver answered.
    assert one["result"] == {"null": "OK", "nvidia0": "ENXIO", "nvidia1": "EPERM", "nvidiactl": "ENXIO",
                             "nvidia-uvm": "ENXIO", "nvidia-uvm-tools": "ENXIO"}


def test_a_task_without_gpus_opens_none_and_a_shared_gpu_task_only_its_own(
        gpu_sandboxed: tuple[AgentProcess, FakeGpus], device_dir: Path) -> None:
    agent, fake = gpu_sandboxed
    none = probe(agent, device_dir, {})
    assert none["result"] == {"null": "OK", **{name: "EPERM" for name in NODES}}
    shared = probe(agent, device_dir, {"gpu_memory": "1GiB"})
    assert shared["gpus"] == [fake.uuids[0]]
    assert shared["result"]["nvidia0"] == "ENXIO" and shared["result"]["nvidia1"] == "EPERM"
