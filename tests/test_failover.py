"""Failover of served models between real agents on a real etcd (loopback, lease TTL 3 s).

- V2 sent to an agent that does not serve a model goes to a node that does (its serving
  endpoint in etcd, on that node's lease); the model's desired state is in etcd; once the
  only node holding it is killed, the agent says `unavailable: no live node holds model ...`.
  Endpoint records that lie (not on a lease, under another node's key) are ignored, and no
  node is ever called at the address an endpoint record gives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, cluster_agent, new_prefix, put_key, start_all, wait_status
from tests.support.etcd import EtcdCluster, EtcdMember, etcd_shared  # noqa: F401  (fixture)
from tests.support.http import Reply
from tests.support.waiting import wait_until
from tests.test_ml_api import deploy_and_train

PURE_MODEL = Path(__file__).with_name("support") / "pure_model.py"
SLACK = 5.0


def etcd_list(member: EtcdMember, key_prefix: str) -> dict[str, Any]:
    """Every key under key_prefix, decoded: key -> JSON value."""
    start = key_prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    answer = member.request("/v3/kv/range", {"key": base64.b64encode(start).decode(),
                                             "range_end": base64.b64encode(end).decode()})
    return {base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv["value"]))
            for kv in answer.get("kvs", [])}


def infer(agent: AgentProcess, name: str, x: float, version: str | None = None) -> Reply:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return agent.api.post(path, {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]}, timeout=30)


def with_pure_script(agent: AgentProcess) -> AgentProcess:
    (agent.workdir / "scripts").mkdir(exist_ok=True)
    shutil.copy(PURE_MODEL, agent.workdir / "scripts" / "pure_model.py")
    return agent


def pure_body(name: str, serving: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "model_path": "models/pure/p.json", "script_path": "scripts/pure_model.py",
            "command": "python3", "args": ["scripts/pure_model.py", "train", "models/pure/p.json"], "serving": serving}


def wait_serving(agent: AgentProcess, model_id: str, ready: int = 1, timeout: float = 60) -> dict[str, Any]:
    def serving() -> dict[str, Any] | None:
        state = agent.api.get(f"/api/ml/models/{model_id}").body.get("serving")
        return state if state and state.get("state") == "serving" and state["ready_replicas"] >= ready else None

    found = wait_until(serving, timeout, f"{ready} ready replica(s) of {model_id} on {agent.workdir.name}")
    assert found is not None
    return found


def test_v2_through_any_agent_reaches_the_node_that_serves_until_none_holds_the_model(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],  # noqa: F811
) -> None:
    prefix = new_prefix("failover")
    member = etcd_shared.members[0]
    a = cluster_agent(agent_factory, etcd_shared.endpoints, "a", prefix=prefix)
    # Only c has the script, and the model is served by it (loader "script"): no other node
    # can hold the model, so every V2 call through a is answered by c.
    c = with_pure_script(cluster_agent(agent_factory, etcd_shared.endpoints, "c", prefix=prefix))
    start_all(a, c)
    model = deploy_and_train(c, pure_body("pure", {"replicas": 1, "loader": "script"}))
    wait_serving(c, model["id"])

    # The desired state and c's endpoint, in etcd.
    desired = wait_until(lambda: etcd_list(member, f"{prefix}/served/").get(f"{prefix}/served/pure"), 10,
                         "the desired serving of pure")
    file = c.workdir / "models" / "pure" / "p.json"
    assert desired["model_id"] == model["id"] and desired["state"] == "serving" and desired["origin"] == "c"
    assert desired["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest() and desired["size"] == file.stat().st_size
    assert desired["placements"] == {"c": 1} and desired["holders"] == ["c"]
    assert desired["source"]["model_path"] == "models/pure/p.json" and desired["settings"]["loader"] == "script"
    endpoint = wait_until(lambda: etcd_list(member, f"{prefix}/serving/pure/").get(f"{prefix}/serving/pure/c"), 10,
                          "c's serving endpoint")
    assert endpoint["model_id"] == model["id"] and endpoint["ready_replicas"] == 1 and endpoint["node_id"] == "c"

    # V2 through a: answered by c.
    reply = infer(a, "pure", 2.0)
    assert reply.status == 200 and reply.headers["X-CNET-Node"] == "c", reply.text
    assert abs(reply.body["outputs"][0]["data"][0] - 7.0) < 1e-6 and reply.body["model_version"] == model["id"]
    assert infer(a, "pure", 2.0, version=model["id"]).status == 200
    assert a.api.get("/v2/models/pure/ready").status == 200
    assert a.api.get("/v2/models/pure").body["versions"] == [model["id"]]
    assert infer(a, "pure", 2.0, version="no-such-version").status == 404
    assert infer(a, "nothing-of-that-name", 2.0).status == 404

    # Lying endpoint records: one not on a lease (no node wrote it) for a node that is not
    # in the cluster, at an address of its own choosing (a's own, which would loop), and one
    # under another node's key. Both are ignored: calls go only to c, whose address comes
    # from its node record.
    put_key(member, f"{prefix}/serving/pure/ghost", {**endpoint, "node_id": "ghost", "advertise_url": a.url})
    put_key(member, f"{prefix}/serving/pure/a", {**endpoint, "node_id": "c", "advertise_url": a.url})
    for _ in range(6):  # every order the table may try them in
        reply = infer(a, "pure", 1.0)
        assert reply.status == 200 and reply.headers["X-CNET-Node"] == "c", reply.text

    # c dies: for a moment its endpoint is still listed (its lease has not expired), and a
    # says that no node holding the model answered; then that no live node holds it.
    c.kill()
    wait_status(a, "c", "offline", timeout=TTL + SLACK)
    gone = wait_until(lambda: (r := infer(a, "pure", 1.0)).status == 503 and "no live node holds" in r.text and r,
                      10, "a to say that no live node holds pure")
    assert gone.body["error"] == (f"unavailable: no live node holds model pure (version {model['id']}; "
                                  "it was served on c)")
    assert gone.headers["Retry-After"] == "1"
    assert a.api.get("/v2/models/pure/ready").status == 503
