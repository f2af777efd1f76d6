"""ModelService: deploy specs become ml_model tasks; predictions are answered by a warm
worker when the model is served, else become predict tasks; stopping a model stops its
serving and its deploy task. The API and the UI both call these, so the rules hold alike."""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnetd.bodies.decode import decode_body
from cnetd.config import Config
from cnetd.errors import Conflict, Invalid
from cnetd.limits import ResourceLimits
from cnetd.ml.bodies import Deployment, DeploymentBody, PredictRequestBody
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.inputs import input_argument
from cnetd.ml.scripts import locate_script
from cnetd.ml.serving.batcher import Answer
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.protocol import instances_from_input_data
from cnetd.ml.serving.served import Served
from cnetd.ml.versions.book import VersionBook
from cnetd.security.confine import Confinement
from cnetd.security.identity import model_owner
from cnetd.security.modeldirs import file_owner_problem
from cnetd.security.privilege import READ
from cnetd.store import models as mq
from cnetd.store import versions as vq
from cnetd.store.models import ModelRecord
from cnetd.supervisor.launcher import Launcher, model_dir_of, resolve_working_dir
from cnetd.tasks.model import Status, Task
from cnetd.tasks.request import NewTask
from cnetd.tasks.service import TaskService

DEPLOY_ID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Prediction:
    """A prediction task; with waited, ended or past its time budget."""

    task: Task
    waited: bool


@dataclass(frozen=True)
class WarmPrediction:
    """A served model's answer: no task was created."""

    prediction: Any
    worker: str  # the worker task's id, or "cache"
    model_path: str


class ModelService:
    def __init__(
        self, tasks: TaskService, catalog: ModelCatalog, serving: ServingManager, launcher: Launcher,
        confinement: Confinement, config: Config,
    ) -> None:
        self.tasks = tasks
        self.catalog = catalog
        self.serving = serving
        self.launcher = launcher
        self.confinement = confinement
        self.config = config
        self.versions_book: VersionBook | None = None  # told each new version's number (cnetd.ml.versions)
        # how a served model is asked (cnetd.ml.versions counts each version's outcomes)
        self.predict_served: Callable[[Served, Any], Awaitable[Answer]] | None = None

    def requested_limits(self, body: Any) -> ResourceLimits:
        """What a deploy body asks of a node (ml.resource_limits filling the gaps), its
        structure checked; its paths are the deploying node's to check."""
        return decode_body(body, DeploymentBody).to_deployment(self.config.ml.resource_limits).task.resources

    def parse_deployment(self, body: Any) -> Deployment:
        """The deploy body checked, then its paths against the roots and the file system."""
        deployment = decode_body(body, DeploymentBody).to_deployment(self.config.ml.resource_limits)
        working_dir, script_path = deployment.task.working_dir, deployment.script_path
        cwd = resolve_working_dir(self.launcher.base_dir, working_dir)
        self.confinement.check_path("working_dir", working_dir, self.launcher.base_dir)
        script = locate_script(script_path, working_dir, cwd, self.config.ml.script_path, self.confinement)
        if script.found_in_search_root:  # the args name the script that was checked
            args = [script.path if arg == script_path else arg for arg in deployment.task.args]
            deployment = dataclasses.replace(
                deployment, script_path=script.path, task=dataclasses.replace(deployment.task, args=args),
            )
        real_cwd = self.launcher.working_dir(working_dir)
        self.confinement.check_model_dir(deployment.model_path, model_dir_of(real_cwd, deployment.model_path))
        return deployment

    async def check_task_user_access(self, deployment: Deployment) -> None:
        """Refuse now what would fail later with PermissionError as the model's user: its
        script must be readable where the task will see it, and its model file its own."""
        task = deployment.task
        user = await self.tasks.user_for_owner(task.identity_owner or "")
        cwd = self.launcher.working_dir(task.working_dir)
        if user is None or not cwd.is_dir():
            return
        problem = self.launcher.path_problem(user, cwd / deployment.script_path, READ)
        if problem is not None:
            raise Invalid("script_path", problem)
        model_file = Path(os.path.normpath(cwd / deployment.model_path))
        if task.kind in ("train", "run"):
            uid = user.uid if user.uid >= 0 else None
            problem = file_owner_problem(model_file, uid)
            if problem is None:
                problem = _model_dir_owner_problem(model_file.parent, uid, self.confinement.model_roots)
        elif model_file.exists():
            problem = self.launcher.path_problem(user, model_file, READ)
        if problem is not None:
            raise Invalid("model_path", problem)

    async def deploy(self, body: Any, model_id: str | None = None) -> Model:
        """model_id: the id a cluster placement chose; deploying it again returns that model."""
        if not self.config.ml.enabled:
            raise Conflict("ML support is disabled on this node (ml.enabled: false)")
        deployment = self.parse_deployment(body)
        name = deployment.task.name
        if DEPLOY_ID.match(name) and not await self.catalog.named(name):
            raise Invalid("name", f"{name!r} looks like a deploy id; a model name must not "
                                  "(routes take either, and a name must never be taken for an id)")
        await self.check_task_user_access(deployment)
        numbers: dict[str, int] = {}

        def add_model(conn: sqlite3.Connection, task: Task) -> None:
            mq.insert_model(conn, ModelRecord(
                id=task.id, name=task.name, model_type=deployment.model_type,
                model_path=deployment.model_path, script_path=deployment.script_path,
                created_at=task.created_at,
                serving=None if deployment.serving is None else {
                    "state": "awaiting_training", **deployment.serving.to_json(), "updated_at": task.created_at,
                },
            ))
            numbers[task.id] = vq.insert_version(conn, task.id, task.name, deployment.promote, task.created_at)

        task = await self.tasks.create(deployment.task, also=add_model, task_id=model_id)
        if self.versions_book is not None and task.id in numbers:
            self.versions_book.note_new(task.id, task.name, numbers[task.id])
        return await self.get(task.id)

    async def get(self, model_id: str) -> Model:
        return await self.catalog.get(model_id)

    async def find(self, model_id: str) -> Model | None:
        return await self.catalog.find(model_id)

    async def named(self, name: str) -> list[ModelRecord]:
        return await self.catalog.named(name)

    async def addressed(self, name: str, version: str | None) -> ModelRecord:
        return await self.catalog.addressed(name, version)

    async def list(self) -> list[Model]:
        return await self.catalog.list()

    async def stop(self, model_id: str, wait: bool = True) -> Model:
        """Stop the model: its warm workers, then its deploy task. A served model whose
        training ended long ago is stopped by the first alone, which is not a conflict."""
        unserved = await self.serving.unserve(model_id)  # NotFound for an unknown model
        try:
            await self.tasks.stop(model_id, wait=wait)
        except Conflict:
            if not unserved:
                raise
        return await self.get(model_id)

    async def predict(self, model_id: str, body: Any, wait: bool) -> Prediction | WarmPrediction:
        """With wait, a served model's warm worker answers (batcher.Rejected when it refuses
        the input); otherwise, or when it is not served, a predict task is created."""
        input_data = decode_body(body, PredictRequestBody).input_data
        served = self.serving.served(model_id) if wait else None
        if served is not None:  # the fast path: no process starts
            instances, single = instances_from_input_data(input_data, served.n_features)
            answer = await (self.predict_served(served, instances) if self.predict_served else served.predict(instances))
            prediction = answer.predictions[0] if single else answer.predictions
            return WarmPrediction(prediction, answer.worker, served.model.record.model_path)
        argument = input_argument(input_data)
        model = await self.get(model_id)
        if not self.catalog.model_file(model).exists():
            state = f"its deploy task is {model.task.status}"
            if model.task.status == Status.FAILED and model.task.reason:
                state += f": {model.task.reason}"
            raise Conflict(
                f"model {model.record.name} has no model file yet ({model.record.model_path}); {state}",
                {"id": model_id, "model_path": model.record.model_path, "status": str(model.task.status)},
            )
        base = model.task
        copy = self.versions_book.artifact_of(model_id) if self.versions_book and self.config.serving.version_copies else None
        model_path = str(copy) if copy is not None and copy.is_file() else model.record.model_path  # the version's own
        new = NewTask(
            name=f"{model.record.name}-predict",
            command=base.command,
            args=[model.record.script_path, "predict", model_path, argument],
            env=dict(base.env),
            working_dir=base.working_dir,
            resources=base.resources,
            timeout=self.config.ml.timeout,
            type="ml_model",
            kind="predict",
            model_id=model_id,
            identity_owner=model_owner(model.record.name),
            environment=base.environment,
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
