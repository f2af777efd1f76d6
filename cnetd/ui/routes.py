"""The web UI's route table, in one place, with names (templates build URLs by name)."""

from __future__ import annotations

from aiohttp import web

from cnetd.ui import dashboard, live, models, monitoring, serving, static, tasks, versions
from cnetd.ui.state import on_shutdown, ui_context


def add_ui_routes(app: web.Application) -> None:
    """Call after the agent's cleanup context is registered: the UI's own context
    (the renderer) needs the agent."""
    app.cleanup_ctx.append(ui_context)
    app.on_shutdown.append(on_shutdown)
    r = app.router
    r.add_get("/", dashboard.dashboard, name="ui-dashboard")
    r.add_get("/fragments/resources", dashboard.resources_part, name="ui-resources")
    r.add_get("/fragments/activity", dashboard.activity_part, name="ui-activity")
    r.add_get("/fragments/cluster", dashboard.cluster_part, name="ui-cluster")
    r.add_get("/nodes", dashboard.nodes, name="ui-nodes")

    r.add_get("/models", models.models_page, name="ui-models")
    r.add_post("/models", models.deploy, name="ui-models-deploy")
    r.add_get("/models/form", models.deploy_form, name="ui-deploy-form")
    r.add_get("/models/{id}", models.model_page, name="ui-model")
    r.add_post("/models/{id}/predict", models.predict, name="ui-model-predict")
    r.add_post("/models/{id}/stop", models.stop, name="ui-model-stop")
    r.add_get("/models/{id}/serving", serving.serving_part, name="ui-model-serving")
    r.add_get("/models/{id}/monitoring", monitoring.monitoring_part, name="ui-model-monitoring")
    r.add_post("/models/{id}/serve", serving.serve, name="ui-model-serve")
    r.add_post("/models/{id}/unserve", serving.unserve, name="ui-model-unserve")
    r.add_get("/models/{id}/versions", versions.versions_part, name="ui-model-versions")
    r.add_post("/models/{id}/promote", versions.promote, name="ui-model-promote")
    r.add_post("/models/{id}/rollback", versions.rollback, name="ui-model-rollback")
    r.add_post("/models/{id}/rollout", versions.rollout, name="ui-model-rollout")
    r.add_post("/models/{id}/rollout/abort", versions.abort, name="ui-model-rollout-abort")

    r.add_get("/tasks", tasks.tasks_page, name="ui-tasks")
    r.add_post("/tasks", tasks.create_task, name="ui-tasks-create")
    r.add_get("/tasks/{id}", tasks.task_page, name="ui-task")
    r.add_post("/tasks/{id}/stop", tasks.stop_task, name="ui-task-stop")
    r.add_get("/tasks/{id}/live", live.task_live, name="ui-task-live")
    r.add_get("/tasks/{id}/usage", live.task_usage, name="ui-task-usage")

    r.add_get("/static/{name}", static.static_file, name="ui-static")
