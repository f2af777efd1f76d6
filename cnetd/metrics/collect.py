"""GET /metrics: the agent's numbers in Prometheus text format — tasks by status, the CPU
and memory of every running task (from its sandbox), and per served model its requests,
errors, latency, batch sizes, queue depth, cache and replicas, labelled with its model
name, deploy id and version (docs/serving.md, "Monitoring"), and the input drift of each
version whose training result had input_stats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cnetd.agent import Agent
from cnetd.gpus.inventory import Gpu
from cnetd.metrics.autoscale import render_autoscale
from cnetd.metrics.prometheus import Exposition
from cnetd.ml.serving.batcher import ERROR_REASONS
from cnetd.tasks.model import Status


async def render(agent: Agent) -> str:
    out = Exposition()
    out.declare("cnet_agent_uptime_seconds", "gauge", "Seconds since the agent started.")
    out.sample("cnet_agent_uptime_seconds", {"node_id": agent.node_id}, round(agent.uptime, 3))

    out.declare("cnet_tasks", "gauge", "Tasks in the store by status.")
    for status, n in (await agent.tasks.counts()).items():
        out.sample("cnet_tasks", {"status": status}, n)

    running = await agent.tasks.list(statuses=[str(Status.RUNNING)])
    usages = await asyncio.gather(*(agent.tasks.usage_now(t) for t in running))
    out.declare("cnet_task_cpu_percent", "gauge", "CPU use of a running task since the previous sample (100 = one core).")
    out.declare("cnet_task_memory_bytes", "gauge", "Resident memory of a running task's processes.")
    task_gpus: list[tuple[str, dict[str, str], float]] = []
    for task, usage in zip(running, usages, strict=True):
        if usage is None:
            continue
        labels = {"task_id": task.id, "name": task.name, "kind": task.kind, "model_id": task.model_id or ""}
        if usage.get("cpu_percent") is not None:
            out.sample("cnet_task_cpu_percent", labels, round(usage["cpu_percent"], 3))
        if usage.get("memory_bytes") is not None:
            out.sample("cnet_task_memory_bytes", labels, usage["memory_bytes"])
        for key, name in (("gpu_memory_bytes", "cnet_task_gpu_memory_bytes"),
                          ("gpu_utilization", "cnet_task_gpu_utilization_percent")):
            if usage.get(key) is not None:
                task_gpus.append((name, labels, usage[key]))
    out.declare("cnet_task_gpu_memory_bytes", "gauge", "GPU memory NVML accounts to a running task's processes.")
    out.declare("cnet_task_gpu_utilization_percent", "gauge", "Utilisation of a running task's GPUs.")
    for name in ("cnet_task_gpu_memory_bytes", "cnet_task_gpu_utilization_percent"):
        for family, labels, value in task_gpus:
            if family == name:
                out.sample(name, labels, value)

    gpus = await agent.gpu_status()
    out.declare("cnet_gpus", "gauge", "GPUs on this node (NVML), and those no task holds.")
    out.sample("cnet_gpus", {"state": "total"}, gpus.inventory.count)
    out.sample("cnet_gpus", {"state": "free"}, gpus.free)
    per_gpu: list[tuple[str, str, Callable[[Gpu], int | None]]] = [
        ("cnet_gpu_memory_total_bytes", "Memory of a GPU.", lambda g: g.memory_total),
        ("cnet_gpu_memory_used_bytes", "Memory in use on a GPU, by any process.", lambda g: g.memory_used),
        ("cnet_gpu_utilization_percent", "How busy a GPU was over NVML's last sample period.", lambda g: g.utilization),
    ]
    for name, text, figure in per_gpu:
        out.declare(name, "gauge", text)
        for gpu in gpus.inventory.gpus:
            if (reading := figure(gpu)) is not None:
                out.sample(name, {"gpu": str(gpu.index), "uuid": gpu.uuid, "name": gpu.name}, reading)

    serving = agent.serving
    monitor = agent.monitor
    if monitor is not None:
        await monitor.refresh()
    families = [
        ("cnet_inference_requests_total", "counter", "Inference requests answered, by HTTP status and outcome."),
        ("cnet_inference_errors_total", "counter", "Inference requests that failed, by reason."),
        ("cnet_inference_request_duration_seconds", "histogram", "Time from a request's arrival at the batcher to its answer."),
        ("cnet_inference_batch_size", "histogram", "Instances per batch sent to a worker."),
        ("cnet_inference_queue_depth", "gauge", "Requests waiting for a worker."),
        ("cnet_inference_cache_hits_total", "counter", "Requests answered from the prediction cache."),
        ("cnet_inference_cache_misses_total", "counter", "Requests the prediction cache could not answer."),
        ("cnet_serving_replicas", "gauge", "Worker replicas of a served model, wanted and ready."),
        ("cnet_serving_worker_restarts_total", "counter", "Worker restarts of a served model since the agent started."),
        ("cnet_serving_worker_reloads_total", "counter", "Workers replaced because the model file changed."),
        ("cnet_serving_reload_failures_total", "counter", "Replacement workers that could not load a changed model file."),
        ("cnet_inference_queue_seconds", "histogram", "Time a request waited in the batcher's queue before a worker took it."),
        ("cnet_inference_compute_seconds", "histogram", "Time from a batch sent to a worker to its answer."),
        ("cnet_inference_in_flight", "gauge", "Requests being answered now (queued or at a worker)."),
        ("cnet_serving_load_seconds", "histogram", "Time from starting a worker to its model loaded and ready."),
        ("cnet_model_input_drift_score", "gauge",
         "Standardised mean shift of a served input feature against the training data's input_stats."),
        ("cnet_model_input_observed_total", "counter", "Served instances counted in the input drift statistics."),
    ]
    for name, kind, text in families:
        out.declare(name, kind, text)
    for model_id, (model_name, m) in sorted(serving.metrics.items()):
        version = monitor.version(model_id) if monitor is not None else ""
        labels = {"model": model_name, "model_id": model_id, "version": version}
        for code, n in sorted(m.requests.items()):
            outcome = "ok" if code < 400 else ERROR_REASONS.get(code, "error")
            out.sample("cnet_inference_requests_total", {**labels, "code": str(code), "outcome": outcome}, n)
        for reason, n in sorted(m.errors.items()):
            out.sample("cnet_inference_errors_total", {**labels, "reason": reason}, n)
        out.histogram("cnet_inference_request_duration_seconds", labels, m.latency)
        out.histogram("cnet_inference_batch_size", labels, m.batch_size)
        out.sample("cnet_inference_cache_hits_total", labels, m.cache_hits)
        out.sample("cnet_inference_cache_misses_total", labels, m.cache_misses)
        served = serving.served(model_id)
        out.sample("cnet_inference_queue_depth", labels, served.batcher.queue_depth if served else 0)
        out.sample("cnet_serving_replicas", {**labels, "state": "wanted"}, served.target if served else 0)
        out.sample("cnet_serving_replicas", {**labels, "state": "ready"}, served.ready_replicas if served else 0)
        out.sample("cnet_serving_worker_restarts_total", labels, m.worker_restarts)
        out.sample("cnet_serving_worker_reloads_total", labels, m.reloads)
        out.sample("cnet_serving_reload_failures_total", labels, m.reload_failures)
        out.histogram("cnet_inference_queue_seconds", labels, m.queue_time)
        out.histogram("cnet_inference_compute_seconds", labels, m.compute_time)
        out.sample("cnet_inference_in_flight", labels, m.in_flight)
        out.histogram("cnet_serving_load_seconds", labels, m.load_time)
        if m.drift is not None:
            out.sample("cnet_model_input_observed_total", labels, m.drift.observed)
            for feature in m.drift.features():
                if feature["score"] is not None:
                    out.sample("cnet_model_input_drift_score", {**labels, "feature": feature["feature"]}, feature["score"])
    render_autoscale(out, serving, agent.node_id)
    return out.text()
