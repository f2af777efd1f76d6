"""The scaler's loop (cnetd.ml.serving.scaling) in-process, on a fake clock, with a runner
that makes replicas ready at once: decisions become replicas, a request to an unloaded model
starts one without waiting for the next sample, a scale-up over serving.memory_budget
unloads the least recently used idle model first (never a busy one, never below
min_replicas) and otherwise waits and says why, and surplus replicas are stopped."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from cnetd.limits import ResourceLimits
from cnetd.ml.catalog import Model
from cnetd.ml.serving.admission import Admission
from cnetd.ml.serving.batcher import Batcher, ModelMetrics
from cnetd.ml.serving.scaling import Scaler
from cnetd.ml.serving.served import Replica, Served
from cnetd.ml.serving.spec import ServingSpec, parse_spec
from cnetd.store.models import ModelRecord
from cnetd.tasks.model import Status
from tests.support.stored_tasks import make_task

MB = 1_000_000


class Runner:
    """Starts replicas ready at once and ends them at once, keeping what it did."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[str] = []

    def run(self, served: Served, replica: Replica) -> None:
        replica.state = "ready"
        served.replicas.append(replica)
        self.started.append(served.name)

    async def end(self, served: Served, replica: Replica, stop_worker: bool) -> None:
        assert stop_worker
        self.ended.append(served.name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def served_model(tmp_path: Path, name: str, spec: ServingSpec, replicas: int, memory: int = 100 * MB) -> Served:
    task = dataclasses.replace(make_task(tmp_path, Status.COMPLETED, kind="train", name=name),
                               resources=ResourceLimits(cpu_limit=0.1, memory_limit=memory))
    record = ModelRecord(id=task.id, name=name, model_type="custom", model_path="m", script_path="s.py",
                         created_at=task.created_at)
    batcher = Batcher(name, spec, tmp_path / "m", ModelMetrics())
    served = Served(model=Model(record=record, task=task), spec=spec, batcher=batcher)
    for slot in range(replicas):
        served.replicas.append(Replica(slot=slot, state="ready"))
    served.target = replicas
    served.last_used = 0.0  # long idle
    return served


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_decisions_become_replicas_and_surplus_is_stopped(tmp_path: Path) -> None:
    spec = parse_spec({"min_replicas": 1, "max_replicas": 3, "target_in_flight": 1, "stable_window": 4,
                       "panic_window": 4, "scale_up_delay": 2, "scale_down_delay": 2})
    model = served_model(tmp_path, "a", spec, 1)
    runner, clock = Runner(), Clock()
    scaler = Scaler(lambda: [model], runner, Admission(), clock=clock, interval=1.0)  # type: ignore[arg-type]
    scaler.attach(model)
    model.in_flight = 3
    for _ in range(4):
        clock.now += 1
        await scaler.tick()
    assert model.target == 3 and len(model.replicas) == 3 and runner.started == ["a", "a"]
    assert model.scaling.decisions[-1]["to"] == 3
    model.in_flight = 0
    for _ in range(8):
        clock.now += 1
        await scaler.tick()
        await settle()
    assert model.target == 1 and len(model.replicas) == 1 and runner.ended == ["a", "a"] and model.draining == 0
    assert [d["kind"] for d in model.scaling.decisions][-1] == "down"


async def test_a_request_to_an_unloaded_model_starts_a_replica_at_once(tmp_path: Path) -> None:
    spec = parse_spec({"min_replicas": 0, "max_replicas": 2})
    model = served_model(tmp_path, "z", spec, 0)
    runner, clock = Runner(), Clock()
    scaler = Scaler(lambda: [model], runner, Admission(), clock=clock)  # type: ignore[arg-type]
    scaler.attach(model)
    model.cold = model.in_flight = 1
    scaler.demand(model)
    await scaler.settle()
    assert model.target == 1 and runner.started == ["z"]
    assert model.scaling.decisions[-1]["kind"] == "cold_start" and model.scaling.cold_since == clock.now


async def test_the_budget_unloads_the_least_recently_used_idle_model_never_a_busy_one(tmp_path: Path) -> None:
    lazy = parse_spec({"min_replicas": 0, "max_replicas": 1})
    kept = parse_spec({"min_replicas": 1, "max_replicas": 2})
    older, newer, busy = (served_model(tmp_path, n, lazy, 1) for n in ("older", "newer", "busy"))
    floor = served_model(tmp_path, "floor", kept, 1)  # at its min_replicas: never unloaded
    older.last_used, newer.last_used = 1.0, 2.0
    busy.in_flight = 1  # a request in flight: never unloaded, however old
    asking = served_model(tmp_path, "asking", lazy, 0)
    models = [older, newer, busy, floor, asking]
    runner, clock = Runner(), Clock()
    scaler = Scaler(lambda: models, runner, Admission(memory_budget=400 * MB), clock=clock)  # type: ignore[arg-type]
    for m in models:
        scaler.attach(m)
    asking.in_flight = asking.cold = 1
    scaler.demand(asking)
    await scaler.settle()
    # 4 x 100 MB held: "older" is unloaded; its memory counts until its worker ended
    assert older.target == 0 and newer.target == 1 and busy.target == 1 and floor.target == 1
    assert older.scaling.decisions[-1]["kind"] == "unload" and "asking" in older.scaling.decisions[-1]["reason"]
    if older.draining:  # while its worker stops, nothing more is unloaded for the same replica
        assert scaler.admission.to_unload(asking, models) == []
    await settle()
    assert runner.ended == ["older"] and older.draining == 0
    await scaler.settle()
    assert len(asking.replicas) == 1 and asking.scaling.waiting is None
    # now nothing idle is left to unload: the next one waits and says why
    other = served_model(tmp_path, "other", lazy, 0)
    models.append(other)
    scaler.attach(other)
    newer.in_flight = asking.in_flight = 1
    other.in_flight = other.cold = 1
    scaler.demand(other)
    await scaler.settle()
    assert not other.replicas and other.scaling.waiting_kind == "memory_budget"
    assert "no idle model to unload" in (other.scaling.waiting or "")


async def test_node_room_refusals_say_what_is_short(tmp_path: Path) -> None:
    spec = parse_spec({"min_replicas": 1, "max_replicas": 2})
    model = served_model(tmp_path, "n", spec, 1, memory=300 * MB)

    async def room() -> tuple[float, int]:
        return 4.0, 200 * MB

    admission = Admission(node_free=room)
    refusal = await admission.refusal(model, [model])
    assert refusal is not None and refusal.kind == "node_memory" and "memory_limit" in refusal.message

    async def no_cpu() -> tuple[float, int]:
        return 0.05, 10_000 * MB

    refusal = await Admission(node_free=no_cpu).refusal(model, [model])
    assert refusal is not None and refusal.kind == "node_cpu"


async def test_a_replica_bigger_than_the_whole_budget_says_it_cannot_start(tmp_path: Path) -> None:
    model = served_model(tmp_path, "big", parse_spec({"min_replicas": 0, "max_replicas": 1}), 0, memory=2000 * MB)
    refusal = await Admission(memory_budget=1000 * MB).refusal(model, [model])
    assert refusal is not None and refusal.kind == "memory_budget" and "cannot start on this node" in refusal.message
    assert Admission(memory_budget=1000 * MB).to_unload(model, [model]) == []
