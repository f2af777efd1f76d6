"""The route table, in one place, with names."""

from __future__ import annotations

from aiohttp import web

from cnetd.api import ml, system, tasks


def add_api_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/health", system.health, name="health")
    r.add_get("/api/node", system.node, name="node")
    r.add_get("/api/resources", system.resources, name="resources")
    r.add_get("/api/resources/usage", system.resources_usage, name="resources-usage")

    r.add_get("/api/tasks", tasks.list_tasks, name="tasks")
    r.add_post("/api/tasks", tasks.create_task, name="tasks-create")
    r.add_get("/api/tasks/{id}", tasks.get_task, name="task")
    r.add_delete("/api/tasks/{id}", tasks.stop_task, name="task-stop")
    r.add_get("/api/tasks/{id}/logs", tasks.task_logs, name="task-logs")
    r.add_get("/api/tasks/{id}/events", tasks.task_events, name="task-events")
    r.add_get("/api/tasks/{id}/stats", tasks.task_stats, name="task-stats")

    r.add_get("/api/ml/models", ml.list_models, name="models")
    r.add_post("/api/ml/models", ml.deploy_model, name="models-deploy")
    r.add_get("/api/ml/models/{id}", ml.get_model, name="model")
    r.add_delete("/api/ml/models/{id}", ml.stop_model, name="model-stop")
    r.add_post("/api/ml/models/{id}/predict", ml.predict, name="model-predict")
    r.add_get("/api/ml/models/{id}/logs", ml.model_logs, name="model-logs")
