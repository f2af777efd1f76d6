"""The scaler: applies the autoscaler's decisions (cnetd.ml.serving.autoscale) to the served
models whose replicas are a range (min_replicas < max_replicas).

Every `interval` (1 s) it samples each such model (requests in flight, the cold ones among
them, queue depth, queue wait, arrivals), asks its Autoscaler for the replicas it should have,
and makes the replicas follow:

- more: one replica at a time, each admitted first (cnetd.ml.serving.admission); under
  `serving.memory_budget` the least recently used idle models are unloaded to make room. A
  replica that does not fit waits, and says why (the model's events, `/metrics`, its
  `serving.scaling.waiting`).
- fewer: the surplus replicas leave the batcher at once, answer the batches they hold, and
  their workers are stopped (tasks end `stopped`).
- a request to a model with no replica (unloaded) wakes the scaler at once: one replica is
  started without waiting for the next sample (a cold start).

Each decision that changes the replicas is kept with its reason (the model page, the API's
`serving.scaling`) and written as an event of the model's deploy task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cnetd.background import cancel_and_wait, wait_event
from cnetd.ml.serving.admission import Admission
from cnetd.ml.serving.autoscale import Autoscaler, Decision, Policy, Sample
from cnetd.ml.serving.replica import RETIRE_GRACE, ReplicaRunner
from cnetd.ml.serving.served import Replica, Served

log = logging.getLogger(__name__)

INTERVAL = 1.0
Clock = Callable[[], float]
EventSink = Callable[[str, str, str], Awaitable[None]]  # (model id, event type, message)


def kind_of(decision: Decision) -> str:
    if decision.replicas == 0:
        return "idle"
    if decision.previous == 0:
        return "cold_start"
    if decision.panic and decision.replicas > decision.previous:
        return "panic"
    return "up" if decision.replicas > decision.previous else "down"


class Scaler:
    def __init__(self, all_served: Callable[[], list[Served]], runner: ReplicaRunner, admission: Admission,
                 events: EventSink | None = None, clock: Clock = time.monotonic, interval: float = INTERVAL) -> None:
        self.all_served = all_served
        self.runner = runner
        self.admission = admission
        self.events = events
        self.clock = clock
        self.interval = interval
        self._scalers: dict[str, tuple[Autoscaler, int]] = {}  # model id -> (its autoscaler, arrivals seen)
        self._wake = asyncio.Event()
        self._demanded: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ---- life -----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="serving-scaler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def attach(self, served: Served) -> None:
        """A model starts being served (or its spec changed): follow it from its current replicas."""
        served.demand = self.demand
        served.target = max(served.target, len(served.replicas)) if served.replicas else served.target
        if not served.spec.autoscaled:
            self._scalers.pop(served.id, None)
            return
        policy = Policy.of(served.spec)
        bounded = min(policy.max_replicas, max(policy.min_replicas, served.target))
        found = self._scalers.get(served.id)
        if found is None:
            self._scalers[served.id] = (Autoscaler(policy, bounded, self.clock()), served.arrivals)
        else:
            found[0].reset(bounded, policy)
        served.target = bounded
        self.wake()

    def detach(self, served: Served) -> None:
        self._scalers.pop(served.id, None)
        served.demand = None

    def wake(self) -> None:
        self._wake.set()

    def demand(self, served: Served) -> None:
        """A request found no ready replica of an autoscaled model: start one now if none is wanted."""
        if served.target == 0:
            self._demanded.add(served.id)
            self.wake()

    # ---- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        next_tick = self.clock() + self.interval
        while True:
            await wait_event(self._wake, max(0.0, next_tick - self.clock()))
            self._wake.clear()
            try:
                if self.clock() >= next_tick:
                    next_tick = self.clock() + self.interval
                    await self.tick()
                else:
                    await self.settle()
            except Exception:  # one bad model must not stop the scaling of the others
                log.exception("the serving scaler failed; going on")

    async def tick(self) -> None:
        """One sample of every autoscaled model, its decision, and the replicas made to follow."""
        async with self._lock:
            now = self.clock()
            wall = time.time()
            for served in self.all_served():
                found = self._scalers.get(served.id)
                if found is None:
                    if served.spec.autoscaled:
                        self.attach(served)
                    served.scaling.history.append((wall, served.target, served.ready_replicas, served.in_flight))
                    continue
                scaler, seen = found
                began = served.scaling.cold_since
                if began is not None and served.ready_replicas > 0:  # no request waited to time it
                    served.scaling.cold_since = None
                    served.scaling.last_cold_start = now - began
                    served.scaling.cold_starts.observe(now - began)
                wait = served.batcher.queue_wait
                served.scaling.queue_wait = wait
                sample = Sample(at=now, in_flight=served.in_flight, queue_depth=served.batcher.queue_depth,
                                queue_wait=wait, cold=served.cold, arrivals=served.arrivals - seen)
                self._scalers[served.id] = (scaler, served.arrivals)
                scaler.replicas = served.target  # what it was set to meanwhile (a cold start, an unload)
                if served.ready_replicas < served.target:
                    scaler.touch(now)  # still starting: the idle time runs from when it is ready
                decision = scaler.observe(sample)
                served.scaling.panic = decision.panic
                if decision.changed:
                    await self._decided(served, decision.previous, decision.replicas, kind_of(decision), decision.reason)
                served.scaling.history.append((wall, served.target, served.ready_replicas, served.in_flight))
            await self._settle()

    async def settle(self) -> None:
        async with self._lock:
            await self._settle()

    async def _settle(self) -> None:
        """Cold starts asked for, then every autoscaled model's replicas made to follow its target."""
        served_now = self.all_served()
        demanded, self._demanded = self._demanded, set()
        for served in served_now:
            if served.id in demanded and served.target == 0 and served.spec.autoscaled:
                waiting = served.cold
                await self._decided(served, 0, 1, "cold_start", f"cold start: {waiting} request(s) and no replica")
        for served in served_now:
            if served.spec.autoscaled and served.id in self._scalers:
                await self._follow(served, served_now)

    async def _decided(self, served: Served, previous: int, replicas: int, kind: str, reason: str) -> None:
        served.target = replicas
        found = self._scalers.get(served.id)
        if found is not None:
            found[0].replicas = replicas
        if replicas > 0 and served.ready_replicas == 0 and served.scaling.cold_since is None:
            served.scaling.cold_since = self.clock()
        served.scaling.decided(kind, previous, replicas, reason)
        log.info("model %s: replicas %d -> %d: %s", served.name, previous, replicas, reason)
        await self._event(served, "scaled", f"replicas {previous} -> {replicas}: {reason}")

    async def _event(self, served: Served, kind: str, message: str) -> None:
        if self.events is None:
            return
        try:
            await self.events(served.id, kind, message)
        except Exception:  # an event that cannot be written must not stop the scaling
            log.exception("model %s: could not record the event %r", served.name, message)

    # ---- making the replicas follow the target ----------------------------------------------

    async def _follow(self, served: Served, served_now: list[Served]) -> None:
        while len(served.replicas) < served.target:
            plan = self.admission.to_unload(served, served_now)
            for other, keep in plan:
                before = other.target
                other.target = keep
                found = self._scalers.get(other.id)
                if found is not None:
                    found[0].reset(keep)
                other.scaling.decided("unload", before, keep, f"unloaded to make room for model {served.name} "
                                                              f"(serving.memory_budget)")
                await self._event(other, "scaled", f"replicas {before} -> {keep}: unloaded, idle, to make room "
                                                   f"for model {served.name} (serving.memory_budget)")
                self._shrink(other)
            refusal = await self.admission.refusal(served, served_now)
            if refusal is not None:
                if served.scaling.waiting_kind != refusal.kind:
                    log.info("model %s: a replica waits: %s", served.name, refusal.message)
                    await self._event(served, "scale_waiting", f"a replica waits: {refusal.message}")
                served.scaling.waiting, served.scaling.waiting_kind = refusal.message, refusal.kind
                return
            served.scaling.waiting = served.scaling.waiting_kind = None
            taken = {r.slot for r in served.replicas}
            slot = next(i for i in range(len(taken) + 1) if i not in taken)
            self.runner.run(served, Replica(slot=slot))
            served.changed.set()
        served.scaling.waiting = served.scaling.waiting_kind = None
        if len(served.replicas) > served.target:
            self._shrink(served)

    def _shrink(self, served: Served) -> None:
        """Stop the replicas above the target: those not ready first, then the newest."""
        surplus = len(served.replicas) - served.target
        if surplus <= 0:
            return
        order = sorted(served.replicas, key=lambda r: (r.state == "ready", -r.slot))
        for replica in order[:surplus]:
            served.replicas.remove(replica)
            served.draining += 1
            drain = asyncio.create_task(self._drain(served, replica), name=f"drain-{served.id}-{replica.slot}")
            served.retiring.add(drain)
            drain.add_done_callback(served.retiring.discard)
        served.changed.set()

    async def _drain(self, served: Served, replica: Replica) -> None:
        """Take the replica out of the batcher, let it answer what it holds, stop its worker."""
        try:
            link = next((link for link in served.batcher.links if link.task_id == replica.task_id), None)
            if link is not None:
                served.batcher.remove(link)
                try:
                    async with asyncio.timeout(served.spec.timeout_ms / 1000 + RETIRE_GRACE):
                        await link.client.drained()
                except TimeoutError:
                    log.warning("model %s: worker %s did not answer its last batches in time", served.name,
                                replica.task_id)
            await self.runner.end(served, replica, stop_worker=True)
        finally:
            served.draining -= 1
            served.changed.set()
            self.wake()  # a replica that waited for this memory may start now
