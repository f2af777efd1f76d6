"""Admission of serving replicas: whether one more worker of a model fits on this node, and
which idle models to unload so that it does.

Each replica asks for its model's `memory_limit` and `cpu_limit` (those of the deploy task,
which every worker gets). A replica fits when

- with `serving.memory_budget` set, the replicas of every served model here (those being
  stopped too, until they have ended) hold no more than the budget with it, and
- the node has that memory and those CPUs free: its capacity less the limits of every task
  that has not ended, and of replicas whose task is still being created.

When the budget is short, the least recently used idle models are unloaded first: down to
their `min_replicas`, never one with requests in flight or waiting, never below its
`min_replicas`. Their memory counts until their workers have ended, so the replica waits
meanwhile; what it waits for is said (`Refusal`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cnetd.ml.serving.served import Served
from cnetd.units import format_size

NodeFree = Callable[[], Awaitable[tuple[float, int] | None]]  # (CPUs, bytes) free, None: not known yet


@dataclass(frozen=True)
class Refusal:
    kind: str  # memory_budget | node_memory | node_cpu
    message: str


def memory_of(served: Served) -> int:
    return served.model.task.resources.memory_limit or 0


def cpu_of(served: Served) -> float:
    return served.model.task.resources.cpu_limit or 0.0


def held(served: Served) -> int:
    """Replicas that hold memory: every slot (starting, ready, restarting) and those being stopped."""
    return len(served.replicas) + served.draining


def budget_used(all_served: Sequence[Served]) -> int:
    return sum(held(s) * memory_of(s) for s in all_served)


IDLE_AFTER = 2.0  # seconds without a request before a model counts as idle


def idle(served: Served, now: float) -> bool:
    """No request in the agent for it, none for IDLE_AFTER, and no replica still starting
    (one that was never used is not taken back before it could be)."""
    return (served.in_flight == 0 and served.batcher.queue_depth == 0 and served.batcher.in_flight == 0
            and now - served.last_used >= IDLE_AFTER and all(r.state == "ready" for r in served.replicas))


def unloadable(all_served: Sequence[Served], asking: Served) -> list[Served]:
    """Idle models with replicas above their min_replicas, least recently used first."""
    now = time.monotonic()
    found = [s for s in all_served
             if s is not asking and s.spec.autoscaled and idle(s, now) and len(s.replicas) > s.spec.min_replicas
             and memory_of(s) > 0]
    return sorted(found, key=lambda s: s.last_used)


class Admission:
    def __init__(self, memory_budget: int | None = None, node_free: NodeFree | None = None) -> None:
        self.memory_budget = memory_budget
        self.node_free = node_free

    def budget_shortfall(self, asking: Served, all_served: Sequence[Served]) -> int:
        """Bytes the budget lacks for one more replica of asking (0: it fits)."""
        if self.memory_budget is None:
            return 0
        return max(0, budget_used(all_served) + memory_of(asking) - self.memory_budget)

    def to_unload(self, asking: Served, all_served: Sequence[Served]) -> list[tuple[Served, int]]:
        """The idle models to unload (each with the replicas it keeps) so that the budget
        holds one more replica of asking, least recently used first; [] when none is needed
        or unloading replicas that are already being stopped will do."""
        if self.memory_budget is not None and memory_of(asking) > self.memory_budget:
            return []  # it can never fit: unloading others would not help
        # Replicas being stopped free their memory soon: unload no more than they leave short.
        short = self.budget_shortfall(asking, all_served) - sum(s.draining * memory_of(s) for s in all_served)
        if short <= 0:
            return []
        plan: list[tuple[Served, int]] = []
        for served in unloadable(all_served, asking):
            if short <= 0:
                break
            keep = served.spec.min_replicas
            plan.append((served, keep))
            short -= (len(served.replicas) - keep) * memory_of(served)
        return plan

    async def refusal(self, asking: Served, all_served: Sequence[Served]) -> Refusal | None:
        """Why one more replica of asking cannot start now (None: it can)."""
        need = memory_of(asking)
        short = self.budget_shortfall(asking, all_served)
        if self.memory_budget is not None and need > self.memory_budget:
            return Refusal("memory_budget", f"a replica's memory_limit ({format_size(need)}) is more than "
                                            f"serving.memory_budget ({format_size(self.memory_budget)}): it cannot "
                                            f"start on this node")
        if short > 0 and self.memory_budget is not None:
            stopping = sum(s.draining for s in all_served)
            then = (f"waiting for {stopping} replica(s) being stopped" if stopping
                    else "no idle model to unload (busy models and min_replicas are kept)")
            return Refusal("memory_budget", f"serving.memory_budget {format_size(self.memory_budget)}: "
                                            f"{format_size(budget_used(all_served))} held by replicas, one more needs "
                                            f"{format_size(need)}; {then}")
        if self.node_free is None:
            return None
        free = await self.node_free()
        if free is None:
            return None
        cpus, memory = free
        pending = [s for s in all_served for r in s.replicas if r.task_id is None and r.state == "starting"]
        memory -= sum(memory_of(s) for s in pending)
        cpus -= sum(cpu_of(s) for s in pending)
        if need > memory:
            return Refusal("node_memory", f"the node has {format_size(max(memory, 0))} of memory free, a replica "
                                          f"needs {format_size(need)} (memory_limit)")
        cpu = cpu_of(asking)
        if cpu > cpus + 1e-9:
            return Refusal("node_cpu", f"the node has {max(cpus, 0):g} CPUs free, a replica needs {cpu:g} (cpu_limit)")
        return None
