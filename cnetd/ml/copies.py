"""Copies of models trained on another node of the cluster: what a node keeps so that it can
serve a model it did not train (cluster failover).

A copy is a model of this node like any other, with the same id as on its origin: its record
(name, type, the origin's created_at, so the newest version of a name stays the newest) and
its deploy task, which never runs here: it is written as `completed` with a `copied` event,
and its result says where the file came from ({"copied_from", "sha256", "size"}). Its file
lies beside where the origin keeps it, under a name of its own, `<stem>.<model id><suffix>`
(models/iris.joblib -> models/iris.<id>.joblib), so it never replaces a model this node has
of its own; the suffix is kept for the built-in loader. Its serving workers are started by
the ServingManager like any model's.

Everything the origin's record says is checked here as a deploy body is: the working dir
inside the allowed roots, the model's directory inside the model roots and free of
symlinks, the command startable (and allowed), the environment allowed. The model's script
is needed only to serve with the script loader: a node that lacks it cannot hold a model
served with loader "script" (NotHere says so, and the cluster places it elsewhere), and
serves a model with loader "auto" with the built-in loader.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path, PurePath

from cnetd.clock import utc_now
from cnetd.cluster.records import NODE_ID_PATTERN, ServedModel
from cnetd.config import Config
from cnetd.errors import DomainError
from cnetd.limits import ResourceLimits
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.scripts import locate_script
from cnetd.security.confine import Confinement
from cnetd.security.identity import model_owner
from cnetd.security.privilege import READ
from cnetd.store import models as mq
from cnetd.store import tasks as q
from cnetd.store.models import ModelRecord
from cnetd.supervisor.base import SpawnError
from cnetd.supervisor.launcher import Launcher, model_dir_of
from cnetd.tasks.bus import TaskChange
from cnetd.tasks.model import Status, Task
from cnetd.tasks.service import TaskService
from cnetd.tasks.states import event

COPIED = "copied"  # the event type
COPIED_FROM = "copied_from"  # in the deploy task's result


class NotHere(Exception):
    """This node cannot hold the model; the message says why (one line)."""


@dataclass(frozen=True)
class CopyPlan:
    model_id: str
    name: str
    model_path: str  # of the copy, as the model's tasks name it (relative to working_dir, or absolute)
    script_path: str  # "" when the copy is served without its script
    command: str
    program: str  # the command resolved, as a task start would
    env: dict[str, str]
    working_dir: str
    resources: ResourceLimits
    file: Path  # absolute, normalised: where the copy's file goes
    uid: int | None
    gid: int | None


def copy_name(model_path: str, model_id: str) -> str:
    path = PurePath(model_path)
    return f"{path.stem}.{model_id}{path.suffix}"


def is_copy(model: Model) -> bool:
    """A model this node keeps as a copy of another node's (its deploy task never ran here)."""
    result = model.task.result or {}
    return model.task.kind == "train" and model.task.status == Status.COMPLETED and COPIED_FROM in result


class ModelCopies:
    def __init__(self, tasks: TaskService, catalog: ModelCatalog, launcher: Launcher, confinement: Confinement,
                 config: Config) -> None:
        self.tasks = tasks
        self.catalog = catalog
        self.launcher = launcher
        self.confinement = confinement
        self.config = config

    async def plan(self, record: ServedModel) -> CopyPlan:
        """Where and how this node would keep and serve a copy of record's model; NotHere
        when it cannot (the checks a deploy gets here)."""
        try:
            return await self._plan(record)
        except DomainError as exc:
            raise NotHere(exc.message) from None
        except SpawnError as exc:
            raise NotHere(str(exc)) from None

    async def _plan(self, record: ServedModel) -> CopyPlan:
        source = record.source
        if not self.config.ml.enabled:
            raise NotHere("ML support is disabled on this node (ml.enabled: false)")
        if not NODE_ID_PATTERN.match(record.model_id):
            raise NotHere(f"{record.model_id!r:.80} is not a model id")
        for field, value in (("model_path", source.model_path), ("working_dir", source.working_dir),
                             ("script_path", source.script_path), ("command", source.command)):
            if "\0" in value or (field != "script_path" and not value.strip()):
                raise NotHere(f"{field} {value!r:.80} is not a path")
        if PurePath(source.model_path).name in ("", ".", ".."):
            raise NotHere(f"model_path {source.model_path!r:.80} names no file")
        base = self.launcher.base_dir
        self.confinement.check_path("working_dir", source.working_dir, base)
        self.confinement.check_env(source.env)
        cwd = self.launcher.working_dir(source.working_dir)
        if not cwd.is_dir():
            raise NotHere(f"working_dir {source.working_dir}: no such directory on this node")
        model_path = str(PurePath(source.model_path).parent / copy_name(source.model_path, record.model_id))
        directory = model_dir_of(cwd, model_path)
        self.confinement.check_model_dir(model_path, directory)
        owner = model_owner(record.name)
        user = await self.tasks.user_for_owner(owner)
        program = self.launcher.check_startable(source.command, source.working_dir, user)
        self.confinement.check_command(source.command, program)
        script_path = ""
        loader = record.settings.get("loader", "auto")
        if source.script_path:
            try:
                script = locate_script(source.script_path, source.working_dir, cwd, self.config.ml.script_path,
                                       self.confinement)
                problem = self.launcher.path_problem(user, cwd / script.path, READ)
                if problem is not None:
                    raise NotHere(problem)
                script_path = script.path
            except (DomainError, NotHere) as exc:
                if loader == "script":
                    why = exc.message if isinstance(exc, DomainError) else str(exc)
                    raise NotHere(f"it is served with its script, which this node cannot run: {why}") from None
        elif loader == "script":
            raise NotHere("it is served with its script, and it has none")
        uid = await self.tasks.uid_for_owner(owner)
        task_user = self.launcher.identities.user(uid)
        env = {**source.env, "MODEL_PATH": model_path, "MODEL_TYPE": source.model_type}
        resources = ResourceLimits(cpu_limit=source.cpu_limit, memory_limit=source.memory_limit,
                                   disk_limit=source.disk_limit, gpu_limit=source.gpu_limit,
                                   gpu_memory=source.gpu_memory)
        return CopyPlan(
            model_id=record.model_id, name=record.name, model_path=model_path, script_path=script_path,
            command=source.command, program=program, env=env, working_dir=source.working_dir, resources=resources,
            file=Path(os.path.normpath(cwd / model_path)), uid=None if task_user is None else task_user.uid,
            gid=None if task_user is None else task_user.gid,
        )

    async def keep(self, record: ServedModel, plan: CopyPlan, copied_from: str) -> Model:
        """Write the copy's record and deploy task (once: a model this node has already is
        returned as it is). Its file must be in place already."""
        now = utc_now()
        owner = model_owner(record.name)
        task = Task(
            id=plan.model_id, name=record.name, type="ml_model", kind="train", status=Status.COMPLETED,
            command=plan.command, args=[], env=dict(plan.env), working_dir=plan.working_dir,
            resources=plan.resources, created_at=now, log_file=str(self.launcher.log_path(plan.model_id)),
            node_id=self.tasks.node_id, timeout=None, started_at=now, stopped_at=now, progress=1.0,
            result={COPIED_FROM: copied_from, "sha256": record.sha256, "size": record.size},
            model_id=None, sandbox=self.launcher.sandbox.name, program=plan.program,
        )
        model_record = ModelRecord(
            id=plan.model_id, name=record.name, model_type=record.source.model_type, model_path=plan.model_path,
            script_path=plan.script_path, created_at=record.created_at or now,
        )

        def write(conn: sqlite3.Connection) -> bool:
            if q.get_task(conn, plan.model_id) is not None:
                return False
            task.uid = self.launcher.identities.allocate(conn, owner)
            q.insert_task(conn, task)
            q.insert_event(conn, event(plan.model_id, COPIED,
                                       f"model file copied from node {copied_from} (sha256 {record.sha256}, "
                                       f"{record.size} bytes) to serve it here too; trained on node {record.origin}"))
            mq.insert_model(conn, model_record)
            return True

        if await self.tasks.db.write(write):
            self.tasks.bus.publish(TaskChange(plan.model_id, str(Status.COMPLETED), "status"))
        return await self.catalog.get(plan.model_id)
