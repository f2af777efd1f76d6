"""Scheduler election, fenced placement and the node cache against real etcd members
(tests/support/etcd.py). The agents here are their etcd parts only: each has its own client,
a SimNode (lease + node record, the stand-in for the membership module), an Election and a
Scheduler; nothing is mocked. Where a test needs a scheduler that believes it still leads
after it was deposed (a partitioned agent that has not noticed), it says so."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from cnetd.cluster.election import Election, Leader
from cnetd.cluster.etcd import EtcdClient, EtcdOptions, EtcdUnavailable
from cnetd.cluster.node_cache import NodeCache, NodeEntry
from cnetd.cluster.placement import NoFit, OnNode, Placement, Strategy, WithLabels
from cnetd.cluster.records import (
    Assignment,
    PlacedTask,
    Resources,
    assignment_key,
    decode,
    placed_key,
    scheduler_key,
)
from cnetd.cluster.scheduler import Contended, NotLeader, Placed, Scheduler
from tests.support.etcd import EtcdCluster, eventually, free_ports
from tests.support.sim_node import GB, SimNode

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
TTL = 2  # seconds; a lone member allows 1
ONE_CPU = Resources(cpu=1, memory=GB)


def client(endpoints: Sequence[str]) -> EtcdClient:
    return EtcdClient(EtcdOptions(endpoints=tuple(endpoints), timeout=2.0))


@dataclass
class Agent:
    node: SimNode
    election: Election
    scheduler: Scheduler
    changes: list[tuple[Leader | None, bool]] = field(default_factory=list)

    @property
    def node_id(self) -> str:
        return self.node.node_id

    async def place(self, task_id: str, placement: Placement = "auto", demand: Resources = ONE_CPU,
                    posted_by: str | None = None) -> Placed:
        return await self.scheduler.place(task_id, "task", {"name": f"t-{task_id[:8]}", "command": "true"}, demand,
                                          placement, posted_by=posted_by or self.node_id)


@asynccontextmanager
async def agents(etcd: EtcdClient | Sequence[EtcdClient], prefix: str, names: Sequence[str], *, ttl: int = TTL,
                 strategy: Strategy = "spread", as_nodes: bool = True, **node: object) -> AsyncIterator[list[Agent]]:
    """Agents that campaign for scheduler; as_nodes=False: they hold a lease but are no node
    to place on (so a test's prepared nodes are the only ones)."""
    clients = [etcd] * len(names) if isinstance(etcd, EtcdClient) else list(etcd)
    async with AsyncExitStack() as stack:
        made: list[Agent] = []
        for name, etcd_client in zip(names, clients, strict=True):
            sim = SimNode(etcd_client, prefix, name, ttl=ttl, with_record=as_nodes, **node)  # type: ignore[arg-type]
            await sim.register()
            stack.push_async_callback(sim.close)
            changes: list[tuple[Leader | None, bool]] = []
            election = Election(etcd_client, prefix, name, sim.record.advertise_url, lease_of(sim), retry=0.2,
                                on_change=recorder(changes))
            scheduler = Scheduler(etcd_client, prefix, name, election, strategy)
            await election.start()
            await scheduler.start()
            stack.push_async_callback(election.close)
            stack.push_async_callback(scheduler.close)
            made.append(Agent(sim, election, scheduler, changes))
        yield made


def lease_of(sim: SimNode) -> Callable[[], int]:
    return lambda: sim.lease_id


def recorder(changes: list[tuple[Leader | None, bool]]) -> Callable[[Leader | None, bool], None]:
    return lambda leader, mine: changes.append((leader, mine))


async def until(condition: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """eventually(), for a condition that answers None until it holds."""
    found = await eventually(condition, timeout, what)
    assert found is not None
    return found


async def cache_ready(agent: Agent) -> None:
    async def ready() -> bool:
        return agent.scheduler.nodes.ready
    await eventually(ready, 5, "the scheduler's node cache to be ready")


async def the_leader(among: Sequence[Agent], timeout: float = 5.0) -> Agent:
    """Wait until exactly one agent leads and every agent knows it; that agent."""
    async def settled() -> Agent | None:
        leading = [a for a in among if a.election.is_leader]
        if len(leading) != 1:
            return None
        known = {a.election.leader for a in among}
        return leading[0] if known == {leading[0].election.leader} else None
    return await until(settled, timeout, "one scheduler that every agent knows")


async def keys_under(etcd: EtcdClient, prefix: str) -> dict[str, bytes]:
    found = await etcd.range(prefix, prefix=True)
    return {kv.key.decode()[len(prefix):]: kv.value for kv in found.kvs}


@pytest.fixture
async def etcd(etcd_shared: EtcdCluster) -> AsyncIterator[EtcdClient]:
    async with client(etcd_shared.endpoints) as c:
        yield c


@pytest.fixture
def prefix() -> str:
    return f"/t/{uuid.uuid4().hex}"


def new_id() -> str:
    return str(uuid.uuid4())


# --- election -----------------------------------------------------------------------------------


async def test_exactly_one_of_three_contenders_leads_and_all_know_it(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b", "c"]) as three:
        leader = await the_leader(three)
        held = await etcd.get(scheduler_key(prefix))
        assert held is not None and held.lease == leader.node.lease_id
        assert leader.election.epoch == held.create_revision
        assert leader.election.leader == Leader(leader.node_id, leader.node.record.advertise_url,
                                                held.create_revision, leader.election.leader.since)  # type: ignore[union-attr]
        assert [a.election.epoch for a in three if a is not leader] == [0, 0]


async def test_when_the_leaders_lease_is_revoked_another_leads_within_the_ttl_with_a_higher_epoch(
        etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b", "c"]) as three:
        first = await the_leader(three)
        first_epoch = first.election.epoch
        started = time.monotonic()
        await first.node.revoke()  # what an expired lease does at once
        second = await until(lambda: _leader_other_than(three, first), TTL, "another agent to lead after the revoke")
        assert time.monotonic() - started < TTL
        assert second.election.epoch > first_epoch
        assert not first.election.is_leader
        # The old leader registers again (membership would) and follows the new one.
        await first.node.register()
        first.election.poke()
        assert await the_leader(three) is second
        assert first.election.leader is not None and first.election.leader.epoch == second.election.epoch


async def test_a_dead_schedulers_lease_expires_and_another_takes_over(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b"]) as two:
        first = await the_leader(two)
        await first.node.stop_keepalive()  # as if its agent were SIGKILLed
        second = await until(lambda: _leader_other_than(two, first), TTL + 3, "a successor after the TTL")
        assert second.election.epoch > 0


async def test_stepping_down_hands_over_at_once_not_after_the_ttl(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b"], ttl=30) as two:
        first = await the_leader(two)
        started = time.monotonic()
        await first.election.close()
        second = await until(lambda: _leader_other_than(two, first), 5, "a successor after stepping down")
        assert time.monotonic() - started < 5  # far under the 30 s TTL: the key was deleted, not left to expire
        assert second.election.epoch > 0
        assert first.changes[-1] == (None, False)


async def _leader_other_than(among: Sequence[Agent], old: Agent) -> Agent | None:
    return next((a for a in among if a is not old and a.election.is_leader), None)


# --- fencing ------------------------------------------------------------------------------------


@dataclass
class StaleLeadership:
    """A scheduler that still believes it leads at `epoch`: an agent cut off from etcd's
    watch that has not noticed it was deposed (the fence must stop it, not its belief)."""

    epoch: int
    leader: Leader | None = None
    deposed_epochs: list[int] = field(default_factory=list)

    @property
    def is_leader(self) -> bool:
        return True

    def deposed(self, epoch: int) -> None:
        self.deposed_epochs.append(epoch)


async def test_a_deposed_scheduler_cannot_place_and_writes_nothing(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b"]) as two:
        first = await the_leader(two)
        stale = StaleLeadership(first.election.epoch)
        deposed = Scheduler(etcd, prefix, first.node_id, stale)
        await first.node.revoke()
        await first.node.register()
        first.election.poke()
        second = await until(lambda: _leader_other_than(two, first), 5, "the other agent to lead")
        with pytest.raises(NotLeader) as caught:
            await deposed.place(new_id(), "task", {}, ONE_CPU, "auto", posted_by=first.node_id)
        assert caught.value.leader is not None
        assert (caught.value.leader.node_id, caught.value.leader.epoch) == (second.node_id, second.election.epoch)
        assert stale.deposed_epochs == [stale.epoch]
        assert await keys_under(etcd, f"{prefix}/assignments/") == {}
        assert await keys_under(etcd, f"{prefix}/placed/") == {}


@dataclass
class FrozenNodes:
    """A node list that does not move: what a scheduler decides on when its view is behind."""

    snapshot: Mapping[str, NodeEntry]
    fresh: NodeCache | None = None  # read() from etcd when given

    @property
    def ready(self) -> bool:
        return True

    @property
    def nodes(self) -> Mapping[str, NodeEntry]:
        return self.snapshot

    async def read(self) -> Mapping[str, NodeEntry]:
        return await self.fresh.read() if self.fresh is not None else self.snapshot


async def test_a_placement_decided_on_a_nodes_old_registration_is_never_written(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["s"], as_nodes=False) as (agent,):
        await the_leader([agent])
        node = await SimNode(etcd, prefix, "n").register()
        try:
            before = await NodeCache(etcd, prefix).read()
            old = node.registration
            await node.revoke()  # the node died ...
            await node.register()  # ... and came back under a new lease
            assert node.registration > old

            stuck = Scheduler(etcd, prefix, "s", agent.election, nodes=FrozenNodes(before))
            with pytest.raises(Contended, match="nothing was written"):
                await stuck.place(new_id(), "task", {}, ONE_CPU, OnNode("n"), posted_by="s")
            assert await keys_under(etcd, f"{prefix}/assignments/") == {}

            # Reading the nodes again after the refusal, it places on the new registration.
            catching_up = Scheduler(etcd, prefix, "s", agent.election,
                                    nodes=FrozenNodes(before, fresh=NodeCache(etcd, prefix)))
            task_id = new_id()
            placed = await catching_up.place(task_id, "task", {}, ONE_CPU, OnNode("n"), posted_by="s")
            written = await etcd.get(assignment_key(prefix, "n", task_id))
            assert written is not None and placed.revision == written.mod_revision
            assert decode(written.value, Assignment).node_revision == node.registration
        finally:
            await node.close()


async def test_thirty_tasks_posted_through_three_agents_at_once_are_each_placed_once_across_a_leader_change(
        etcd_shared: EtcdCluster, prefix: str) -> None:
    clients = [client(etcd_shared.endpoints) for _ in range(3)]
    task_ids = [new_id() for _ in range(30)]
    try:
        async with agents(clients, prefix, ["a", "b", "c"]) as three:
            first = await the_leader(three)
            first_epoch = first.election.epoch
            by_name = {a.node_id: a for a in three}
            placed_any = asyncio.Event()

            async def post(via: Agent, task_id: str) -> Placed:
                """What the API on `via` does: place here, or send it to the scheduler."""
                deadline = time.monotonic() + 15
                posted_to = via.node_id
                while True:
                    try:
                        placed = await via.place(task_id, demand=Resources(cpu=0.1), posted_by=posted_to)
                        placed_any.set()
                        return placed
                    except NotLeader as err:
                        if err.leader is not None and err.leader.node_id != via.node_id:
                            via = by_name[err.leader.node_id]
                            continue
                    except (Contended, EtcdUnavailable):
                        pass
                    assert time.monotonic() < deadline, f"task {task_id} was never placed"
                    await asyncio.sleep(0.05)  # no scheduler known yet: ask again

            async def depose_the_first_leader() -> None:
                await placed_any.wait()
                await first.node.revoke()
                await first.node.register()
                first.election.poke()

            posts = [post(agent, task_id) for task_id in task_ids for agent in three]
            results, _ = await asyncio.gather(asyncio.gather(*posts), depose_the_first_leader())
            second = await the_leader(three)
            assert second.election.epoch > first_epoch  # a new term began while placing (maybe `first` again)

            by_task: dict[str, set[str]] = {}
            for placed in results:
                by_task.setdefault(placed.task_id, set()).add(placed.node_id)
            assert {t: len(nodes) for t, nodes in by_task.items()} == {t: 1 for t in task_ids}  # one answer each
            assert sum(not p.existing for p in results) == 30  # exactly one call per task wrote it

            assignments = await keys_under(clients[0], f"{prefix}/assignments/")
            assigned = [key.split("/")[1] for key in assignments]
            assert sorted(assigned) == sorted(task_ids)  # once each, over all nodes
            for key, value in assignments.items():
                node_id, task_id = key.split("/")
                assert by_task[task_id] == {node_id}
                assert decode(value, Assignment).epoch in (first_epoch, second.election.epoch)
            placed_keys = await keys_under(clients[0], f"{prefix}/placed/")
            assert sorted(placed_keys) == sorted(task_ids)
            assert {t: decode(v, PlacedTask).node_id for t, v in placed_keys.items()} == \
                {t: next(iter(nodes)) for t, nodes in by_task.items()}
    finally:
        for c in clients:
            await c.close()


# --- deciding -----------------------------------------------------------------------------------


async def prepared_nodes(etcd: EtcdClient, prefix: str, *specs: tuple[str, dict[str, object]]) -> list[SimNode]:
    nodes = []
    for name, spec in specs:
        node = SimNode(etcd, prefix, name, **spec)  # type: ignore[arg-type]
        nodes.append(await node.register())
    return nodes


@asynccontextmanager
async def scheduler_over(etcd: EtcdClient, prefix: str, strategy: Strategy,
                         *specs: tuple[str, dict[str, object]]) -> AsyncIterator[tuple[Agent, list[SimNode]]]:
    nodes = await prepared_nodes(etcd, prefix, *specs)
    try:
        async with agents(etcd, prefix, ["sched"], strategy=strategy, as_nodes=False) as (agent,):
            await the_leader([agent])
            await cache_ready(agent)
            await eventually(lambda: _sees(agent, [n.node_id for n in nodes]), 5, "the cache to list the nodes")
            yield agent, nodes
    finally:
        for node in nodes:
            await node.close()


async def _sees(agent: Agent, node_ids: list[str]) -> bool:
    entries = agent.scheduler.nodes.nodes
    return all(n in entries for n in node_ids)


SHAPES: tuple[tuple[str, dict[str, object]], ...] = (
    ("small", {"cpu": 2, "memory": 4 * GB}),  # all free: 1 cpu leaves 50% cpu, 75% memory
    ("big", {"cpu": 16, "memory": 32 * GB, "free": Resources(cpu=4, memory=8 * GB, disk=100 * GB)}),  # 25% free
    ("idle", {"cpu": 8, "memory": 16 * GB}),  # all free
)


async def test_spread_places_on_the_node_with_most_left_and_binpack_on_the_one_with_least(
        etcd: EtcdClient, prefix: str) -> None:
    async with scheduler_over(etcd, f"{prefix}/s", "spread", *SHAPES) as (agent, _):
        assert (await agent.place(new_id())).node_id == "idle"
    async with scheduler_over(etcd, f"{prefix}/b", "binpack", *SHAPES) as (agent, _):
        assert (await agent.place(new_id())).node_id == "big"


async def test_spread_counts_its_own_placements_until_the_node_record_shows_them(etcd: EtcdClient, prefix: str) -> None:
    two: tuple[tuple[str, dict[str, object]], ...] = (("a", {"cpu": 4, "memory": 8 * GB}),
                                                       ("b", {"cpu": 4, "memory": 8 * GB}))
    async with scheduler_over(etcd, prefix, "spread", *two) as (agent, _nodes):
        # The nodes never rewrite their records here: only the scheduler's book tells them apart.
        assert [(await agent.place(new_id())).node_id for _ in range(4)] == ["a", "b", "a", "b"]


async def test_a_placement_the_node_has_applied_is_not_subtracted_twice(etcd: EtcdClient, prefix: str) -> None:
    async with scheduler_over(etcd, prefix, "binpack", ("n", {"cpu": 4, "memory": 8 * GB})) as (agent, (node,)):
        two_cpu = Resources(cpu=2)
        first = await agent.place(new_id(), demand=two_cpu)
        # The node takes the task into its record: 2 cpu free, applied up to the placement.
        await node.publish(free=Resources(cpu=2, memory=8 * GB, disk=100 * GB), applied_revision=first.revision)
        await eventually(lambda: _applied(agent, "n", first.revision), 5, "the cache to see the rewritten record")
        await agent.place(new_id(), demand=two_cpu)  # fits: 2 free, nothing outstanding
        with pytest.raises(NoFit) as caught:
            await agent.place(new_id(), demand=two_cpu)  # the second is outstanding now
        assert caught.value.reasons == ("n: needs 2 cpu, has 0 free",)


async def _applied(agent: Agent, node_id: str, revision: int) -> bool:
    entry = agent.scheduler.nodes.nodes.get(node_id)
    return entry is not None and entry.record.applied_revision >= revision


async def test_a_new_scheduler_counts_the_placements_its_predecessor_left_outstanding(
        etcd: EtcdClient, prefix: str) -> None:
    node = await SimNode(etcd, prefix, "n", cpu=4).register()
    try:
        async with agents(etcd, prefix, ["a", "b"], as_nodes=False) as two:
            first = await the_leader(two)
            await first.place(new_id(), demand=Resources(cpu=3))  # not yet consumed by n
            await first.election.close()
            second = await until(lambda: _leader_other_than(two, first), 5, "a successor")
            await cache_ready(second)
            with pytest.raises(NoFit) as caught:
                await second.place(new_id(), demand=Resources(cpu=3))
            assert caught.value.reasons == ("n: needs 3 cpu, has 1 free",)
    finally:
        await node.close()


async def test_no_fit_says_for_each_node_what_it_lacks(etcd: EtcdClient, prefix: str) -> None:
    shapes: tuple[tuple[str, dict[str, object]], ...] = (
        ("eu-1", {"cpu": 2, "labels": {"region": "eu"}}), ("us-1", {"cpu": 8, "labels": {"region": "us"}}),
    )
    async with scheduler_over(etcd, prefix, "spread", *shapes) as (agent, _):
        with pytest.raises(NoFit) as caught:
            await agent.place(new_id(), WithLabels({"region": "eu"}), demand=Resources(cpu=4))
        assert caught.value.reasons == ("eu-1: needs 4 cpu, has 2 free",
                                        "us-1: labels region=eu do not match (has region=us)")
        with pytest.raises(NoFit) as caught:
            await agent.place(new_id(), OnNode("gone-1"))
        assert caught.value.reasons == ("gone-1: offline or unknown",)
        assert (await agent.place(new_id(), WithLabels({"region": "us"}), demand=Resources(cpu=4))).node_id == "us-1"
        assert await keys_under(etcd, f"{prefix}/assignments/eu-1/") == {}


async def test_a_retry_of_a_placed_task_answers_with_that_placement_even_after_it_was_taken(
        etcd: EtcdClient, prefix: str) -> None:
    two: tuple[tuple[str, dict[str, object]], ...] = (("a", {"cpu": 4}), ("b", {"cpu": 4}))
    async with scheduler_over(etcd, prefix, "spread", *two) as (agent, _):
        task_id = new_id()
        body = {"name": "job", "command": "true", "placement": "auto"}
        placed = await agent.scheduler.place(task_id, "task", body, ONE_CPU, "auto", posted_by="a")
        again = await agent.scheduler.place(task_id, "task", body, ONE_CPU, "auto", posted_by="b")
        assert (again.node_id, again.existing, placed.existing) == (placed.node_id, True, False)
        key = assignment_key(prefix, placed.node_id, task_id)
        stored = await etcd.get(key)
        assert stored is not None and "placement" not in decode(stored.value, Assignment).body
        await etcd.delete(key)  # the node took it
        third = await agent.scheduler.place(task_id, "task", body, ONE_CPU, "auto", posted_by="a")
        assert (third.node_id, third.existing) == (placed.node_id, True)
        assert await keys_under(etcd, f"{prefix}/assignments/") == {}
        record = await etcd.get(placed_key(prefix, task_id))
        assert record is not None and decode(record.value, PlacedTask).node_id == placed.node_id
        # It lapses by itself: on a lease of the retry window, never renewed.
        assert (await etcd.time_to_live(record.lease)).granted_ttl == 600


async def test_a_retry_at_the_next_scheduler_finds_the_placement_its_predecessor_made(
        etcd: EtcdClient, prefix: str) -> None:
    nodes = [await SimNode(etcd, prefix, name).register() for name in ("n1", "n2")]
    try:
        async with agents(etcd, prefix, ["a", "b"], as_nodes=False) as two:
            first = await the_leader(two)
            task_id = new_id()
            placed = await first.place(task_id)
            await first.election.close()  # stepped down (or died) before its caller heard back
            second = await until(lambda: _leader_other_than(two, first), 5, "a successor")
            await cache_ready(second)
            again = await second.place(task_id)
            assert (again.node_id, again.existing) == (placed.node_id, True)
            assert list(await keys_under(etcd, f"{prefix}/assignments/")) == [f"{placed.node_id}/{task_id}"]
    finally:
        for node in nodes:
            await node.close()


async def test_a_follower_refuses_to_place_and_names_the_scheduler(etcd: EtcdClient, prefix: str) -> None:
    async with agents(etcd, prefix, ["a", "b"]) as two:
        leader = await the_leader(two)
        follower = next(a for a in two if a is not leader)
        with pytest.raises(NotLeader, match=f"{leader.node_id} at {leader.node.record.advertise_url}") as caught:
            await follower.place(new_id())
        assert caught.value.leader == leader.election.leader


@pytest.mark.parametrize("task_id", ["../other/x", "a/b", "", "x\x00"])
async def test_an_attacker_cannot_aim_an_assignment_at_another_key(etcd: EtcdClient, prefix: str, task_id: str) -> None:
    async with agents(etcd, prefix, ["a"]) as (agent,):
        await the_leader([agent])
        with pytest.raises(ValueError, match=r"task_id: .* is not a valid id"):
            await agent.place(task_id)
        with pytest.raises(ValueError, match="demand: expected amounts >= 0"):
            await agent.place(new_id(), demand=Resources(cpu=-8))
        with pytest.raises(ValueError, match=r"body: .* bytes as an assignment, over the 1400000"):
            await agent.scheduler.place(new_id(), "task", {"env": {"X": "x" * 1_500_000}}, ONE_CPU, "auto", "a")
        assert await keys_under(etcd, f"{prefix}/assignments/") == {}


async def test_with_etcd_away_placing_says_which_endpoints_failed() -> None:
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with client([endpoint]) as nowhere:
        scheduler = Scheduler(nowhere, "/t", "a", StaleLeadership(epoch=5))
        with pytest.raises(EtcdUnavailable, match=f"{endpoint}: cannot connect"):
            await scheduler.place(new_id(), "task", {}, ONE_CPU, "auto", posted_by="a")


# --- three etcd members ---------------------------------------------------------------------------


async def test_with_the_schedulers_etcd_member_killed_placements_carry_on(etcd_three: EtcdCluster) -> None:
    # Every agent talks to etcd's raft leader first, so killing it takes away the member the
    # scheduler uses and makes etcd elect a new leader too: the hardest single member to lose.
    raft_leader = etcd_three.leader()
    others = [m.client_url for m in etcd_three.members if m is not raft_leader]
    clients = [client([raft_leader.client_url, *others]), client([raft_leader.client_url, *reversed(others)]),
               client([raft_leader.client_url, *others])]
    prefix = f"/t/{uuid.uuid4().hex}"
    try:
        async with agents(clients, prefix, ["a", "b", "c"], ttl=3) as three:
            first = await the_leader(three, timeout=10)
            assert (await first.place(new_id(), demand=Resources(cpu=0.1))).existing is False
            assert clients[three.index(first)].endpoint == raft_leader.client_url
            raft_leader.kill()

            async def place_somewhere() -> Placed | None:
                leader = next((a for a in three if a.election.is_leader), None)
                if leader is None:
                    return None
                return await leader.place(task_id, demand=Resources(cpu=0.1))

            for _ in range(3):
                task_id = new_id()
                await until(place_somewhere, 15, "a placement with one etcd member dead")
            leader = await the_leader(three, timeout=10)
            # Its lease outlived the member (keepalives moved on): the same scheduler, same epoch.
            assert (leader, leader.election.epoch) == (first, first.election.epoch)
            assert len(await keys_under(clients[three.index(first)], f"{prefix}/assignments/")) == 4
    finally:
        for c in clients:
            await c.close()


async def test_closing_right_as_the_election_is_woken_still_stops_it() -> None:
    # Python 3.11's asyncio.wait_for returns instead of raising when a cancel lands just as
    # the awaited event fires; an election paused that way would never stop. No etcd needed:
    # with no lease the election only waits.
    async with client(["http://127.0.0.1:9"]) as unused:
        election = Election(unused, "/t", "a", "http://a.test:8080", lambda: 0, retry=30)
        await election.start()
        for _ in range(5):
            await asyncio.sleep(0)  # into its pause, waiting for a lease
        election.poke()
        await asyncio.sleep(0)  # the wake-up has fired, the election has not yet resumed
        started = time.monotonic()
        async with asyncio.timeout(5):
            await election.close()
        assert time.monotonic() - started < 1
