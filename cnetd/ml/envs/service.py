"""Environments: per-model Python environments, built once per spec, shared, kept while used.

A task whose body names an `environment` is created against the environment's key (a hash
of the normalised spec and the interpreter, EnvSpec.key). A ready environment lets it start
at once; otherwise it waits in `preparing` while a build task (kind "env", the
build.py program as an unprivileged task of its own, in its own sandbox, with the
build's limits) makes the environment under <state_dir>/envs/<key>. Deploys of the same
spec meanwhile wait for that one build. When the build ends:

- completed: the agent seals the directory (every file root's and read-only for the task
  users; anything not made by the builder refuses it), writes its ready marker, and moves
  the waiting tasks to `pending`;
- failed or stopped: the directory is removed (nothing half-built is ever used), and the
  waiting tasks fail with the build's reason (a missing package names itself and the
  indexes searched);
- lost (the agent stopped while it was starting, or its processes vanished while the agent
  was down): the build is started again, and the waiting tasks keep waiting.

Every decision about one key is taken under that key's lock: creating a waiting task,
finishing its build, and removing the environment by retention (after
ml.environments.max_idle unused; never while a task that has not ended or a served model
uses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cnetd.background import cancel_all
from cnetd.bundle import is_frozen, stable_copy
from cnetd.clock import seconds_since, utc_now
from cnetd.config import Config
from cnetd.errors import Conflict, Invalid, NotFound
from cnetd.limits import ResourceLimits
from cnetd.ml.envs.index import build_variables, pip_settings
from cnetd.ml.envs.spec import (
    FIELD,
    EnvironmentBody,
    EnvSpec,
    agent_python,
    base_fingerprint,
    find_python,
    normalise_requirement,
    read_requirements_file,
    requirements_from_text,
)
from cnetd.security.confine import Confinement
from cnetd.security.privilege import EXECUTE, READ
from cnetd.store import environments as eq
from cnetd.store.environments import EnvironmentRecord
from cnetd.store.tasks import get_task
from cnetd.supervisor.launcher import ENV_KEY as KEY
from cnetd.supervisor.launcher import ENV_READY_MARKER as READY_MARKER
from cnetd.supervisor.launcher import Launcher, default_task_path, resolve_working_dir
from cnetd.tasks.model import Status, Task
from cnetd.tasks.request import NewTask
from cnetd.tasks.service import TaskService

log = logging.getLogger(__name__)

BUILD_RELATIVE = "cnetd/ml/envs/build.py"
RETENTION_INTERVAL_MAX = 3600.0
T = TypeVar("T")


class SealError(Exception):
    pass


def seal(directory: Path, builder_uid: int | None) -> int:
    """Make a finished build root's and read-only for everyone else: every entry must be the
    builder's (or root's: none should be), no special files; set-id bits go. Returns the
    disk space it takes (bytes, each inode once)."""
    as_root = os.geteuid() == 0
    seen: set[tuple[int, int]] = set()
    used = 0
    paths = [str(directory)]
    for top, dirs, files in os.walk(directory, followlinks=False):
        paths += [os.path.join(top, name) for name in (*dirs, *files)]
    for path in paths:
        st = os.lstat(path)
        if builder_uid is not None and st.st_uid not in (builder_uid, 0):
            raise SealError(f"{path} belongs to uid {st.st_uid}, not to the build")
        kind = stat.S_IFMT(st.st_mode)
        if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
            raise SealError(f"{path} is not a file, directory or symlink")
        if as_root:
            os.chown(path, 0, 0, follow_symlinks=False)
        if kind != stat.S_IFLNK:
            executable = kind == stat.S_IFDIR or st.st_mode & 0o111
            os.chmod(path, 0o755 if executable else 0o644)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            used += st.st_blocks * 512
    return used


class Environments:
    def __init__(self, tasks: TaskService, launcher: Launcher, confinement: Confinement, config: Config,
                 agent_env: dict[str, str], build_script: Path | None = None) -> None:
        self.tasks = tasks
        self.db = tasks.db
        self.launcher = launcher
        self.confinement = confinement
        self.settings = config.ml.environments
        self.root = launcher.envs_root
        self._agent_env = agent_env
        self._build_script = build_script or stable_copy(BUILD_RELATIVE, config.agent.state_dir,
                                                         always=launcher.identities.drops_privileges)
        self._locks: dict[str, asyncio.Lock] = {}
        self._builds: dict[str, str] = {}  # build task id -> key
        self._pip_env: dict[str, str] | None = None
        self._base: str | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._retention: asyncio.Task[None] | None = None
        self._known: dict[str, EnvironmentRecord] = {}  # the rows as last written, for the UI's summary
        tasks.states.on_end(self._task_ended)
        tasks.environments = self

    # ---- the spec a request asks for ---------------------------------------------------------

    async def spec_of(self, body: EnvironmentBody, working_dir: str, owner: str) -> EnvSpec:
        """The request's environment, checked: Invalid naming the field otherwise."""
        if is_frozen():
            raise Invalid(FIELD, "Python environments need an agent that runs from its virtualenv "
                                 "(the one-file binary has no pip or uv to build them with)")
        if self.confinement.allowed_commands:
            raise Invalid(FIELD, "may not be used while tasks.allowed_commands is in force "
                                 "(an environment changes which code an allowed program loads)")
        if (body.requirements is None) == (body.requirements_file is None):
            raise Invalid(FIELD, "needs exactly one of requirements and requirements_file")
        if body.requirements is not None:
            requirements = [normalise_requirement(f"{FIELD}.requirements[{i}]", r) for i, r in enumerate(body.requirements)]
        else:
            assert body.requirements_file is not None
            requirements = await self._file_requirements(body.requirements_file, working_dir, owner)
        if not requirements:
            raise Invalid(FIELD, "names no requirement")
        version, interpreter = agent_python()
        if body.python is not None and body.python != version:
            if body.inherit:
                raise Invalid(f"{FIELD}.python", f"Python {body.python} cannot inherit the agent's environment "
                                                 f"(Python {version}); set inherit: false")
            found = await asyncio.to_thread(find_python, body.python, default_task_path())
            if found is None:
                raise Invalid(f"{FIELD}.python", f"Python {body.python} is not installed on this node (no "
                                                 f"python{body.python} on the agent's PATH, /usr/local/bin or /usr/bin "
                                                 "that runs as that version)")
            user = await self.tasks.user_for_owner(owner)
            problem = self.launcher.path_problem(user, Path(found), EXECUTE)
            if problem is not None:  # e.g. a pyenv Python in root's home
                raise Invalid(f"{FIELD}.python", f"Python {body.python} ({found}) cannot be run by tasks: {problem}")
            version, interpreter = body.python, found
        base = ""
        if body.inherit:
            if self._base is None:
                self._base = await asyncio.to_thread(base_fingerprint)
            base = self._base
        return EnvSpec(tuple(sorted(set(requirements))), body.inherit, version, interpreter, base)

    async def _file_requirements(self, path_text: str, working_dir: str, owner: str) -> list[str]:
        field = f"{FIELD}.requirements_file"
        cwd = resolve_working_dir(self.launcher.base_dir, working_dir)
        real = self.confinement.check_path(field, path_text, cwd)
        user = await self.tasks.user_for_owner(owner)
        problem = self.launcher.path_problem(user, real, READ)
        if problem is not None:  # the agent reads it, but only what the task's user could read
            raise Invalid(field, problem)
        text = await asyncio.to_thread(read_requirements_file, field, real)
        return requirements_from_text(field, text)

    # ---- tasks that run in an environment -----------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def create_in(self, spec: EnvSpec, create: Callable[[str, bool], Awaitable[T]]) -> T:
        """create(key, ready) makes the task; under the key's lock, so that a build that ends
        meanwhile finds it waiting. A build is started when the environment is neither
        ready nor being built."""
        key = spec.key
        async with self._lock(key):
            ready = await self._ready_or_building(key, spec)
            return await create(key, ready)

    async def create_in_key(self, key: str, create: Callable[[str, bool], Awaitable[T]]) -> T:
        """The same for a task of a model whose environment is known by its key (predictions,
        serving workers): removed meanwhile, it is built again from its recorded spec."""
        async with self._lock(key):
            record = await self.db.read(lambda c: eq.get(c, key))
            if record is None:
                raise Conflict(f"environment {key} is no longer known; deploy the model again")
            ready = await self._ready_or_building(key, _spec_of(record))
            return await create(key, ready)

    async def _ready_or_building(self, key: str, spec: EnvSpec) -> bool:
        record = await self.db.read(lambda c: eq.get(c, key))
        now = utc_now()
        if record is not None and record.status == "ready" and (self.root / key / READY_MARKER).exists():
            await self.db.write(lambda c: eq.update(c, key, last_used=now))
            return True
        if record is not None and record.status == "building" and record.build_task_id is not None:
            build = await self.db.read(partial(_task, task_id=record.build_task_id))
            if build is not None and not build.status.terminal:
                return False
        await self._start_build(key, spec, record)
        return False

    async def _start_build(self, key: str, spec: EnvSpec, previous: EnvironmentRecord | None) -> Task:
        """A build task for key (the launcher gives it a fresh, empty directory; what an earlier
        try left is removed here first, off the event loop)."""
        await asyncio.to_thread(shutil.rmtree, self.root / key, True)
        installer, uv = self._installer()
        if self._pip_env is None:
            settings = await asyncio.to_thread(pip_settings, self._agent_env)
            self._pip_env = build_variables(settings, self._agent_env)
        args = [str(self._build_script), "--target", str(self.root / key), "--python", spec.interpreter,
                "--installer", installer]
        if uv is not None:
            args += ["--uv", uv]
        if spec.inherit:
            args.append("--inherit")
        args += ["--", *spec.requirements]
        limits = ResourceLimits(memory_limit=self.settings.build_memory_limit)
        task = await self.tasks.create(NewTask(
            name=f"env-{key[:12]}", command=sys.executable, args=args, env=dict(self._pip_env),
            working_dir=str(self.root / key), resources=limits, timeout=self.settings.build_timeout,
            type="process", kind="env", environment=key, internal=True,
        ))
        self._builds[task.id] = key  # before any await: its end is settled (under the key's lock) from now on
        now = utc_now()
        record = EnvironmentRecord(
            key=key, spec={**spec.to_json(), "base": spec.base}, interpreter=spec.interpreter, status="building",
            created_at=previous.created_at if previous is not None else now, build_task_id=task.id,
            installer=installer, last_used=now,
        )
        await self.db.write(lambda c: eq.put(c, record))
        self._known[key] = record
        log.info("building environment %s (%s) in task %s", key, ", ".join(spec.requirements), task.id)
        return task

    def _installer(self) -> tuple[str, str | None]:
        choice = self.settings.installer
        uv = shutil.which("uv", path=f"{Path(sys.prefix) / 'bin'}:{default_task_path()}")
        if choice == "pip" or (choice == "auto" and uv is None):
            return "pip", None
        if uv is None:
            return "uv", "uv"  # the build fails naming it: ml.environments.installer asks for uv
        return "uv", os.path.realpath(uv)

    # ---- builds that end ------------------------------------------------------------------------

    def _task_ended(self, task_id: str) -> None:
        key = self._builds.get(task_id)
        if key is None:
            return
        handling = asyncio.get_running_loop().create_task(self._finish(key, task_id), name=f"env-{key}")
        self._handling.add(handling)
        handling.add_done_callback(self._handling.discard)

    async def _finish(self, key: str, task_id: str) -> None:
        try:
            async with self._lock(key):
                await self._settle(key, task_id)
        except Exception:
            log.exception("settling the build of environment %s failed", key)

    async def _settle(self, key: str, task_id: str) -> None:
        record = await self.db.read(lambda c: eq.get(c, key))
        task = await self.db.read(lambda c: _task(c, task_id))
        if record is None or record.status != "building" or record.build_task_id != task_id:
            return
        if task is not None and not task.status.terminal:
            return
        self._builds.pop(task_id, None)
        directory = self.root / key
        if task is None or (task.status == Status.FAILED and (task.reason or "").startswith("lost")):
            why = "its task is gone" if task is None else task.reason
            log.warning("the build of environment %s was lost (%s); building it again", key, why)
            await self._start_build(key, _spec_of(record), record)
            return
        if task.status == Status.COMPLETED:
            try:
                size = await asyncio.to_thread(seal, directory, task.uid)
                await asyncio.to_thread(_write_marker, directory, record)
            except (OSError, SealError) as exc:
                await self._failed(key, record, f"the built environment was refused: {exc}")
                return
            result = task.result or {}
            seconds = result.get("seconds") if isinstance(result.get("seconds"), (int, float)) else None
            await self.db.write(lambda c: eq.update(c, key, status="ready", ready_at=utc_now(), size_bytes=size,
                                                    build_seconds=seconds, reason=None))
            await self._refresh(key)
            log.info("environment %s is ready (%d MB)", key, size // 1_000_000)
            await self._release(key, None)
            return
        error = (task.result or {}).get("error") if isinstance(task.result, dict) else None
        if task.status == Status.STOPPED:
            why = "its build was stopped"
        else:
            why = str(error) if error else (task.reason or "the build failed")
        await self._failed(key, record, why)

    async def _failed(self, key: str, record: EnvironmentRecord, why: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / key, True)
        await self.db.write(lambda c: eq.update(c, key, status="failed", reason=why))
        await self._refresh(key)
        log.warning("environment %s could not be built: %s", key, why)
        await self._release(key, why)

    async def _release(self, key: str, failure: str | None) -> None:
        """The tasks waiting for key: to pending once it is ready, failed when it is not."""
        waiting = await self.db.read(lambda c: eq.preparing_tasks(c, key))
        for task in waiting:
            async with self.tasks.states.lock(task.id):
                if failure is None:
                    await self.tasks.states.move(task, Status.PENDING, "environment_ready",
                                                 f"environment {key} is ready")
                else:
                    reason = f"environment build failed: {failure}"
                    await self.tasks.states.end(task, Status.FAILED, "failed", reason, reason=reason,
                                                stopped_at=utc_now())
        if waiting and failure is None:
            self.tasks.runner.kick()

    # ---- agent start and stop ------------------------------------------------------------------

    async def _refresh(self, key: str) -> None:
        record = await self.db.read(lambda c: eq.get(c, key))
        if record is not None:
            self._known[key] = record

    def summary(self, key: str | None) -> dict[str, Any] | None:
        """What a task's page shows of its environment (from memory: the page's summary is
        rendered without waiting on the store)."""
        record = self._known.get(key) if key else None
        if record is None:
            return None
        return _json(record, [])

    async def start(self) -> None:
        """After recovery: builds under way are followed again (a build task outlives the
        agent like any task), ended ones settled, waiting tasks of settled keys released."""
        self.root.mkdir(mode=0o711, exist_ok=True)
        self._known = {r.key: r for r in await self.db.read(eq.list_all)}
        for record in await self.db.read(lambda c: eq.with_status(c, "building")):
            if record.build_task_id is not None:
                self._builds[record.build_task_id] = record.key
                await self._finish(record.key, record.build_task_id)
        for record in await self.db.read(eq.list_all):
            if record.status in ("ready", "failed"):
                async with self._lock(record.key):
                    await self._release(record.key, record.reason if record.status == "failed" else None)
        if self.settings.max_idle:
            interval = min(RETENTION_INTERVAL_MAX, self.settings.max_idle / 4)
            self._retention = asyncio.create_task(self._retain_forever(interval), name="env-retention")

    async def stop(self) -> None:
        await cancel_all([*self._handling, *([self._retention] if self._retention else [])])
        self._retention = None

    # ---- retention ------------------------------------------------------------------------------

    async def _retain_forever(self, interval: float) -> None:
        while True:
            try:
                await self.remove_idle()
            except Exception:
                log.exception("environment retention failed")
            await asyncio.sleep(interval)

    async def remove_idle(self) -> list[str]:
        """Remove environments unused for ml.environments.max_idle that no task that has not
        ended and no served model uses. Returns their keys."""
        max_idle = self.settings.max_idle
        if not max_idle:
            return []
        removed = []
        for record in await self.db.read(eq.list_all):
            if record.status not in ("ready", "failed"):
                continue
            if seconds_since(record.last_used or record.ready_at or record.created_at) < max_idle:
                continue
            key = record.key
            async with self._lock(key):
                users = await self.db.read(partial(eq.tasks_using, key=key))
                served = await self.db.read(eq.served_environments)
                if users or key in served:
                    continue
                await asyncio.to_thread(shutil.rmtree, self.root / key, True)
                await self.db.write(partial(eq.update, key=key, status="removed", size_bytes=None))
                await self._refresh(key)
                removed.append(key)
                log.info("removed environment %s: unused since %s (ml.environments.max_idle)", key, record.last_used)
        return removed

    # ---- what the API shows ---------------------------------------------------------------------

    async def describe(self) -> list[dict[str, Any]]:
        records = await self.db.read(eq.list_all)
        users = await self.db.read(eq.users_by_environment)
        return [_json(r, users.get(r.key, [])) for r in records if r.status != "removed" or users.get(r.key)]

    async def describe_one(self, key: str) -> dict[str, Any]:
        record = await self.db.read(lambda c: eq.get(c, key)) if KEY.match(key) else None
        if record is None:
            raise NotFound(f"environment {key} not found", {"key": key})
        return _json(record, await self.db.read(lambda c: eq.tasks_using(c, key)))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            await self.start()
            yield
        finally:
            await self.stop()


def _task(conn: sqlite3.Connection, task_id: str) -> Task | None:
    return get_task(conn, task_id)


def _spec_of(record: EnvironmentRecord) -> EnvSpec:
    """The spec a row was built from (to build it again under the same key)."""
    spec = record.spec
    return EnvSpec(tuple(spec["requirements"]), bool(spec["inherit"]), str(spec["python"]), record.interpreter,
                   str(spec.get("base", "")))


def _write_marker(directory: Path, record: EnvironmentRecord) -> None:
    marker = directory / READY_MARKER
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"key": record.key, "spec": record.spec, "interpreter": record.interpreter}, f)


def _json(record: EnvironmentRecord, users: list[str]) -> dict[str, Any]:
    return {
        "key": record.key,
        "status": record.status,
        "requirements": record.spec.get("requirements", []),
        "inherit": record.spec.get("inherit"),
        "python": record.spec.get("python"),
        "interpreter": record.interpreter,
        "installer": record.installer,
        "build_task_id": record.build_task_id,
        "reason": record.reason,
        "created_at": record.created_at,
        "ready_at": record.ready_at,
        "last_used": record.last_used,
        "size_bytes": record.size_bytes,
        "build_seconds": record.build_seconds,
        "tasks": users,
    }
