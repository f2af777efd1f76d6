"""cnetd.cluster.assignments: the target node takes its assignments from real etcd, each once,
across restarts of the watcher and of etcd, and never one placed on an old registration.
create() here records calls in memory (the lead wires it to TaskService/ModelService)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from cnetd.cluster.assignments import AssignmentWatcher
from cnetd.cluster.election import Election
from cnetd.cluster.etcd import EtcdClient, EtcdOptions
from cnetd.cluster.placement import OnNode
from cnetd.cluster.records import Assignment, Resources, assignment_key, assignments_prefix, encode
from cnetd.cluster.scheduler import Scheduler
from tests.support.etcd import EtcdCluster, eventually
from tests.support.sim_node import SimNode

pytestmark = pytest.mark.timeout(60)


class Creator:
    """create(): records each task id; fails_once: raise the first time for these ids."""

    def __init__(self, fails_once: set[str] | None = None, then: Callable[[Assignment], object] | None = None) -> None:
        self.calls: list[str] = []
        self.created: list[Assignment] = []
        self.fails_once = set(fails_once or ())
        self.then = then

    async def __call__(self, assignment: Assignment) -> None:
        self.calls.append(assignment.task_id)
        if assignment.task_id in self.fails_once:
            self.fails_once.discard(assignment.task_id)
            raise OSError("database is locked")
        self.created.append(assignment)
        if self.then is not None:
            result = self.then(assignment)
            if asyncio.iscoroutine(result):
                await result

    def ids(self) -> list[str]:
        return [a.task_id for a in self.created]


def assignment(task_id: str, node_revision: int, epoch: int = 1) -> Assignment:
    return Assignment(task_id=task_id, kind="task", body={"name": task_id, "command": "true"},
                      demand=Resources(cpu=0.5), epoch=epoch, node_revision=node_revision, posted_by="a",
                      placed_at="2026-01-01T00:00:00.000Z")


async def assign(etcd: EtcdClient, prefix: str, node_id: str, item: Assignment) -> int:
    return (await etcd.put(assignment_key(prefix, node_id, item.task_id), encode(item))).revision


async def pending_keys(etcd: EtcdClient, prefix: str, node_id: str) -> list[bytes]:
    return [kv.key for kv in (await etcd.range(assignments_prefix(prefix, node_id), prefix=True)).kvs]


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def etcd(etcd_shared: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdOptions(endpoints=etcd_shared.endpoints)) as client:
        yield client


@pytest.fixture
def prefix() -> str:
    return f"/t/{uuid.uuid4().hex}"


@pytest.fixture
async def node(etcd: EtcdClient, prefix: str) -> AsyncIterator[SimNode]:
    sim = await SimNode(etcd, prefix, "n").register()
    yield sim
    await sim.close()


@asynccontextmanager
async def watching(etcd: EtcdClient, prefix: str, registration: Callable[[], int], create: Creator,
                   applied: list[int] | None = None) -> AsyncIterator[AssignmentWatcher]:
    watcher = AssignmentWatcher(etcd, prefix, "n", registration, create, retry=0.2,
                                on_applied=applied.append if applied is not None else None)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.close()


async def created(creator: Creator, ids: list[str], timeout: float = 5.0) -> None:
    async def all_there() -> bool:
        return set(ids) <= set(creator.ids())
    await eventually(all_there, timeout, f"{len(ids)} tasks to be created")


async def test_each_assignment_is_created_once_and_its_key_deleted(etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    creator, applied = Creator(), list[int]()
    before = [new_id() for _ in range(3)]
    for task_id in before:
        await assign(etcd, prefix, "n", assignment(task_id, node.registration))
    async with watching(etcd, prefix, lambda: node.registration, creator, applied) as watcher:
        await created(creator, before)
        await eventually(lambda: _following(watcher), 5, "the watcher to follow its prefix")
        after = [new_id() for _ in range(3)]
        revisions = [await assign(etcd, prefix, "n", assignment(task_id, node.registration)) for task_id in after]
        await created(creator, before + after)
        await eventually(lambda: _no_keys(etcd, prefix), 5, "every assignment key to be deleted")
        assert sorted(creator.calls) == sorted(before + after)  # once each
        assert creator.ids()[:3] == before  # the listed ones in the order they were placed
        assert watcher.applied_revision == revisions[-1] == applied[-1]
        assert applied == sorted(applied)


async def _following(watcher: AssignmentWatcher) -> bool:
    return watcher.following


async def _no_keys(etcd: EtcdClient, prefix: str) -> bool:
    return not await pending_keys(etcd, prefix, "n")


async def test_a_restarted_watcher_creates_only_what_came_while_it_was_stopped(
        etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    creator = Creator()
    first = [new_id(), new_id()]
    async with watching(etcd, prefix, lambda: node.registration, creator):
        for task_id in first:
            await assign(etcd, prefix, "n", assignment(task_id, node.registration))
        await created(creator, first)
        await eventually(lambda: _no_keys(etcd, prefix), 5, "the first keys to be deleted")
    while_stopped = [new_id(), new_id()]
    for task_id in while_stopped:
        await assign(etcd, prefix, "n", assignment(task_id, node.registration))
    async with watching(etcd, prefix, lambda: node.registration, creator):
        await created(creator, first + while_stopped)
        later = new_id()
        await assign(etcd, prefix, "n", assignment(later, node.registration))
        await created(creator, [later])
    assert sorted(creator.calls) == sorted(first + while_stopped + [later])


async def test_an_assignment_placed_on_an_old_registration_is_dropped_not_created(
        etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    creator = Creator()
    old = node.registration
    await node.revoke()
    await node.register()  # the node came back under a new lease: anything placed on `old` is stale
    stale, fresh = new_id(), new_id()
    await assign(etcd, prefix, "n", assignment(stale, old))
    await assign(etcd, prefix, "n", assignment(fresh, node.registration))
    async with watching(etcd, prefix, lambda: node.registration, creator):
        await created(creator, [fresh])
        await eventually(lambda: _no_keys(etcd, prefix), 5, "the stale key to be deleted too")
    assert creator.calls == [fresh]


async def test_an_assignment_for_a_registration_not_yet_known_here_waits_for_it(
        etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    # Membership registered anew and the scheduler placed on it before membership told us.
    creator = Creator()
    known = node.registration
    await node.revoke()
    await node.register()
    task_id = new_id()
    async with watching(etcd, prefix, lambda: known, creator) as watcher:
        await assign(etcd, prefix, "n", assignment(task_id, node.registration))
        await eventually(lambda: _waits(watcher, task_id), 5, "the watcher to hold the assignment back")
        assert creator.calls == [] and await pending_keys(etcd, prefix, "n")  # neither created nor dropped
        known = node.registration  # membership catches up; the watcher lists again by itself
        await created(creator, [task_id])
    assert creator.calls == [task_id]


async def _waits(watcher: AssignmentWatcher, task_id: str) -> bool:
    return task_id in watcher.waiting


async def test_a_create_that_fails_is_tried_again_and_the_assignment_is_not_lost(
        etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    task_id = new_id()
    creator = Creator(fails_once={task_id})
    async with watching(etcd, prefix, lambda: node.registration, creator):
        await assign(etcd, prefix, "n", assignment(task_id, node.registration))
        await created(creator, [task_id])
        await eventually(lambda: _no_keys(etcd, prefix), 5, "the key to be deleted after the retry")
    assert creator.calls == [task_id, task_id] and creator.ids() == [task_id]


async def test_the_watcher_carries_on_after_etcd_restarts(etcd_one: EtcdCluster) -> None:
    prefix = "/t/restart"
    async with EtcdClient(EtcdOptions(endpoints=etcd_one.endpoints, timeout=1.0)) as etcd:
        node = await SimNode(etcd, prefix, "n", ttl=30).register()
        creator = Creator()
        async with watching(etcd, prefix, lambda: node.registration, creator):
            first = new_id()
            await assign(etcd, prefix, "n", assignment(first, node.registration))
            await created(creator, [first])
            etcd_one.restart(*etcd_one.members)  # kills it: the watch breaks, reopening fails for a while
            after = [new_id(), new_id()]
            for task_id in after:
                # The first call may meet a pooled connection to the member's old process.
                await eventually(lambda t=task_id: assign(etcd, prefix, "n", assignment(t, node.registration)), 5,
                                 "a write to the restarted member")
            await created(creator, [first, *after], timeout=15)
        assert sorted(creator.calls) == sorted([first, *after])
        await node.close()


async def test_history_compacted_under_the_watcher_means_listing_again(
        etcd_one: EtcdCluster, caplog: pytest.LogCaptureFixture) -> None:
    prefix = "/t/compact"
    caplog.set_level(logging.INFO, logger="cnetd.cluster.assignments")
    async with EtcdClient(EtcdOptions(endpoints=etcd_one.endpoints)) as etcd:
        node = await SimNode(etcd, prefix, "n", ttl=30).register()
        first, sneaked = new_id(), new_id()

        async def sneak_in_and_compact(created_one: Assignment) -> None:
            # Runs between the watcher's list and its watch: the watch will start below the
            # compacted revision, and the assignment written here is only in the new list.
            if created_one.task_id == first:
                await assign(etcd, prefix, "n", assignment(sneaked, node.registration))
                # etcd keeps the compact revision itself: compact past the sneaked write.
                etcd_one.compact((await etcd.put(f"{prefix}/filler", b"x")).revision)

        creator = Creator(then=sneak_in_and_compact)
        await assign(etcd, prefix, "n", assignment(first, node.registration))
        async with watching(etcd, prefix, lambda: node.registration, creator):
            await created(creator, [first, sneaked])
        assert creator.calls == [first, sneaked]
        assert "compacted" in caplog.text
        await node.close()


async def test_a_placement_reaches_its_node_whose_applied_revision_then_covers_it(
        etcd: EtcdClient, prefix: str, node: SimNode) -> None:
    scheduler_lease = await SimNode(etcd, prefix, "s", with_record=False).register()
    election = Election(etcd, prefix, "s", "http://s.test:8080", lambda: scheduler_lease.lease_id, retry=0.2)
    scheduler = Scheduler(etcd, prefix, "s", election)
    await election.start()
    await scheduler.start()
    try:
        await eventually(lambda: _leads(election), 5, "the scheduler to be elected")
        body = {"name": "job", "command": "python3", "args": ["-c", "print(1)"]}
        placed = await scheduler.place(new_id(), "task", body, Resources(cpu=1), OnNode("n"), posted_by="s")
        creator = Creator()
        async with watching(etcd, prefix, lambda: node.registration, creator) as watcher:
            await created(creator, [placed.task_id])
            assert creator.created[0].body == body and creator.created[0].posted_by == "s"
            # What the node writes into its record as applied_revision: the scheduler stops
            # subtracting the task's demand once the record shows at least this.
            assert watcher.applied_revision == placed.revision
    finally:
        await scheduler.close()
        await election.close()
        await scheduler_lease.close()


async def _leads(election: Election) -> bool:
    return election.is_leader
