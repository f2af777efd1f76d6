"""Busy polling (serving.busy_poll_us) with a real worker process and the agent's client:
the worker polls for the next request only after one the agent sent alone (FLAG_POLL), for
at most its window, and not when requests come further apart than that; the agent's event
loop polls for a lone request's answer only, and a worker that does not answer cannot keep
it polling. CPU time is measured over short windows: polling is the one thing here that
shows only as CPU spent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from cnetd.limits import ResourceLimits
from cnetd.ml.serving.client import Values, WorkerClient
from cnetd.ml.serving.manager import WORKER_SCRIPT
from cnetd.ml.serving.workers import worker_busy_poll_us
from tests.support.waiting import wait_until_async

POLL = 0.4  # seconds: long enough to see on a loaded machine
WINDOW = 0.2  # seconds of CPU time measured at a time


@pytest.fixture
async def polling_worker(linear_model: Path, tmp_path: Path) -> AsyncIterator[tuple[psutil.Process, WorkerClient]]:
    sock = tmp_path / "w.sock"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), "--socket", str(sock), "--model", str(linear_model), "--loader", "builtin",
         "--busy-poll-us", str(int(POLL * 1e6))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    client: WorkerClient | None = None
    try:
        while client is None:
            try:
                client = await WorkerClient.connect(str(sock), "test", busy_poll=POLL)
            except OSError:
                assert proc.poll() is None and loop.time() < deadline, "the worker did not start listening"
                await asyncio.sleep(0.05)  # polling the socket with a deadline
        yield psutil.Process(proc.pid), client
    finally:
        if client is not None:
            await client.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def ask(client: WorkerClient, x: float, lone: bool) -> Any:
    future: asyncio.Future[Values] = asyncio.get_running_loop().create_future()

    def done(predictions: Values | None, error: Exception | None) -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(predictions if predictions is not None else [])

    client.send(np.array([[x]]), done, lone)
    return await asyncio.wait_for(future, 10)


async def cpu_during(process: psutil.Process, seconds: float) -> float:
    """CPU seconds the process spends in the next `seconds` (a measured window, not a wait)."""
    before = sum(process.cpu_times()[:2])
    await asyncio.sleep(seconds)
    return sum(process.cpu_times()[:2]) - before


async def test_the_worker_polls_after_a_lone_request_only_while_requests_come_that_often(
    polling_worker: tuple[psutil.Process, WorkerClient],
) -> None:
    worker, client = polling_worker
    assert client.hello.busy_poll  # it takes FLAG_POLL
    for _ in range(3):  # loaded, and answering
        await ask(client, 1.0, lone=False)

    await ask(client, 1.0, lone=True)
    assert await cpu_during(worker, WINDOW) > 0.25 * WINDOW, "no polling after a lone request"
    await asyncio.sleep(POLL)  # past the window
    assert await cpu_during(worker, WINDOW) < 0.15 * WINDOW, "still polling after busy_poll_us"

    await ask(client, 1.0, lone=False)  # a batch sent under load: no polling after it
    assert await cpu_during(worker, WINDOW) < 0.15 * WINDOW, "polling after a request that did not ask for it"

    await ask(client, 1.0, lone=True)  # requests came further apart than the window: no polling
    assert await cpu_during(worker, WINDOW) < 0.15 * WINDOW, "polling although requests come seldom"

    await ask(client, 1.0, lone=True)  # right after the one before: polling again
    assert await cpu_during(worker, WINDOW) > 0.25 * WINDOW, "no polling once requests come often again"


async def test_the_agent_polls_for_a_lone_answer_only_and_never_longer_than_its_window(
    polling_worker: tuple[psutil.Process, WorkerClient],
) -> None:
    worker, client = polling_worker
    answer = asyncio.ensure_future(ask(client, 2.0, lone=True))
    await asyncio.sleep(0)  # (the send happens in the task's first step)
    assert client.polling
    assert (await answer).tolist() == pytest.approx([7.0], abs=0.5)
    await wait_until_async(lambda: not client.polling, 5, "the poll to end with the answer")

    answer = asyncio.ensure_future(ask(client, 2.0, lone=False))
    await asyncio.sleep(0)
    assert not client.polling  # a batch sent under load
    await answer

    # A worker that does not answer (stopped here) cannot keep the agent polling.
    worker.suspend()
    try:
        answer = asyncio.ensure_future(ask(client, 3.0, lone=True))
        await asyncio.sleep(0)
        assert client.polling
        await wait_until_async(lambda: not client.polling, POLL + 5, "the poll to end after busy_poll")
        assert client.in_flight == 1 and not answer.done()
    finally:
        worker.resume()
    assert (await answer).tolist() == pytest.approx([9.0], abs=0.5)

    # Answers slower than the window: polling for them would only spend the CPU.
    client.busy_poll = client.last_round_trip / 2
    answer = asyncio.ensure_future(ask(client, 2.0, lone=True))
    await asyncio.sleep(0)
    assert not client.polling
    await answer


def test_a_worker_under_a_cpu_quota_below_one_core_never_polls() -> None:
    assert worker_busy_poll_us(1000, ResourceLimits()) == 1000
    assert worker_busy_poll_us(1000, ResourceLimits(cpu_limit=1.0)) == 1000
    assert worker_busy_poll_us(1000, ResourceLimits(cpu_limit=0.5)) == 0  # it would spend its quota polling
    assert worker_busy_poll_us(0, ResourceLimits()) == 0
