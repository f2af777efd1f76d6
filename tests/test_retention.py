"""Task retention on a real SQLite file with real log and exit files: what a pass deletes,
what it never deletes, that it works in bounded batches, and that the space goes back to
the disk."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from cnetd.config import RetentionSection
from cnetd.logs.holes import punch_head
from cnetd.store import retention as rq
from cnetd.store.db import Database, apply_migrations
from cnetd.supervisor.launcher import TaskPaths
from cnetd.tasks.model import Status, Task
from cnetd.tasks.retention import Retention
from tests.support.agent import AgentProcess
from tests.support.stored_tasks import ago, make_task, record, write_log_file
from tests.support.waiting import wait_until

DAY = 86400.0


@dataclass
class Store:
    db: Database
    launcher: TaskPaths  # the real one: it names the log and exit files

    async def add(self, status: Status, ended: datetime | None = None, *, lines: int = 3, model_name: str | None = None,
                  kind: str = "run", model_id: str | None = None, started: datetime | None = None,
                  line_bytes: int = 20) -> Task:
        task = make_task(self.launcher.state_dir, status, ended, kind=kind, model_id=model_id, started=started)
        text = [f"{i:06d} " + "x" * max(0, line_bytes - 7) for i in range(lines)]
        await self.db.write(lambda c: record(c, task, text, model_name))
        write_log_file(task, text)
        self.launcher.exit_path(task.id).write_text("0\n")
        return task

    async def ids(self) -> set[str]:
        return await self.db.read(lambda c: {r[0] for r in c.execute("SELECT id FROM tasks")})

    async def rows_of(self, task_id: str) -> dict[str, int]:
        def count(c: sqlite3.Connection) -> dict[str, int]:
            return {table: c.execute(f"SELECT COUNT(*) FROM {table} WHERE task_id = ?", (task_id,)).fetchone()[0]
                    for table in ("task_events", "log_lines", "log_cursors")}
        return await self.db.read(count)

    def files_of(self, task_id: str) -> list[Path]:
        return [p for p in (self.launcher.log_path(task_id), self.launcher.exit_path(task_id)) if p.exists()]

    def retention(self, max_age: float | None = None, max_tasks: int | None = None, **kw: int) -> Retention:
        forgotten: list[str] = []
        retention = Retention(self.db, RetentionSection(max_age=max_age, max_tasks=max_tasks), self.launcher,
                              forget=forgotten.extend, **kw)
        retention.forgotten = forgotten  # type: ignore[attr-defined]
        return retention


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    state_dir = tmp_path / "state"
    db = Database(state_dir / "cnet.db")
    await db.open()
    try:
        yield Store(db, TaskPaths(state_dir))
    finally:
        await db.close()


async def test_ended_tasks_past_max_age_go_with_their_events_log_rows_and_files(store: Store) -> None:
    old = [await store.add(Status.COMPLETED, ago(days=20)), await store.add(Status.FAILED, ago(days=15)),
           await store.add(Status.STOPPED, ago(days=30))]
    recent = await store.add(Status.COMPLETED, ago(days=1))
    running = await store.add(Status.RUNNING, started=ago(days=40))
    pending = await store.add(Status.PENDING, started=ago(days=40))
    starting = await store.add(Status.STARTING, started=ago(days=40))
    deploy = await store.add(Status.COMPLETED, ago(days=60), kind="train", model_name="m")
    # A live model's predictions and its serving workers' tasks are ordinary ended tasks.
    prediction = await store.add(Status.COMPLETED, ago(days=20), kind="predict", model_id=deploy.id)
    worker = await store.add(Status.STOPPED, ago(days=20), kind="serve", model_id=deploy.id)
    retention = store.retention(max_age=14 * DAY)

    report = await retention.run_pass()

    gone = {t.id for t in [*old, prediction, worker]}
    kept = {recent.id, running.id, pending.id, starting.id, deploy.id}
    assert await store.ids() == kept
    assert report.deleted_tasks == len(gone) and set(retention.forgotten) == gone  # type: ignore[attr-defined]
    for task_id in gone:
        assert await store.rows_of(task_id) == {"task_events": 0, "log_lines": 0, "log_cursors": 0}
        assert store.files_of(task_id) == []
    for task_id in kept:
        rows = await store.rows_of(task_id)
        assert rows["task_events"] >= 1 and rows["log_lines"] == 3, (task_id, rows)
        assert len(store.files_of(task_id)) == 2


async def test_max_tasks_keeps_the_newest_ended_tasks(store: Store) -> None:
    deploy = await store.add(Status.COMPLETED, ago(days=3), kind="train", model_name="m")  # the oldest of all
    running = await store.add(Status.RUNNING, started=ago(days=3))
    ended = [await store.add(Status.COMPLETED, ago(minutes=30 - i)) for i in range(25)]

    await store.retention(max_tasks=10).run_pass()

    # Kept: the 10 newest ended ones; the deploy task of a live model and the running task
    # neither go nor count.
    assert await store.ids() == {t.id for t in ended[-10:]} | {deploy.id, running.id}


async def test_no_bounds_delete_nothing(store: Store) -> None:
    tasks = [await store.add(Status.COMPLETED, ago(days=400)) for _ in range(3)]
    report = await store.retention().run_pass()
    assert report.deleted_tasks == 0 and await store.ids() == {t.id for t in tasks}


async def test_a_batch_touches_a_bounded_number_of_log_rows(store: Store) -> None:
    big = await store.add(Status.COMPLETED, ago(days=20), lines=120)
    small = await store.add(Status.COMPLETED, ago(days=20), lines=10)

    first = await store.db.write(lambda c: rq.delete_tasks(c, [big.id, small.id], row_budget=50))
    # The big task keeps its newest lines and its row until a later batch: nothing is
    # ever left without its task.
    assert first.task_ids == [] and first.log_lines == 50
    assert (await store.rows_of(big.id))["log_lines"] == 70 and await store.ids() == {big.id, small.id}
    second = await store.db.write(lambda c: rq.delete_tasks(c, [big.id, small.id], row_budget=50))
    assert second.task_ids == [] and second.log_lines == 50
    third = await store.db.write(lambda c: rq.delete_tasks(c, [big.id, small.id], row_budget=50))
    assert third.task_ids == [big.id, small.id] and third.log_lines == 30
    assert await store.ids() == set()


async def test_a_pass_finishes_a_task_spread_over_several_batches(store: Store) -> None:
    big = await store.add(Status.COMPLETED, ago(days=20), lines=500)
    report = await store.retention(max_age=DAY, batch_rows=64).run_pass()
    assert report.deleted_tasks == 1 and report.log_lines == 500
    assert await store.ids() == set() and store.files_of(big.id) == []


async def test_other_writes_get_through_while_a_pass_runs(store: Store) -> None:
    def many(c: sqlite3.Connection) -> None:
        for _ in range(1500):
            task = make_task(store.launcher.state_dir, Status.COMPLETED, ago(days=20))
            record(c, task, ["a line", "another"])
    await store.db.write(many)
    before = len(await store.ids())
    retention = store.retention(max_age=DAY, batch_tasks=10)
    running_pass = asyncio.create_task(retention.run_pass())
    while (seen := len(await store.ids())) == before:  # until the first batch is committed
        assert not running_pass.done()
        await asyncio.sleep(0.01)
    assert 0 < seen < before  # deleted a batch at a time, not all in one transaction

    late = make_task(store.launcher.state_dir, Status.RUNNING, started=ago(days=30))
    await store.db.write(lambda c: record(c, late, []))  # a write of the API, say

    # It was not queued behind the whole pass, only behind the batch under way.
    assert not running_pass.done()
    report = await running_pass
    assert report.deleted_tasks == 1500 and await store.ids() == {late.id}


def db_bytes(db: Database) -> int:
    return sum(os.path.getsize(f"{db.path}{s}") for s in ("", "-wal") if os.path.exists(f"{db.path}{s}"))


async def test_the_database_file_shrinks_after_a_large_deletion(store: Store) -> None:
    def many(c: sqlite3.Connection) -> None:
        for _ in range(1500):
            task = make_task(store.launcher.state_dir, Status.COMPLETED, ago(days=20))
            record(c, task, [f"{i:04d} " + "y" * 150 for i in range(40)])
    await store.db.write(many)
    await store.db.maintain(rq.checkpoint)
    before = db_bytes(store.db)
    assert before > 8_000_000

    report = await store.retention(max_tasks=10).run_pass()

    assert report.deleted_tasks == 1490 and report.pages_freed > 0
    assert db_bytes(store.db) < before / 10, (before, db_bytes(store.db))
    assert report.db_bytes_after == db_bytes(store.db)
    assert await store.db.read(lambda c: rq.free_pages(c)[0]) == 0


async def test_an_older_database_is_switched_to_incremental_vacuum_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    old = sqlite3.connect(state_dir / "cnet.db", isolation_level=None)  # as agents before retention made it
    old.execute("PRAGMA journal_mode=WAL")
    apply_migrations(old)
    old.close()
    db = Database(state_dir / "cnet.db")
    await db.open()
    try:
        store = Store(db, TaskPaths(state_dir))
        assert await db.read(rq.auto_vacuum_mode) == 0
        for _ in range(20):
            await store.add(Status.COMPLETED, ago(days=20), lines=200, line_bytes=200)
        retention = store.retention(max_age=DAY)
        with caplog.at_level(logging.INFO, logger="cnetd.tasks.retention"):
            await retention.run_pass()
            await retention.run_pass()
        assert await db.read(rq.auto_vacuum_mode) == rq.AUTO_VACUUM_INCREMENTAL
        switches = [r.getMessage() for r in caplog.records if "one-time VACUUM" in r.getMessage()]
        assert len(switches) == 1, switches
        assert any("incremental auto-vacuum is on" in r.getMessage() for r in caplog.records)
        # From now on deleted space goes back at once.
        await store.add(Status.COMPLETED, ago(days=20), lines=2000, line_bytes=200)
        await db.maintain(rq.checkpoint)
        before = db_bytes(db)
        report = await retention.run_pass()
        assert report.pages_freed > 0 and db_bytes(db) < before
    finally:
        await db.close()


async def test_the_first_pass_sweeps_files_whose_task_is_gone(store: Store) -> None:
    kept = await store.add(Status.RUNNING, started=ago(days=40))
    orphan_log = store.launcher.log_path(str(uuid.uuid4()))
    orphan_exit = store.launcher.exit_path(str(uuid.uuid4()))
    not_a_task = store.launcher.logs_dir / "notes.log"
    for path in (orphan_log, orphan_exit, not_a_task):
        path.write_text("left over\n")

    report = await store.retention(max_age=DAY).run_pass(sweep_orphans=True)

    assert report.files == 2 and not orphan_log.exists() and not orphan_exit.exists()
    assert not_a_task.exists() and len(store.files_of(kept.id)) == 2


async def test_files_already_gone_are_no_error(store: Store) -> None:
    task = await store.add(Status.COMPLETED, ago(days=20))
    for path in store.files_of(task.id):
        path.unlink()
    report = await store.retention(max_age=DAY).run_pass()
    assert report.deleted_tasks == 1 and report.files == 0


# ---- the real agent ----------------------------------------------------------------

PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
PY = sys.executable


def test_a_running_agent_deletes_ended_tasks_but_not_running_ones_nor_live_models(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    agent = agent_factory({"tasks": {"retention": {"max_age": "2s", "interval": "0.3s"}}}).start()
    api = agent.api
    long = api.post("/api/tasks", {"name": "long", "command": PY, "args": ["-c", "import time; time.sleep(120)"]}).body
    agent.wait_status(long["id"], {"running"})
    scripts = agent.workdir / "scripts"
    scripts.mkdir()
    shutil.copy(PURE_MODEL, scripts / "pure_model.py")
    model = api.post("/api/ml/models", {"name": "pure", "command": PY, "script_path": "scripts/pure_model.py",
                                        "model_path": "models/p.json"})
    assert model.status == 201, model.text
    model_id = model.body["id"]
    assert agent.wait_done(model_id)["status"] == "completed"
    predicted = api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": 5.5})
    assert predicted.status == 200, predicted.text
    quick = api.post("/api/tasks", {"name": "quick", "command": PY, "args": ["-c", "print('hi')"]}).body
    agent.wait_done(quick["id"])
    ended = [quick["id"], predicted.body["prediction_task_id"]]
    assert all((agent.state_dir / "logs" / f"{i}.log").exists() for i in ended)

    wait_until(lambda: all(api.get(f"/api/tasks/{i}").status == 404 for i in ended), 30,
               "the ended tasks to be deleted")

    for task_id in ended:
        assert api.get(f"/api/tasks/{task_id}/events").status == 404
        assert not (agent.state_dir / "logs" / f"{task_id}.log").exists()
    # The model (its deploy task) stays, and so does the task that runs (for 2s+ by now).
    assert api.get(f"/api/ml/models/{model_id}").status == 200
    assert api.get(f"/api/tasks/{model_id}").body["status"] == "completed"
    assert api.get(f"/api/tasks/{model_id}/logs").body  # its log too
    assert api.get(f"/api/tasks/{long['id']}").body["status"] == "running"
    assert api.post(f"/api/ml/models/{model_id}/predict?wait=true", {"input_data": 1}).status == 200


def test_the_first_pass_runs_when_the_agent_starts(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory({"tasks": {"retention": {"max_age": 0, "max_tasks": 0}}}).start()
    ids = []
    for n in range(3):
        task = agent.api.post("/api/tasks", {"name": f"t{n}", "command": PY, "args": ["-c", "print(1)"]}).body
        agent.wait_done(task["id"])
        ids.append(task["id"])
    agent.stop()
    agent.config["tasks"]["retention"] = {"max_tasks": 1, "interval": "1h"}  # no second pass in this test
    agent.config_path.write_text(yaml.safe_dump(agent.config))
    agent.start()

    wait_until(lambda: [agent.api.get(f"/api/tasks/{i}").status for i in ids] == [404, 404, 200], 30,
               "the pass at start to keep only the newest ended task")
    assert "retention: deleted 2 ended tasks" in agent.log_text()


async def test_an_attacker_cannot_point_retention_at_other_files(store: Store, tmp_path: Path) -> None:
    """Attacker's test: a row whose log_file names another file (a tampered or hostile
    record), and a symlink named like a task's log, must not make retention delete, follow
    or punch anything outside the task's own files."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n" * 1000)
    task = make_task(store.launcher.state_dir, Status.COMPLETED, ago(days=20))
    task.log_file = str(victim)
    await store.db.write(lambda c: record(c, task, ["x"]))
    link = store.launcher.log_path(str(uuid.uuid4()))
    link.symlink_to(victim)

    report = await store.retention(max_age=DAY).run_pass(sweep_orphans=True)

    assert report.deleted_tasks == 1 and await store.ids() == set()
    assert victim.read_text() == "precious\n" * 1000
    assert link.is_symlink()  # not a regular file: left alone, target untouched
    assert punch_head(link, 0, 4096) is not None  # O_NOFOLLOW: the ingester never punches through a link
    assert victim.read_text() == "precious\n" * 1000
