"""Where a served model's replicas go (cluster.replicas.plan_replicas), decided from records
alone: copied to a second node that fits, spread when there are more replicas, re-placed when
a node is lost (and not while it is only offline within the grace), never onto a node that
refused the model, lacks room or is offline; the same inputs always give the same answer."""

from __future__ import annotations

from cnetd.cluster.records import ModelSource, Resources, ServedModel
from cnetd.cluster.replicas import NodeState, acting_node, plan_replicas, shares

GIB = 1024**3
CAPACITY = Resources(cpu=8, memory=16 * GIB, disk=100 * GIB)


def node(node_id: str, online: bool = True, cpu: float = 8, memory: int = 16 * GIB, disk: int = 100 * GIB) -> NodeState:
    return NodeState(node_id, online, Resources(cpu=cpu, memory=memory, disk=disk), CAPACITY)


def record(placements: dict[str, int], replicas: int = 1, **extra: object) -> ServedModel:
    fields: dict[str, object] = {"holders": list(placements), **extra}
    return ServedModel(name="m", model_id="id-1", sha256="a" * 64, size=GIB, replicas=replicas, placements=placements,
                       origin="c", source=ModelSource(model_path="models/m.joblib", cpu_limit=1.0, memory_limit=2 * GIB),
                       **fields)  # type: ignore[arg-type]


def placed(r: ServedModel, nodes: list[NodeState], lost: set[str] | None = None) -> dict[str, int] | None:
    new = plan_replicas(r, nodes, lost or set())
    return None if new is None else dict(new.placements)


def test_a_model_on_one_node_is_placed_on_a_second_with_the_most_room() -> None:
    nodes = [node("a", cpu=2), node("b", cpu=6), node("c")]
    assert placed(record({"c": 1}), nodes) == {"c": 1, "b": 1}
    # nothing to change the next time round
    assert placed(record({"c": 1, "b": 1}), nodes) is None
    # a node that holds the artifact already goes first, whatever its room
    assert placed(record({"c": 1}, holders=["c", "a"]), nodes) == {"c": 1, "a": 1}


def test_replicas_are_spread_origin_first() -> None:
    nodes = [node(n) for n in "abcd"]
    assert placed(record({"c": 5}, replicas=5), nodes) == {"c": 2, "a": 1, "b": 1, "d": 1}
    assert shares(4, ["c", "a", "b"]) == {"c": 2, "a": 1, "b": 1}
    assert shares(1, ["c", "a"]) == {"c": 1, "a": 1}  # each node runs at least one
    # fewer replicas wanted: the extra nodes go, the origin and holders stay
    assert placed(record({"c": 2, "a": 1, "b": 1, "d": 1}, replicas=1), nodes) == {"c": 1, "a": 1}


def test_a_lost_node_is_replaced_but_one_offline_within_the_grace_is_not() -> None:
    nodes = [node("a"), node("b"), node("c", online=False)]
    r = record({"c": 1, "a": 1})
    assert placed(r, nodes) is None  # c offline, not lost yet: it keeps its place
    assert placed(r, nodes, lost={"c"}) == {"a": 1, "b": 1}
    gone = [node("a"), node("b")]  # c no longer in the cluster at all
    assert placed(r, gone) == {"a": 1, "b": 1}


def test_nodes_that_refused_lack_room_or_are_offline_are_not_chosen() -> None:
    r = record({"c": 1}, refused={"a": "its script is not here"})
    nodes = [node("a"), node("b", memory=GIB), node("d", online=False), node("e", disk=GIB // 2), node("c")]
    assert placed(r, nodes) is None  # a refused, b lacks memory (2 GiB asked), d offline, e lacks disk
    assert placed(r, [*nodes, node("f")]) == {"c": 1, "f": 1}
    # a node that refused is taken out even if it was placed
    assert placed(record({"c": 1, "a": 1}, refused={"a": "no"}), [node("a"), node("c")]) == {"c": 1}


def test_a_stopped_model_is_not_placed_and_the_lowest_online_node_acts() -> None:
    assert placed(record({"c": 1}, state="stopped"), [node("a"), node("c")]) is None
    assert acting_node([node("b"), node("a", online=False), node("c")]) == "b"
    assert acting_node([node("a", online=False)]) is None
