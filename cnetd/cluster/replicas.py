"""Where a served model's replicas go: a pure decision over its desired state and the nodes'
records (no I/O), for whichever node places them (today the lowest online node id; the
elected scheduler once it is wired, see ReplicaPlacer in failover.py).

    new = plan_replicas(record, nodes, lost)   # the record to write, or None: nothing to change

The rules:
- A model is served on at least MIN_NODES nodes when that many fit (so that one node's death
  does not stop it), and on up to `replicas` nodes: its replicas are spread, one node at a
  time, over the nodes that take part (each gets total // n, the first total % n one more,
  the origin first). The total is max(replicas, nodes), so each node runs at least one.
- A node in `lost` (offline for longer than the grace, or no longer in the cluster), or one
  that refused the model, is taken out of the placements; a node offline for less is kept
  (it may come back).
- New nodes are online nodes that are not placed yet, did not refuse the model, and fit: their
  free cpu, memory and GPUs cover their share of the model's limits and their free disk its
  file. Nodes that hold the artifact already come first, then the most free (spread), then
  the node id, so the same inputs always give the same answer.
- Placements beyond the nodes wanted (the total went down) are dropped, the origin last.
- A stopped model is not placed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import msgspec

from cnetd.cluster.records import ModelSource, Resources, ServedModel

MIN_NODES = 2  # a served model lives on this many nodes when they fit: one node's death stops nothing


@dataclass(frozen=True)
class NodeState:
    node_id: str
    online: bool
    free: Resources
    capacity: Resources


def demand_of(source: ModelSource, replicas: int, size: int) -> Resources:
    """What `replicas` workers of the model ask of a node, and its file on disk."""
    return Resources(cpu=(source.cpu_limit or 0.0) * replicas, memory=(source.memory_limit or 0) * replicas,
                     disk=size, gpus=(source.gpu_limit or 0) * replicas,
                     gpu_memory=source.gpu_memory or 0)  # each replica on one GPU: the most one asks of a GPU


def fits(node: NodeState, demand: Resources) -> bool:
    free = node.free
    return (demand.cpu <= free.cpu or demand.cpu == 0) and (demand.memory <= free.memory or demand.memory == 0) \
        and (demand.disk <= free.disk or demand.disk == 0) and (demand.gpus <= free.gpus or demand.gpus == 0) \
        and (demand.gpu_memory <= free.gpu_memory or demand.gpu_memory == 0)


def room(node: NodeState) -> float:
    """How much of the node is free, 0..1 (mean over cpu and memory): spread prefers more."""
    shares = [free / total for free, total in ((node.free.cpu, node.capacity.cpu),
                                                (node.free.memory, node.capacity.memory)) if total > 0]
    return sum(shares) / len(shares) if shares else 0.0


def shares(total: int, nodes: Sequence[str]) -> dict[str, int]:
    """total replicas over nodes (in that order): total // n each, the first total % n one more."""
    if not nodes:
        return {}
    total = max(total, len(nodes))
    base, extra = divmod(total, len(nodes))
    return {node: base + (1 if i < extra else 0) for i, node in enumerate(nodes)}


def ordered(nodes: Collection[str], origin: str) -> list[str]:
    return sorted(nodes, key=lambda n: (n != origin, n))


def plan_replicas(record: ServedModel, nodes: Sequence[NodeState], lost: Collection[str],
                  min_nodes: int = MIN_NODES) -> ServedModel | None:
    """The record with its placements decided again, or None when nothing changes."""
    if record.state != "serving":
        return None
    by_id = {n.node_id: n for n in nodes}
    placed = [n for n in ordered(record.placements, record.origin)
              if n not in lost and n in by_id and n not in record.refused]
    wanted = max(min_nodes, min(record.replicas, 64))
    if len(placed) > wanted:
        keep = set(placed[:1]) | set(sorted(placed[1:], key=lambda n: (n not in record.holders, n))[: wanted - 1])
        placed = [n for n in placed if n in keep]
    if len(placed) < wanted:
        total = max(record.replicas, wanted)
        per_node = -(-total // wanted)  # what a new node will run at most
        demand = demand_of(record.source, per_node, record.size)
        candidates = [n for n in nodes if n.online and n.node_id not in placed and n.node_id not in record.refused
                      and fits(n, demand)]
        candidates.sort(key=lambda n: (n.node_id not in record.holders, -room(n), n.node_id))
        placed += [n.node_id for n in candidates[: wanted - len(placed)]]
    placements = shares(record.replicas, ordered(placed, record.origin))
    if placements == record.placements:
        return None
    return msgspec.structs.replace(record, placements=placements)


def acting_node(nodes: Sequence[NodeState]) -> str | None:
    """Until the scheduler places replicas: the online node with the lowest id acts."""
    online = sorted(n.node_id for n in nodes if n.online)
    return online[0] if online else None
