"""When ending a replica or cutting a rolling reload short cannot clean up after itself (the
worker's creation failed, or stopping the worker failed), it says so in the log, naming the
model, the slot and the worker task, and the error; the end or the cancellation still goes on.

WorkerTasks is replaced by a STAND-IN here, on purpose: a real task service fails a create or
a stop on cue only with a broken store. What is under test is only what the replica runner
and the rolling reload do when those calls fail; the served model, its replica records and
the worker task records are the real ones."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import cast

import pytest

from cnetd.errors import Invalid
from cnetd.ml.catalog import Model
from cnetd.ml.serving.batcher import Batcher, ModelMetrics
from cnetd.ml.serving.reload import RollingReload
from cnetd.ml.serving.replica import ReplicaRunner
from cnetd.ml.serving.served import Replica, Served
from cnetd.ml.serving.spec import ServingSpec
from cnetd.ml.serving.workers import WorkerTasks
from cnetd.store.models import ModelRecord
from cnetd.tasks.model import Status, Task
from tests.support.inprocess import now, reached, until
from tests.support.stored_tasks import make_task

SOCKET = "/run/cnet/serve-0123456789ab/worker.sock"


class StandInWorkers:
    """create() waits for its gate, then fails with create_error or returns a worker task;
    stop() fails with stop_error when one is set."""

    def __init__(self, worker: Task) -> None:
        self.worker = worker
        self.gate = asyncio.Event()
        self.create_called = asyncio.Event()
        self.create_error: Exception | None = None
        self.stop_error: Exception | None = None
        self.stopped: list[str] = []
        self.removed: list[str | None] = []

    async def create(self, served: Served) -> Task:
        self.create_called.set()
        await self.gate.wait()
        if self.create_error is not None:
            raise self.create_error
        return self.worker

    async def stop(self, task_id: str, why: str = "by user") -> None:
        self.stopped.append(task_id)
        if self.stop_error is not None:
            raise self.stop_error

    def remove_socket(self, socket: str | None) -> None:
        self.removed.append(socket)


@pytest.fixture
def served(tmp_path: Path) -> Served:
    deploy = make_task(tmp_path, Status.COMPLETED, kind="train", name="iris")
    record = ModelRecord(id=deploy.id, name="iris", model_type="linear", model_path="models/iris.joblib",
                         script_path="iris.py", created_at=deploy.created_at)
    spec = ServingSpec()
    return Served(model=Model(record, deploy), spec=spec,
                  batcher=Batcher("iris", spec, tmp_path / "iris.joblib", ModelMetrics()))


@pytest.fixture
def workers(tmp_path: Path) -> StandInWorkers:
    worker = make_task(tmp_path, Status.RUNNING, kind="serve", name="iris-serve")
    return StandInWorkers(dataclasses.replace(worker, args=["worker.py", "--socket", SOCKET]))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_a_replica_ended_while_its_worker_creation_fails_says_so(
    served: Served, workers: StandInWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    runner = ReplicaRunner(cast(WorkerTasks, workers))
    replica = Replica(slot=1)
    runner.run(served, replica)
    await reached(workers.create_called, "the replica to create its worker")
    workers.create_error = Invalid("command 'python3' is not allowed", {"field": "command"})
    ending = asyncio.create_task(runner.end(served, replica, stop_worker=True))
    await until(lambda: now(replica.runner is not None and replica.runner.done()), "the runner to end")
    workers.gate.set()  # the creation, cut short for the runner, ends now: in an error
    with caplog.at_level(logging.WARNING):
        await ending
    assert replica.creating is None and replica.task_id is None
    assert workers.stopped == []  # nothing was made, nothing to stop
    assert any("iris/1" in m and "not created" in m and "'python3' is not allowed" in m for m in warnings_of(caplog)), caplog.text


async def test_a_replica_whose_worker_cannot_be_stopped_says_so_and_its_end_goes_on(
    served: Served, workers: StandInWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    runner = ReplicaRunner(cast(WorkerTasks, workers))
    replica = Replica(slot=0, task_id=workers.worker.id, socket=SOCKET)  # an adopted worker
    workers.stop_error = OSError("scripted: systemctl kill failed")
    with caplog.at_level(logging.WARNING):
        await runner.end(served, replica, stop_worker=True)  # does not raise: the teardown goes on
    assert workers.stopped == [workers.worker.id]
    assert workers.removed == []  # its socket stays while it may still run
    assert any("iris/0" in m and workers.worker.id in m and "systemctl kill failed" in m
               for m in warnings_of(caplog)), caplog.text


async def test_a_reload_cancelled_during_creation_whose_worker_cannot_be_stopped_says_so(
    served: Served, workers: StandInWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    replica = Replica(slot=2, task_id="the-old-worker", state="ready")
    served.replicas.append(replica)
    replacing = asyncio.create_task(RollingReload(cast(WorkerTasks, workers))._replace_worker(served, replica))
    await reached(workers.create_called, "the reload to create a replacement worker")
    replacing.cancel()  # e.g. serving stops while the replacement is being created
    workers.stop_error = OSError("scripted: systemctl kill failed")
    workers.gate.set()  # the replacement exists now, and must be stopped: that fails
    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        await replacing
    assert workers.stopped == [workers.worker.id]
    assert any("iris/2" in m and workers.worker.id in m and "the-old-worker" in m and "systemctl kill failed" in m
               for m in warnings_of(caplog)), caplog.text


async def test_a_reload_cancelled_during_a_creation_that_fails_says_so(
    served: Served, workers: StandInWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    replica = Replica(slot=0, task_id="the-old-worker", state="ready")
    served.replicas.append(replica)
    replacing = asyncio.create_task(RollingReload(cast(WorkerTasks, workers))._replace_worker(served, replica))
    await reached(workers.create_called, "the reload to create a replacement worker")
    replacing.cancel()
    workers.create_error = RuntimeError("scripted: the store is gone")
    workers.gate.set()
    with caplog.at_level(logging.WARNING), pytest.raises(asyncio.CancelledError):
        await replacing
    assert workers.stopped == []
    assert any("iris/0" in m and "store is gone" in m for m in warnings_of(caplog)), caplog.text
