"""The rolling reload: when a served model's file changes (a new deploy retrained it, an
operator replaced it), its workers are replaced one replica at a time.

The file is looked at every FILE_CHECK_INTERVAL (one stat). Once a change has held still
for one interval, a worker is started for the first stale slot; once it is ready it is
offered to the slot's runner, which moves the slot's traffic to it and retires the old
worker after its in-flight batches are answered. Then the next slot. A replacement that
cannot load the file leaves the old workers serving; the error is shown and the file is
tried again when it changes again (or, when another worker did load that very file, after
a backoff).
"""

from __future__ import annotations

import asyncio
import logging
import time

from cnetd.clock import utc_now
from cnetd.errors import DomainError
from cnetd.ml.serving.batcher import file_stamp
from cnetd.ml.serving.client import WorkerClient
from cnetd.ml.serving.served import RELOAD_FAILED, RELOAD_RETRY_START, Offer, Replica, Served, Stamp, describe_stamp
from cnetd.ml.serving.workers import LOST_GRACE, WorkerTasks, created_after_all, socket_of
from cnetd.tasks.model import Task

log = logging.getLogger(__name__)

FILE_CHECK_INTERVAL = 1.0  # how often a served model's file is looked at (one stat)
RELOAD_RETRY_MAX = 60.0


class RollingReload:
    def __init__(self, workers: WorkerTasks) -> None:
        self.workers = workers

    async def watch(self, served: Served) -> None:
        """Look at the model file every FILE_CHECK_INTERVAL; once a change has held still
        for one interval (not missing, not still being written), replace the workers that
        hold another version of it."""
        path = served.batcher.model_file
        seen = served.file_stamp
        while True:
            await asyncio.sleep(FILE_CHECK_INTERVAL)  # the polling period itself
            stamp = file_stamp(path)
            if stamp is None or stamp != seen:
                seen = stamp  # missing, or changed since the last look: wait until it holds still
                continue
            served.file_stamp = stamp
            if stamp == served.failed_stamp or time.monotonic() < served.retry_at:
                continue
            if not self._stale(served, stamp):
                if served.reload_state != "idle":
                    # e.g. a file that failed was put back as it was: nothing to do any more
                    served.reload_state, served.reload_error, served.failed_stamp = "idle", None, None
                continue
            try:
                await self._roll(served, stamp)
            except Exception as exc:
                log.exception("model %s: reloading the changed model file failed", served.name)
                self._reload_failed(served, None, stamp, f"reload supervision failed: {exc!r}")

    def _stale(self, served: Served, stamp: Stamp) -> list[Replica]:
        """Ready replicas whose worker loaded another version of the file. (A worker that
        did not say what it loaded is left alone; one that is starting loads the file as
        it is now.)"""
        return [r for r in served.replicas if r.state == "ready" and r.model_stamp is not None and r.model_stamp != stamp]

    async def _roll(self, served: Served, stamp: Stamp) -> None:
        """Replace the stale workers one at a time; stop at the first that cannot load."""
        stale = self._stale(served, stamp)
        log.info("model %s: the model file changed (%s); replacing %d worker(s) one at a time",
                 served.name, describe_stamp(stamp), len(stale))
        served.reload_state = "reloading"
        served.changed.set()
        replaced = 0
        for replica in stale:
            if replica not in served.replicas or replica.state != "ready" or replica.model_stamp in (None, stamp):
                continue  # ended, restarting (it loads the file as it is) or already done
            outcome, error = await self._replace_worker(served, replica)
            if outcome == "failed":
                assert error is not None
                self._reload_failed(served, replica, stamp, error)
                return
            replaced += outcome == "replaced"
        served.reload_state = "idle"
        served.reload_error = None
        served.failed_stamp = None
        served.retry_at, served.retry_delay = 0.0, RELOAD_RETRY_START
        if replaced:
            served.reloads += 1
            served.last_reload_at = utc_now()
            log.info("model %s: reloaded: %d worker(s) replaced", served.name, replaced)
        served.changed.set()

    async def _replace_worker(self, served: Served, replica: Replica) -> tuple[str, str | None]:
        """Start a worker for the slot, wait until it is ready and offer it to the slot's
        runner. ("replaced", None), ("skipped", None) when the slot could not take it (its
        worker ended meanwhile: its restart loads the new file anyway), or ("failed", why)."""
        label = f"{served.name}/{replica.slot}"
        creating = asyncio.ensure_future(self.workers.create(served))
        try:
            task = await asyncio.shield(creating)
        except asyncio.CancelledError:
            created = await created_after_all(creating, label)
            if created is not None:
                try:
                    await self.workers.stop(created.id)
                except Exception as exc:  # broad: logged, and the cancellation goes on whatever failed
                    log.warning("model %s: stopping worker %s, started to replace %s, failed: %r; it may still run",
                                label, created.id, replica.task_id, exc, exc_info=True)
                else:
                    self.workers.remove_socket(socket_of(created))
            raise
        except DomainError as exc:  # e.g. the command is no longer allowed
            return "failed", f"cannot start a worker: {exc.message}"
        socket = socket_of(task)
        replica.successor_task_id = task.id
        served.changed.set()
        log.info("model %s: worker %s started to replace %s", label, task.id, replica.task_id)
        client: WorkerClient | None = None
        offer: Offer | None = None
        try:
            client = await self.workers.connect(task.id, socket, label)
            if client is None:
                ended = await self.workers.wait_ended(task.id, LOST_GRACE)
                if not ended.status.terminal:
                    await self.workers.stop(task.id)
                    ended = await self.workers.get(task.id)
                return "failed", self._failure_of(ended)
            if replica not in served.replicas or replica.state != "ready" or replica.offer is not None:
                return "skipped", None
            offer = Offer(task.id, socket, client, asyncio.get_running_loop().create_future())
            replica.offer = offer
            replica.wake.set()
            await asyncio.shield(offer.accepted)
            return ("replaced" if offer.accepted.result() else "skipped"), None
        finally:
            if replica.offer is offer:
                replica.offer = None
            replica.successor_task_id = None
            if offer is not None and not offer.accepted.done():
                offer.accepted.set_result(False)  # cancelled while offered: the runner must not take it
            if offer is None or not offer.accepted.result():
                if client is not None:
                    await client.close()
                await self.workers.stop(task.id)
                self.workers.remove_socket(socket)
            served.changed.set()

    @staticmethod
    def _failure_of(task: Task) -> str:
        text = f"worker {task.id} {task.status}"
        if task.reason:
            text += f" ({task.reason})"
        result = task.result if isinstance(task.result, dict) else {}
        said = result.get("error") or result.get("message")
        if isinstance(said, str) and said:
            text += f": {said}"
        return text

    def _reload_failed(self, served: Served, replica: Replica | None, stamp: Stamp, error: str) -> None:
        message = f"{RELOAD_FAILED}the changed model file ({describe_stamp(stamp)}) could not be loaded: {error}"
        if any(r.model_stamp == stamp for r in served.replicas):
            # Another worker loaded this very file: something else went wrong. Try again.
            delay = served.retry_delay
            served.retry_at = time.monotonic() + delay
            served.retry_delay = min(delay * 2, RELOAD_RETRY_MAX)
            message += f"; trying again in {delay:g}s"
        else:
            served.failed_stamp = stamp
            message += "; the workers keep serving the model they loaded until the file changes again"
        if replica is not None:
            replica.last_error = message
        served.reload_state = "failed"
        served.reload_error = message
        served.batcher.metrics.reload_failures += 1
        served.changed.set()
        log.error("model %s: %s", served.name, message)
