"""The serving parts on their own: a real worker process and the agent's client (the pipe
hand-over, answers left behind by a dead agent, a dying worker), the V2 tensor rules, the
serving settings, and the Prometheus text."""

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
import pytest

from cnetd.errors import Invalid
from cnetd.metrics.prometheus import Exposition, Histogram
from cnetd.ml.serving.client import Values, WorkerClient, WorkerLost, WorkerRejected
from cnetd.ml.serving.manager import WORKER_SCRIPT
from cnetd.ml.serving.protocol import instances_from_input_data, output_tensor, parse_infer_request
from cnetd.ml.serving.spec import ServingSpec, parse_spec

REPO = Path(__file__).resolve().parents[1]
LINEAR_SCRIPT = REPO / "examples/ml_models/simple_linear_regression.py"


async def connect(path: Path, worker: subprocess.Popen[bytes], timeout: float = 30) -> WorkerClient:
    """Connect once the worker listens (it binds only when its model is loaded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await WorkerClient.connect(str(path), "test")
        except OSError:
            if worker.poll() is not None or loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)  # polling the socket with a deadline


@pytest.fixture
async def worker(
    request: pytest.FixtureRequest, linear_model: Path, tmp_path: Path,
) -> AsyncIterator[tuple[subprocess.Popen[bytes], Path]]:
    loader = getattr(request, "param", "script")
    # A long socket path: bound and reached through /proc/self/fd.
    run = tmp_path / ("d" * 60) / ("e" * 40)
    run.mkdir(parents=True)
    sock = run / "w.sock"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), "--socket", str(sock), "--model", str(linear_model),
         "--script", str(LINEAR_SCRIPT), "--loader", loader],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    yield proc, sock
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


async def ask(client: WorkerClient, instances: Values) -> list[Any]:
    """The predictions as JSON values (the socket channel answers numbers as an array)."""
    future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

    def done(predictions: Values | None, error: Exception | None) -> None:
        if error is not None:
            future.set_exception(error)
        elif isinstance(predictions, np.ndarray):
            future.set_result(predictions.tolist())
        else:
            future.set_result(predictions or [])

    client.send(instances, done)
    return await asyncio.wait_for(future, 10)


@pytest.mark.parametrize("worker", ["script", "builtin"], indirect=True)
async def test_a_worker_answers_in_order_and_rejects_bad_input(worker: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = worker
    client = await connect(sock, proc)
    try:
        assert client.hello is not None and client.hello.n_features == 1 and client.hello.fresh
        assert client.hello.channel == ("pipes" if client.hello.loader == "script" else "socket")
        answers = await asyncio.gather(*(ask(client, [float(i), [float(i)]]) for i in range(20)))
        for i, (a, b) in enumerate(answers):
            assert a == b and abs(a - (2 * i + 3)) < 0.5
        with pytest.raises(WorkerRejected, match="not a number"):
            await ask(client, ["x"])
        assert await ask(client, [5.5]) == pytest.approx([answers[0][0] + 5.5 * (answers[1][0] - answers[0][0])])
    finally:
        await client.close()


async def test_answers_left_by_a_dead_agent_are_skipped(worker: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = worker
    first = await connect(sock, proc)
    for i in range(50):
        first.send([float(i)] * 100, lambda p, e: None)  # never read: the agent "dies"
    first.abort("the agent died")
    second = await connect(sock, proc)
    try:
        assert second.hello is not None and not second.hello.fresh
        for x in (0.0, 1.0, 10.0):
            (y,) = await ask(second, [x])
            assert abs(y - (2 * x + 3)) < 0.5
    finally:
        await second.close()


async def test_a_dying_worker_fails_only_what_it_held(worker: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, sock = worker
    client = await connect(sock, proc)
    held = asyncio.ensure_future(ask(client, [1.0] * 200_000))
    await asyncio.sleep(0)  # let the batch go out
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(WorkerLost):
        await held
    await asyncio.wait_for(client.closed.wait(), 10)
    with pytest.raises(WorkerLost):
        await ask(client, [1.0])
    await client.close()


def tensor(shape: list[int], data: list[Any], datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}], **extra}


def test_v2_tensors_become_instances() -> None:
    assert parse_infer_request(tensor([2, 2], [1, 2, 3, 4])).instances == [[1, 2], [3, 4]]
    assert parse_infer_request(tensor([2, 2], [[1, 2], [3, 4]])).instances == [[1, 2], [3, 4]]
    assert parse_infer_request(tensor([3], [1, 2, 3], "INT64")).instances == [1, 2, 3]
    assert parse_infer_request(tensor([1, 2, 2], list(range(4)), "INT8")).instances == [[[0, 1], [2, 3]]]
    assert parse_infer_request(tensor([0, 2], [])).instances == []
    assert parse_infer_request(tensor([1], [1.0], id="a")).id == "a"
    for body, field, text in [
        (tensor([2, 2], [1, 2, 3]), "inputs[0].shape", "holds 4 values but data has 3"),
        (tensor([2], [1, 2], "STRING"), "inputs[0].datatype", "must be one of"),
        (tensor([2], [True, 1], "BOOL"), "inputs[0].data[1]", "not true or false: 1"),
        (tensor([2], ["a", 2], "BYTES"), "inputs[0].data[1]", "not a string: 2"),
        (tensor([2], [1, None]), "inputs[0].data[1]", "not a number: null"),
        (tensor([1], [300], "UINT8"), "inputs[0].data[0]", "out of range"),
        (tensor([1], [-1], "UINT32"), "inputs[0].data[0]", "out of range"),
        (tensor([1], [1.5], "INT32"), "inputs[0].data[0]", "not an integer"),
        (tensor([1], [float("nan")]), "inputs[0].data[0]", "not a finite number"),
        (tensor([-1], [1]), "inputs[0].shape[0]", "must be between 0 and 10000000, got -1"),
        (tensor([1.5], [1]), "inputs[0].shape", "whole numbers"),
        # sizes that used to build millions of empty instances, or run out of memory
        (tensor([3_000_000, 0], []), "inputs[0].shape[1]", "must be between 1 and 10000000, got 0"),
        (tensor([10**12, 0], []), "inputs[0].shape[0]", "must be between 0 and 10000000, got 1000000000000"),
        (tensor([10**400], []), "inputs[0].shape[0]", "must be between 0 and 10000000"),
        (tensor([1] * 9, [1]), "inputs[0].shape", "has 9 dimensions, at most 8"),
        (tensor([10_000_000, 10_000_000], [1]), "inputs[0].shape", "holds 100000000000000 values, more than 10000000"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "inputs[0].data", "is required"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "inputs[0].name", "is required"),
        ({"inputs": []}, "inputs", "is required"),
        ({"inputs": [tensor([1], [1])["inputs"][0]] * 2}, "inputs", "one input tensor"),
        (tensor([1], [1], outputs=[{"name": "scores"}]), "outputs[0].name", "unknown output"),
        ([], "body", "must be a JSON object"),
    ]:
        with pytest.raises(Invalid) as caught:
            parse_infer_request(body)
        assert caught.value.field == field and text in caught.value.message, (body, caught.value.message)


def test_v2_outputs_and_seed_inputs() -> None:
    expected = {"name": "predictions", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]}
    assert output_tensor("predictions", [1.5, 2.5]) == expected
    assert output_tensor("p", [[1, 2], [3, 4]])["shape"] == [2, 2]
    assert output_tensor("p", [1, 0])["datatype"] == "INT64"
    assert output_tensor("p", ["cat", "dog"])["datatype"] == "BYTES"
    assert output_tensor("p", [])["shape"] == [0]
    # input_data as the example scripts' predict reads it
    assert instances_from_input_data(5.5, 1) == ([5.5], True)
    assert instances_from_input_data([1.0, 2.0], 1) == ([1.0, 2.0], False)
    assert instances_from_input_data([1.0, 2.0], 2) == ([[1.0, 2.0]], True)
    assert instances_from_input_data([[1, 2], [3, 4]], 2) == ([[1, 2], [3, 4]], False)
    assert instances_from_input_data("1.0,2.0", 2) == ([[1.0, 2.0]], True)
    assert instances_from_input_data({"instances": [[1, 2]]}, 2) == ([[1, 2]], False)
    assert instances_from_input_data("not-a-number", 1) == (["not-a-number"], True)
    for bad in (None, [], "  ", {"x": 1}):
        with pytest.raises(Invalid):
            instances_from_input_data(bad, 1)


def test_serving_settings() -> None:
    assert parse_spec(None) == ServingSpec()
    spec = parse_spec({"replicas": 3, "max_delay_ms": 0.5, "cache_size": 10, "loader": "builtin"})
    assert (spec.replicas, spec.max_delay_ms, spec.cache_size, spec.loader, spec.max_batch_size) == (3, 0.5, 10, "builtin", 32)
    assert parse_spec({"replicas": 2}, base=spec).cache_size == 10
    assert ServingSpec.from_json({**spec.to_json(), "state": "serving"}) == spec
    for body, field in [({"replicas": 65}, "replicas"), ({"max_batch_size": 0}, "max_batch_size"),
                        ({"timeout_ms": True}, "timeout_ms"), ({"cache_size": -1}, "cache_size"), ({"x": 1}, "x")]:
        with pytest.raises(Invalid) as caught:
            parse_spec(body, prefix="serving.")
        assert caught.value.field == "serving." + field
    with pytest.raises(Invalid):
        parse_spec([1])


def test_prometheus_text() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 5.0):
        hist.observe(value)
    out = Exposition()
    out.declare("x_seconds", "histogram", "A histogram.")
    out.histogram("x_seconds", {"model": 'a"b\\c'}, hist)
    out.declare("x_total", "counter", "A counter.")
    out.sample("x_total", {}, 3)
    assert out.text() == (
        "# HELP x_seconds A histogram.\n# TYPE x_seconds histogram\n"
        'x_seconds_bucket{model="a\\"b\\\\c",le="0.1"} 1\n'
        'x_seconds_bucket{model="a\\"b\\\\c",le="1.0"} 2\n'
        'x_seconds_bucket{model="a\\"b\\\\c",le="+Inf"} 3\n'
        'x_seconds_sum{model="a\\"b\\\\c"} 5.55\n'
        'x_seconds_count{model="a\\"b\\\\c"} 3\n'
        "# HELP x_total A counter.\n# TYPE x_total counter\nx_total 3\n"
    )
