"""The cluster view's source: each node mirrors its task summaries into etcd (real etcd
members, tests/support/etcd.py) from a real TaskService on a real SQLite file. The sandbox
is the scripted fake of tests/support/scripted_sandbox.py: what is tested is what reaches
etcd when a task changes, not how a process runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cnetd.cluster.etcd import EtcdClient, EtcdOptions
from cnetd.cluster.mirror import StatusMirror
from cnetd.cluster.records import TaskSummary, encode, task_key
from cnetd.cluster.view import read_summaries, shown
from cnetd.tasks.model import Status
from tests.support.etcd import EtcdCluster
from tests.support.inprocess import service_config, sleeper, status_is, task_service, until
from tests.support.scripted_sandbox import ScriptedSandbox, World

pytestmark = pytest.mark.timeout(60)

NODE = "node-1"
FLUSH = 0.05


@pytest.fixture
def prefix() -> str:
    return f"/t/{uuid.uuid4().hex}"


async def client(cluster: EtcdCluster) -> EtcdClient:
    return EtcdClient(EtcdOptions(endpoints=cluster.endpoints, timeout=1.0))


@pytest.fixture
async def etcd(etcd_shared: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with await client(etcd_shared) as c:
        yield c


async def mirrored(etcd: EtcdClient, prefix: str) -> dict[str, TaskSummary]:
    return {s.id: s for s in await read_summaries(etcd, prefix)}


async def test_each_task_and_each_change_of_status_reaches_etcd(tmp_path: Path, etcd: EtcdClient, prefix: str) -> None:
    sandbox = ScriptedSandbox(World())
    async with task_service(service_config(tmp_path), sandbox) as agent:
        mirror = StatusMirror(etcd, prefix, NODE, agent.service, flush_interval=FLUSH)
        await mirror.start()
        try:
            task = await agent.service.create(sleeper("mirrored"))
            await until(lambda: status_is(agent.service, task.id, Status.RUNNING), "the task to run")

            async def shows(status: str) -> bool:
                summary = (await mirrored(etcd, prefix)).get(task.id)
                return summary is not None and summary.status == status

            await until(lambda: shows("running"), "the running summary in etcd")
            summary = (await mirrored(etcd, prefix))[task.id]
            assert (summary.name, summary.node_id, summary.type) == ("mirrored", NODE, "process")

            await agent.service.stop(task.id)
            await until(lambda: shows("stopped"), "the stopped summary in etcd")
        finally:
            await mirror.stop()


async def test_many_changes_are_coalesced_into_few_writes(tmp_path: Path, etcd: EtcdClient, prefix: str) -> None:
    async with task_service(service_config(tmp_path, max_concurrent=50), ScriptedSandbox(World())) as agent:
        mirror = StatusMirror(etcd, prefix, NODE, agent.service, flush_interval=0.5)
        await mirror.start()
        try:
            tasks = [await agent.service.create(sleeper(f"t{i}")) for i in range(40)]

            async def all_running() -> bool:
                found = await mirrored(etcd, prefix)
                return all(t.id in found and found[t.id].status == "running" for t in tasks)

            await until(all_running, "40 running summaries")
            # 40 tasks each created, starting and running: 120 changes, a write per interval.
            assert mirror.writes < 20, mirror.writes
        finally:
            await mirror.stop()


async def test_a_rejoin_writes_everything_and_removes_what_this_node_no_longer_has(
        tmp_path: Path, etcd: EtcdClient, prefix: str) -> None:
    async with task_service(service_config(tmp_path), ScriptedSandbox(World())) as agent:
        task = await agent.service.create(sleeper("kept"))
        # Left behind by an earlier life of this node (its SQLite no longer has it), and
        # another node's task, which this node must not touch.
        gone = TaskSummary(id="gone", name="gone", type="process", kind="process", status="running", node_id=NODE)
        theirs = TaskSummary(id="theirs", name="x", type="process", kind="process", status="running", node_id="node-2")
        await etcd.put(task_key(prefix, NODE, "gone"), encode(gone))
        await etcd.put(task_key(prefix, "node-2", "theirs"), encode(theirs))

        mirror = StatusMirror(etcd, prefix, NODE, agent.service, flush_interval=FLUSH)
        await mirror.start()
        try:
            async def reconciled() -> bool:
                return set(await mirrored(etcd, prefix)) == {task.id, "theirs"}

            await until(reconciled, "the stale summary removed and the live one written")
            mirror.forget([task.id])
            await until(lambda: mirrored_ids_are(etcd, prefix, {"theirs"}), "the forgotten task's key deleted")
        finally:
            await mirror.stop()


async def mirrored_ids_are(etcd: EtcdClient, prefix: str, ids: set[str]) -> bool:
    return set(await mirrored(etcd, prefix)) == ids


async def test_changes_made_while_etcd_is_away_arrive_when_it_is_back(tmp_path: Path, etcd_one: EtcdCluster,
                                                                     prefix: str) -> None:
    async with await client(etcd_one) as etcd, \
            task_service(service_config(tmp_path), ScriptedSandbox(World())) as agent:
        mirror = StatusMirror(etcd, prefix, NODE, agent.service, flush_interval=FLUSH)
        await mirror.start()
        try:
            first = await agent.service.create(sleeper("before"))
            await until(lambda: mirrored_ids_are(etcd, prefix, {first.id}), "the first summary")

            etcd_one.stop()
            second = await agent.service.create(sleeper("while-away"))
            await agent.service.stop(first.id)
            await until(lambda: status_is(agent.service, second.id, Status.RUNNING), "the second task to run")

            etcd_one.restart(*etcd_one.members)

            async def caught_up() -> bool:
                found = await mirrored(etcd, prefix)
                return (found.get(first.id) is not None and found[first.id].status == "stopped"
                        and found.get(second.id) is not None and found[second.id].status == "running")

            await until(caught_up, "the changes made while etcd was away")
        finally:
            await mirror.stop()


def test_an_unfinished_task_on_an_offline_node_is_shown_lost_and_a_finished_one_is_not() -> None:
    running = TaskSummary(id="a", name="a", type="ml", kind="train", status="running", node_id="c")
    done = TaskSummary(id="b", name="b", type="ml", kind="train", status="completed", node_id="c")
    offline = {"c": "2026-12-01T05:00:00Z"}

    lost = shown(running, offline)
    assert lost["lost"] is True and lost["node_status"] == "offline"
    assert lost["reason"] == "lost: node c offline since 2026-12-01T05:00:00Z"
    assert lost["status"] == "running"  # the last thing the node said
    assert "lost" not in shown(done, offline)
    assert shown(running, {})["node_status"] == "online" and "lost" not in shown(running, {})
