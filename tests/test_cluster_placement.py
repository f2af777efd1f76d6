"""Placing work through the elected scheduler: real agent processes on loopback that form a
cluster through a real etcd (lease TTL 3 s). A body with "placement" posted to any agent is
placed by the one scheduler (a fenced etcd txn) and created by its node; the posting agent
answers with the task as that node shows it. Admission refusals say, node by node, what is
missing; a scheduler that dies is replaced; work posted at once to every agent runs once."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, cluster_agent, new_prefix, nodes_of, start_all, wait_status
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until

PY = sys.executable
SLEEP = ["-c", "import time; time.sleep(120)"]
SLACK = 5.0


def task(placement: Any, **extra: Any) -> dict[str, Any]:
    return {"name": "placed", "command": PY, "args": SLEEP, "placement": placement, **extra}


def scheduler_of(agent: AgentProcess) -> str | None:
    leaders = [node_id for node_id, node in nodes_of(agent).items() if node.get("scheduler")]
    assert len(leaders) <= 1, leaders
    return leaders[0] if leaders else None


def three(etcd: EtcdCluster, make: Callable[..., AgentProcess], **extra: Any) -> list[AgentProcess]:
    prefix = new_prefix()
    agents = [cluster_agent(make, etcd.endpoints, name, prefix=prefix, labels={"zone": zone}, extra=extra)
              for name, zone in (("a", "x"), ("b", "y"), ("c", "y"))]
    start_all(*agents)
    for node in "abc":
        wait_status(agents[0], node, "online")
    wait_until(lambda: scheduler_of(agents[0]), TTL + SLACK, "a scheduler to be elected")
    return agents


def test_work_posted_to_any_agent_runs_where_its_placement_says(
    etcd_three: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, b, c = three(etcd_three, agent_factory)

    on_c = a.api.post("/api/tasks", task({"node_id": "c"}))
    assert on_c.status == 201 and on_c.body["node_id"] == "c", on_c.text
    assert c.api.get(f"/api/tasks/{on_c.body['id']}").body["name"] == "placed"  # created in c's own store
    assert a.api.get(f"/api/tasks/{on_c.body['id']}").body["node_id"] == "c"  # and a reaches it there
    wait_until(lambda: any(t["id"] == on_c.body["id"] and t["node_id"] == "c"
                           for t in a.api.get("/api/tasks?node=all").body), 10, "a to list the task on c")

    in_x = b.api.post("/api/tasks", task({"labels": {"zone": "x"}}))
    assert in_x.status == 201 and in_x.body["node_id"] == "a", in_x.text

    # spread: with one core asked each, three tasks land on three nodes (all have the same capacity)
    cores = float(nodes_of(a)["a"]["capacity"]["cpu"])
    spread = [a.api.post("/api/tasks", task("auto", resources={"cpu_limit": cores / 2})) for _ in range(3)]
    assert all(r.status == 201 for r in spread), [r.text for r in spread]
    assert sorted(r.body["node_id"] for r in spread) == ["a", "b", "c"]

    nothing = c.api.post("/api/tasks", task("auto", resources={"cpu_limit": 1000}))
    assert nothing.status == 422, nothing.text
    reasons = nothing.body["details"]["reasons"]
    assert len(reasons) == 3 and all("needs 1000 cpu" in line for line in reasons), reasons
    assert {line.split(":")[0] for line in reasons} == {"a", "b", "c"}
    no_label = a.api.post("/api/tasks", task({"labels": {"zone": "mars"}}))
    assert no_label.status == 422 and "zone=mars" in no_label.text, no_label.text

    both = a.api.post("/api/tasks", task("auto", node_id="b"))
    assert both.status == 400 and both.body["details"]["field"] == "placement", both.text
    hostile = a.api.post("/api/tasks", task({"node_id": "../nodes/b"}))
    assert hostile.status == 400 and hostile.body["details"]["field"].startswith("placement"), hostile.text
    bad_body = a.api.post("/api/tasks", {"name": "x", "placement": "auto"})  # no command: a's own check
    assert bad_body.status == 400 and bad_body.body["details"]["field"] == "command", bad_body.text

    # One etcd member of three dies (the raft leader): placements go on.
    etcd_three.leader().kill()
    after = wait_until(lambda: (r := b.api.post("/api/tasks", task({"node_id": "a"}))).status == 201 and r,
                       TTL + SLACK, "a placement with one etcd member down")
    assert after.body["node_id"] == "a"


def test_work_the_chosen_node_refuses_comes_back_as_that_nodes_answer(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = new_prefix()
    a = cluster_agent(agent_factory, etcd_shared.endpoints, "a", prefix=prefix)
    strict = cluster_agent(agent_factory, etcd_shared.endpoints, "strict", prefix=prefix,
                           extra={"tasks": {"allowed_commands": ["sleep"]}})
    start_all(a, strict)
    wait_status(a, "strict", "online")
    wait_until(lambda: scheduler_of(a), TTL + SLACK, "a scheduler to be elected")
    refused = a.api.post("/api/tasks", task({"node_id": "strict"}))
    assert refused.status == 400, refused.text
    assert refused.body["error"].startswith("strict refused it: command:"), refused.text
    assert strict.api.get("/api/tasks").body == []


def test_a_dead_scheduler_is_replaced_and_placements_go_on(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    agents = {agent.workdir.name: agent for agent in three(etcd_shared, agent_factory)}
    first = scheduler_of(agents["a"])
    assert first is not None
    agents[first].kill()
    survivor = next(agent for name, agent in agents.items() if name != first)

    def successor() -> str | None:
        now = scheduler_of(survivor)
        return now if now not in (None, first) else None

    wait_until(successor, TTL + SLACK, "another agent to become the scheduler")
    placed = survivor.api.post("/api/tasks", task("auto"))
    assert placed.status == 201 and placed.body["node_id"] != first, placed.text


def test_work_posted_to_every_agent_at_once_is_each_placed_and_run_once(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    agents = three(etcd_shared, agent_factory)
    quick = {"name": "burst", "command": PY, "args": ["-c", "pass"], "placement": "auto"}
    with ThreadPoolExecutor(max_workers=9) as pool:
        replies = list(pool.map(lambda i: agents[i % 3].api.post("/api/tasks", quick), range(30)))
    assert all(r.status == 201 for r in replies), [r.text for r in replies if r.status != 201][:3]
    ids = [r.body["id"] for r in replies]
    assert len(set(ids)) == 30

    def all_created() -> Counter[str] | None:
        found: Counter[str] = Counter()
        for agent in agents:
            found.update(t["id"] for t in agent.api.get("/api/tasks").body if t["name"] == "burst")
        return found if set(found) == set(ids) else None

    created = wait_until(all_created, 15, "every placed task in some node's store")
    assert created is not None and set(created.values()) == {1}, created  # each in exactly one store


def test_placement_on_a_single_node_means_this_node_or_nothing(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"agent": {"node_id": "alone"}}).start()
    here = agent.api.post("/api/tasks", task("auto"))
    assert here.status == 201 and here.body["node_id"] == "alone", here.text
    elsewhere = agent.api.post("/api/tasks", task({"labels": {"zone": "x"}}))
    assert elsewhere.status == 400 and elsewhere.body["details"]["field"] == "placement", elsewhere.text


def test_placements_are_refused_with_503_while_etcd_is_away_and_work_again_after(
    etcd_one: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = cluster_agent(agent_factory, etcd_one.endpoints, "solo", prefix=new_prefix()).start()
    wait_until(lambda: scheduler_of(agent) == "solo", TTL + SLACK, "solo to be the scheduler")
    etcd_one.stop()
    away = agent.api.post("/api/tasks", task("auto"))
    assert away.status == 503, away.text
    etcd_one.restart(*etcd_one.members)
    back = wait_until(lambda: (r := agent.api.post("/api/tasks", task("auto"))).status == 201 and r,
                      3 * TTL + SLACK, "placements to work again")
    assert back.body["node_id"] == "solo"
