"""ModelCatalog: finding models: by id, all of them, by name (the Open Inference Protocol
addresses a model by name and version), and where a model's file is.

It only reads. ModelService (deploy, stop, predict) and ServingManager (warm workers)
both build on it, so neither needs the other to look a model up."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cnetd.errors import NotFound
from cnetd.store import models as mq
from cnetd.store import serving as sq
from cnetd.store.db import Database
from cnetd.store.models import ModelRecord
from cnetd.supervisor.launcher import Launcher
from cnetd.tasks.model import Task
from cnetd.tasks.service import TaskService


@dataclass(frozen=True)
class Model:
    record: ModelRecord
    task: Task  # its deploy task (same id)


class ModelCatalog:
    def __init__(self, db: Database, tasks: TaskService, launcher: Launcher) -> None:
        self.db = db
        self.tasks = tasks
        self.launcher = launcher
        # model id -> the agent's copy of its version's artifact (cnetd.ml.versions), if any
        self.copy_of: Callable[[str], Path | None] | None = None

    async def get(self, model_id: str) -> Model:
        record = await self.db.read(lambda c: mq.get_model(c, model_id))
        if record is None:
            raise NotFound(f"model {model_id} not found", {"id": model_id})
        return Model(record=record, task=await self.tasks.get(model_id))

    async def find(self, model_id: str) -> Model | None:
        """The model whose deploy task this is, or None for any other task."""
        try:
            return await self.get(model_id)
        except NotFound:
            return None

    async def named(self, name: str) -> list[ModelRecord]:
        """Models called `name` (or whose id is `name`), newest first: the versions of a name."""
        return await self.db.read(lambda c: sq.models_named(c, name))

    async def addressed(self, name: str, version: str | None) -> ModelRecord:
        """The model a name (and version, a model id) addresses: the newest of that name
        when no version is given. NotFound saying which part is unknown."""
        records = await self.named(name)
        if not records:
            raise NotFound(f"unknown model: {name}", {"name": name})
        if version is None:
            return records[0]
        for record in records:
            if record.id == version:
                return record
        versions = ", ".join(r.id for r in records)
        raise NotFound(f"model {name} has no version {version} (versions: {versions})", {"name": name, "version": version})

    async def list(self) -> list[Model]:
        return [Model(record=r, task=t) for r, t in await self.db.read(mq.list_models)]

    def model_file(self, model: Model) -> Path:
        cwd = self.launcher.working_dir(model.task.working_dir)
        return Path(os.path.normpath(cwd / model.record.model_path))

    def artifact_file(self, model: Model) -> Path:
        """What the model's version is: the agent's copy of its artifact when it keeps one
        (a retrain into model_path does not change it), else its model file."""
        copy = self.copy_of(model.record.id) if self.copy_of is not None else None
        return copy if copy is not None and copy.is_file() else self.model_file(model)
