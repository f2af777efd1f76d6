"""Task retention: ended tasks past tasks.retention.max_age or beyond the newest
tasks.retention.max_tasks are deleted with their events, log rows, log files and exit
files, in small batches through the one writer so that the API stays responsive; then the
freed pages go back to the disk.

A pass runs at start and every tasks.retention.interval, as an owned background task.
Never deleted: a task that has not ended; the deploy task of a model that exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Protocol

from cnetd.background import cancel_and_wait
from cnetd.clock import format_time
from cnetd.config import RetentionSection
from cnetd.store import retention as rq
from cnetd.store.db import Database
from cnetd.supervisor.disk import format_bytes

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SWEEP_CHUNK = 500


class TaskFiles(Protocol):
    """Where a task's files live (the Launcher)."""

    logs_dir: Path
    run_dir: Path

    def log_path(self, task_id: str) -> Path: ...

    def run_files(self, task_id: str) -> list[Path]: ...

    RUN_SUFFIXES: tuple[str, ...]


@dataclass(frozen=True)
class PassReport:
    deleted_tasks: int
    log_lines: int
    events: int
    files: int
    pages_freed: int
    db_bytes_before: int
    db_bytes_after: int
    seconds: float


class Retention:
    def __init__(
        self,
        db: Database,
        settings: RetentionSection,
        files: TaskFiles,
        forget: Callable[[list[str]], None] | None = None,
        *,
        batch_tasks: int = 200,
        batch_rows: int = 5000,
        vacuum_pages: int = 2048,
    ) -> None:
        """forget: told the ids of each deleted batch (the task service drops what it
        remembers of them). A batch deletes at most batch_tasks tasks and about
        batch_rows log rows; a vacuum step frees at most vacuum_pages pages."""
        self._db = db
        self.settings = settings
        self._files = files
        self._forget = forget
        self._batch_tasks = batch_tasks
        self._batch_rows = batch_rows
        self._vacuum_pages = vacuum_pages
        self._loop_task: asyncio.Task[None] | None = None
        self._switch_tried = False

    @property
    def deletes(self) -> bool:
        return self.settings.max_age is not None or self.settings.max_tasks is not None

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="task-retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._loop_task)

    async def _run(self) -> None:
        first = True
        while True:
            try:
                await self.run_pass(sweep_orphans=first)
            except Exception:
                log.exception("retention pass failed")
            first = False
            await asyncio.sleep(self.settings.interval)

    async def run_pass(self, sweep_orphans: bool = False) -> PassReport:
        """Delete what is past the bounds, then give the space back. sweep_orphans: also
        remove log and exit files whose task is gone (left by a crash mid-pass)."""
        started = time.monotonic()
        size_before = self._db_bytes()
        deleted = rq.Deleted()
        files = 0
        if self.deletes:
            deleted, files = await self._delete_expired()
            if sweep_orphans:
                files += await self._sweep_orphan_files()
        pages = await self._give_space_back()
        report = PassReport(
            deleted_tasks=len(deleted.task_ids), log_lines=deleted.log_lines, events=deleted.events, files=files,
            pages_freed=pages, db_bytes_before=size_before, db_bytes_after=self._db_bytes(),
            seconds=time.monotonic() - started,
        )
        if report.deleted_tasks or report.files or report.pages_freed:
            log.info(
                "retention: deleted %d ended tasks (%d log lines, %d events, %d files) and freed %d pages "
                "in %.1fs; %s is %s (was %s)",
                report.deleted_tasks, report.log_lines, report.events, report.files, report.pages_freed,
                report.seconds, self._db.path.name, format_bytes(report.db_bytes_after),
                format_bytes(report.db_bytes_before),
            )
        return report

    async def _delete_expired(self) -> tuple[rq.Deleted, int]:
        max_age, max_tasks = self.settings.max_age, self.settings.max_tasks
        ended_before = None
        if max_age is not None:
            ended_before = format_time(datetime.now(UTC) - timedelta(seconds=max_age))
        up_to_seq = None
        if max_tasks is not None:
            up_to_seq = await self._db.read(lambda c: rq.count_bound_seq(c, max_tasks))
        total = rq.Deleted()
        files = 0
        while True:
            ids = await self._db.read(lambda c: rq.expired_ids(c, up_to_seq, ended_before, self._batch_tasks))
            if not ids:
                break
            batch = await self._db.write(partial(rq.delete_tasks, task_ids=ids, row_budget=self._batch_rows))
            total.task_ids += batch.task_ids
            total.log_lines += batch.log_lines
            total.events += batch.events
            if batch.task_ids:
                files += await asyncio.to_thread(self._remove_files, batch.task_ids)
                if self._forget is not None:
                    self._forget(batch.task_ids)
            elif not batch.log_lines:
                break  # nothing deletable among them after all (changed since the read)
        return total, files

    def _remove_files(self, task_ids: Iterable[str]) -> int:
        removed = 0
        for task_id in task_ids:
            if not TASK_ID.fullmatch(task_id):
                continue  # never build a path from anything but a task id
            for path in (self._files.log_path(task_id), *self._files.run_files(task_id)):
                try:
                    os.unlink(path)
                    removed += 1
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("retention: cannot remove %s: %s", path, exc.strerror or exc)
        return removed

    async def _sweep_orphan_files(self) -> int:
        """Log and exit files named after a task id the store no longer has."""
        candidates = await asyncio.to_thread(self._task_files_on_disk)
        orphans: list[Path] = []
        ids = sorted(candidates)
        for start in range(0, len(ids), SWEEP_CHUNK):
            chunk = ids[start:start + SWEEP_CHUNK]
            known = await self._db.read(partial(rq.existing_ids, task_ids=chunk))
            orphans += [path for task_id in chunk if task_id not in known for path in candidates[task_id]]
        return await asyncio.to_thread(_unlink_all, orphans)

    def _task_files_on_disk(self) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        for directory, suffixes in ((self._files.logs_dir, (".log",)), (self._files.run_dir, self._files.RUN_SUFFIXES)):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                for suffix in suffixes:
                    task_id = entry.name.removesuffix(suffix)
                    if entry.name.endswith(suffix) and TASK_ID.fullmatch(task_id) and entry.is_file(follow_symlinks=False):
                        found.setdefault(task_id, []).append(Path(entry.path))
        return found

    async def _give_space_back(self) -> int:
        mode = await self._db.read(rq.auto_vacuum_mode)
        if mode != rq.AUTO_VACUUM_INCREMENTAL:
            if not self._switch_tried:
                self._switch_tried = True
                await self._switch_to_incremental()
            return 0
        freed = 0
        while True:
            pages = await self._db.write(lambda c: rq.incremental_vacuum(c, self._vacuum_pages))
            freed += pages
            if pages < self._vacuum_pages:
                break
        if freed and not await self._db.maintain(rq.checkpoint):
            log.debug("retention: the checkpoint after vacuuming was kept from completing by a reader")
        return freed

    async def _switch_to_incremental(self) -> None:
        """An older database (auto_vacuum none) needs one VACUUM to give space back: it
        runs after this first pass's deletions, so it copies as little as possible."""
        size = self._db_bytes()
        free = shutil.disk_usage(self._db.path.parent).free
        if free < 2 * size:
            log.warning(
                "%s cannot switch to incremental auto-vacuum: the one-time VACUUM needs about %s free "
                "beside it, %s is free; freed space is reused but not returned to the disk",
                self._db.path, format_bytes(2 * size), format_bytes(free),
            )
            return
        log.info(
            "%s (%s): one-time VACUUM to turn on incremental auto-vacuum; writes wait until it ends",
            self._db.path, format_bytes(size),
        )
        started = time.monotonic()
        try:
            await self._db.maintain(rq.switch_to_incremental_vacuum)
            await self._db.maintain(rq.checkpoint)
        except (sqlite3.Error, OSError) as exc:
            log.warning("%s: the VACUUM failed and changed nothing: %s", self._db.path, exc)
            return
        log.info(
            "%s: incremental auto-vacuum is on (VACUUM took %.1fs; %s -> %s)",
            self._db.path, time.monotonic() - started, format_bytes(size), format_bytes(self._db_bytes()),
        )

    def _db_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self._db.path}{suffix}")
        return total


def _unlink_all(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed
