"""VersionService: the default, previous and canary version of every model name, and the
routing of a name's requests by them.

- When a version's training completes (or a file is registered as a version), its artifact
  is kept (cnetd.ml.versions.recorder); with promote "auto" it becomes the default once it is
  warm (cnetd.ml.versions.warm): until then the old default keeps serving.
- A switch (promote, rollback, the end of a rollout) changes one in-memory pointer, after the
  new target is warm: a request already routed finishes on the replica that took it. The
  previous default stays served for serving.rollback_window; after it, it is let go of and a
  rollback serves it again first (and says so).
- A rollout gives a version a sticky share of the requests (by X-Request-Key or the V2 request
  id) for its duration, then promotes it, or rolls it back when its error rate, p99 ratio or
  request count is out of bounds; the reason is an event on its deploy task.
- Pointers are kept in SQLite (model_pointers), so a restarted agent routes as before and a
  rollout goes on until its end time.
- Retention (serving.keep_versions, cnetd.ml.versions.retention): when a version becomes
  ready, after a switch, after a version is let go of and at start, the oldest ready versions
  beyond the bound that are not the default, previous default, canary, served or the newest
  are retired, and the artifact copies no kept version uses are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from cnetd.background import cancel_and_wait
from cnetd.clock import utc_now
from cnetd.errors import Conflict, DomainError, NotFound
from cnetd.ml.catalog import Model, ModelCatalog
from cnetd.ml.serving.manager import ServingManager
from cnetd.ml.serving.served import Served
from cnetd.ml.versions.bodies import RolloutBody
from cnetd.ml.versions.book import VersionBook
from cnetd.ml.versions.pointers import Canary, Pointer, pick
from cnetd.ml.versions.recorder import VersionRecorder
from cnetd.ml.versions.retention import reason as retention_reason
from cnetd.ml.versions.retention import to_retire
from cnetd.ml.versions.stats import Outcomes, Window
from cnetd.ml.versions.warm import serve_like, warm
from cnetd.store import versions as vq
from cnetd.store.versions import VersionRow
from cnetd.tasks.model import Status
from cnetd.tasks.service import TaskService
from cnetd.tasks.states import event

log = logging.getLogger(__name__)

__all__ = ["Switch", "VersionRow", "VersionService"]

HOUSEKEEPING_INTERVAL = 0.25  # how often rollback windows and rollout ends are looked at
DRAIN_TIMEOUT = 30.0  # a version let go of waits this long for its in-flight requests
SERVING_START_WAIT = 30.0  # a trained version served by its deploy body: how long its serving may take to start


@dataclass(frozen=True)
class Switch:
    version: int
    model_id: str
    reloaded: bool
    message: str


class VersionService:
    def __init__(self, tasks: TaskService, catalog: ModelCatalog, serving: ServingManager,
                 recorder: VersionRecorder, book: VersionBook, rollback_window: float,
                 serve_copies: bool = True, keep_versions: int | None = None) -> None:
        """serve_copies: serve a version from the agent's copy of its artifact (False: from
        the model file, which the serving manager reloads when it changes). keep_versions:
        ready versions kept per name (None: all)."""
        self.tasks = tasks
        self.db = tasks.db
        self.catalog = catalog
        self.serving = serving
        self.recorder = recorder
        self.book = book
        self.rollback_window = rollback_window
        self.serve_copies = serve_copies
        self.keep_versions = keep_versions
        self._promoting: set[str] = set()  # versions on their way to the default: kept by retention
        self.pointers: dict[str, Pointer] = {}
        self.outcomes = Outcomes()
        self._lock = asyncio.Lock()
        self._work: set[asyncio.Task[None]] = set()
        self._bus_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    # ---- what others ask ----------------------------------------------------------------

    def version_of(self, model_id: str) -> int | None:
        """The version number of a deploy; None for a task that is no versioned deploy."""
        return self.book.version_of(model_id)

    def label(self, served: Served) -> str:
        """The version a served deploy answers as (its number; its id when it has none)."""
        number = self.book.version_of(served.id)
        return served.id if number is None else str(number)

    async def file_for(self, model: Model) -> Any:
        """The ServingManager's hook: the agent's copy of the version's artifact (recorded now
        when its training has just completed), or None to serve the model file itself."""
        model_id = model.record.id
        self.refuse_retired(model_id)
        artifact = self.book.artifact_of(model_id)
        if artifact is None and model.task.status == Status.COMPLETED and self.book.version_of(model_id) is not None:
            await self.recorder.settle(model_id)  # training has just completed: keep its artifact first
            artifact = self.book.artifact_of(model_id)
        if not self.serve_copies:
            return None
        return artifact if artifact is not None and artifact.is_file() else None

    def retired_error(self, model_id: str) -> Conflict | None:
        """The Conflict (409) naming the version when model_id is a retired version (its
        artifact copy may be gone, and the model file may hold another version by now)."""
        row = self.book.row(model_id)
        if row is None or row.state != "retired":
            return None
        return Conflict(f"version {row.version} of {row.name} is retired ({row.reason or 'no reason recorded'}); "
                        f"it is no longer served or predicted",
                        {"name": row.name, "version": row.version, "state": "retired"})

    def refuse_retired(self, model_id: str) -> None:
        """Raise retired_error(model_id) when there is one."""
        error = self.retired_error(model_id)
        if error is not None:
            raise error

    def route(self, name: str, key: str | None) -> Served | None:
        """The served deploy that answers a request for the name: by its pointers (the canary
        for its share), None when the name has no served default (callers then fall back)."""
        pointer = self.pointers.get(name)
        if pointer is None:
            return None
        chosen = pick(pointer, key)
        served = self.serving.served(chosen) if chosen is not None else None
        if served is None and pointer.default_id is not None:
            served = self.serving.served(pointer.default_id)
        return served

    def resolve(self, name: str, version: str | None, key: str | None) -> Served | None:
        """A V2 address: the name alone follows the pointers; a version is a number (or a
        deploy id, as before versions existed)."""
        if version is None:
            return self.route(name, key) or self.serving.find(name)
        if version.isdigit() and len(version) <= 10:
            model_id = self.book.id_of(name, int(version))
            if model_id is None:
                return None
            return self.serving.served(model_id)
        return self.serving.find(name, version)

    def id_for_version(self, name: str, version: str) -> str | None:
        if version.isdigit() and len(version) <= 10:
            return self.book.id_of(name, int(version))
        return version if self.book.name_of(version) == name else None

    def default_id(self, name: str) -> str | None:
        pointer = self.pointers.get(name)
        return pointer.default_id if pointer is not None else None

    async def predict(self, served: Served, instances: Any) -> Any:
        """served.predict, counted for the version's rollout comparison."""
        self.outcomes.started(served.id)
        started = time.monotonic()
        try:
            answer = await served.predict(instances)
        except asyncio.CancelledError:  # the caller went away: no outcome of the version's
            self.outcomes.ended(served.id, None, False)
            raise
        except Exception:
            self.outcomes.ended(served.id, time.monotonic() - started, True)
            raise
        self.outcomes.ended(served.id, time.monotonic() - started, False)
        return answer

    # ---- listing --------------------------------------------------------------------------

    async def versions(self, name: str) -> list[VersionRow]:
        rows = await self.db.read(lambda c: vq.versions_of(c, name))
        if not rows:
            raise NotFound(f"unknown model: {name}", {"name": name})
        return rows

    def roles(self, name: str) -> dict[str, str]:
        """model id -> default | previous | canary."""
        pointer = self.pointers.get(name)
        out: dict[str, str] = {}
        if pointer is None:
            return out
        if pointer.previous_id:
            out[pointer.previous_id] = "previous"
        if pointer.canary is not None:
            out[pointer.canary.model_id] = "canary"
        if pointer.default_id:
            out[pointer.default_id] = "default"
        return out

    def rollout_json(self, name: str) -> dict[str, Any] | None:
        pointer = self.pointers.get(name)
        if pointer is None or pointer.canary is None:
            return None
        canary = pointer.canary
        now = time.time()
        return {
            **canary.to_json(),
            "remaining_seconds": round(max(0.0, canary.ends_at - now), 3),
            "progress": round(min(1.0, 1 - (canary.ends_at - now) / canary.duration), 4) if canary.duration else 1.0,
            "canary": self.outcomes.window(canary.model_id).to_json(),
            "default": self.outcomes.window(pointer.default_id).to_json() if pointer.default_id else None,
        }

    def pointer_json(self, name: str) -> dict[str, Any]:
        pointer = self.pointers.get(name) or Pointer(name)
        number = self.book.version_of
        return {
            "default_version": number(pointer.default_id) if pointer.default_id else None,
            "previous_version": number(pointer.previous_id) if pointer.previous_id else None,
            "previous_warm_until": pointer.previous_until,
            "canary_version": pointer.canary.version if pointer.canary else None,
            "rollout": self.rollout_json(name),
        }

    async def events(self, name: str) -> list[dict[str, Any]]:
        found = await self.db.read(lambda c: vq.version_events(c, name))
        return [{"time": e.time, "type": e.type, "message": e.message, "version": self.book.version_of(e.task_id)}
                for e in found]

    # ---- start and stop ---------------------------------------------------------------------

    async def load(self) -> None:
        """Before serving starts: versions and pointers from the store."""
        await self.recorder.load()
        for row in await self.db.read(vq.all_pointers):
            self.pointers[row.name] = Pointer.from_row(row)

    async def start(self) -> None:
        """After serving started: settle versions whose training ended while the agent was
        away, give names without a default their newest ready version, follow the bus."""
        await self._settle_training()
        for name in {r.name for r in await self.db.read(vq.all_versions)}:
            if name not in self.pointers or self.pointers[name].default_id is None:
                ready = [r for r in await self.db.read(partial(vq.versions_of, name=name)) if r.state == "ready"]
                if ready:
                    await self._switch(name, ready[-1].model_id, "promoted",
                                       f"version {ready[-1].version} is the default (the newest ready version)")
        for name in sorted({r.name for r in await self.db.read(vq.all_versions)}):
            try:
                await self.retain(name)
            except Exception:
                log.exception("model %s: version retention failed", name)
        with contextlib.suppress(Exception):
            await self._remove_unused()  # copies left by a stop between a retirement and its removal
        for name, pointer in self.pointers.items():
            if pointer.canary is not None:
                self.outcomes.reset(pointer.canary.model_id, *(x for x in [pointer.default_id] if x))
                log.info("model %s: the rollout of version %d goes on", name, pointer.canary.version)
        self._bus_task = asyncio.create_task(self._follow_bus(), name="versions-bus")
        self._housekeeping = asyncio.create_task(self._keep_house(), name="versions-housekeeping")

    async def stop(self) -> None:
        await cancel_and_wait(self._bus_task, self._housekeeping, *self._work)
        self._work.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    # ---- following training -----------------------------------------------------------------

    async def _follow_bus(self) -> None:
        await self.tasks.bus.follow_ended(self._task_ended, self._settle_training, "recording a version")

    async def _settle_training(self) -> None:
        """Settle the versions whose training ended unseen (while the agent was away, or
        while the bus had dropped this follower)."""
        for row in await self.db.read(vq.all_versions):
            if row.state == "training":
                with contextlib.suppress(Exception):
                    await self.recorder.settle(row.model_id)

    async def _task_ended(self, task_id: str) -> None:
        if self.book.row(task_id) is None and self.book.version_of(task_id) is None:
            return
        settled = await self.recorder.settle(task_id)
        if settled is not None and settled.state == "ready" and settled.promote == "auto":
            self._promoting.add(settled.model_id)
            self._spawn(self.promote_when_warm(settled), f"promote-{settled.model_id}")
        if settled is not None and settled.state == "ready":
            self._retain_soon(settled.name)

    def note_registered(self, row: VersionRow) -> None:
        if row.promote == "auto":
            self._promoting.add(row.model_id)
            self._spawn(self.promote_when_warm(row), f"promote-{row.model_id}")
        self._retain_soon(row.name)

    async def promote_when_warm(self, row: VersionRow) -> None:
        """A newly ready version with promote "auto": the default once warm (at once when
        nothing of its name is served)."""
        try:
            pointer = self.pointers.get(row.name) or Pointer(row.name)
            current = self.book.version_of(pointer.default_id) if pointer.default_id else None
            if current is not None and current > row.version:
                return  # a newer version is the default already
            model = await self.catalog.get(row.model_id)
            deadline = time.monotonic() + SERVING_START_WAIT
            while ((model.record.serving or {}).get("state") == "awaiting_training"
                   and self.serving.served(row.model_id) is None and time.monotonic() < deadline):
                await asyncio.sleep(0.05)  # the serving manager starts it on the same completion
                model = await self.catalog.get(row.model_id)
            default_served = pointer.default_id is not None and self.serving.served(pointer.default_id) is not None
            started = False
            if self.serving.served(row.model_id) is None and default_served:
                await serve_like(self.serving, row.model_id, pointer.default_id)
                started = True
            if self.serving.served(row.model_id) is not None:
                problem = await warm(self.serving, row.model_id, smoke=pointer.default_id is not None)
                if problem is not None:
                    await self._event(row.model_id, "promoted", f"version {row.version} was not made the default: {problem}")
                    if started:  # served here only to be warmed: not left restarting
                        with contextlib.suppress(DomainError):
                            await self.serving.unserve(row.model_id, reason=f"it did not warm: {problem}")
                    return
                why = f"version {row.version} is the default: it is warm (replicas loaded, smoke inference answered)"
            else:
                why = f"version {row.version} is the default: its training completed (it is not served)"
            async with self._lock:
                pointer = self.pointers.get(row.name) or Pointer(row.name)
                current = self.book.version_of(pointer.default_id) if pointer.default_id else None
                if current is not None and current > row.version:
                    return
            await self._switch(row.name, row.model_id, "promoted", why)
        except DomainError as exc:
            await self._event(row.model_id, "promoted", f"version {row.version} was not made the default: {exc.message}")
        except Exception:
            log.exception("model %s: promoting version %d failed", row.name, row.version)
        finally:
            self._promoting.discard(row.model_id)

    # ---- switches ----------------------------------------------------------------------------

    async def _event(self, model_id: str, type_: str, message: str) -> None:
        log.info("%s", message)
        with contextlib.suppress(Exception):
            await self.db.write(lambda c: vq.add_event(c, event(model_id, type_, message)))

    async def _save(self, pointer: Pointer, model_id: str | None = None, type_: str = "", message: str = "") -> None:
        row = pointer.to_row()

        def write(conn: sqlite3.Connection) -> None:
            vq.put_pointer(conn, row)
            if model_id is not None:
                vq.add_event(conn, event(model_id, type_, message))

        await self.db.write(write)
        self.pointers[pointer.name] = pointer
        if message:
            log.info("model %s: %s", pointer.name, message)

    async def _switch(self, name: str, target: str, type_: str, message: str) -> None:
        """Make target the default (it is warm already when served)."""
        async with self._lock:
            pointer = self.pointers.get(name) or Pointer(name)
            if pointer.default_id == target:
                return
            self.refuse_retired(target)  # retired meanwhile (retention holds this lock)
            displaced = pointer.previous_id if pointer.previous_id not in (target, pointer.default_id) else None
            canary = pointer.canary if pointer.canary is None or pointer.canary.model_id != target else None
            until = time.time() + self.rollback_window if pointer.default_id else None
            await self._save(pointer.with_(default_id=target, previous_id=pointer.default_id, previous_until=until,
                                           canary=canary), target, type_, message)
        if displaced is not None:
            self._spawn(self._release(name, displaced), f"release-{displaced}")
        self._retain_soon(name)

    async def _release(self, name: str, model_id: str) -> None:
        """Stop serving a version that is no longer default, previous or canary, once its
        in-flight requests are answered."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.outcomes.in_flight.get(model_id, 0) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if model_id in self.roles(name) or self.serving.served(model_id) is None:
            return
        number = self.book.version_of(model_id)
        with contextlib.suppress(DomainError):
            await self.serving.unserve(model_id, reason=f"version {number} of {name} left the rollback window")
            log.info("model %s: version %s is no longer served (not default, previous or canary)", name, number)
        self._retain_soon(name)

    def _model_id(self, name: str, version: int) -> str:
        model_id = self.book.id_of(name, version)
        if model_id is None:
            raise NotFound(f"model {name} has no version {version}", {"name": name, "version": version})
        return model_id

    async def _ready_row(self, name: str, version: int) -> VersionRow:
        model_id = self._model_id(name, version)
        row = await self.db.read(lambda c: vq.get_version(c, model_id))
        if row is None or row.state != "ready":
            state = "unknown" if row is None else row.state
            raise Conflict(f"version {version} of {name} is {state}, not ready", {"name": name, "version": version})
        return row

    async def _warm_for(self, name: str, model_id: str) -> bool:
        """Serve and warm model_id when its name's default is served (or it is itself);
        Conflict saying why it could not be warmed. True when it was started here."""
        pointer = self.pointers.get(name) or Pointer(name)
        default_served = pointer.default_id is not None and self.serving.served(pointer.default_id) is not None
        started = False
        if self.serving.served(model_id) is None and default_served:
            await serve_like(self.serving, model_id, pointer.default_id)
            started = True
        if self.serving.served(model_id) is not None:
            problem = await warm(self.serving, model_id)
            if problem is not None:
                if started:  # served here only to be warmed: not left restarting
                    with contextlib.suppress(DomainError):
                        await self.serving.unserve(model_id, reason=f"it did not warm: {problem}")
                raise Conflict(f"version {self.book.version_of(model_id)} of {name} is not warm: {problem}")
        return started

    async def promote(self, name: str, version: int) -> Switch:
        row = await self._ready_row(name, version)
        await self._warm_for(name, row.model_id)
        pointer = self.pointers.get(name) or Pointer(name)
        if pointer.canary is not None and pointer.canary.model_id != row.model_id:
            await self.abort(name, f"version {version} was promoted by hand")
        await self._switch(name, row.model_id, "promoted", f"version {version} promoted to default by a user")
        return Switch(version, row.model_id, False, f"version {version} is the default")

    async def rollback(self, name: str) -> Switch:
        pointer = self.pointers.get(name)
        if pointer is None or pointer.previous_id is None:
            raise Conflict(f"model {name} has no previous default to roll back to", {"name": name})
        if pointer.canary is not None:
            await self.abort(name, "a rollback was asked for")
        target = pointer.previous_id
        number = self.book.version_of(target) or 0
        served = self.serving.served(target)
        reloaded = False
        if served is None or served.ready_replicas == 0:
            reloaded = await self._warm_for(name, target)
        if reloaded:
            message = (f"rolled back to version {number}: it was served again first (the rollback window of "
                       f"{self.rollback_window:g}s had passed)")
        else:
            message = f"rolled back to version {number} (it was still warm: a pointer switch)"
        await self._switch(name, target, "rolled_back", message)
        return Switch(number, target, reloaded, message)

    async def stopped(self, model_id: str) -> bool:
        """A deploy was stopped by a user (DELETE /api/ml/models/{id}): a ready version that is
        not its name's default, previous default or canary is retired, and artifacts no
        version that is not retired uses are removed."""
        name = self.book.name_of(model_id)
        row = self.book.row(model_id)
        if name is None or row is None or row.state != "ready" or model_id in self.roles(name):
            return False
        await self.recorder.retire(model_id, "its deploy was stopped by a user")
        await self._remove_unused()
        return True

    # ---- retention ---------------------------------------------------------------------------

    async def _remove_unused(self) -> list[str]:
        """Remove the artifact copies (sha256 directories) no version that is not retired uses."""
        in_use = await self.db.read(vq.artifacts_in_use)
        removed = await asyncio.to_thread(self.recorder.store.remove_unused, in_use)
        if removed:
            log.info("removed %d artifact copies no version uses any more: %s", len(removed), ", ".join(removed))
        return removed

    async def retain(self, name: str) -> list[VersionRow]:
        """serving.keep_versions for one name: retire the oldest ready versions beyond it that
        are not protected (cnetd.ml.versions.retention.to_retire), each with an event saying
        why, then remove the copies no kept version uses. The versions retired."""
        keep = self.keep_versions
        if keep is None:
            return []
        async with self._lock:  # no switch meanwhile: a version made default is never retired
            rows = await self.db.read(partial(vq.versions_of, name=name))
            protected = set(self.roles(name)) | self._promoting
            protected |= {r.model_id for r in rows if self.serving.served(r.model_id) is not None}
            chosen = to_retire(rows, keep, protected)
            if not chosen:
                return []
            ready = sum(1 for r in rows if r.state == "ready")
            retired = await self.recorder.retire_ready(chosen, retention_reason(keep, ready))
        if retired:
            log.info("model %s: retired version(s) %s (serving.keep_versions %d)", name,
                     ", ".join(str(r.version) for r in retired), keep)
            await self._remove_unused()
        return retired

    def _retain_soon(self, name: str) -> None:
        if self.keep_versions is not None:
            self._spawn(self._retain_logged(name), f"retain-{name}")

    async def _retain_logged(self, name: str) -> None:
        try:
            await self.retain(name)
        except Exception:
            log.exception("model %s: version retention failed", name)

    # ---- rollouts ----------------------------------------------------------------------------

    async def rollout(self, name: str, body: RolloutBody) -> Canary:
        duration = body.duration_seconds()
        row = await self._ready_row(name, body.version)
        pointer = self.pointers.get(name)
        if pointer is None or pointer.default_id is None:
            raise Conflict(f"model {name} has no default version to compare a canary with", {"name": name})
        if pointer.canary is not None:
            raise Conflict(f"model {name} has a rollout running (version {pointer.canary.version}); abort it first",
                           {"name": name})
        if pointer.default_id == row.model_id:
            raise Conflict(f"version {body.version} is the default of {name} already",
                           {"name": name, "version": body.version})
        if self.serving.served(pointer.default_id) is None:
            raise Conflict(f"the default version of {name} is not served: a canary splits served traffic",
                           {"name": name})
        await self._warm_for(name, row.model_id)
        canary = Canary(
            model_id=row.model_id, version=row.version, percent=body.canary_percent, started_at=utc_now(),
            ends_at=time.time() + duration, duration=duration, max_error_rate=body.max_error_rate,
            max_p99_ratio=body.max_p99_ratio, min_requests=body.min_requests,
        )
        async with self._lock:
            current = self.pointers.get(name) or Pointer(name)
            if current.canary is not None:
                raise Conflict(f"model {name} has a rollout running already", {"name": name})
            self.outcomes.reset(row.model_id, pointer.default_id)
            await self._save(current.with_(canary=canary), row.model_id, "rollout",
                             f"rollout of version {row.version} started: {body.canary_percent:g}% of requests for "
                             f"{duration:g}s (max error rate {body.max_error_rate:g}, max p99 ratio "
                             f"{body.max_p99_ratio:g}, min requests {body.min_requests})")
        return canary

    async def abort(self, name: str, why: str = "aborted by a user") -> Canary:
        async with self._lock:
            pointer = self.pointers.get(name)
            if pointer is None or pointer.canary is None:
                raise Conflict(f"model {name} has no rollout running", {"name": name})
            canary = pointer.canary
            await self._save(pointer.with_(canary=None), canary.model_id, "rollout_ended",
                             f"rollout of version {canary.version} ended: {why}; version "
                             f"{self.book.version_of(pointer.default_id or '')} stays the default")
        self._spawn(self._release(name, canary.model_id), f"release-{canary.model_id}")
        return canary

    def verdict(self, pointer: Pointer, final: bool) -> str | None:
        """Why the canary must be rolled back (None: it passes). Before its end only a
        clear failure counts: its error rate over the bound with min_requests answered."""
        canary = pointer.canary
        assert canary is not None
        mine = self.outcomes.window(canary.model_id)
        base = self.outcomes.window(pointer.default_id) if pointer.default_id else Window()
        if mine.requests >= max(1, canary.min_requests) and mine.error_rate > canary.max_error_rate:
            return (f"its error rate {mine.error_rate:.4f} ({mine.errors} of {mine.requests} requests) is over "
                    f"max_error_rate {canary.max_error_rate:g}")
        if not final:
            return None
        if mine.requests < canary.min_requests:
            return f"it answered only {mine.requests} requests (min_requests {canary.min_requests})"
        if mine.requests and mine.error_rate > canary.max_error_rate:
            return (f"its error rate {mine.error_rate:.4f} ({mine.errors} of {mine.requests} requests) is over "
                    f"max_error_rate {canary.max_error_rate:g}")
        mine_p99, base_p99 = mine.p99(), base.p99()
        if mine_p99 is not None and base_p99:
            ratio = mine_p99 / base_p99
            if ratio > canary.max_p99_ratio:
                return (f"its p99 {mine_p99 * 1000:.2f} ms is {ratio:.2f} times the default's "
                        f"{base_p99 * 1000:.2f} ms (max_p99_ratio {canary.max_p99_ratio:g})")
        return None

    async def _conclude(self, name: str, pointer: Pointer, problem: str | None) -> None:
        canary = pointer.canary
        assert canary is not None
        numbers = self.outcomes.window(canary.model_id).to_json()
        if problem is None:
            await self._switch(name, canary.model_id, "rollout_ended",
                               f"rollout of version {canary.version} ended: promoted to default "
                               f"({numbers['requests']} requests, error rate {numbers['error_rate']}, "
                               f"p99 {numbers['p99_ms']} ms)")
            return
        async with self._lock:
            current = self.pointers.get(name)
            if current is None or current.canary != canary:
                return
            await self._save(current.with_(canary=None), canary.model_id, "rollout_ended",
                             f"rollout of version {canary.version} rolled back automatically: {problem}")
        self._spawn(self._release(name, canary.model_id), f"release-{canary.model_id}")

    async def _keep_house(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)  # the period of the checks
            now = time.time()
            for name, pointer in list(self.pointers.items()):
                try:
                    if pointer.canary is not None:
                        final = now >= pointer.canary.ends_at
                        problem = self.verdict(pointer, final)
                        if final or problem is not None:
                            await self._conclude(name, pointer, problem)
                            continue
                    if pointer.previous_until is not None and now >= pointer.previous_until and pointer.previous_id:
                        async with self._lock:
                            current = self.pointers.get(name)
                            if current is None or current.previous_until != pointer.previous_until:
                                continue
                            await self._save(current.with_(previous_until=None))
                        await self._release_previous(name, pointer.previous_id)
                except Exception:
                    log.exception("model %s: version housekeeping failed", name)

    async def _release_previous(self, name: str, model_id: str) -> None:
        """The rollback window has passed: the previous default is let go of."""
        if self.serving.served(model_id) is None:
            return
        pointer = self.pointers.get(name)
        if pointer is None or model_id in (pointer.default_id, pointer.canary.model_id if pointer.canary else None):
            return
        with contextlib.suppress(DomainError):
            await self.serving.unserve(model_id, reason="the rollback window passed")
            await self._event(model_id, "version", f"version {self.book.version_of(model_id)} of {name} is no longer "
                                                   f"served: the rollback window of {self.rollback_window:g}s passed")
        self._retain_soon(name)

