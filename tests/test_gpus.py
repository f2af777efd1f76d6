"""GPUs: discovery, assignment by UUID, waiting, release, restart survival, sharing by
memory and its enforcement, through the real agent (a child process, real SQLite, real
HTTP). NVML itself cannot run here (no GPU, no driver): the agent reads the GPUs from the
JSON file of its test double (tests/support/fake_gpus.py, cnetd/gpus/simulated.py), named
by the operator's gpus.simulate_file. The real NvmlReader is run too, for what it does on a
machine without a driver."""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cnetd.cluster.describe import NodeDescriber
from cnetd.config import GpusSection, default_config
from cnetd.gpus.monitor import GpuMonitor
from cnetd.gpus.reader import NvmlReader
from cnetd.gpus.simulated import SimulatedReader
from cnetd.limits import ResourceLimits
from cnetd.metrics.resources import ResourceSampler
from cnetd.node import NodeIdentity
from cnetd.store import gpus as gq
from cnetd.store.db import Database
from cnetd.tasks.model import Status
from tests.support.agent import AgentProcess
from tests.support.fake_gpus import GIB, FakeGpus
from tests.support.stored_tasks import make_task, record
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY

SHOW_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in ("
            "'CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER', 'TF_FORCE_GPU_ALLOW_GROWTH', "
            "'CNET_GPU_MEMORY_LIMIT', 'CNET_GPU_MEMORY_FRACTION')}))")


def gpu_agent(agent_factory: Callable[..., AgentProcess], tmp_path: Path, count: int = 2,
              name: str = "agent") -> tuple[AgentProcess, FakeGpus]:
    fake = FakeGpus(tmp_path / f"{name}-gpus.json", count)
    agent = agent_factory({"gpus": {"simulate_file": str(fake.path), "refresh": "0.2s"}}, name=name)
    return agent.start(), fake


def task(agent: AgentProcess, resources: dict[str, Any], code: str = "import time; time.sleep(60)",
         env: dict[str, str] | None = None, expect: int = 201) -> dict[str, Any]:
    reply = agent.api.post("/api/tasks", {"name": "gpu", "command": "python3", "args": ["-c", code],
                                          "env": env or {}, "resources": resources})
    assert reply.status == expect, reply.text
    return reply.body


def pid_of(agent: AgentProcess, task_id: str) -> int:
    events = agent.api.get(f"/api/tasks/{task_id}/events").body
    started = next(e["message"] for e in events if e["type"] == "started")
    return int(re.search(r"pid (\d+)", started).group(1))  # type: ignore[union-attr]


def test_nvml_on_a_machine_without_a_driver_means_no_gpus_and_says_why() -> None:
    inventory = NvmlReader().read()  # the real reader: this machine has no NVIDIA driver
    assert inventory.count == 0
    assert inventory.reason and "\n" not in inventory.reason


def test_nvml_without_the_package_means_no_gpus_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as if nvidia-ml-py were not installed
    inventory = NvmlReader().read()
    assert inventory.count == 0 and inventory.reason == "nvidia-ml-py is not installed (no pynvml module)"


def test_the_node_reports_its_gpus(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    node = agent.api.get("/api/node").body["gpus"]
    assert node["count"] == 2 and node["free"] == 2 and node["reason"] is None
    assert node["source"] == "simulated" and node["driver_version"] == "550.54.15"
    assert [d["uuid"] for d in node["devices"]] == fake.uuids
    assert node["devices"][1]["memory_total"] == 8 * GIB and node["devices"][1]["utilization"] == 10
    assert agent.api.get("/api/resources").body["gpu"]["count"] == 2
    # The driver goes away: 0 GPUs and the reason, at the next reading, never an error.
    fake.error = "NVML Shared Library Not Found"
    fake.write()
    gone = wait_until(lambda: (g := agent.api.get("/api/node").body["gpus"])["count"] == 0 and g, 10, "no GPUs")
    assert gone["reason"] == "NVML Shared Library Not Found"


def test_a_task_gets_whole_gpus_by_uuid_and_its_env_cannot_choose_others(
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    # Attacker: the request names the other GPU (and an index) in its own env.
    hostile = {"CUDA_VISIBLE_DEVICES": f"{fake.uuids[1]},0,1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    done = agent.wait_done(task(agent, {"gpu_limit": 1}, SHOW_ENV, env=hostile)["id"])
    assert done["status"] == "completed", done
    assert done["result"]["CUDA_VISIBLE_DEVICES"] == fake.uuids[0]
    assert done["result"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert done["gpus"] == [fake.uuids[0]]
    both = agent.wait_done(task(agent, {"gpu_limit": 2}, SHOW_ENV)["id"])
    assert both["result"]["CUDA_VISIBLE_DEVICES"] == ",".join(fake.uuids)  # released: both free again
    # A task without GPUs on a node with GPUs sees none, whatever its env says.
    none = agent.wait_done(task(agent, {}, SHOW_ENV, env=hostile)["id"])
    assert none["result"]["CUDA_VISIBLE_DEVICES"] == "" and none["gpus"] == []


def test_more_gpus_than_the_node_has_is_a_400(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, _ = gpu_agent(agent_factory, tmp_path)
    error = task(agent, {"gpu_limit": 3}, expect=400)
    assert error["details"]["field"] == "resources.gpu_limit"
    assert "asks for 3 GPUs, but this node has 2" in error["error"]
    error = task(agent, {"gpu_memory": "9GiB"}, expect=400)
    assert error["details"]["field"] == "resources.gpu_memory" and "largest GPU has 8 GiB" in error["error"]
    error = task(agent, {"gpu_memory": "1GiB", "gpu_limit": 1}, expect=400)
    assert error["details"]["field"] == "resources.gpu_memory"


def test_a_task_waits_for_a_gpu_and_takes_the_one_released(
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, _fake = gpu_agent(agent_factory, tmp_path)
    first = task(agent, {"gpu_limit": 1})["id"]
    second = task(agent, {"gpu_limit": 1})["id"]
    agent.wait_status(first, {"running"})
    agent.wait_status(second, {"running"})
    waiting = task(agent, {"gpu_limit": 1}, SHOW_ENV)["id"]
    reason = wait_until(lambda: agent.api.get(f"/api/tasks/{waiting}").body["reason"], 10, "a reason")
    assert reason == "waiting for 1 GPU: 0 of 2 free"
    # It holds up nobody: a task without GPUs posted after it runs.
    assert agent.wait_done(task(agent, {}, "print(1)")["id"])["status"] == "completed"
    assert agent.api.get(f"/api/tasks/{waiting}").body["status"] == "pending"
    held_by_second = agent.api.get(f"/api/tasks/{second}").body["gpus"]
    assert agent.api.delete(f"/api/tasks/{second}").status == 200
    done = agent.wait_done(waiting)
    assert done["status"] == "completed" and done["reason"] is None
    assert [done["result"]["CUDA_VISIBLE_DEVICES"]] == held_by_second


def test_assignments_survive_a_restart_of_the_agent(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    holder = task(agent, {"gpu_limit": 1})["id"]
    agent.wait_status(holder, {"running"})
    agent.kill()  # SIGKILL: nothing is written on the way out
    agent.start()
    assert agent.api.get(f"/api/tasks/{holder}").body["status"] == "running"
    node = agent.api.get("/api/node").body["gpus"]
    assert node["free"] == 1 and node["devices"][0]["tasks"] == [holder]
    two = task(agent, {"gpu_limit": 2})["id"]
    reason = wait_until(lambda: agent.api.get(f"/api/tasks/{two}").body["reason"], 10, "a reason")
    assert reason == "waiting for 2 GPUs: 1 of 2 free"
    one = agent.wait_done(task(agent, {"gpu_limit": 1}, SHOW_ENV)["id"])
    assert one["result"]["CUDA_VISIBLE_DEVICES"] == fake.uuids[1]


def test_tasks_share_a_gpu_by_memory_with_framework_hints(
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    a = task(agent, {"gpu_memory": "3GiB"})["id"]
    b = task(agent, {"gpu_memory": "3GiB"})["id"]
    agent.wait_status(a, {"running"})
    agent.wait_status(b, {"running"})
    gpus = agent.api.get("/api/node").body["gpus"]
    assert gpus["devices"][0]["tasks"] == [a, b]  # both on one GPU: the other stays whole
    assert gpus["devices"][0]["unreserved_memory"] == 2 * GIB and gpus["free"] == 1
    whole = agent.wait_status(task(agent, {"gpu_limit": 1})["id"], {"running"})
    assert whole["gpus"] == [fake.uuids[1]]
    hints = agent.wait_done(task(agent, {"gpu_memory": "2GiB"}, SHOW_ENV)["id"])["result"]
    assert hints == {"CUDA_VISIBLE_DEVICES": fake.uuids[0], "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                     "TF_FORCE_GPU_ALLOW_GROWTH": "true", "CNET_GPU_MEMORY_LIMIT": str(2 * GIB),
                     "CNET_GPU_MEMORY_FRACTION": "0.2500"}
    third = task(agent, {"gpu_memory": "3GiB"})["id"]
    reason = wait_until(lambda: agent.api.get(f"/api/tasks/{third}").body["reason"], 10, "a reason")
    assert reason == "waiting for 3 GiB of GPU memory: at most 2 GiB unreserved on one GPU"


def test_a_task_over_its_gpu_memory_is_stopped_with_the_reason(
        agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    over = task(agent, {"gpu_memory": "1GiB"})["id"]
    under = task(agent, {"gpu_memory": "1GiB"})["id"]
    agent.wait_status(over, {"running"})
    agent.wait_status(under, {"running"})
    fake.account(pid_of(agent, under), fake.uuids[0], 512 * 2**20)
    fake.account(pid_of(agent, over), fake.uuids[0], 1536 * 2**20)  # NVML: 1.5 GiB, over its 1 GiB
    done = agent.wait_done(over, timeout=30)
    assert done["status"] == "failed"
    assert done["reason"] == "GPU memory limit exceeded (used 1.5 GiB, limit 1 GiB)"
    assert agent.api.get(f"/api/tasks/{under}").body["status"] == "running"


def test_a_simulate_file_others_may_write_is_refused(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    fake = FakeGpus(tmp_path / "gpus.json")
    os.chmod(fake.path, 0o666)  # a task could invent GPUs in it
    agent = agent_factory({"gpus": {"simulate_file": str(fake.path)}}).start()
    gpus = agent.api.get("/api/node").body["gpus"]
    assert gpus["count"] == 0 and "writable by nobody else" in gpus["reason"]


def test_no_gpu_settings_leave_tasks_as_they_were(agent: AgentProcess) -> None:
    shown = agent.wait_done(task(agent, {}, SHOW_ENV, env={"CUDA_VISIBLE_DEVICES": "7"})["id"])["result"]
    assert shown["CUDA_VISIBLE_DEVICES"] == "7"  # a node without GPUs does not touch it
    assert json.dumps(agent.api.get("/api/node").body["gpus"]["devices"]) == "[]"


def test_gpu_usage_is_sampled_per_task_and_exported(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    holder = task(agent, {"gpu_limit": 1})["id"]
    plain = task(agent, {})["id"]
    agent.wait_status(holder, {"running"})
    agent.wait_status(plain, {"running"})
    fake.gpus[0]["utilization"] = 70
    fake.account(pid_of(agent, holder), fake.uuids[0], 700 * 2**20)

    def sampled() -> dict[str, Any] | None:
        usage = agent.api.get(f"/api/tasks/{holder}").body["usage"] or {}
        return usage if usage.get("gpu_memory_bytes") == 700 * 2**20 else None

    usage = wait_until(sampled, 15, "a usage sample with the task's GPU memory")
    assert usage["gpu_utilization"] == 70
    assert "gpu_memory_bytes" not in (agent.api.get(f"/api/tasks/{plain}").body["usage"] or {})
    metrics = agent.api.get("/metrics").text
    assert re.search(rf'cnet_task_gpu_memory_bytes\{{task_id="{holder}"[^}}]*\}} {700 * 2**20}\n', metrics), metrics
    assert 'cnet_gpus{state="total"} 2\n' in metrics and 'cnet_gpus{state="free"} 1\n' in metrics
    assert f'cnet_gpu_utilization_percent{{gpu="0",uuid="{fake.uuids[0]}",name="Simulated GPU 0"}} 70\n' in metrics


async def test_the_node_record_carries_free_gpus_and_gpu_memory(tmp_path: Path, db: Database) -> None:
    """What the cluster's scheduler places by: a real store with tasks holding GPUs, the NVML
    double for the GPUs."""
    fake = FakeGpus(tmp_path / "gpus.json", count=3)
    monitor = GpuMonitor(GpusSection(simulate_file=fake.path))
    await monitor.refresh()
    whole = replace(make_task(tmp_path, Status.RUNNING), resources=ResourceLimits(gpu_limit=1))
    shared = replace(make_task(tmp_path, Status.RUNNING), resources=ResourceLimits(gpu_memory=3 * GIB))
    waiting = replace(make_task(tmp_path, Status.PENDING), resources=ResourceLimits(gpu_memory=1 * GIB))
    ended = replace(make_task(tmp_path, Status.COMPLETED, ended=datetime.now(UTC)), resources=ResourceLimits(gpu_limit=1))

    def write(conn: Any) -> None:
        for t in (whole, shared, waiting, ended):
            record(conn, t, [])
        gq.assign(conn, whole.id, [fake.uuids[0]], None)
        gq.assign(conn, shared.id, [fake.uuids[1]], 3 * GIB)
        gq.assign(conn, ended.id, [fake.uuids[2]], None)  # ended: its GPU is free again

    await db.write(write)
    config = default_config(tmp_path)
    sampler = ResourceSampler(config.resources, tmp_path)
    describer = NodeDescriber(config, NodeIdentity.of(config, "n1"), db, sampler, "none", "", gpus=monitor)
    node = await describer()
    assert node.capacity.gpus == 3 and node.capacity.gpu_memory == 8 * GIB
    # GPU 0 held whole, GPU 1 shared: one free; 8 GiB unreserved on GPU 2, less the 1 GiB waiting
    assert node.free.gpus == 1 and node.free.gpu_memory == 7 * GIB


def test_served_replicas_hold_their_gpus_while_loaded(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path)
    body = {**copy.deepcopy(LINEAR_BODY), "serving": {"replicas": 1}}
    body["resources"] = {**body["resources"], "gpu_limit": 1}
    reply = agent.api.post("/api/ml/models", body)
    assert reply.status == 201, reply.text
    model_id = reply.body["id"]
    trained = agent.wait_status(model_id, {"completed", "failed"}, 90, path="/api/ml/models/")
    assert trained["status"] == "completed", trained

    def worker() -> dict[str, Any] | None:
        serving = agent.api.get(f"/api/ml/models/{model_id}").body["serving"]
        if not serving or serving.get("ready_replicas", 0) < 1:
            return None
        return agent.api.get(f"/api/tasks/{serving['workers'][0]['task_id']}").body

    replica = wait_until(worker, 90, "a ready replica")
    assert replica["kind"] == "serve" and len(replica["gpus"]) == 1
    gpus = agent.api.get("/api/node").body["gpus"]
    assert gpus["free"] == 1 and [d["tasks"] for d in gpus["devices"] if d["uuid"] == replica["gpus"][0]] == [[replica["id"]]]
    both = task(agent, {"gpu_limit": 2})["id"]
    assert wait_until(lambda: agent.api.get(f"/api/tasks/{both}").body["reason"], 10, "a reason") \
        == "waiting for 2 GPUs: 1 of 2 free"
    assert agent.api.delete(f"/api/ml/models/{model_id}/serve").status == 200  # unloaded: its GPU comes back
    assert agent.wait_status(both, {"running"}, 60)["gpus"] == sorted(fake.uuids)


def test_a_waiting_task_starts_when_its_gpu_comes_back(agent_factory: Callable[..., AgentProcess], tmp_path: Path) -> None:
    agent, fake = gpu_agent(agent_factory, tmp_path, count=1)
    holder = task(agent, {"gpu_limit": 1})["id"]
    agent.wait_status(holder, {"running"})
    waiting = task(agent, {"gpu_limit": 1})["id"]
    fake.error = "NVML: driver not loaded"  # the driver goes away, then the GPU is let go
    fake.write()
    wait_until(lambda: agent.api.get("/api/node").body["gpus"]["count"] == 0, 10, "no GPUs")
    assert agent.api.delete(f"/api/tasks/{holder}").status == 200
    reason = wait_until(lambda: (r := agent.api.get(f"/api/tasks/{waiting}").body["reason"]) != "waiting for 1 GPU: "
                        "0 of 1 free" and r, 10, "the reason to follow")
    assert reason == "waiting for 1 GPU: 0 of 0 free"
    fake.error = None  # the driver is back: the next reading lets it start, with nothing else happening
    fake.write()
    assert agent.wait_status(waiting, {"running"}, 20)["gpus"] == fake.uuids


def test_the_nvml_double_reads_only_a_file_that_is_the_agents_own(tmp_path: Path) -> None:
    """Attacker: someone other than the operator tries to feed the agent GPUs."""
    fake = FakeGpus(tmp_path / "gpus.json")
    assert SimulatedReader(fake.path).read().count == 2
    link = tmp_path / "link.json"
    link.symlink_to(fake.path)  # a link swapped in where the operator's file was
    assert SimulatedReader(link).read().count == 0
    os.chown(fake.path, 65534, 65534)  # another user's file
    refused = SimulatedReader(fake.path).read()
    assert refused.count == 0 and "must belong to the agent's user" in (refused.reason or "")
