"""The replica runner: keeps one replica slot of a served model going.

Each replica is a task of kind `serve` (the model's command, env, working dir and limits, in
its own sandbox) running `worker.py`, which loads the model and listens on a Unix socket in
<state_dir>/run. The runner connects to that socket and lends the worker to the model's
batcher; nothing else ties the two, so a worker outlives an agent restart and the next agent
adopts it (the socket path is in the task's args). A replica whose connection ends is
replaced by a new task after an exponential backoff; requests it held get a 503, queued
ones wait for another replica. A worker that holds a batch far longer than any request may
wait is taken for hung and replaced.

When the rolling reload offers a ready replacement (the model file changed), the runner
switches the slot's traffic to it in one step and retires the old worker once it has
answered the batches it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from cnetd.background import cancel_and_wait
from cnetd.clock import format_time, utc_now
from cnetd.errors import DomainError
from cnetd.ml.serving.batcher import Link
from cnetd.ml.serving.client import WorkerClient
from cnetd.ml.serving.served import RELOAD_FAILED, Offer, Replica, Served
from cnetd.ml.serving.workers import LOST_GRACE, WorkerTasks, created_after_all, socket_of

log = logging.getLogger(__name__)

BACKOFF_START = 0.25
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a replica ready this long starts its backoff afresh
HUNG_CHECK_INTERVAL = 5.0
HUNG_AFTER_MIN = 60.0  # a worker holding a batch this long (and 3 request timeouts) is hung
HUNG_AFTER_TIMEOUTS = 3
RETIRE_GRACE = 5.0  # a replaced worker has its requests' timeout and this long to answer them


class ReplicaRunner:
    def __init__(self, workers: WorkerTasks) -> None:
        self.workers = workers

    def run(self, served: Served, replica: Replica) -> None:
        """Add the replica to the served model and keep it going until it is ended."""
        served.replicas.append(replica)
        replica.runner = asyncio.create_task(
            self._run_replica(served, replica), name=f"replica-{served.id}-{replica.slot}"
        )

    async def end(self, served: Served, replica: Replica, stop_worker: bool) -> None:
        """Stop keeping the replica going; stop its worker too when asked (else the worker
        keeps running, for the next agent to reattach). A stop that fails is logged, not
        raised: the other replicas and the rest of the teardown still end."""
        await cancel_and_wait(replica.runner)
        label = f"{served.name}/{replica.slot}"
        if replica.creating is not None:
            # Cancelled while its worker task was being created: that task exists now, unless its creation failed.
            task = await created_after_all(replica.creating, label)
            if task is not None:
                replica.task_id, replica.socket = task.id, socket_of(task)
            replica.creating = None
        if stop_worker and replica.task_id is not None:
            try:
                await self.workers.stop(replica.task_id)
            except Exception as exc:  # broad: whatever failed, the rest of the teardown goes on
                log.warning("model %s: stopping worker %s failed: %r; it may still run",
                            label, replica.task_id, exc, exc_info=True)
                return
            self.workers.remove_socket(replica.socket)

    async def _run_replica(self, served: Served, replica: Replica) -> None:
        """Keep one replica going: create its worker task (unless adopting one), connect,
        serve through it until the connection ends, replace it after a backoff."""
        backoff = BACKOFF_START
        label = f"{served.name}/{replica.slot}"
        while True:
            try:
                healthy = await self._run_worker_once(served, replica, label)
            except DomainError as exc:  # e.g. the command is no longer allowed
                replica.creating = None
                replica.last_error = f"cannot start a worker: {exc.message}"
                log.error("model %s: %s", label, replica.last_error)
                healthy = False
            except Exception as exc:
                replica.creating = None
                replica.last_error = f"worker supervision failed: {exc!r}"
                log.exception("model %s: worker supervision failed", label)
                healthy = False
            if healthy:
                backoff = BACKOFF_START
            replica.state = "restarting"
            served.changed.set()
            log.warning("model %s: restarting its worker in %gs (%s)", label, backoff, replica.last_error)
            await asyncio.sleep(backoff)  # the backoff itself, not a synchronisation
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_worker_once(self, served: Served, replica: Replica, label: str) -> bool:
        """One worker's life; True when it was ready long enough to reset the backoff."""
        created, begun = replica.task_id is None, time.monotonic()
        if replica.task_id is None:
            replica.state = "starting"
            # Shielded: when the replica is ended meanwhile, end() still gets the task.
            replica.creating = asyncio.ensure_future(self.workers.create(served))
            task = await asyncio.shield(replica.creating)
            replica.creating = None
            replica.task_id, replica.socket = task.id, socket_of(task)
        assert replica.task_id is not None
        lost = "it never became ready"
        healthy = False
        client = await self.workers.connect(replica.task_id, replica.socket, label)
        if client is not None and created:  # a worker reattached after a restart did not load now
            served.batcher.metrics.load_time.observe(time.monotonic() - begun)
        link = Link(client, replica.task_id) if client is not None else None
        while client is not None and link is not None:
            lost, handover = await self._serve_through(served, replica, client, link)
            if handover is None:
                healthy = replica.ready_since is not None and time.monotonic() - replica.ready_since >= HEALTHY_AFTER
                break
            client, link = handover  # the model file changed: serve on through its replacement
        task_id = replica.task_id
        assert task_id is not None
        task = await self.workers.wait_ended(task_id, LOST_GRACE)
        if not task.status.terminal:
            log.warning("model %s: worker %s lost its channel (%s) but still runs; replacing it", label, task_id, lost)
            await self.workers.stop(task_id, why=f"by the agent: it lost its channel ({lost})")
            task = await self.workers.get(task_id)
        self.workers.remove_socket(replica.socket)
        replica.last_error = task.reason or f"worker {task.status}: {lost}"
        replica.task_id = replica.socket = None
        replica.pid = replica.ready_since = None
        replica.model_stamp = replica.loaded_at = None
        replica.restarts += 1
        served.batcher.metrics.worker_restarts += 1
        log.warning("model %s: worker %s ended: %s", label, task_id, replica.last_error)
        return healthy

    async def _serve_through(
        self, served: Served, replica: Replica, client: WorkerClient, link: Link
    ) -> tuple[str, tuple[WorkerClient, Link] | None]:
        """Lend the worker to the batcher until its channel ends (say why), or until a
        replacement is offered (the model file changed): then the replacement takes the
        traffic, the old worker is retired, and the replacement's client and link are returned. A worker
        that holds a batch far longer than any request may wait is taken for hung."""
        assert replica.task_id is not None and client.hello is not None
        hello = client.hello
        replica.state = "ready"
        replica.pid = hello.pid
        replica.loader = hello.loader
        replica.model_stamp = hello.model_stamp
        moment = datetime.fromtimestamp(hello.loaded_at, UTC) if hello.loaded_at is not None else None
        replica.loaded_at = format_time(moment) if moment is not None else utc_now()
        replica.ready_since = time.monotonic()
        if hello.n_features is not None:
            served.n_features = hello.n_features
        served.batcher.add(link)
        served.changed.set()
        log.info("model %s: worker %s ready (pid %d, %s)", served.name, replica.task_id, hello.pid, hello.loader)
        closed = asyncio.ensure_future(client.closed.wait())
        handed_over = False
        try:
            while not client.closed.is_set():
                offer = self._take_offer(replica)
                if offer is not None:
                    handover = self._hand_over(served, replica, client, link, offer)
                    handed_over = True
                    return client.lost_reason, handover
                replica.wake.clear()
                wake = asyncio.ensure_future(replica.wake.wait())
                try:
                    await asyncio.wait((closed, wake), timeout=HUNG_CHECK_INTERVAL, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wake.cancel()
                age = client.oldest_age()
                hung_after = max(HUNG_AFTER_MIN, HUNG_AFTER_TIMEOUTS * served.spec.timeout_ms / 1000)
                if age is not None and age > hung_after:
                    log.error("model %s: worker %s has not answered for %.0fs; replacing it", served.name, replica.task_id, age)
                    client.abort(f"no answer for {age:.0f}s: the worker seems hung")
            return client.lost_reason, None
        finally:
            closed.cancel()
            if not handed_over:
                self._refuse_offer(replica)
                served.batcher.remove(link)
                replica.state = "restarting"
                served.changed.set()
                await client.close()

    # ---- taking over from a replacement (the rolling reload offers it) ------------------------

    @staticmethod
    def _take_offer(replica: Replica) -> Offer | None:
        offer, replica.offer = replica.offer, None
        if offer is None or offer.accepted.done():
            return None
        if offer.client.closed.is_set():  # the replacement died while on offer: keep the old one
            offer.accepted.set_result(False)
            return None
        return offer

    @staticmethod
    def _refuse_offer(replica: Replica) -> None:
        offer, replica.offer = replica.offer, None
        if offer is not None and not offer.accepted.done():
            offer.accepted.set_result(False)

    def _hand_over(
        self, served: Served, replica: Replica, client: WorkerClient, link: Link, offer: Offer
    ) -> tuple[WorkerClient, Link]:
        """Switch the slot to the offered worker in one step (the batcher sees the new link
        before the old one goes, so the queue always has somewhere to go), and retire the
        old worker in the background."""
        new_link = Link(offer.client, offer.task_id)
        served.batcher.add(new_link)
        served.batcher.remove(link)
        old_task, old_socket = replica.task_id, replica.socket
        assert old_task is not None
        replica.task_id, replica.socket = offer.task_id, offer.socket
        replica.reloads += 1
        if replica.last_error is not None and replica.last_error.startswith(RELOAD_FAILED):
            replica.last_error = None
        served.batcher.metrics.reloads += 1
        offer.accepted.set_result(True)
        retire = asyncio.create_task(
            self._retire(served, old_task, old_socket, client), name=f"retire-{old_task}"
        )
        served.retiring.add(retire)
        retire.add_done_callback(served.retiring.discard)
        log.info("model %s/%d: worker %s takes over from %s (the model file changed)",
                 served.name, replica.slot, offer.task_id, old_task)
        return offer.client, new_link

    async def _retire(self, served: Served, task_id: str, socket: str | None, client: WorkerClient) -> None:
        """Let a replaced worker answer the batches it holds (up to the requests' own
        timeout), then stop it: its task ends `stopped`."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.drained(), served.spec.timeout_ms / 1000 + RETIRE_GRACE)
        finally:
            await client.close()
            await self.workers.stop(task_id, why="by the agent: the model file changed and a new worker took over")
            self.workers.remove_socket(socket)
            log.info("model %s: replaced worker %s stopped", served.name, task_id)
