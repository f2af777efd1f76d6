"""Admission: which node a piece of work goes to, from the nodes' records alone (no I/O).

    demand = demand_of(body.get("resources"))          # Resources; a missing limit asks for 0
    where = parse_placement(body["placement"])         # OnNode | WithLabels | "auto"; ValueError names the problem
    node = choose(online_nodes, demand, where, "spread")  # a NodeRecord, or raises NoFit

A node fits when its free cpu, memory, disk and GPUs each cover the demand (a dimension
asked for 0 always fits). Among the nodes that fit:
  spread   picks the node with the most left after placing the work,
  binpack  picks the node with the least left that still fits,
both by one score: the mean over cpu and memory of (free - demand) / capacity (a dimension
whose capacity is 0 is left out). Equal scores go to the smallest node_id, so the same
records always give the same answer. When nothing fits, NoFit carries one line per node
saying what that node lacks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from cnetd.cluster.records import NodeRecord, Resources, check_key_part
from cnetd.units import format_size

Strategy = Literal["spread", "binpack"]
STRATEGIES: tuple[Strategy, ...] = ("spread", "binpack")


@dataclass(frozen=True)
class OnNode:
    node_id: str


@dataclass(frozen=True)
class WithLabels:
    labels: Mapping[str, str]  # every one must match


Placement: TypeAlias = OnNode | WithLabels | Literal["auto"]


class NoFit(Exception):
    """No node can take the work; reasons: one line per node ("node-b: needs 4 cpu, has 1.5 free")."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("no node fits: " + "; ".join(self.reasons))


def parse_placement(value: object) -> Placement:
    """A request's "placement" as a Placement; ValueError says what is wrong with it."""
    if value == "auto":
        return "auto"
    if not isinstance(value, dict):
        raise ValueError(f'placement: expected "auto", {{"node_id": ...}} or {{"labels": {{...}}}}, got {value!r:.80}')
    if set(value) == {"node_id"}:
        node_id = value["node_id"]
        if not isinstance(node_id, str):
            raise ValueError(f"placement.node_id: expected a string, got {type(node_id).__name__}")
        check_key_part("placement.node_id", node_id)
        return OnNode(node_id)
    if set(value) == {"labels"}:
        labels = value["labels"]
        if not isinstance(labels, dict) or not labels:
            raise ValueError("placement.labels: expected a non-empty object of label: value strings")
        for name, wanted in labels.items():
            if not isinstance(name, str) or not name or not isinstance(wanted, str):
                raise ValueError(f"placement.labels: {name!r:.40}: expected a string value, got {wanted!r:.40}")
        return WithLabels(dict(labels))
    raise ValueError("placement: expected exactly one of node_id or labels, got keys "
                     + ", ".join(sorted(map(str, value))))


def demand_of(resources: Mapping[str, object] | None) -> Resources:
    """What a request's resources ask of a node: cpu_limit, memory_limit, disk_limit,
    gpu_limit and gpu_memory; a missing or null one asks for 0. Negative or non-finite values are refused."""
    resources = resources or {}

    def amount(name: str) -> float:
        value = resources.get(name)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"resources.{name}: expected a number >= 0, got {value!r:.40}")
        return value

    return Resources(cpu=float(amount("cpu_limit")), memory=int(amount("memory_limit")),
                     disk=int(amount("disk_limit")), gpus=int(amount("gpu_limit")), gpu_memory=int(amount("gpu_memory")))


def lacks(node: NodeRecord, demand: Resources) -> list[str]:
    """What of the demand the node's free resources do not cover, in words (empty: it fits)."""
    free = node.free
    missing: list[str] = []
    if demand.cpu > 0 and demand.cpu > free.cpu:
        missing.append(f"needs {demand.cpu:g} cpu, has {max(free.cpu, 0):g} free")
    sizes: tuple[tuple[str, int, int], ...] = (("memory", demand.memory, free.memory), ("disk", demand.disk, free.disk))
    for name, wanted, has in sizes:
        if wanted > 0 and wanted > has:
            missing.append(f"needs {format_size(wanted)} {name}, has {format_size(max(has, 0), like=wanted)} free")
    if demand.gpus > 0 and demand.gpus > free.gpus:
        missing.append(f"needs {demand.gpus} GPU{'s' if demand.gpus != 1 else ''}, has {max(free.gpus, 0)} free")
    if demand.gpu_memory > 0 and demand.gpu_memory > free.gpu_memory:
        most = format_size(max(free.gpu_memory, 0), like=demand.gpu_memory)
        missing.append(f"needs {format_size(demand.gpu_memory)} on one GPU, has at most {most} free on one")
    return missing


def label_mismatch(node: NodeRecord, wanted: Mapping[str, str]) -> str:
    """The wanted labels the node does not carry, and what it has instead ("" when all match)."""
    wrong = [name for name in sorted(wanted) if node.labels.get(name) != wanted[name]]
    if not wrong:
        return ""
    has = ", ".join(f"{name}={node.labels[name]}" if name in node.labels else f"no {name}" for name in wrong)
    return f"labels {', '.join(f'{name}={wanted[name]}' for name in wrong)} do not match (has {has})"


def score(node: NodeRecord, demand: Resources) -> float:
    """How much of the node would be left after placing the demand, 0..1 (mean over cpu and memory)."""
    shares: list[float] = []
    if node.capacity.cpu > 0:
        shares.append((node.free.cpu - demand.cpu) / node.capacity.cpu)
    if node.capacity.memory > 0:
        shares.append((node.free.memory - demand.memory) / node.capacity.memory)
    return sum(shares) / len(shares) if shares else 0.0


def _most_left(node: NodeRecord, demand: Resources) -> tuple[float, str]:
    return (-score(node, demand), node.node_id)


def _least_left(node: NodeRecord, demand: Resources) -> tuple[float, str]:
    return (score(node, demand), node.node_id)


RANKINGS: dict[Strategy, Callable[[NodeRecord, Resources], tuple[float, str]]] = {
    "spread": _most_left,
    "binpack": _least_left,
}


def choose(nodes: Sequence[NodeRecord], demand: Resources, placement: Placement, strategy: Strategy) -> NodeRecord:
    """The node the work goes to, among the online nodes given; NoFit when none can take it."""
    rank = RANKINGS[strategy]
    if isinstance(placement, OnNode):
        candidates: Sequence[NodeRecord] = [n for n in nodes if n.node_id == placement.node_id]
        if not candidates:
            raise NoFit([f"{placement.node_id}: offline or unknown"])
    else:
        candidates = nodes
        if not candidates:
            raise NoFit(["no node is online"])
    best: NodeRecord | None = None
    best_rank: tuple[float, str] | None = None
    for node in candidates:
        if isinstance(placement, WithLabels) and label_mismatch(node, placement.labels):
            continue
        if not fits(node.free, demand):
            continue
        node_rank = rank(node, demand)
        if best_rank is None or node_rank < best_rank:
            best, best_rank = node, node_rank
    if best is None:
        raise NoFit(no_fit_reasons(candidates, demand, placement))
    return best


def fits(free: Resources, demand: Resources) -> bool:
    return ((demand.cpu <= 0 or demand.cpu <= free.cpu) and (demand.memory <= 0 or demand.memory <= free.memory)
            and (demand.disk <= 0 or demand.disk <= free.disk) and (demand.gpus <= 0 or demand.gpus <= free.gpus)
            and (demand.gpu_memory <= 0 or demand.gpu_memory <= free.gpu_memory))


def no_fit_reasons(candidates: Sequence[NodeRecord], demand: Resources, placement: Placement) -> list[str]:
    """One line per node, by node_id: why it cannot take the work."""
    reasons: list[str] = []
    for node in sorted(candidates, key=lambda n: n.node_id):
        mismatch = label_mismatch(node, placement.labels) if isinstance(placement, WithLabels) else ""
        reasons.append(f"{node.node_id}: {mismatch or '; '.join(lacks(node, demand))}")
    return reasons
