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
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.cluster import TTL, cluster_agent, new_prefix, put_key, start_all, wait_status
from tests.support.etcd import EtcdCluster, EtcdMember
from tests.support.http import Reply
from tests.support.waiting import wait_until
from tests.test_ml_api import LINEAR_BODY, deploy_and_train

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
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
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
    # The cluster view on a lists c's model, served.
    listed = wait_until(lambda: next((m for m in a.api.get("/api/ml/models?node=all").body
                                      if m["id"] == model["id"] and m["serving"] == "serving"), None), 10,
                        "a to list c's model as serving")
    assert listed["node_id"] == "c" and listed["status"] == "completed"

    # V2 through a: answered by c.
    reply = infer(a, "pure", 2.0)
    assert reply.status == 200 and reply.headers["X-CNET-Node"] == "c", reply.text
    assert abs(reply.body["outputs"][0]["data"][0] - 7.0) < 1e-6 and reply.body["model_version"] == "1"
    assert infer(a, "pure", 2.0, version=model["id"]).status == 200
    assert a.api.get("/v2/models/pure/ready").status == 200
    assert a.api.get("/v2/models/pure").body["versions"] == ["1"]  # c's version numbers
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


# --- failover: a served model outlives the node that trained it ----------------------------------

LINEAR = {**LINEAR_BODY, "name": "linear", "serving": {"replicas": 1}}


class Prober:
    """Sends V2 inferences through some agents, one after another, and keeps every outcome
    (when, through which agent, status, which node answered)."""

    def __init__(self, agents: list[AgentProcess], name: str) -> None:
        self.agents = agents
        self.name = name
        self.outcomes: list[tuple[float, str, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for agent in self.agents:
                try:
                    reply = infer(agent, self.name, 2.0)
                    status, node = reply.status, reply.headers.get("X-CNET-Node", agent.workdir.name)
                except OSError:
                    status, node = 0, ""
                self.outcomes.append((time.monotonic(), agent.workdir.name, status, node))
            self._stop.wait(0.05)

    def errors(self, since: float) -> list[tuple[float, str, int, str]]:
        return [o for o in self.outcomes if o[0] >= since and o[2] != 200]


def placements(member: EtcdMember, prefix: str, name: str) -> dict[str, Any]:
    return dict(etcd_list(member, f"{prefix}/served/").get(f"{prefix}/served/{name}", {}))


def ready_nodes(member: EtcdMember, prefix: str, name: str) -> set[str]:
    return {e["node_id"] for e in etcd_list(member, f"{prefix}/serving/{name}/").values() if e["ready_replicas"] > 0}


def test_a_served_model_is_copied_and_survives_the_death_of_the_node_that_trained_it(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = new_prefix("failover")
    member = etcd_shared.members[0]
    a, b, c = (cluster_agent(agent_factory, etcd_shared.endpoints, n, prefix=prefix) for n in "abc")
    start_all(a, b, c)
    model = deploy_and_train(c, LINEAR)
    wait_serving(c, model["id"])

    # Copied to one other node, which serves it too: two nodes with a ready replica each.
    two = wait_until(lambda: len(n := ready_nodes(member, prefix, "linear")) == 2 and n, 60,
                     "a second node serving the model")
    assert "c" in two
    (copy_node,) = two - {"c"}
    holder = {"a": a, "b": b}[copy_node]
    desired = placements(member, prefix, "linear")
    assert desired["placements"] == {"c": 1, copy_node: 1} and set(desired["holders"]) == {"c", copy_node}
    copy = holder.api.get(f"/api/ml/models/{model['id']}").body
    assert copy["status"] == "completed" and copy["result"]["copied_from"] == "c"
    assert copy["model_path"] == f"models/linear_regression_model.{model['id']}.joblib"
    copied = holder.workdir / copy["model_path"]
    original = c.workdir / "models" / "linear_regression_model.joblib"
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == desired["sha256"] == \
        hashlib.sha256(original.read_bytes()).hexdigest()
    st = copied.stat()
    assert st.st_uid != 0 and stat.S_IMODE(st.st_mode) == 0o640  # the model's own user's, like a trained file
    events = [e["type"] for e in holder.api.get(f"/api/tasks/{model['id']}/events").body]
    assert events == ["copied"]

    # SIGKILL c while V2 goes to a and b all along.
    with Prober([a, b], "linear") as prober:
        wait_until(lambda: len(prober.outcomes) >= 10, 30, "the prober to get going")
        c.kill()
        killed = time.monotonic()
        third = wait_until(lambda: (n := ready_nodes(member, prefix, "linear") - {"c", copy_node}) and n,
                           TTL + 2 * TTL + 10, "the lost replica re-placed on the third node")
        replaced = time.monotonic() - killed
        wait_until(lambda: len(prober.outcomes) and prober.outcomes[-1][0] > killed + replaced + 1, 10, "more answers")
    errors = prober.errors(killed)
    window = errors[-1][0] - errors[0][0] if errors else 0.0
    answered = [o for o in prober.outcomes if o[0] >= killed and o[2] == 200]
    print(f"re-placed after {replaced:.1f}s; {len(errors)} errors over {window:.1f}s of {len(answered) + len(errors)} calls")
    assert 2 * TTL <= replaced <= TTL + 2 * TTL + 10, replaced  # not before the grace, and within its bound
    assert window <= 3.0 and len(errors) <= 10, errors
    assert {o[1] for o in answered} == {"a", "b"} and all(o[3] != "c" for o in answered)
    desired = placements(member, prefix, "linear")
    (third_node,) = third
    assert desired["placements"] == {copy_node: 1, third_node: 1}, desired
    assert set(desired["holders"]) == {"c", copy_node, third_node} and desired["origin"] == "c"
    for agent in (a, b):
        reply = infer(agent, "linear", 2.0)
        assert reply.status == 200 and reply.headers.get("X-CNET-Node", agent.workdir.name) in (copy_node, third_node)


# --- the desired state is read as hostile, and followed both ways -------------------------------


def served_record(name: str, model_id: str, origin: str, **source: Any) -> dict[str, Any]:
    return {"name": name, "model_id": model_id, "sha256": "ab" * 32, "size": 10, "state": "serving", "replicas": 1,
            "settings": {}, "placements": {origin: 1, "a": 1}, "holders": [origin], "origin": origin,
            "source": {"model_path": "models/x/x.joblib", "command": "python3", "working_dir": ".", **source}}


def test_desired_state_is_checked_like_a_deploy_and_followed_when_serving_stops_or_grows(
    etcd_shared: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    prefix = new_prefix("failover")
    member = etcd_shared.members[0]
    a, c = (with_pure_script(cluster_agent(agent_factory, etcd_shared.endpoints, n, prefix=prefix)) for n in "ac")
    start_all(a, c)

    # Records that place a model on a whose deployment a would never accept: a refuses each
    # (saying why in the record, so the placer goes elsewhere) and writes nothing anywhere.
    hostile = {
        "wd": (served_record("wd", "m-wd", "c", working_dir="/etc"), "outside the allowed roots"),
        "up": (served_record("up", "m-up", "c", model_path="../../../../../tmp/cnet-evil/x.joblib"),
               "outside the model roots"),
        "abs": (served_record("abs", "m-abs", "c", model_path="/etc/cron.d/cnet-evil"), "outside the model roots"),
        "script": ({**served_record("script", "m-script", "c", script_path="scripts/missing.py"),
                    "settings": {"loader": "script"}}, "served with its script, which this node cannot run"),
    }
    for name, (record, _) in hostile.items():
        put_key(member, f"{prefix}/served/{name}", record)
    # ... and records that are not what they say: ignored altogether.
    put_key(member, f"{prefix}/served/renamed", served_record("other", "m-renamed", "c"))
    put_key(member, f"{prefix}/served/many", {**served_record("many", "m-many", "c"), "placements": {"a": 65}})
    for name, (_, why) in hostile.items():
        refused = wait_until(lambda n=name: placements(member, prefix, n).get("refused", {}).get("a"), 15,
                             f"a to refuse {name}")
        assert why in refused, (name, refused)
    assert "refused" not in placements(member, prefix, "renamed") and "refused" not in placements(member, prefix, "many")
    assert not Path("/tmp/cnet-evil").exists() and not Path("/etc/cron.d/cnet-evil").exists()
    assert a.api.get("/api/ml/models").body == []

    # A model served on c is copied to a; stopping it on a (the copy) stops it on c too.
    model = deploy_and_train(c, pure_body("pure", {"replicas": 1}))
    wait_serving(c, model["id"])
    wait_until(lambda: ready_nodes(member, prefix, "pure") == {"a", "c"}, 30, "a copy served on a")
    reply = a.api.delete(f"/api/ml/models/{model['id']}/serve")
    assert reply.status == 200 and "X-CNET-Node" not in reply.headers, reply.text  # a's own copy
    assert wait_until(lambda: placements(member, prefix, "pure")["state"] == "stopped", 10, "the record to say stopped")
    stopped = wait_until(lambda: (s := c.api.get(f"/api/ml/models/{model['id']}").body["serving"])["state"] == "stopped"
                         and s, 15, "c to stop serving")
    assert stopped.get("reason") == "serving was stopped on node a", stopped
    assert infer(c, "pure", 1.0).status == 409

    # Served again on c with 3 replicas in all: spread, the origin first (c 2, a 1).
    reply = c.api.post(f"/api/ml/models/{model['id']}/serve", {"replicas": 3})
    assert reply.status in (200, 202), reply.text
    wait_until(lambda: placements(member, prefix, "pure")["placements"] == {"c": 2, "a": 1}, 15, "c 2, a 1")
    wait_serving(c, model["id"], ready=2)
    assert wait_serving(a, model["id"], ready=1)["replicas"] == 1
    assert placements(member, prefix, "pure")["replicas"] == 3


def test_while_etcd_is_away_serving_goes_on_placements_are_503_and_all_recovers(
    etcd_one: EtcdCluster, agent_factory: Callable[..., AgentProcess],
) -> None:
    solo = with_pure_script(cluster_agent(agent_factory, etcd_one.endpoints, "solo", prefix=new_prefix("away")))
    solo.start()
    model = deploy_and_train(solo, pure_body("pure", {"replicas": 1, "loader": "script"}))
    wait_serving(solo, model["id"])
    place = {"name": "placed", "command": "sleep", "args": ["60"], "placement": "auto"}
    wait_until(lambda: solo.api.post("/api/tasks", place).status == 201, TTL + SLACK, "a first placement")

    etcd_one.stop()
    wait_until(lambda: solo.api.get("/api/health").body.get("cluster") == "degraded", 3 * TTL + SLACK,
               "health to say degraded")
    served = infer(solo, "pure", 2.0)
    assert served.status == 200 and abs(served.body["outputs"][0]["data"][0] - 7.0) < 1e-6, served.text
    refused = solo.api.post("/api/tasks", place)
    assert refused.status == 503, refused.text
    local = solo.api.post("/api/tasks", {"name": "local", "command": "sleep", "args": ["60"]})
    assert local.status == 201, local.text  # work without a placement needs no etcd

    etcd_one.restart(*etcd_one.members)
    wait_until(lambda: solo.api.get("/api/health").body.get("cluster") == "ok", 3 * TTL + SLACK, "health to say ok")
    wait_until(lambda: solo.api.post("/api/tasks", place).status == 201, 3 * TTL + SLACK, "placements again")
    assert infer(solo, "pure", 3.0).status == 200
