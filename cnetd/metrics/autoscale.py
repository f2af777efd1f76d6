"""The autoscaler's part of /metrics, family by family: per served model its replicas'
bounds, requests in flight, queue wait, panic, what a waiting scale-up waits for, decisions
by kind and cold-start times; per node the serving memory held against serving.memory_budget."""

from __future__ import annotations

from cnetd.metrics.prometheus import Exposition
from cnetd.ml.serving.admission import budget_used
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.scalestate import COLD_START_BUCKETS

KINDS = ("up", "down", "panic", "cold_start", "idle", "unload")
WAITING = ("memory_budget", "node_memory", "node_cpu")


def render_autoscale(out: Exposition, serving: ServingManager, node_id: str) -> None:
    served = sorted(serving.all_served(), key=lambda s: (s.name, s.id))
    labelled = [({"model": s.name, "model_id": s.id}, s) for s in served]
    out.declare("cnet_serving_replica_bounds", "gauge", "The autoscaler's range of replicas of a served model.")
    for labels, s in labelled:
        out.sample("cnet_serving_replica_bounds", {**labels, "bound": "min"}, s.spec.min_replicas)
        out.sample("cnet_serving_replica_bounds", {**labels, "bound": "max"}, s.spec.max_replicas)
    out.declare("cnet_serving_in_flight", "gauge", "Requests in the agent for a served model: queued, waiting for a "
                                                   "replica, or at a worker.")
    for labels, s in labelled:
        out.sample("cnet_serving_in_flight", labels, s.in_flight)
    out.declare("cnet_serving_queue_wait_seconds", "gauge", "Seconds the oldest queued request of a model has waited.")
    for labels, s in labelled:
        out.sample("cnet_serving_queue_wait_seconds", labels, round(s.batcher.queue_wait, 6))
    out.declare("cnet_serving_panic", "gauge", "1 while the autoscaler is in panic mode for a model (a burst).")
    for labels, s in labelled:
        out.sample("cnet_serving_panic", labels, 1 if s.scaling.panic else 0)
    out.declare("cnet_serving_scale_waiting", "gauge", "1 while a replica the autoscaler wants waits, by what it waits "
                                                       "for (memory_budget, node_memory, node_cpu).")
    for labels, s in labelled:
        for reason in WAITING:
            out.sample("cnet_serving_scale_waiting", {**labels, "reason": reason},
                       1 if s.scaling.waiting_kind == reason else 0)
    out.declare("cnet_serving_scaling_decisions_total", "counter", "Changes of a model's replicas by the autoscaler, "
                                                                   "by kind (up, down, panic, cold_start, idle, unload).")
    for labels, s in labelled:
        for kind in KINDS:
            out.sample("cnet_serving_scaling_decisions_total", {**labels, "kind": kind}, s.scaling.counts.get(kind, 0))
    out.declare("cnet_serving_cold_start_seconds", "histogram",
                f"Seconds from a request to an unloaded model to its first ready replica (buckets {COLD_START_BUCKETS}).")
    for labels, s in labelled:
        out.histogram("cnet_serving_cold_start_seconds", labels, s.scaling.cold_starts)
    out.declare("cnet_serving_memory_held_bytes", "gauge", "Memory the serving replicas on this node hold (their "
                                                           "memory_limit each, replicas being stopped included).")
    out.sample("cnet_serving_memory_held_bytes", {"node_id": node_id}, budget_used(serving.all_served()))
    if serving.admission.memory_budget is not None:
        out.declare("cnet_serving_memory_budget_bytes", "gauge", "serving.memory_budget of this node.")
        out.sample("cnet_serving_memory_budget_bytes", {"node_id": node_id}, serving.admission.memory_budget)
