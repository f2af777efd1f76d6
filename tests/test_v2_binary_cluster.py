"""V2 binary tensor data through a cluster: two real agents on a real etcd, the model served
by b alone, every binary infer sent to a (which does not hold it). a passes each request on
as it came (body bytes, Content-Type or none, Inference-Header-Content-Length) and b's
answer back as it was (binary with its header, or JSON, or b's 400)."""

from __future__ import annotations

import http.client
import json
import struct
from collections.abc import Callable

import pytest

from tests.support.agent import AgentProcess
from tests.support.cluster import two_agents
from tests.support.etcd import EtcdCluster
from tests.support.waiting import wait_until
from tests.test_failover import pure_body, wait_serving, with_pure_script
from tests.test_ml_api import deploy_and_train
from tests.test_v2_binary import INFER, SIZE, binary_request, one_input, parse_binary_answer, post_binary


def post_without_content_type(agent: AgentProcess, path: str, raw: bytes, header_length: int
                              ) -> tuple[int, dict[str, str], bytes]:
    """A binary infer as the Triton client sends it: no Content-Type at all (urllib would add one)."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
    try:
        conn.request("POST", path, body=raw, headers={"Authorization": f"Bearer {agent.api.token}",
                                                      "Inference-Header-Content-Length": str(header_length)})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_binary_infer_sent_to_the_node_without_the_model_is_answered_by_the_one_with_it(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    a, b = two_agents(agent_factory, etcd_shared.endpoints)
    with_pure_script(b)  # only b has the script: no copy of the model can be served on a
    model = deploy_and_train(b, pure_body("pure", {"replicas": 1, "loader": "script"}))
    wait_serving(b, str(model["id"]))
    tensors = struct.pack("<3d", 0.5, 1.0, -2.0)

    # Asked for nothing binary: b's JSON answer.
    reply = wait_until(lambda: (r := post_binary(a, one_input("FP64", [3, 1], 24), tensors)).status == 200 and r, 15,
                       "a to pass a binary infer on to b")
    assert reply.headers["X-CNET-Node"] == "b" and reply.headers["Content-Type"].startswith("application/json")
    assert reply.body["outputs"][0]["data"] == pytest.approx([4.0, 5.0, -1.0])

    # A binary answer comes back binary, with its Inference-Header-Content-Length.
    asked = one_input("FP64", [3, 1], 24, id="via-a", outputs=[{"name": "predictions", "parameters": {"binary_data": True}}])
    reply = post_binary(a, asked, tensors)
    assert reply.headers["X-CNET-Node"] == "b" and reply.headers["X-Content-Type-Options"] == "nosniff"
    header, parts = parse_binary_answer(reply)
    assert header["id"] == "via-a" and header["model_version"] == "1"
    assert struct.unpack("<3d", parts[0]) == pytest.approx((4.0, 5.0, -1.0))

    # No Content-Type at all (the official client's way): passed on as such, and answered.
    raw, headers = binary_request(asked, tensors)
    status, answer_headers, body = post_without_content_type(a, INFER, raw, int(headers["Inference-Header-Content-Length"]))
    assert status == 200 and answer_headers["Content-Type"] == "application/octet-stream", body[:300]
    length = int(answer_headers["Inference-Header-Content-Length"])
    assert json.loads(body[:length])["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert struct.unpack("<3d", body[length:]) == pytest.approx((4.0, 5.0, -1.0))

    # b's own 400 for a mis-sized input comes back naming it.
    bad = post_binary(a, one_input("FP64", [3], 16), struct.pack("<2d", 1, 2))
    assert bad.status == 400 and bad.headers["X-CNET-Node"] == "b", bad.text
    assert bad.body["error"].startswith(SIZE + ": is 16 bytes but shape [3]")

    # The pass-through to b by name, and the versioned route, take binary too.
    through = post_binary(a, asked, tensors, path="/api/nodes/b/v2/models/pure/infer")
    assert struct.unpack("<3d", parse_binary_answer(through)[1][0]) == pytest.approx((4.0, 5.0, -1.0))
    versioned = post_binary(a, asked, tensors, path=f"/v2/models/pure/versions/{model['id']}/infer")
    assert parse_binary_answer(versioned)[0]["model_version"] == "1"

    # A predict by id for b's model, sent to a, goes on to b with its body.
    predict = f"/api/ml/models/{model['id']}/predict?wait=true"
    predicted = wait_until(lambda: (r := a.api.post(predict, {"input_data": 2.0})).status != 404 and r, 15,
                           "a to know that b has the model")
    assert predicted.status == 200 and predicted.headers["X-CNET-Node"] == "b", predicted.text
    assert predicted.body["prediction"] == pytest.approx(7.0)

    # The official client, in its default binary mode, through a.
    np = pytest.importorskip("numpy")
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
    client = httpclient.InferenceServerClient(url=a.url.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {a.api.token}"}
    try:
        tensor = httpclient.InferInput("x", [3, 1], "FP64")
        tensor.set_data_from_numpy(np.array([[0.5], [1.0], [-2.0]], dtype=np.float64))
        answer = client.infer("pure", [tensor], outputs=[httpclient.InferRequestedOutput("predictions")], headers=auth)
        assert answer.get_output("predictions")["parameters"]["binary_data_size"] == 24
        assert answer.as_numpy("predictions").tolist() == pytest.approx([4.0, 5.0, -1.0])
    finally:
        client.close()
