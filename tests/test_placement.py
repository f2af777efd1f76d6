"""cnetd.cluster.placement: admission from node records alone, one rule per test."""

from __future__ import annotations

import pytest

from cnetd.cluster.placement import (
    STRATEGIES,
    NoFit,
    OnNode,
    WithLabels,
    choose,
    demand_of,
    fits,
    lacks,
    parse_placement,
    score,
)
from cnetd.cluster.records import NodeRecord, Resources

GB = 10**9


def node(node_id: str, cpu: float = 4, memory: int = 8 * GB, free_cpu: float | None = None,
         free_memory: int | None = None, gpus: int = 0, free_gpus: int | None = None, disk: int = 100 * GB,
         free_disk: int | None = None, **labels: str) -> NodeRecord:
    return NodeRecord(
        node_id=node_id, name=node_id, advertise_url=f"http://{node_id}:8080", labels=labels,
        capacity=Resources(cpu=cpu, memory=memory, disk=disk, gpus=gpus),
        free=Resources(cpu=cpu if free_cpu is None else free_cpu, memory=memory if free_memory is None else free_memory,
                       disk=disk if free_disk is None else free_disk, gpus=gpus if free_gpus is None else free_gpus),
    )


SMALL = Resources(cpu=1, memory=1 * GB)


# --- demand -----------------------------------------------------------------------------------


def test_demand_takes_the_four_limits_and_a_missing_one_asks_for_nothing() -> None:
    assert demand_of({"cpu_limit": 1.5, "memory_limit": 512_000_000, "disk_limit": None, "gpu_limit": 1}) \
        == Resources(cpu=1.5, memory=512_000_000, disk=0, gpus=1)
    assert demand_of(None) == Resources()
    assert demand_of({}) == Resources()


@pytest.mark.parametrize("resources", [
    {"cpu_limit": -4}, {"memory_limit": float("nan")}, {"disk_limit": float("inf")}, {"gpu_limit": "1"},
    {"cpu_limit": True},
])
def test_an_attacker_cannot_demand_negative_or_odd_amounts_to_inflate_a_node(resources: dict[str, object]) -> None:
    # A negative demand would add to a node's free resources in the scheduler's books.
    with pytest.raises(ValueError, match=r"resources\.\w+_limit: expected a number >= 0"):
        demand_of(resources)


# --- placement parsing ------------------------------------------------------------------------


def test_placement_parses_the_three_shapes() -> None:
    assert parse_placement("auto") == "auto"
    assert parse_placement({"node_id": "node-b"}) == OnNode("node-b")
    assert parse_placement({"labels": {"region": "eu"}}) == WithLabels({"region": "eu"})


@pytest.mark.parametrize("value, problem", [
    ("anywhere", "expected \"auto\""),
    (None, "expected \"auto\""),
    ({"node_id": 7}, "placement.node_id: expected a string"),
    ({"node_id": "a", "labels": {"x": "y"}}, "exactly one of node_id or labels"),
    ({"zone": "a"}, "exactly one of node_id or labels"),
    ({"labels": {}}, "non-empty object"),
    ({"labels": ["region"]}, "non-empty object"),
    ({"labels": {"region": 1}}, "expected a string value"),
])
def test_a_bad_placement_says_what_is_wrong(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_placement(value)


@pytest.mark.parametrize("node_id", ["../other", "a/b", "node\x00x", "", ".hidden", "x" * 200])
def test_an_attacker_cannot_aim_a_placement_at_another_key(node_id: str) -> None:
    # The node id becomes a segment of <prefix>/assignments/<node>/<task>.
    with pytest.raises(ValueError, match=r"placement\.node_id: .* is not a valid id"):
        parse_placement({"node_id": node_id})


# --- fitting and reasons ----------------------------------------------------------------------


def test_a_named_node_that_fits_is_chosen_even_when_others_have_more_room() -> None:
    nodes = [node("a", free_cpu=1), node("b", cpu=64)]
    assert choose(nodes, SMALL, OnNode("a"), "spread").node_id == "a"


def test_a_named_node_that_is_not_online_is_offline_or_unknown() -> None:
    with pytest.raises(NoFit) as caught:
        choose([node("a")], SMALL, OnNode("node-x"), "spread")
    assert caught.value.reasons == ("node-x: offline or unknown",)


def test_no_fit_gives_one_line_per_node_saying_what_it_lacks() -> None:
    nodes = [
        node("node-b", free_cpu=1.5),
        node("node-a", free_memory=512_000_000),
        node("node-c", free_cpu=0.5, free_memory=0),
        node("node-d", gpus=0),
    ]
    with pytest.raises(NoFit) as caught:
        choose(nodes, Resources(cpu=4, memory=2 * GB, gpus=1), "auto", "spread")
    assert caught.value.reasons == (
        "node-a: needs 2 GB memory, has 512 MB free; needs 1 GPU, has 0 free",
        "node-b: needs 4 cpu, has 1.5 free; needs 1 GPU, has 0 free",
        "node-c: needs 4 cpu, has 0.5 free; needs 2 GB memory, has 0 B free; needs 1 GPU, has 0 free",
        "node-d: needs 1 GPU, has 0 free",
    )
    assert str(caught.value).startswith("no node fits: node-a: ")


def test_disk_is_admitted_too() -> None:
    with pytest.raises(NoFit) as caught:
        choose([node("a", free_disk=GB)], Resources(disk=5 * GB), "auto", "spread")
    assert caught.value.reasons == ("a: needs 5 GB disk, has 1 GB free",)


def test_a_demand_of_nothing_fits_even_an_overcommitted_node() -> None:
    assert choose([node("a", free_cpu=-1, free_memory=-GB)], Resources(), "auto", "spread").node_id == "a"


def test_labels_must_all_match_and_the_reason_names_what_the_node_has() -> None:
    nodes = [node("node-a", region="us", gpu="a100"), node("node-b", region="eu"), node("node-c", region="eu", gpu="a100")]
    wanted = WithLabels({"region": "eu", "gpu": "a100"})
    assert choose(nodes, SMALL, wanted, "spread").node_id == "node-c"
    with pytest.raises(NoFit) as caught:
        choose(nodes[:2], SMALL, wanted, "spread")
    assert caught.value.reasons == (
        "node-a: labels region=eu do not match (has region=us)",
        "node-b: labels gpu=a100 do not match (has no gpu)",
    )


def test_a_node_whose_labels_match_but_lacks_room_says_what_it_lacks() -> None:
    with pytest.raises(NoFit) as caught:
        choose([node("a", free_cpu=0.5, region="eu")], SMALL, WithLabels({"region": "eu"}), "spread")
    assert caught.value.reasons == ("a: needs 1 cpu, has 0.5 free",)


def test_with_no_node_online_auto_says_so() -> None:
    with pytest.raises(NoFit) as caught:
        choose([], SMALL, "auto", "spread")
    assert caught.value.reasons == ("no node is online",)


# --- strategies -------------------------------------------------------------------------------


def test_score_is_the_mean_share_left_over_cpu_and_memory() -> None:
    assert score(node("a", cpu=4, memory=8 * GB), SMALL) == pytest.approx(((3 / 4) + (7 / 8)) / 2)
    assert score(node("a", cpu=0, memory=8 * GB), SMALL) == pytest.approx(7 / 8)  # no cpu capacity: left out


def test_spread_picks_the_node_with_most_left_after_placing() -> None:
    nodes = [node("a", free_cpu=1.5), node("b", free_cpu=3.5), node("c", free_cpu=2.5)]
    assert choose(nodes, SMALL, "auto", "spread").node_id == "b"


def test_spread_normalises_by_capacity_so_a_big_busy_node_loses_to_a_small_idle_one() -> None:
    big_busy = node("big", cpu=64, memory=256 * GB, free_cpu=16, free_memory=64 * GB)  # 25% free
    small_idle = node("small", cpu=4, memory=8 * GB)  # all free
    assert choose([big_busy, small_idle], SMALL, "auto", "spread").node_id == "small"


def test_binpack_picks_the_node_with_least_left_that_still_fits() -> None:
    nodes = [node("a", free_cpu=1.5), node("b", free_cpu=3.5), node("c", free_cpu=0.5)]
    assert choose(nodes, SMALL, "auto", "binpack").node_id == "a"  # c would fit least, but does not fit


def test_equal_scores_go_to_the_smallest_node_id_whatever_the_order() -> None:
    nodes = [node("n3"), node("n1"), node("n2")]
    for strategy in STRATEGIES:
        assert choose(nodes, SMALL, "auto", strategy).node_id == "n1"
        assert choose(list(reversed(nodes)), SMALL, "auto", strategy).node_id == "n1"


def test_fits_and_the_reasons_agree_on_every_edge() -> None:
    amounts = (-1, 0, 1, 2)
    for free_cpu in amounts:
        for wanted in amounts[1:]:
            for gpus in amounts[1:]:
                record = node("n", free_cpu=free_cpu, gpus=2, free_gpus=gpus - 1)
                demand = Resources(cpu=wanted, gpus=max(wanted - 1, 0))
                assert fits(record.free, demand) == (not lacks(record, demand)), (free_cpu, wanted, gpus)


def test_gpu_memory_goes_to_a_node_with_that_much_free_on_one_gpu() -> None:
    GIB = 2**30

    def gpu_node(node_id: str, free_gpu_memory: int) -> NodeRecord:
        record = node(node_id, gpus=2)
        return NodeRecord(node_id=node_id, name=node_id, advertise_url=record.advertise_url,
                          capacity=Resources(cpu=4, memory=8 * GB, disk=100 * GB, gpus=2, gpu_memory=8 * GIB),
                          free=Resources(cpu=4, memory=8 * GB, disk=100 * GB, gpus=0, gpu_memory=free_gpu_memory))

    assert demand_of({"gpu_memory": 3 * GIB}) == Resources(gpu_memory=3 * GIB)
    nodes = [gpu_node("small", 2 * GIB), gpu_node("roomy", 5 * GIB), node("cpu-only")]
    assert choose(nodes, Resources(gpu_memory=3 * GIB), "auto", "spread").node_id == "roomy"
    with pytest.raises(NoFit) as caught:
        choose(nodes, Resources(gpu_memory=6 * GIB), "auto", "binpack")
    assert caught.value.reasons == (
        "cpu-only: needs 6 GiB on one GPU, has at most 0 B free on one",
        "roomy: needs 6 GiB on one GPU, has at most 5 GiB free on one",
        "small: needs 6 GiB on one GPU, has at most 2 GiB free on one",
    )
