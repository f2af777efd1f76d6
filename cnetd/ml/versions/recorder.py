"""Recording versions: when a deploy's training ends, its version becomes ready (sha256,
size, the agent's copy of the artifact) or failed; an existing file can be registered as a
version without training. Writes go through the store; the book is kept current."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import uuid
from pathlib import Path

from cnetd.clock import utc_now
from cnetd.errors import Conflict, Invalid, NotFound
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.versions.artifacts import ArtifactStore, Stored
from cnetd.ml.versions.book import VersionBook
from cnetd.security.confine import Confinement
from cnetd.security.identity import model_owner
from cnetd.store import models as mq
from cnetd.store import tasks as q
from cnetd.store import versions as vq
from cnetd.store.models import ModelRecord
from cnetd.store.versions import VersionRow
from cnetd.supervisor.launcher import Launcher
from cnetd.tasks.bus import TaskChange
from cnetd.tasks.model import Status, Task
from cnetd.tasks.service import TaskService
from cnetd.tasks.states import event

log = logging.getLogger(__name__)

VERSION_EVENT = "version"
REGISTERED_FROM = "registered_from"


class VersionRecorder:
    def __init__(self, tasks: TaskService, catalog: ModelCatalog, launcher: Launcher, confinement: Confinement,
                 store: ArtifactStore, book: VersionBook) -> None:
        self.tasks = tasks
        self.db = tasks.db
        self.catalog = catalog
        self.launcher = launcher
        self.confinement = confinement
        self.store = store
        self.book = book
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> list[VersionRow]:
        rows = await self.db.read(vq.all_versions)
        for row in rows:
            self.book.note(row)
        return rows

    async def settle(self, model_id: str) -> VersionRow | None:
        """A version whose training ended: ready (its artifact kept) or failed. Once."""
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            row = await self.db.read(lambda c: vq.get_version(c, model_id))
            if row is None or row.state != "training":
                return row
            model = await self.catalog.find(model_id)
            if model is None or not model.task.status.terminal:
                return row
            if model.task.status == Status.COMPLETED:
                source = self.catalog.model_file(model)
                if source.is_file():
                    try:
                        stored = await asyncio.to_thread(self.store.store, source)
                    except OSError as exc:
                        return await self._failed(row, f"could not keep a copy of {model.record.model_path}: {exc}")
                    return await self._ready(row, stored)
                return await self._failed(row, f"training completed without writing {model.record.model_path}")
            reason = f"training {model.task.status}" + (f": {model.task.reason}" if model.task.reason else "")
            return await self._failed(row, reason)

    async def _ready(self, row: VersionRow, stored: Stored) -> VersionRow:
        now = utc_now()
        message = (f"version {row.version} of {row.name} is ready: sha256 {stored.sha256}, {stored.size} bytes"
                   + (f", with {', '.join(stored.sidecars)}" if stored.sidecars else ""))

        def write(conn: sqlite3.Connection) -> VersionRow | None:
            vq.set_ready(conn, row.model_id, stored.sha256, stored.size, str(stored.file), stored.sidecars, now)
            vq.add_event(conn, event(row.model_id, VERSION_EVENT, message))
            return vq.get_version(conn, row.model_id)

        try:
            updated = await self.db.write(write)
        finally:
            self.store.recorded(stored)
        assert updated is not None
        self.book.note(updated)
        log.info("%s", message)
        return updated

    async def _failed(self, row: VersionRow, reason: str) -> VersionRow:
        def write(conn: sqlite3.Connection) -> VersionRow | None:
            vq.set_state(conn, row.model_id, "failed", reason)
            vq.add_event(conn, event(row.model_id, VERSION_EVENT, f"version {row.version} of {row.name} failed: {reason}"))
            return vq.get_version(conn, row.model_id)

        updated = await self.db.write(write)
        assert updated is not None
        self.book.note(updated)
        return updated

    async def retire(self, model_id: str, why: str) -> None:
        row = await self.db.read(lambda c: vq.get_version(c, model_id))
        if row is None or row.state == "retired":
            return

        def write(conn: sqlite3.Connection) -> VersionRow | None:
            vq.set_state(conn, model_id, "retired", why)
            vq.add_event(conn, event(model_id, "retired", f"version {row.version} of {row.name} retired: {why}"))
            return vq.get_version(conn, model_id)

        updated = await self.db.write(write)
        if updated is not None:
            self.book.note(updated)

    # ---- registering an existing file ----------------------------------------------------

    def _confined_artifact(self, artifact: str, base: Model) -> tuple[Path, str]:
        """The file an artifact path names (relative to the newest version's working dir),
        checked as a model path is: inside the allowed roots and a model root, outside the
        state dir, through no symlink, a regular file; and the path to record."""
        cwd = self.launcher.working_dir(base.task.working_dir)
        if "\x00" in artifact:
            raise Invalid("artifact", "may not contain NUL")
        normal = Path(os.path.normpath(cwd / artifact))
        real = self.confinement.check_path("artifact", artifact, cwd)
        if real != normal:
            raise Invalid("artifact", f"{artifact} goes through a symlink ({normal} is {real})")
        try:
            self.confinement.check_model_dir(artifact, normal.parent)
        except Invalid as exc:
            raise Invalid("artifact", exc.message.split(": ", 1)[-1]) from None
        try:
            st = os.lstat(normal)
        except FileNotFoundError:
            raise Invalid("artifact", f"{artifact}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise Invalid("artifact", f"{artifact} is not a regular file")
        return normal, os.path.relpath(normal, cwd)

    async def register(self, name: str, artifact: str, promote: str) -> VersionRow:
        """A model file that exists already becomes the name's next version, ready at once."""
        rows = await self.db.read(lambda c: vq.versions_of(c, name))
        if not rows:
            raise NotFound(f"unknown model: {name}", {"name": name})
        base = await self.catalog.get(rows[-1].model_id)
        file, relative = self._confined_artifact(artifact, base)
        owner = model_owner(name)
        uid = await self.tasks.uid_for_owner(owner)
        st = os.stat(file)
        if not st.st_mode & stat.S_IROTH and (uid is None or st.st_uid != uid):
            raise Invalid("artifact", f"{artifact} is neither the model's own file nor readable by everyone")
        try:
            stored = await asyncio.to_thread(self.store.store, file)
        except OSError as exc:
            raise Conflict(f"could not keep a copy of {artifact}: {exc.strerror or exc}") from None
        try:
            return await self._register(name, base, relative, owner, stored, promote)
        finally:
            self.store.recorded(stored)

    async def _register(self, name: str, base: Model, relative: str, owner: str, stored: Stored,
                        promote: str) -> VersionRow:
        model_id = str(uuid.uuid4())
        now = utc_now()
        source = base.task
        task = Task(
            id=model_id, name=name, type="ml_model", kind="train", status=Status.COMPLETED,
            command=source.command, args=[], env=dict(source.env), working_dir=source.working_dir,
            resources=source.resources, created_at=now, log_file=str(self.launcher.log_path(model_id)),
            node_id=self.tasks.node_id, timeout=None, started_at=now, stopped_at=now, progress=1.0,
            result={REGISTERED_FROM: relative, "sha256": stored.sha256, "size": stored.size},
            model_id=None, sandbox=self.launcher.sandbox.name, program=source.program,
            environment=source.environment,
        )
        record = ModelRecord(
            id=model_id, name=name, model_type=base.record.model_type, model_path=relative,
            script_path=base.record.script_path, created_at=now,
        )

        def write(conn: sqlite3.Connection) -> VersionRow | None:
            task.uid = self.launcher.identities.allocate(conn, owner)
            q.insert_task(conn, task)
            mq.insert_model(conn, record)
            number = vq.insert_version(conn, model_id, name, promote, now, source="registered")
            vq.set_ready(conn, model_id, stored.sha256, stored.size, str(stored.file), stored.sidecars, now)
            q.insert_event(conn, event(model_id, VERSION_EVENT,
                                       f"version {number} of {name} registered from {relative}: sha256 "
                                       f"{stored.sha256}, {stored.size} bytes"))
            return vq.get_version(conn, model_id)

        row = await self.db.write(write)
        assert row is not None
        self.book.note(row)
        self.tasks.bus.publish(TaskChange(model_id, str(Status.COMPLETED), "status"))
        return row
