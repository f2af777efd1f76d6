"""V2 gRPC through a cluster: two real agents on a real etcd, the model served by b alone,
every gRPC call made to a (which does not hold it, and has gRPC on). a sends ModelInfer on to
b as a binary HTTP V2 call (agents talk HTTP with the cluster token) and b's answer back as
raw_output_contents; ModelReady and ModelMetadata are b's too; a mis-sized input is refused
at a naming it; when b is gone the call is UNAVAILABLE saying no live node holds the model.

This process never imports cnetd.grpcapi (see tests/test_v2_grpc.py)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.support.agent import AgentProcess, free_port
from tests.support.cluster import TTL, api_token, cluster_agent, new_prefix, start_all, wait_status
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until
from tests.test_failover import pure_body, wait_serving, with_pure_script
from tests.test_ml_api import deploy_and_train


def infer(client: triton.InferenceServerClient, headers: dict[str, str], x: np.ndarray) -> np.ndarray:
    tensor = triton.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)
    answer = client.infer("pure", [tensor], headers=headers)
    result = answer.as_numpy("predictions")
    assert result is not None
    return result


def test_grpc_calls_to_a_node_without_the_model_are_answered_by_the_one_with_it(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = new_prefix()
    grpc_port = free_port()
    a = cluster_agent(agent_factory, etcd_shared.endpoints, "a", prefix=prefix, extra={"serving": {"grpc_port": grpc_port}})
    b = cluster_agent(agent_factory, etcd_shared.endpoints, "b", prefix=prefix)
    start_all(a, b)
    wait_status(a, "b", "online")
    with_pure_script(b)  # only b has the script: no copy of the model can be served on a
    model = deploy_and_train(b, pure_body("pure", {"replicas": 1, "loader": "script"}))
    wait_serving(b, str(model["id"]))

    headers = {"authorization": f"Bearer {api_token('a')}"}
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        x = np.array([[0.5], [1.0], [-2.0]], dtype=np.float64)

        def answered() -> bool:
            try:
                return bool(infer(client, headers, x).tolist() == pytest.approx([4.0, 5.0, -1.0]))
            except InferenceServerException:
                return False  # a does not know yet that b serves it

        wait_until(answered, 15, "a to pass a gRPC infer on to b")
        assert client.is_model_ready("pure", headers=headers)
        metadata = client.get_model_metadata("pure", headers=headers)
        assert metadata.name == "pure" and metadata.versions == ["1"]

        # The version-pinned call goes on too.
        tensor = triton.InferInput("x", [1, 1], "FP64")
        tensor.set_data_from_numpy(np.array([[2.0]]))
        pinned = client.infer("pure", [tensor], model_version=str(model["id"]), headers=headers)
        assert pinned.get_response().model_version == "1"  # pinned by deploy id, answered by version number
        assert pinned.as_numpy("predictions").tolist() == pytest.approx([7.0])

        # Wrong raw sizes are refused at a, naming the input, before anything leaves.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="pure")
            request.inputs.add(name="x", datatype="FP64", shape=[3])
            request.raw_input_contents.append(b"\x00" * 16)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, metadata=tuple(headers.items()), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith("raw_input_contents[0] (input 'x'): is 16 bytes but shape [3]")

            # b's own 400 (an output the model does not have) comes back as INVALID_ARGUMENT.
            wrong = pb.ModelInferRequest(model_name="pure")
            wrong.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
            wrong.outputs.add(name="nope")
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(wrong, metadata=tuple(headers.items()), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert caught.value.details().startswith('outputs[0].name: unknown output "nope"'), caught.value.details()

        with pytest.raises(InferenceServerException) as unknown:
            client.get_model_metadata("no-such-model", headers=headers)
        assert unknown.value.status() == "StatusCode.NOT_FOUND"

        # b gone: no live node holds it.
        b.stop()

        def unavailable() -> str | None:
            try:
                infer(client, headers, x)
            except InferenceServerException as exc:
                return exc.message() if exc.status() == "StatusCode.UNAVAILABLE" else None
            return None

        message = wait_until(unavailable, TTL + 15, "a to say no live node holds the model")
        assert "pure" in str(message), message
    finally:
        client.close()
