"""The route table, in one place, with names."""

from __future__ import annotations

from aiohttp import web

from cnetd.api import (
    artifacts,
    cluster,
    environments,
    metrics,
    ml,
    monitoring,
    openapi,
    serving,
    system,
    tasks,
    v2,
    versions,
)


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/health", system.health, name="health")
    r.add_get("/api/node", system.node, name="node")
    r.add_get("/api/resources", system.resources, name="resources")
    r.add_get("/api/resources/usage", system.resources_usage, name="resources-usage")
    r.add_get("/api/openapi.json", openapi.openapi, name="openapi")

    r.add_get("/api/cluster/member", cluster.member, name="cluster-member")  # other agents only (cluster token)
    r.add_post("/api/cluster/place", cluster.place, name="cluster-place")  # the scheduler, for other agents
    # a model's trained file, for other agents (failover of served models)
    r.add_get("/api/cluster/artifacts/{model_id}", artifacts.model_artifact, name="cluster-artifact")
    r.add_get("/api/nodes", cluster.list_nodes, name="nodes")
    r.add_get("/api/nodes/{node_id}", cluster.get_node, name="node-one")
    for method in ("GET", "POST", "DELETE"):
        r.add_route(method, "/api/nodes/{node_id}/{tail:.+}", cluster.pass_through, name=f"node-through-{method.lower()}")

    r.add_get("/api/tasks", tasks.list_tasks, name="tasks")
    r.add_post("/api/tasks", tasks.create_task, name="tasks-create")
    r.add_get("/api/tasks/{id}", tasks.get_task, name="task")
    r.add_delete("/api/tasks/{id}", tasks.stop_task, name="task-stop")
    r.add_get("/api/tasks/{id}/logs", tasks.task_logs, name="task-logs")
    r.add_get("/api/tasks/{id}/events", tasks.task_events, name="task-events")
    r.add_get("/api/tasks/{id}/stats", tasks.task_stats, name="task-stats")

    r.add_get("/api/environments", environments.list_environments, name="environments")
    r.add_get("/api/environments/{key}", environments.get_environment, name="environment")

    r.add_get("/api/ml/models", ml.list_models, name="models")
    r.add_post("/api/ml/models", ml.deploy_model, name="models-deploy")
    r.add_get("/api/ml/models/{id}", ml.get_model, name="model")
    r.add_delete("/api/ml/models/{id}", ml.stop_model, name="model-stop")
    r.add_post("/api/ml/models/{id}/predict", ml.predict, name="model-predict")
    r.add_get("/api/ml/models/{id}/logs", ml.model_logs, name="model-logs")
    r.add_get("/api/ml/models/{id}/metrics", monitoring.model_metrics, name="model-metrics")
    r.add_post("/api/ml/models/{id}/serve", serving.serve_model, name="model-serve")
    r.add_delete("/api/ml/models/{id}/serve", serving.unserve_model, name="model-unserve")
    # Versions ({id}: a deploy id or a model name)
    r.add_get("/api/ml/models/{id}/versions", versions.list_versions, name="model-versions")
    r.add_post("/api/ml/models/{id}/versions", versions.register_version, name="model-versions-register")
    r.add_post("/api/ml/models/{id}/promote", versions.promote, name="model-promote")
    r.add_post("/api/ml/models/{id}/rollback", versions.rollback, name="model-rollback")
    r.add_post("/api/ml/models/{id}/rollout", versions.rollout, name="model-rollout")
    r.add_post("/api/ml/models/{id}/rollout/abort", versions.abort_rollout, name="model-rollout-abort")

    # The Open Inference Protocol (KServe V2); a model's version is its id.
    r.add_get("/v2", v2.server_metadata, name="v2")
    r.add_get("/v2/health/live", v2.server_live, name="v2-live")
    r.add_get("/v2/health/ready", v2.server_ready, name="v2-ready")
    for base, suffix in (("/v2/models/{name}", ""), ("/v2/models/{name}/versions/{version}", "-version")):
        r.add_get(base, v2.model_metadata, name=f"v2-model{suffix}")
        r.add_get(base + "/ready", v2.model_ready, name=f"v2-model-ready{suffix}")
        r.add_post(base + "/infer", v2.infer, name=f"v2-infer{suffix}")

    r.add_get("/metrics", metrics.metrics, name="metrics")
