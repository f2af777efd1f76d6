"""ModelService: deploy specs become ml_model tasks; predictions become predict tasks."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnetd.config import Config
from cnetd.errors import Conflict, Invalid, NotFound
from cnetd.ml.inputs import input_argument
from cnetd.ml.scripts import locate_script
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.security.identity import model_owner
from cnetd.security.modeldirs import file_owner_problem
from cnetd.security.privilege import READ
from cnetd.store import models as mq
from cnetd.store.models import ModelRecord
from cnetd.supervisor.launcher import model_dir_of, resolve_working_dir
from cnetd.tasks.model import ML_KINDS, Status, Task
from cnetd.tasks.request import (
    NewTask,
    args_field,
    env_field,
    name_field,
    path_field,
    reject_unknown,
    require_object,
    resources_field,
    string_field,
    timeout_field,
)
from cnetd.tasks.service import TaskService

DEPLOY_FIELDS = {
    "name", "model_type", "model_path", "script_path", "command", "args", "working_dir", "env",
    "resources", "timeout", "serving",
}
MODEL_TYPE_MAX = 64


@dataclass(frozen=True)
class Deployment:
    task: NewTask
    model_type: str
    model_path: str
    script_path: str
    serving: ServingSpec | None = None  # serve the model once training completes


@dataclass(frozen=True)
class Model:
    record: ModelRecord
    task: Task


@dataclass(frozen=True)
class Prediction:
    task: Task
    waited: bool


def kind_from_args(args: list[str]) -> str:
    """The script verb (train/predict/evaluate/serve) the deploy args name, else "run"."""
    for arg in args[:2]:
        if arg in ML_KINDS:
            return arg
    return "run"


class ModelService:
    def __init__(self, tasks: TaskService, config: Config) -> None:
        self.tasks = tasks
        self.config = config

    def parse_deployment(self, body: Any) -> Deployment:
        body = require_object(body)
        reject_unknown(body, DEPLOY_FIELDS)
        name = name_field(body)
        model_type = string_field(body, "model_type", required=False, default="custom", max_len=MODEL_TYPE_MAX)
        model_path = path_field(body, "model_path", required=True)
        script_path = path_field(body, "script_path", required=True)
        command = string_field(body, "command", required=False, default="python3")
        args = args_field(body) or [script_path, "train", model_path]
        working_dir = path_field(body, "working_dir", required=False, default=".")
        env = env_field(body)
        env["MODEL_PATH"] = model_path
        env["MODEL_TYPE"] = model_type
        cwd = resolve_working_dir(self.tasks.launcher.base_dir, working_dir)
        self.tasks.confinement.check_path("working_dir", working_dir, self.tasks.launcher.base_dir)
        script = locate_script(script_path, working_dir, cwd, self.config.ml.script_path, self.tasks.confinement)
        if script.found_in_search_root:  # the args name the script that was checked
            args = [script.path if arg == script_path else arg for arg in args]
            script_path = script.path
        real_cwd = self.tasks.launcher.working_dir(working_dir)
        self.tasks.confinement.check_model_dir(model_path, model_dir_of(real_cwd, model_path))
        kind = kind_from_args(args)
        task = NewTask(
            name=name,
            command=command,
            args=args,
            env=env,
            working_dir=working_dir,
            resources=resources_field(body, defaults=self.config.ml.resource_limits),
            timeout=timeout_field(body),
            type="ml_model",
            kind=kind,
            identity_owner=model_owner(name),
        )
        serving = parse_spec(body["serving"], prefix="serving.") if body.get("serving") is not None else None
        return Deployment(
            task=task, model_type=model_type, model_path=model_path, script_path=script_path, serving=serving,
        )

    async def check_task_user_access(self, deployment: Deployment) -> None:
        """Refuse now what would fail later with PermissionError as the model's user: its
        script must be readable where the task will see it, and its model file its own."""
        task = deployment.task
        user = await self.tasks.user_for_owner(task.identity_owner or "")
        cwd = self.tasks.launcher.working_dir(task.working_dir)
        if user is None or not cwd.is_dir():
            return
        problem = self.tasks.launcher.path_problem(user, cwd / deployment.script_path, READ)
        if problem is not None:
            raise Invalid("script_path", problem)
        model_file = Path(os.path.normpath(cwd / deployment.model_path))
        if task.kind in ("train", "run"):
            uid = user.uid if user.uid >= 0 else None
            problem = file_owner_problem(model_file, uid)
            if problem is None:
                problem = _model_dir_owner_problem(model_file.parent, uid, self.tasks.confinement.model_roots)
        elif model_file.exists():
            problem = self.tasks.launcher.path_problem(user, model_file, READ)
        if problem is not None:
            raise Invalid("model_path", problem)

    async def deploy(self, body: Any) -> Model:
        if not self.config.ml.enabled:
            raise Conflict("ML support is disabled on this node (ml.enabled: false)")
        deployment = self.parse_deployment(body)
        await self.check_task_user_access(deployment)

        def add_model(conn: sqlite3.Connection, task: Task) -> None:
            mq.insert_model(conn, ModelRecord(
                id=task.id, name=task.name, model_type=deployment.model_type,
                model_path=deployment.model_path, script_path=deployment.script_path,
                created_at=task.created_at,
                serving=None if deployment.serving is None else {
                    "state": "awaiting_training", **deployment.serving.to_json(), "updated_at": task.created_at,
                },
            ))

        task = await self.tasks.create(deployment.task, also=add_model)
        return await self.get(task.id)

    async def get(self, model_id: str) -> Model:
        record = await self.tasks.db.read(lambda c: mq.get_model(c, model_id))
        if record is None:
            raise NotFound(f"model {model_id} not found", {"id": model_id})
        return Model(record=record, task=await self.tasks.get(model_id))

    async def list(self) -> list[Model]:
        return [Model(record=r, task=t) for r, t in await self.tasks.db.read(mq.list_models)]

    async def stop(self, model_id: str) -> Model:
        await self.get(model_id)
        await self.tasks.stop(model_id)
        return await self.get(model_id)

    def model_file(self, model: Model) -> Path:
        cwd = self.tasks.launcher.working_dir(model.task.working_dir)
        return Path(os.path.normpath(cwd / model.record.model_path))

    async def predict(self, model_id: str, body: Any, wait: bool) -> Prediction:
        body = require_object(body)
        reject_unknown(body, {"input_data"})
        if "input_data" not in body:
            raise Invalid("input_data", "is required")
        argument = input_argument(body["input_data"])
        model = await self.get(model_id)
        if not self.model_file(model).exists():
            state = f"its deploy task is {model.task.status}"
            if model.task.status == Status.FAILED and model.task.reason:
                state += f": {model.task.reason}"
            raise Conflict(
                f"model {model.record.name} has no model file yet ({model.record.model_path}); {state}",
                {"id": model_id, "model_path": model.record.model_path, "status": str(model.task.status)},
            )
        base = model.task
        new = NewTask(
            name=f"{model.record.name}-predict",
            command=base.command,
            args=[model.record.script_path, "predict", model.record.model_path, argument],
            env=dict(base.env),
            working_dir=base.working_dir,
            resources=base.resources,
            timeout=self.config.ml.timeout,
            type="ml_model",
            kind="predict",
            model_id=model_id,
            identity_owner=model_owner(model.record.name),
        )
        task = await self.tasks.create(new)
        if not wait:
            return Prediction(task=task, waited=False)
        budget = self.config.ml.timeout + self.config.tasks.stop_grace + 5
        return Prediction(task=await self.tasks.wait_terminal(task.id, budget), waited=True)


def _model_dir_owner_problem(directory: Path, uid: int | None, roots: list[Path]) -> str | None:
    """Why the model's user could not write in directory (the agent makes it at start when
    it is missing): it must be a model root, or missing, or the model's own."""
    if directory in roots or not directory.exists():
        return None
    owner = directory.stat().st_uid
    if uid is not None and owner == uid:
        return None
    who = "root" if owner == 0 else f"uid {owner}"
    return f"{directory} belongs to {who}, not to this model: give the model a directory of its own (or use a model root)"
