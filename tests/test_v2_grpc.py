"""The V2 gRPC service (serving.grpc_port) against a real agent, with the official client
(tritonclient.grpc) in its default mode (raw_input_contents): live, ready and metadata, the
example linear model answering as over HTTP, every numeric datatype through an echo model,
BYTES answers, hostile requests built with the client's own protos (wrong raw sizes, typed
contents, unknown models) answered with the status code and the message naming the input,
and the token rules: none or a wrong one is UNAUTHENTICATED, the right one works, and a
non-loopback address without a token does not start.

This process never imports cnetd.grpcapi: tritonclient registers the same inference.*
message names in protobuf's default pool (see cnetd/grpcapi/__init__.py)."""

from __future__ import annotations

import copy
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from cnetd.config import UidRange
from tests.support.agent import AgentProcess, free_port
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY, NETWORK_BODY, deploy_and_train

PY = sys.executable
ECHO_MODEL = Path(__file__).with_name("support") / "echo_model.py"
TOKEN = "grpc-test-token-0123456789"
LIMIT = 6 << 20  # serving.max_request_bytes of the agent under test: above grpcio's 4 MiB default
NUMPY_TYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8,
               "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP16": np.float16,
               "FP32": np.float32, "FP64": np.float64}


def deploy_echo(agent: AgentProcess, name: str, env: dict[str, str] | None = None) -> str:
    body = {"name": name, "command": PY, "script_path": "scripts/echo_model.py", "model_path": f"models/{name}.txt",
            "env": env or {}}
    deployed = agent.api.post("/api/ml/models", body)
    assert deployed.status == 201, deployed.text
    assert agent.wait_done(deployed.body["id"])["status"] == "completed"
    serving = agent.api.post(f"/api/ml/models/{deployed.body['id']}/serve?wait=true", {"replicas": 1})
    assert serving.status == 200, serving.text
    return str(deployed.body["id"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One agent with gRPC on, serving the example linear model and two echo models."""
    agent = AgentProcess(tmp_path_factory.mktemp("v2grpc"),
                         {"serving": {"grpc_port": free_port(), "max_request_bytes": LIMIT}}).start()
    try:
        scripts = agent.workdir / "scripts"
        scripts.mkdir()
        shutil.copy(ECHO_MODEL, scripts / "echo_model.py")
        deploy_echo(agent, "echo")
        deploy_echo(agent, "echo-text", {"ECHO_AS_TEXT": "1"})
        linear = deploy_and_train(agent, LINEAR_BODY, timeout=120)
        serve = agent.api.post(f"/api/ml/models/{linear['id']}/serve?wait=true", {"replicas": 1})
        assert serve.status == 200, serve.text
        agent.linear = linear  # type: ignore[attr-defined]
        yield agent
    finally:
        agent.stop()
        agent.kill_task_processes()


def grpc_url(agent: AgentProcess) -> str:
    return f"127.0.0.1:{agent.config['serving']['grpc_port']}"


@pytest.fixture
def client(served: AgentProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(grpc_url(served)) as c:
        yield c


@pytest.fixture
def stub(served: AgentProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_url(served)) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def one_input(name: str, array: np.ndarray[Any, Any], datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_live_ready_and_server_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "cnetd" and metadata.version and list(metadata.extensions) == ["binary_tensor_data"]


def test_model_metadata_and_readiness(served: AgentProcess, client: triton.InferenceServerClient) -> None:
    linear = served.linear  # type: ignore[attr-defined]
    metadata = client.get_model_metadata("linear-regression-model")
    assert metadata.name == "linear-regression-model" and metadata.versions == ["1"]  # version numbers, newest first
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("input", "FP64", [-1, 1])]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("predictions", "FP64")]
    assert metadata.platform == served.api.get("/v2/models/linear-regression-model").body["platform"]
    assert client.is_model_ready("linear-regression-model")
    assert client.is_model_ready("linear-regression-model", model_version=linear["id"])
    for call in (lambda: client.get_model_metadata("no-such-model"), lambda: client.is_model_ready("no-such-model")):
        error = refused(call)
        assert error.status() == "StatusCode.NOT_FOUND" and "no-such-model" in error.message(), error


def test_the_linear_model_answers_as_over_http(served: AgentProcess, client: triton.InferenceServerClient) -> None:
    x = np.array([[0.5], [1.0], [7.25]], dtype=np.float64)
    result = client.infer("linear-regression-model", [one_input("x", x, "FP64")], request_id="r7")
    over_http = served.api.post("/v2/models/linear-regression-model/infer",
                                {"inputs": [{"name": "x", "datatype": "FP64", "shape": [3, 1], "data": [0.5, 1.0, 7.25]}]})
    assert over_http.status == 200, over_http.text
    assert result.as_numpy("predictions").tolist() == pytest.approx(over_http.body["outputs"][0]["data"])
    answer = result.get_response()
    assert answer.id == "r7" and answer.model_name == "linear-regression-model"
    assert answer.model_version == "1"  # the version number (the pinned route takes the deploy id too)
    assert len(answer.raw_output_contents) == 1 and list(answer.outputs[0].shape) == [3]


@pytest.mark.parametrize("datatype", sorted(NUMPY_TYPES))
def test_every_numeric_datatype_round_trips_through_the_echo_model(client: triton.InferenceServerClient,
                                                                    datatype: str) -> None:
    kind = NUMPY_TYPES[datatype]
    info = np.iinfo(kind) if np.issubdtype(kind, np.integer) else None
    values = [info.min, 0, 1, info.max] if info is not None else [-2.5, 0.0, 1.5, 1024.0]
    if datatype == "BOOL":
        values = [True, False, False, True]
    x = np.array(values, dtype=kind).reshape(2, 2)
    result = client.infer("echo", [one_input("x", x, datatype)])
    echoed = result.as_numpy("predictions")
    assert echoed.shape == (2, 2) and echoed.tolist() == x.tolist()  # exact, the extremes of every integer type too
    # The answer's datatype is what holds the model's answer: BOOL for booleans, INT64 for
    # whole numbers (UINT64 above INT64's range), FP64 for the rest.
    output = result.get_output("predictions")
    assert output.datatype == {"UINT64": "UINT64", "BOOL": "BOOL"}.get(datatype, "INT64" if info is not None else "FP64")


def test_bytes_answers_and_bytes_inputs(client: triton.InferenceServerClient) -> None:
    result = client.infer("echo-text", [one_input("x", np.array([1.5, -2.0, 3.0]), "FP64")])
    assert result.get_output("predictions").datatype == "BYTES"
    assert result.as_numpy("predictions").tolist() == [b"1.5", b"-2.0", b"3.0"]
    words = np.array([b"a", b"\xff\x00binary", "é".encode(), b""], dtype=np.object_).reshape(2, 2)
    echoed = client.infer("echo", [one_input("x", words, "BYTES")])
    assert echoed.get_output("predictions").datatype == "BYTES"
    assert echoed.as_numpy("predictions").tolist() == words.tolist()  # exact bytes, not UTF-8 ones too


def test_typed_bytes_and_bool_contents_are_read(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    words = stub.ModelInfer(infer_request("BYTES", [2], bytes_contents=[b"x\xfe", b"yz"]), timeout=10)
    assert words.outputs[0].datatype == "BYTES" and words.raw_output_contents[0] == b"\x02\x00\x00\x00x\xfe\x02\x00\x00\x00yz"
    flags = stub.ModelInfer(infer_request("BOOL", [3], bool_contents=[True, False, True]), timeout=10)
    assert flags.outputs[0].datatype == "BOOL" and flags.raw_output_contents[0] == b"\x01\x00\x01"


def infer_request(datatype: str, shape: list[int], raw: bytes | None = None, **contents: list[Any]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="pixels", datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    else:
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(("request_", "problem"), [
    (infer_request("FP64", [3], struct.pack("<2d", 1, 2)),
     "raw_input_contents[0] (input 'pixels'): is 16 bytes but shape [3] of FP64 takes 24 (3 x 8)"),
    (infer_request("INT32", [2, 2], b"\x00" * 12), "raw_input_contents[0] (input 'pixels'): is 12 bytes but shape [2, 2]"),
    (infer_request("FP32", [10_000_000, 8], b"\x00" * 8),
     "raw_input_contents[0] (input 'pixels'): is 8 bytes but shape [10000000, 8] of FP32 takes 320000000"),
    (infer_request("FP32", [10_000_000, 8], fp32_contents=[1.0]), "inputs[0].shape: [10000000, 8] holds"),
    (infer_request("FP32", [-1], b""), "inputs[0].shape[0]: must be between 0 and 10000000, got -1"),
    (infer_request("FP64", [2], struct.pack("<2d", 1, float("nan"))), "inputs[0].data[1]: not a finite number"),
    (infer_request("FP64", [3], fp64_contents=[1.0, 2.0]), "inputs[0].shape: [3] holds 3 values but data has 2"),
    (infer_request("INT8", [1], int_contents=[300]), "inputs[0].data[0]: 300 is out of range for INT8"),
    (infer_request("FP16", [1], fp32_contents=[1.0]), "inputs[0].contents: FP16 has no typed contents"),
    (infer_request("BF16", [1], b"\x00\x00"), "inputs[0].datatype: BF16 is not supported as binary data"),
    (infer_request("COMPLEX", [1], b"\x00"), "inputs[0].datatype: must be one of"),
])
def test_hostile_requests_are_invalid_argument_naming_the_input(served: AgentProcess, stub: pb_grpc.GRPCInferenceServiceStub,
                                                              request_: pb.ModelInferRequest, problem: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(problem), caught.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live


def test_typed_contents_and_raw_counts(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    answer = stub.ModelInfer(infer_request("FP32", [2], fp32_contents=[0.5, 4.0]), timeout=10)
    assert struct.unpack("<2d", answer.raw_output_contents[0]) == (0.5, 4.0)
    two_raws = infer_request("FP64", [1], struct.pack("<d", 1.0))
    two_raws.raw_input_contents.append(b"")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(two_raws, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("raw_input_contents: has 2 entries for 1 inputs"), caught.value.details()


def test_messages_follow_max_request_bytes(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Past grpcio's own 4 MiB default up to serving.max_request_bytes (this one is then read,
    and refused for its size against its shape); over it, refused before it is read."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(infer_request("UINT8", [3], b"\x00" * (5 << 20)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"raw_input_contents[0] (input 'pixels'): is {5 << 20} bytes")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(infer_request("UINT8", [3], b"\x00" * (LIMIT + 1)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live


def test_unknown_and_unserved_models(served: AgentProcess, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = infer_request("FP64", [1], struct.pack("<d", 1.0))
    request.model_name = "no-such-model"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and "no-such-model" in caught.value.details()
    model = deploy_and_train(served, {"name": "not-served", "command": PY, "script_path": "scripts/echo_model.py",
                                      "model_path": "models/not-served.txt"}, timeout=60)
    request.model_name = "not-served"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == f"model not-served is not being served; POST /api/ml/models/{model['id']}/serve to start it"
    assert not stub.ModelReady(pb.ModelReadyRequest(name="not-served"), timeout=5).ready


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path_factory.mktemp("v2grpc-auth"),
                         {"serving": {"grpc_port": free_port()}, "auth": {"tokens": [TOKEN]}})
    agent.api.token = TOKEN
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.parametrize("headers", [None, {"authorization": "Bearer wrong-token-0123456789"},
                                     {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"}])
def test_calls_without_the_right_token_are_unauthenticated(guarded: AgentProcess, headers: dict[str, str] | None) -> None:
    with triton.InferenceServerClient(grpc_url(guarded)) as c:
        for call in (lambda: c.is_server_live(headers=headers), lambda: c.get_server_metadata(headers=headers),
                     lambda: c.get_model_metadata("anything", headers=headers),
                     lambda: c.infer("anything", [one_input("x", np.zeros(1), "FP64")], headers=headers)):
            error = refused(call)
            assert error.status() == "StatusCode.UNAUTHENTICATED", error
            assert "authorization: Bearer <token>" in error.message()


def test_the_right_token_is_let_in(guarded: AgentProcess) -> None:
    with triton.InferenceServerClient(grpc_url(guarded)) as c:
        assert c.is_server_live(headers={"authorization": f"Bearer {TOKEN}"})
        error = refused(lambda: c.get_model_metadata("anything", headers={"authorization": f"bearer {TOKEN}"}))
        assert error.status() == "StatusCode.NOT_FOUND", error  # past the gate: the model is unknown


# The client is made (its modules loaded) first, then the process becomes the task uid
# before its first call opens the connection: the checkout (and its .venv) may sit in a
# directory that uid cannot enter. setresuid changes every thread's uid, gRPC's too.
TASK_CALL = """
import os
import sys
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException
uid = int(sys.argv[2])
headers = {"authorization": "Bearer " + sys.argv[3]} if len(sys.argv) > 3 else None
try:
    with triton.InferenceServerClient(sys.argv[1]) as client:  # (no connection yet: gRPC connects on the first call)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        print("live", client.is_server_live(headers=headers))
except InferenceServerException as exc:
    print(exc.status(), exc.message())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="task uids exist only when the agent runs as root")
def test_a_task_uid_cannot_call_without_a_token(served: AgentProcess) -> None:
    """The attacker: a process under a uid of tasks.uid_range (as a task runs) calls the
    token-less agent over gRPC from this host; it is refused as over HTTP (403)."""
    task_uid = UidRange().start + 77
    proc = subprocess.run([sys.executable, "-c", TASK_CALL, grpc_url(served), str(task_uid)],
                          capture_output=True, text=True, timeout=60, cwd="/", stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("StatusCode.PERMISSION_DENIED tasks may not use this agent's API without a token "
                                  f"(this connection comes from uid {task_uid}"), proc.stdout
    with triton.InferenceServerClient(grpc_url(served)) as c:
        assert c.is_server_live()  # root, on the same address: let in


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is needed to make a certificate")
def test_with_agent_tls_grpc_serves_the_same_certificate(tmp_path: Path) -> None:
    from tests.test_tls import self_signed

    cert, key = self_signed(tmp_path)
    agent = AgentProcess(tmp_path / "tls", {"agent": {"tls": {"cert_file": str(cert), "key_file": str(key)}},
                                           "serving": {"grpc_port": free_port()}}, ca_file=cert).start()
    try:
        with triton.InferenceServerClient(grpc_url(agent), ssl=True, root_certificates=str(cert)) as secure:
            assert secure.is_server_live()
        with grpc.insecure_channel(grpc_url(agent)) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # no clear-text gRPC beside it
    finally:
        agent.stop()


def exits_with(agent: AgentProcess) -> tuple[int, str]:
    agent.start(ready=False)
    assert agent.proc is not None
    proc = agent.proc
    wait_until(lambda: proc.poll() is not None, 30, "the agent to exit")
    return proc.returncode, agent.log_text()


def test_a_non_loopback_address_without_a_token_does_not_start(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "open", {"agent": {"address": "0.0.0.0"}, "serving": {"grpc_port": free_port()}})
    code, log = exits_with(agent)
    assert code != 0 and "refusing to listen on 0.0.0.0 without an API token" in log, log


def test_config_and_port_problems_are_one_line(tmp_path: Path) -> None:
    same = AgentProcess(tmp_path / "same")
    same.config["serving"] = {"grpc_port": same.port}
    same.config_path.write_text(yaml.safe_dump(same.config))
    code, log = exits_with(same)
    assert code == 2 and log.strip() == (f"cnet-agent: {same.config_path}: serving.grpc_port: must differ from agent.port "
                                         f"({same.port}): gRPC and HTTP each need a port of their own"), log
    taken = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        busy = AgentProcess(tmp_path / "busy", {"serving": {"grpc_port": taken}})
        code, log = exits_with(busy)
    assert code == 1 and f"cnet-agent: cannot listen on 127.0.0.1:{taken} for gRPC (serving.grpc_port)" in log, log


@pytest.mark.slow
def test_the_neural_network_answers_over_grpc(served: AgentProcess, client: triton.InferenceServerClient) -> None:
    pytest.importorskip("tensorflow")
    body = copy.deepcopy(NETWORK_BODY)
    body["args"] = [*body["args"][:3], "400", "8"]  # small and quick; the answer need not be good
    model = deploy_and_train(served, body, timeout=180)
    serve = served.api.post(f"/api/ml/models/{model['id']}/serve?wait=true", {})
    assert serve.status == 200, serve.text
    assert client.is_model_ready("neural-network-model")
    assert [list(t.shape) for t in client.get_model_metadata("neural-network-model").inputs] == [[-1, 2]]
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    result = client.infer("neural-network-model", [one_input("x", x, "FP32")])
    over_http = served.api.post("/v2/models/neural-network-model/infer",
                                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}]})
    assert result.as_numpy("predictions").tolist() == pytest.approx(over_http.body["outputs"][0]["data"], rel=1e-5)
    error = refused(lambda: client.infer("neural-network-model", [one_input("x", np.ones((1, 3)), "FP64")]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and error.message() == "expected 2 features per sample, got 3"
